// The worker side shared by all request planes: a request payload (TwoPartMessage = RequestControlMessage header +
// request JSON body) is checked, queued (bounded), acknowledged by the plane, then run; the handler's outputs stream
// back "call-home" on a NEW TCP connection to the caller's response server (reference §10.3):
//
//   worker → caller  header {"subject","stream_type":"response"} → header {"error":null} → body {"data":Annotated,
//                    "complete_final":false}… → body {"complete_final":true} → header "sentinel" (not after stop/kill)
//   caller → worker  header "stop" (finish gracefully) | header "kill" (abort now); closing the socket = kill.
//
// Handler outputs become Annotated `{"data": output}`. A handler that throws produces one error item in the form every
// Dynamo release reads (Annotated::from_error: `event` "error", the text in `comment`):
//   {"event": "error", "comment": ["LLM_ERR_*: message"]}
// after which the stream completes normally. The code leads the text (errorItemText / errorFromItem) so that our own
// callers keep it; no extra field is added, since later Dynamo drops an Annotated whose `error` is not its own shape.
// A handler that ends with LLM_ERR_SHUTDOWN (the worker is draining and gave up on the request) instead drops the
// call-home connection without completing the stream: that is the interruption Dynamo's migration retries on another
// worker, in 0.8 and later alike.
import { connect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { LlmError, toErrorPayload } from '../../errors.js';
import { parseJsonExact, stringifyJsonExact } from '../../protocol/json.js';
import {
  ControlMessageSchema,
  errorItemText,
  RequestControlMessageSchema,
  decodeWireJson,
  readConnectionInfo,
  type Annotated,
  type CallHomeHandshake,
  type ControlMessage,
  type ResponsePrologue,
  type StreamFrame,
  type TcpConnectionInfo,
} from '../../protocol/transport.js';
import { parseHostPort } from './address.js';
import { RequestControl, type EndpointHandler } from './context.js';
import { DEFAULT_MAX_MESSAGE_SIZE, TwoPartDecoder, decodeTwoPart, encodeTwoPart } from './framing.js';
import { logger } from '../log.js';
import { RequestVerifier, requestPlaneTrustFromEnv, tcpPlaneTlsFromEnv, type ReplyAddressPolicy, type RequestPlaneTrust, type TcpPlaneTls } from './trust.js';

const log = logger('runtime.request_plane');

/** One endpoint served on a plane. */
export interface HandlerRegistration {
  endpoint: string;
  instanceId: bigint;
  handler: EndpointHandler;
}

export interface IngressOptions {
  /** Requests run at once (Dynamo: a pool of 1500 workers). */
  maxInflight?: number;
  /** Requests waiting for a free slot before new ones are refused as overloaded (Dynamo: 6000). */
  maxQueued?: number;
  maxMessageSize?: number;
  /** How long to wait for the caller's response server to accept the call-home connection. */
  callHomeConnectTimeoutMs?: number;
  /** Failures that have no caller to go to (the call-home connection could not be opened, a write failed). */
  onStreamError?: (err: LlmError, requestId: string) => void;
  /** Shared secret, reply-address rule, reply write timeout (default: from the environment, trust.ts). */
  trust?: RequestPlaneTrust;
  /** Mutual TLS: the call-home connection presents this certificate and checks the caller's response server against
   * the CA (default DYN_TCP_RPC_TLS_*; null = plaintext). */
  tls?: TcpPlaneTls | null;
}

export type AcceptResult = { ok: true } | { ok: false; error: string; overloaded: boolean };

/** Requests refused by the trust checks and reply streams cut for a stalled reader, since start. */
export interface IngressTrustCounters {
  unauthenticated: number;
  replyAddressRefused: number;
  replyWriteTimeouts: number;
}

interface WorkItem {
  registration: HandlerRegistration;
  requestId: string;
  connection: TcpConnectionInfo;
  body: Buffer;
  headers: Record<string, string>;
}

export class Ingress {
  readonly maxInflight: number;
  readonly maxQueued: number;
  readonly maxMessageSize: number;
  private readonly connectTimeoutMs: number;
  private readonly onStreamError: (err: LlmError, requestId: string) => void;
  private readonly verifier: RequestVerifier | null;
  private readonly replyPolicy: ReplyAddressPolicy;
  readonly replyWriteTimeoutMs: number;
  private readonly callHomeTls: TcpPlaneTls | null;
  readonly trustCounters: IngressTrustCounters = { unauthenticated: 0, replyAddressRefused: 0, replyWriteTimeouts: 0 };
  /** Peers whose unauthenticated requests were logged (once each). */
  private readonly unauthenticatedLogged = new Set<string>();
  private running = 0;
  private readonly queue: WorkItem[] = [];
  private readonly perRegistration = new Map<HandlerRegistration, number>();
  private readonly idleWaiters = new Map<HandlerRegistration, Array<() => void>>();

  constructor(options: IngressOptions = {}) {
    this.maxInflight = options.maxInflight ?? 1500;
    this.maxQueued = options.maxQueued ?? 6000;
    this.maxMessageSize = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
    this.connectTimeoutMs = options.callHomeConnectTimeoutMs ?? 3000;
    this.onStreamError =
      options.onStreamError ?? ((err, id) => log.warn('response stream failed', { requestId: id, code: err.code, error: err.message }));
    const trust = options.trust ?? requestPlaneTrustFromEnv();
    this.verifier = trust.secret === null ? null : new RequestVerifier(trust.secret);
    this.replyPolicy = trust.replyPolicy;
    this.replyWriteTimeoutMs = trust.replyWriteTimeoutMs;
    this.callHomeTls = options.tls === undefined ? tcpPlaneTlsFromEnv() : options.tls;
  }

  /** Requests running or queued. */
  get inflight(): number {
    return this.running + this.queue.length;
  }

  /**
   * Checks and queues one request payload. Synchronous so that the plane can answer (ACK or error) right away: a
   * malformed payload or control header is refused here, since without a valid `connection_info` there is nowhere to
   * stream an error to. With a request-plane secret, a request without a valid proof is refused first; a reply
   * address the deployment does not allow (trust.ts) is refused before any work or connection.
   * `peer`: the IP the request came from (TCP, HTTP), undefined on NATS.
   */
  accept(registration: HandlerRegistration, payload: Buffer, headers: Record<string, string>, peer?: string): AcceptResult {
    if (this.verifier !== null) {
      const why = this.verifier.verify(payload, headers);
      if (why !== null) {
        this.trustCounters.unauthenticated++;
        const who = peer ?? 'a NATS caller';
        if (!this.unauthenticatedLogged.has(who) && this.unauthenticatedLogged.size < 1024) {
          this.unauthenticatedLogged.add(who);
          log.warn('request refused: no valid request-plane proof', { peer: who, reason: why });
        }
        return { ok: false, error: `Unauthenticated request (LLM_ERR_UNAUTHENTICATED): ${why}`, overloaded: false };
      }
    }
    let item: WorkItem;
    let replyHost: string;
    try {
      const message = decodeTwoPart(payload, this.maxMessageSize);
      const control = decodeWireJson(RequestControlMessageSchema, message.header, 'request control header');
      const connection = readConnectionInfo(control.connection_info, 'request control header connection_info.info');
      replyHost = parseHostPort(connection.address, 'request control header connection_info address').host;
      item = { registration, requestId: control.id, connection, body: message.body, headers };
    } catch (err) {
      return { ok: false, error: `Malformed request: ${(err as Error).message}`, overloaded: false };
    }
    const refused = this.replyPolicy.check(replyHost, peer);
    if (refused !== null) {
      this.trustCounters.replyAddressRefused++;
      return { ok: false, error: `Reply address refused (LLM_ERR_REPLY_ADDRESS): ${refused}`, overloaded: false };
    }
    if (this.running >= this.maxInflight && this.queue.length >= this.maxQueued) {
      return {
        ok: false,
        error: `Server overloaded: ${this.running} requests running and ${this.queue.length} queued (limits ${this.maxInflight} and ${this.maxQueued})`,
        overloaded: true,
      };
    }
    this.perRegistration.set(registration, (this.perRegistration.get(registration) ?? 0) + 1);
    if (this.running < this.maxInflight) this.start(item);
    else this.queue.push(item);
    return { ok: true };
  }

  /** Resolves once no request of `registration` is queued or running (graceful unregistration). */
  idle(registration: HandlerRegistration): Promise<void> {
    if (!this.perRegistration.get(registration)) return Promise.resolve();
    return new Promise((resolve) => {
      const waiters = this.idleWaiters.get(registration) ?? [];
      waiters.push(resolve);
      this.idleWaiters.set(registration, waiters);
    });
  }

  private start(item: WorkItem): void {
    this.running++;
    void this.run(item).finally(() => {
      this.running--;
      const left = (this.perRegistration.get(item.registration) ?? 1) - 1;
      if (left > 0) this.perRegistration.set(item.registration, left);
      else {
        this.perRegistration.delete(item.registration);
        for (const wake of this.idleWaiters.get(item.registration) ?? []) wake();
        this.idleWaiters.delete(item.registration);
      }
      const next = this.queue.shift();
      if (next !== undefined) this.start(next);
    });
  }

  private async run(item: WorkItem): Promise<void> {
    let socket: Socket;
    try {
      socket = await connectCallHome(item.connection.address, this.connectTimeoutMs, this.callHomeTls);
    } catch (err) {
      this.onStreamError(err as LlmError, item.requestId);
      return;
    }
    const ctx = new RequestControl(item.requestId, item.headers);
    const out = new CallHomeWriter(socket, this.replyWriteTimeoutMs, () => {
      // the reader stopped reading: end its stream and cancel the work (the scheduler frees its KV on kill)
      this.trustCounters.replyWriteTimeouts++;
      ctx.cancel('kill');
      this.onStreamError(new LlmError('LLM_ERR_TIMEOUT', `reply stream to ${item.connection.address}: the reader took no bytes for ${this.replyWriteTimeoutMs} ms; request cancelled`), item.requestId);
    });
    const decoder = new TwoPartDecoder(this.maxMessageSize);
    let finished = false;
    socket.on('data', (chunk: Buffer) => {
      let messages;
      try {
        messages = decoder.push(chunk);
      } catch {
        ctx.cancel('kill');
        socket.destroy();
        return;
      }
      for (const m of messages) {
        if (m.header.length === 0) continue;
        let control: ControlMessage;
        try {
          control = decodeWireJson(ControlMessageSchema, m.header, 'call-home control message');
        } catch {
          continue;
        }
        if (control === 'stop') ctx.cancel('stop');
        else if (control === 'kill') ctx.cancel('kill');
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      if (!finished) ctx.cancel('disconnect');
    });

    const handshake: CallHomeHandshake = { subject: item.connection.subject, stream_type: 'response' };
    out.header(handshake);
    let request: unknown;
    try {
      request = item.body.length === 0 ? null : parseJsonExact(item.body.toString('utf8'));
    } catch (err) {
      const prologue: ResponsePrologue = { error: `request ${item.requestId}: body is not valid JSON: ${(err as Error).message}` };
      out.header(prologue);
      finished = true;
      socket.end();
      return;
    }
    const ok: ResponsePrologue = { error: null };
    out.header(ok);

    try {
      for await (const output of item.registration.handler(request, ctx)) {
        if (ctx.isKilled()) break;
        await out.dataFrame(output);
      }
    } catch (err) {
      const error = toErrorPayload(err);
      if (error.code === 'LLM_ERR_SHUTDOWN') {
        finished = true;
        socket.destroy();
        return;
      }
      if (!ctx.isKilled()) {
        const annotated: Annotated = { event: 'error', comment: [errorItemText(error.code, error.message)] };
        const frame: StreamFrame = { data: annotated, complete_final: false };
        await out.body(frame);
      }
    }
    if (ctx.isKilled() || out.failed) {
      finished = true;
      socket.destroy();
      return;
    }
    const final: StreamFrame = { complete_final: true };
    await out.body(final);
    if (!ctx.isStopped()) out.header('sentinel' satisfies ControlMessage);
    finished = true;
    socket.end();
  }
}

function connectCallHome(address: string, timeoutMs: number, tls: TcpPlaneTls | null): Promise<Socket> {
  const { host, port } = parseHostPort(address, 'call-home address');
  return new Promise((resolve, reject) => {
    const socket = tls === null
      ? connect({ host, port, noDelay: true })
      : tlsConnect({ host, port, cert: tls.cert, key: tls.key, ca: tls.ca, ...(isIP(host) === 0 ? { servername: host } : {}) }).setNoDelay(true);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new LlmError('LLM_ERR_TIMEOUT', `call-home connection to caller ${address} not established within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once(tls === null ? 'connect' : 'secureConnect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(new LlmError('LLM_ERR_TRANSPORT', `call-home connection to caller ${address} failed: ${err.message}`));
    });
  });
}

/** JSON text; bigints (u64 ids) as exact integer literals, via the slower exact writer only when present. */
function jsonText(value: unknown): string {
  try {
    return JSON.stringify(value) ?? 'null';
  } catch (err) {
    if (err instanceof TypeError && /BigInt/i.test(err.message)) return stringifyJsonExact(value);
    throw err;
  }
}

/**
 * Writes TwoPartMessages to the call-home socket. Writes made in one tick are corked into one syscall; a full socket
 * buffer makes `body` wait for 'drain', so a slow caller slows the handler instead of growing memory.
 */
class CallHomeWriter {
  failed = false;
  private corked = false;

  constructor(
    private readonly socket: Socket,
    /** How long a write may wait for 'drain' before the socket is destroyed and `onStalled` runs. */
    private readonly writeTimeoutMs: number,
    private readonly onStalled: () => void,
  ) {}

  header(value: unknown): void {
    this.write(encodeTwoPart(jsonText(value), ''));
  }

  body(value: StreamFrame): Promise<void> | void {
    return this.send(encodeTwoPart('', jsonText(value)));
  }

  /** `{"data": {"data": output}, "complete_final": false}`, spelled out: the per-token hot path. */
  dataFrame(output: unknown): Promise<void> | void {
    const annotated = output === undefined ? '{}' : `{"data":${jsonText(output)}}`;
    return this.send(encodeTwoPart('', `{"data":${annotated},"complete_final":false}`));
  }

  private send(bytes: Buffer): Promise<void> | void {
    if (this.write(bytes)) return;
    if (this.failed) return;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.failed = true;
        this.socket.destroy();
        this.onStalled();
        done();
      }, this.writeTimeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.socket.off('drain', done);
        this.socket.off('close', done);
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  /** False when the caller should wait for 'drain' (or the socket is gone). */
  private write(bytes: Buffer): boolean {
    if (this.socket.destroyed || this.socket.writableEnded) {
      this.failed = true;
      return false;
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    return this.socket.write(bytes);
  }
}
