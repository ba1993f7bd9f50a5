// The caller side shared by all request planes: a request becomes a TwoPartMessage (RequestControlMessage header
// naming our response server, request JSON body) and a ResponseStream waiting for the worker's call-home.
import { LlmError } from '../../errors.js';
import { RequestHeader, encodeWireJson, makeConnectionInfo, type RequestControlMessage } from '../../protocol/transport.js';
import { encodeTwoPart } from './framing.js';
import type { ResponseServer } from './response-server.js';
import type { ResponseStream } from './response-stream.js';
import { AUTH_HEADER, signRequest } from './trust.js';

export interface RequestOptions {
  /** Request id (RequestControlMessage.id, `request-id` header); a uuid by default. */
  requestId?: string;
  /** Extra transport headers (e.g. `traceparent`, `x-frontend-send-ts-ns`). */
  headers?: Record<string, string>;
  /** Aborting kills the request. */
  signal?: AbortSignal;
}

export interface PreparedRequest {
  stream: ResponseStream;
  payload: Buffer;
  headers: Record<string, string>;
}

export function prepareRequest(responses: ResponseServer, worker: string, body: unknown, options: RequestOptions, maxMessageSize: number, secret: Buffer | null = null): PreparedRequest {
  const stream = responses.expect(worker, options);
  const control: RequestControlMessage = {
    id: stream.requestId,
    request_type: 'single_in',
    response_type: 'many_out',
    connection_info: makeConnectionInfo({ address: responses.address, subject: stream.subject, context: stream.requestId, stream_type: 'response' }),
  };
  try {
    const payload = encodeTwoPart(Buffer.from(encodeWireJson(control)), Buffer.from(encodeWireJson(body ?? null)), { maxMessageSize });
    const headers: Record<string, string> = { ...options.headers, [RequestHeader.requestId]: stream.requestId };
    if (secret !== null) headers[AUTH_HEADER] = signRequest(secret, payload);
    return { stream, payload, headers };
  } catch (err) {
    const error = err instanceof LlmError ? err : new LlmError('LLM_ERR_BAD_REQUEST', `request body cannot be encoded as JSON: ${(err as Error).message}`);
    stream.fail(error);
    throw error;
  }
}

/** Why a worker could not take a request, as the plane reported it (error response frame, HTTP status, NATS reply). */
export function refusal(worker: string, text: string): LlmError {
  const code = text.startsWith('Server overloaded') ? 'LLM_ERR_OVERLOADED' : 'LLM_ERR_TRANSPORT';
  return new LlmError(code, `worker ${worker} refused the request: ${text}`);
}
