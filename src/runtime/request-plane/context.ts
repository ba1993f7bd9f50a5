// What an endpoint handler sees of one request: its ids, headers, and the caller's cancellation (stop, kill, or the
// response stream closing), delivered as flags and as an AbortSignal.
import { LlmError } from '../../errors.js';

export interface RequestContext {
  /** The request id (RequestControlMessage.id). */
  readonly id: string;
  /** Trace id from a W3C `traceparent` header, else `x-request-id` / `request-id`, else the request id. */
  readonly traceId: string;
  /** Transport headers the caller sent (trace headers, `request-id`, `x-frontend-send-ts-ns`, `x-endpoint-path`). */
  readonly headers: Readonly<Record<string, string>>;
  /** Aborts on stop, kill or caller disconnect; `signal.reason` is an LlmError LLM_ERR_CANCELLED saying which. */
  readonly signal: AbortSignal;
  /** True once the caller asked to stop generating (graceful), killed the request, or went away. */
  isStopped(): boolean;
  /** True once the caller killed the request or went away: stop now, nothing more will be delivered. */
  isKilled(): boolean;
}

/** An endpoint's handler: one request in, a stream of responses out (each becomes Annotated `{data}`). */
export type EndpointHandler = (request: unknown, ctx: RequestContext) => AsyncIterable<unknown>;

export type CancelKind = 'stop' | 'kill' | 'disconnect';

/** The worker-side owner of a RequestContext: the request plane calls `cancel` as control messages arrive. */
export class RequestControl implements RequestContext {
  readonly traceId: string;
  private readonly abort = new AbortController();
  private stopped = false;
  private killed = false;

  constructor(
    readonly id: string,
    readonly headers: Readonly<Record<string, string>>,
  ) {
    this.traceId = traceIdFromHeaders(headers) ?? id;
  }

  get signal(): AbortSignal {
    return this.abort.signal;
  }

  isStopped(): boolean {
    return this.stopped;
  }

  isKilled(): boolean {
    return this.killed;
  }

  cancel(kind: CancelKind): void {
    this.stopped = true;
    if (kind !== 'stop') this.killed = true;
    if (!this.abort.signal.aborted) {
      const why = kind === 'stop' ? 'caller asked to stop generating' : kind === 'kill' ? 'caller killed the request' : 'caller disconnected';
      this.abort.abort(new LlmError('LLM_ERR_CANCELLED', `request ${this.id}: ${why}`));
    }
  }
}

function traceIdFromHeaders(headers: Readonly<Record<string, string>>): string | undefined {
  const traceparent = headers['traceparent'];
  // version-traceid-parentid-flags, trace id = 32 lowercase hex digits
  const m = traceparent === undefined ? null : /^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$/.exec(traceparent.trim());
  if (m) return m[1];
  return headers['x-request-id'] ?? headers['request-id'] ?? undefined;
}
