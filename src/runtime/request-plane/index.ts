// The request planes (reference §10.1, §10.3): framing, the worker-side servers (tcp, http, nats) sharing one
// ingress with call-home response streaming, and the caller-side clients with their response server and streams.
export * from './address.js';
export * from './context.js';
export * from './framing.js';
export { Ingress, type AcceptResult, type HandlerRegistration, type IngressOptions } from './ingress.js';
export { prepareRequest, refusal, type PreparedRequest, type RequestOptions } from './egress.js';
export { TcpRequestServer, sharedTcpRequestServer, type TcpRequestServerOptions } from './tcp-server.js';
export { TcpRequestClient, type TcpRequestClientOptions } from './tcp-client.js';
export * from './http.js';
export * from './nats.js';
export { ResponseServer, sharedResponseServer, type ExpectOptions, type ResponseServerOptions } from './response-server.js';
export { DisconnectedError, ResponseStream } from './response-stream.js';
export * from './trust.js';
