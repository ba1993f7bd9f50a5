// The caller's view of one request's responses: an async iterable of Annotated items fed by the worker's call-home
// connection, with stop() (graceful), kill() (abort now) and an AbortSignal. Breaking out of a for-await loop kills.
//
// Ends: `{"complete_final": true}` → iteration ends normally. A prologue error → throws LLM_ERR_TRANSPORT with the
// worker's text. The connection closing first (or never arriving) → throws DisconnectedError, which is migratable:
// the request may be re-sent to another worker.
import type { Socket } from 'node:net';
import { LlmError } from '../../errors.js';
import {
  ControlMessageSchema,
  ResponsePrologueSchema,
  StreamFrameSchema,
  decodeWireJson,
  encodeWireJson,
  type Annotated,
  type ControlMessage,
} from '../../protocol/transport.js';
import { encodeTwoPart, type TwoPartMessage } from './framing.js';

/** The response stream died before `complete_final`: the worker went away. Safe to retry elsewhere (migration). */
export class DisconnectedError extends LlmError {
  readonly migratable = true;

  constructor(message: string) {
    super('LLM_ERR_TRANSPORT', message);
    this.name = 'DisconnectedError';
  }
}

/** Items buffered before the socket is paused; it resumes below a quarter of this. */
const HIGH_WATER_ITEMS = 512;

type End = { kind: 'complete' } | { kind: 'killed' } | { kind: 'error'; error: LlmError };

export class ResponseStream implements AsyncIterable<Annotated> {
  /** The instance serving the request, when it was routed through discovery (EndpointClient sets it). */
  instanceId: bigint | undefined;
  private socket: Socket | undefined;
  private readonly items: Annotated[] = [];
  private end: End | undefined;
  private wake: (() => void) | undefined;
  private prologueSeen = false;
  private readonly disconnectListeners: Array<(error: DisconnectedError) => void> = [];
  private releaseListeners: Array<() => void> = [];
  private stopRequested = false;
  private readonly callHomeTimer: NodeJS.Timeout;
  private readonly detachSignal: (() => void) | undefined;

  constructor(
    readonly requestId: string,
    /** The uuid the worker echoes in its call-home handshake. */
    readonly subject: string,
    /** Who serves the request, for messages. */
    readonly worker: string,
    private readonly onSettled: (stream: ResponseStream) => void,
    callHomeTimeoutMs: number,
    signal?: AbortSignal,
  ) {
    this.callHomeTimer = setTimeout(() => {
      this.finish({ kind: 'error', error: new DisconnectedError(`request ${requestId}: worker ${worker} accepted it but did not call back within ${callHomeTimeoutMs} ms`) });
    }, callHomeTimeoutMs);
    this.callHomeTimer.unref();
    if (signal !== undefined) {
      const onAbort = () => this.kill();
      if (signal.aborted) queueMicrotask(onAbort);
      else signal.addEventListener('abort', onAbort, { once: true });
      this.detachSignal = () => signal.removeEventListener('abort', onAbort);
    }
  }

  /** True once the stream has ended, normally or not (buffered items may still be read). */
  get settled(): boolean {
    return this.end !== undefined;
  }

  /** Called if the stream ends with a DisconnectedError (a router marks the worker down). */
  onDisconnect(listener: (error: DisconnectedError) => void): void {
    this.disconnectListeners.push(listener);
  }

  /** Called once, when the worker calls home or the stream ends, whichever comes first. */
  onReleased(listener: () => void): void {
    if (this.socket !== undefined || this.end !== undefined) listener();
    else this.releaseListeners.push(listener);
  }

  /** True once the worker's call-home connection arrived. */
  get calledHome(): boolean {
    return this.socket !== undefined;
  }

  /** Asks the worker to stop generating; the items it still sends, up to `complete_final`, are delivered. */
  stop(): void {
    if (this.end !== undefined || this.stopRequested) return;
    this.stopRequested = true;
    this.sendControl('stop');
  }

  /** Aborts the request: the worker is told to kill it, the connection closes, iteration ends without error. */
  kill(): void {
    if (this.end !== undefined) return;
    this.sendControl('kill');
    this.finish({ kind: 'killed' });
  }

  /** Fails the stream before any call-home (the request was refused or could not be sent). */
  fail(error: LlmError): void {
    this.finish({ kind: 'error', error });
  }

  // ---- fed by the response server ----

  /** The worker called home (only unsettled streams are attached: the server forgets settled ones). */
  attach(socket: Socket): void {
    clearTimeout(this.callHomeTimer);
    this.socket = socket;
    this.release();
    if (this.stopRequested) this.sendControl('stop');
  }

  onMessage(message: TwoPartMessage): void {
    if (this.end !== undefined) return;
    try {
      if (message.body.length === 0) {
        if (!this.prologueSeen) {
          const prologue = decodeWireJson(ResponsePrologueSchema, message.header, 'call-home prologue');
          this.prologueSeen = true;
          if (prologue.error !== null) {
            this.finish({ kind: 'error', error: new LlmError('LLM_ERR_TRANSPORT', `worker ${this.worker} refused request ${this.requestId}: ${prologue.error}`) });
          }
        } else {
          // "sentinel" (normal closure); other control messages are not sent worker → caller
          decodeWireJson(ControlMessageSchema, message.header, 'call-home control message');
        }
        return;
      }
      if (!this.prologueSeen) throw new LlmError('LLM_ERR_PROTOCOL', 'call-home data frame arrived before the prologue');
      const frame = decodeWireJson(StreamFrameSchema, message.body, 'call-home stream frame');
      if (frame.complete_final) {
        this.finish({ kind: 'complete' });
        return;
      }
      if (frame.data !== undefined) {
        this.items.push(frame.data);
        if (this.items.length >= HIGH_WATER_ITEMS) this.socket?.pause();
        this.wakeReader();
      }
    } catch (err) {
      const error = err instanceof LlmError ? err : new LlmError('LLM_ERR_PROTOCOL', String(err));
      this.finish({ kind: 'error', error: new LlmError(error.code, `request ${this.requestId} from worker ${this.worker}: ${error.message}`) });
    }
  }

  onClose(): void {
    if (this.end !== undefined) return;
    if (this.stopRequested) this.finish({ kind: 'complete' });
    else this.finish({ kind: 'error', error: new DisconnectedError(`request ${this.requestId}: response stream from worker ${this.worker} closed before complete_final`) });
  }

  // ---- iteration ----

  async *[Symbol.asyncIterator](): AsyncGenerator<Annotated, void, undefined> {
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          if (this.items.length === HIGH_WATER_ITEMS >> 2) this.socket?.resume();
          yield item;
          continue;
        }
        const end = this.end;
        if (end !== undefined) {
          if (end.kind === 'error') throw end.error;
          return;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      // the consumer left early (break, throw): that is a client disconnect
      if (this.end === undefined) this.kill();
    }
  }

  private release(): void {
    const listeners = this.releaseListeners;
    this.releaseListeners = [];
    for (const listener of listeners) listener();
  }

  private wakeReader(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private sendControl(control: ControlMessage): void {
    const socket = this.socket;
    if (socket === undefined || socket.destroyed || socket.writableEnded) return;
    socket.write(encodeTwoPart(Buffer.from(encodeWireJson(control)), Buffer.alloc(0)));
  }

  private finish(end: End): void {
    if (this.end !== undefined) return;
    this.end = end;
    clearTimeout(this.callHomeTimer);
    this.detachSignal?.();
    const socket = this.socket;
    if (socket !== undefined) {
      if (end.kind === 'error') socket.destroy();
      else socket.end();
      socket.resume();
    }
    if (end.kind === 'killed') this.items.length = 0;
    this.onSettled(this);
    this.release();
    if (end.kind === 'error' && end.error instanceof DisconnectedError) {
      for (const listener of this.disconnectListeners) listener(end.error);
    }
    this.wakeReader();
  }
}
