// Serving an endpoint: the handler goes onto this process's request plane (tcp, http or nats), then the instance is
// written to discovery under `v1/instances/{ns}/{component}/{endpoint}/{instance_id:x}` with the transport address
// callers dial. Stopping reverses it: leave discovery first (no new callers), then wait for in-flight requests.
import { LlmError } from '../errors.js';
import type { InstanceRecord, Transport } from '../protocol/discovery.js';
import type { Discovery } from './discovery/index.js';
import type { EndpointHandler } from './request-plane/context.js';
import { sharedHttpRequestServer, type HttpRequestServer } from './request-plane/http.js';
import type { HandlerRegistration } from './request-plane/ingress.js';
import type { NatsRequestServer } from './request-plane/nats.js';
import { sharedTcpRequestServer, type TcpRequestServer } from './request-plane/tcp-server.js';

export type { EndpointHandler, RequestContext } from './request-plane/context.js';

export type RequestPlaneKind = 'tcp' | 'http' | 'nats';

/** `DYN_REQUEST_PLANE` (tcp | http | nats, any case), default tcp. */
export function requestPlaneFromEnv(env: NodeJS.ProcessEnv = process.env): RequestPlaneKind {
  const raw = env.DYN_REQUEST_PLANE?.trim().toLowerCase();
  if (raw === undefined || raw === '') return 'tcp';
  if (raw === 'tcp' || raw === 'http' || raw === 'nats') return raw;
  throw new LlmError('LLM_ERR_CONFIG', `DYN_REQUEST_PLANE must be tcp, http or nats, got "${env.DYN_REQUEST_PLANE}"`);
}

export interface ServeEndpointOptions {
  discovery: Discovery;
  namespace: string;
  component: string;
  endpoint: string;
  handler: EndpointHandler;
  /** Default `DYN_REQUEST_PLANE`, else tcp. */
  plane?: RequestPlaneKind;
  /** Default: the process's shared TCP server. */
  tcpServer?: TcpRequestServer;
  /** Default: the process's shared HTTP server. */
  httpServer?: HttpRequestServer;
  /** Required for the nats plane (it owns the NATS connection). */
  natsServer?: NatsRequestServer;
  deviceType?: string;
}

export interface ServedEndpoint {
  readonly record: InstanceRecord;
  /** Requests queued or running on this endpoint's plane (all endpoints of that plane server). */
  readonly inflight: () => number;
  /** Unregisters from discovery, stops routing, then waits for the endpoint's in-flight requests to finish. */
  stop(): Promise<void>;
}

export async function serveEndpoint(options: ServeEndpointOptions): Promise<ServedEndpoint> {
  const plane = options.plane ?? requestPlaneFromEnv();
  const { discovery, namespace, component, endpoint } = options;
  const registration: HandlerRegistration = { instanceId: discovery.instanceId, endpoint, handler: options.handler };
  let transport: Transport;
  let unregister: () => Promise<void>;
  let inflight: () => number;
  switch (plane) {
    case 'tcp': {
      const server = options.tcpServer ?? (await sharedTcpRequestServer());
      transport = { tcp: server.register(registration) };
      unregister = () => server.unregister(registration);
      inflight = () => server.ingress.inflight;
      break;
    }
    case 'http': {
      const server = options.httpServer ?? (await sharedHttpRequestServer());
      transport = { http: server.register(registration) };
      unregister = () => server.unregister(registration);
      inflight = () => server.ingress.inflight;
      break;
    }
    case 'nats': {
      const server = options.natsServer;
      if (server === undefined) {
        throw new LlmError('LLM_ERR_CONFIG', `endpoint ${namespace}/${component}/${endpoint}: the nats request plane needs a NATS connection (natsServer)`);
      }
      transport = { nats_tcp: server.register(namespace, component, registration) };
      await server.connection.flush();
      unregister = () => server.unregister(registration);
      inflight = () => server.ingress.inflight;
      break;
    }
  }
  let record: InstanceRecord;
  try {
    record = await discovery.registerEndpointInstance({ namespace, component, endpoint, transport, deviceType: options.deviceType });
  } catch (err) {
    await unregister();
    throw err;
  }
  let stopping: Promise<void> | undefined;
  return {
    record,
    inflight,
    stop() {
      stopping ??= (async () => {
        await discovery.unregisterEndpointInstance(namespace, component, endpoint);
        await unregister();
      })();
      return stopping;
    },
  };
}
