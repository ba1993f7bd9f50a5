// The grammar actor: a worker_thread, started by the scheduler's thread at its first guided request, that owns the
// xgrammar compiler (src/guided) and every guided request's matcher. Compiling a new schema holds a thread for
// 6-400 ms (Qwen-sized vocabularies) and each guided token's next mask costs ~0.05 ms: here, neither holds the
// scheduler's step loop. This file is both the thread's entry point (workerData.actor === 'grammar') and the
// scheduler's handle, GrammarThread, whose guides (RemoteGuide) implement the scheduler's TokenGuide.
//
// Per step, the tokens that landed for guided requests go over in one message (accepts queued in one event-loop turn
// are sent together) and their next masks come back in one message, concatenated in one transferred buffer.
// If the thread dies, every guide's pending call fails with LLM_ERR_ACTOR_CRASHED (those requests end with it) and
// the next guided request starts a fresh thread.
import { isMainThread, parentPort, workerData, type Worker } from 'node:worker_threads';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';
import { GrammarCompilers, type GrammarSpec } from '../src/guided/guides.js';
import type { GuideVerdict, TokenGuide } from '../src/scheduler/request.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { unreachable } from './messages.js';
import { siblingModule, spawnWorker } from './worker.js';

export interface GrammarWorkerData {
  actor: 'grammar';
  tokenizer: { modelPath: string; tokenizerPath: string };
  /** The engine's logits width (masks have ceil(vocabSize / 32) words). */
  vocabSize: number;
}

type GrammarInbox =
  | { kind: 'create'; gid: number; spec: GrammarSpec }
  /** Tokens that landed: gids[i] took tokens[i]. */
  | { kind: 'accept'; gids: Int32Array; tokens: Int32Array }
  | { kind: 'dispose'; gid: number };

const VERDICTS: readonly GuideVerdict[] = ['next', 'end', 'rejected'];

type GrammarOutbox =
  | { kind: 'created'; gid: number; mask: Int32Array }
  | { kind: 'createFailed'; gid: number; error: ErrorPayload }
  /** verdicts[i] indexes VERDICTS (-1: the guide failed, errors[gid]); masks: the 'next' ones' masks in order. */
  | { kind: 'accepted'; gids: Int32Array; verdicts: Int8Array; masks: Int32Array; errors: Record<number, ErrorPayload> };

// ---- worker side ----

function runGrammar(data: GrammarWorkerData): void {
  const port = parentPort!;
  let compilers: GrammarCompilers | null = null;
  const guides = new Map<number, TokenGuide>();
  const post = (m: GrammarOutbox, transfer: ArrayBuffer[] = []) => port.postMessage(m, transfer);
  port.on('message', (m: GrammarInbox) => {
    switch (m.kind) {
      case 'create':
        void (async () => {
          try {
            compilers ??= GrammarCompilers.create(loadTokenizer(data.tokenizer.modelPath, data.tokenizer.tokenizerPath), data.vocabSize);
            const guide = await compilers.guide(m.spec);
            guides.set(m.gid, guide);
            const mask = guide.mask!.slice();
            post({ kind: 'created', gid: m.gid, mask }, [mask.buffer]);
          } catch (err) {
            post({ kind: 'createFailed', gid: m.gid, error: toErrorPayload(err) });
          }
        })();
        return;
      case 'accept': {
        const { gids, tokens } = m;
        const errors: Record<number, ErrorPayload> = {};
        void Promise.all(
          Array.from(gids, (gid, i) => {
            const guide = guides.get(gid);
            if (!guide) return Promise.reject(new LlmError('LLM_ERR_INTERNAL', `grammar guide ${gid} is unknown`));
            return guide.accept(tokens[i]);
          }).map((p, i) =>
            p.then(
              (v) => VERDICTS.indexOf(v),
              (err: unknown) => {
                errors[gids[i]] = toErrorPayload(err);
                return -1;
              },
            ),
          ),
        ).then((codes) => {
          // A guide disposed of meanwhile (its request ended) has no mask to send.
          codes.forEach((c, i) => {
            if (c === 0 && !guides.get(gids[i])?.mask) {
              codes[i] = -1;
              errors[gids[i]] = { code: 'LLM_ERR_INTERNAL', message: `grammar guide ${gids[i]} was disposed of` };
            }
          });
          const words = Math.ceil(data.vocabSize / 32);
          const nexts = gids.filter((_, i) => codes[i] === 0);
          const masks = new Int32Array(nexts.length * words);
          nexts.forEach((gid, j) => masks.set(guides.get(gid)!.mask!, j * words));
          post({ kind: 'accepted', gids, verdicts: Int8Array.from(codes), masks, errors }, [masks.buffer]);
        });
        return;
      }
      case 'dispose':
        guides.get(m.gid)?.dispose();
        guides.delete(m.gid);
        return;
      default:
        unreachable(m);
    }
  });
}

if (!isMainThread && (workerData as GrammarWorkerData | null)?.actor === 'grammar') runGrammar(workerData as GrammarWorkerData);

// ---- scheduler side ----

interface Pending<T> {
  resolve(v: T): void;
  reject(e: Error): void;
}

/** The scheduler thread's handle on the grammar actor (started at the first guide). */
export class GrammarThread {
  private worker: Worker | null = null;
  private nextGid = 0;
  private readonly creating = new Map<number, Pending<RemoteGuide>>();
  private readonly accepting = new Map<number, Pending<GuideVerdict>>();
  private readonly guides = new Map<number, RemoteGuide>();
  private queued: { gids: number[]; tokens: number[] } | null = null;

  constructor(private readonly data: Omit<GrammarWorkerData, 'actor'>) {}

  /** A guide for spec, its first mask computed; rejects with LLM_ERR_BAD_REQUEST naming the field for a grammar that
   * does not compile. */
  guide(spec: GrammarSpec): Promise<TokenGuide> {
    const gid = ++this.nextGid;
    return new Promise<RemoteGuide>((resolve, reject) => {
      this.creating.set(gid, { resolve, reject });
      this.send({ kind: 'create', gid, spec });
    });
  }

  /** Ends the thread; pending calls fail. */
  close(): void {
    const w = this.worker;
    this.worker = null;
    if (w) {
      w.removeAllListeners('exit');
      void w.terminate();
    }
    this.failAll(new LlmError('LLM_ERR_SHUTDOWN', 'the grammar thread stopped'));
  }

  /** @internal RemoteGuide's accept: queued, sent with the others of this event-loop turn. */
  accept(gid: number, token: number): Promise<GuideVerdict> {
    if (!this.queued) {
      this.queued = { gids: [], tokens: [] };
      queueMicrotask(() => {
        const q = this.queued!;
        this.queued = null;
        this.send({ kind: 'accept', gids: Int32Array.from(q.gids), tokens: Int32Array.from(q.tokens) });
      });
    }
    this.queued.gids.push(gid);
    this.queued.tokens.push(token);
    return new Promise<GuideVerdict>((resolve, reject) => this.accepting.set(gid, { resolve, reject }));
  }

  /** @internal */
  dispose(gid: number): void {
    this.guides.delete(gid);
    if (this.worker) this.send({ kind: 'dispose', gid });
  }

  private send(m: GrammarInbox): void {
    if (!this.worker) this.worker = this.spawn();
    this.worker.postMessage(m);
  }

  private spawn(): Worker {
    const worker = spawnWorker(siblingModule(import.meta.url, 'grammar'), { actor: 'grammar', ...this.data } satisfies GrammarWorkerData);
    worker.unref();
    worker.on('message', (m: GrammarOutbox) => this.onMessage(m));
    const died = (why: string) => {
      if (this.worker !== worker) return;
      this.worker = null;
      this.failAll(new LlmError('LLM_ERR_ACTOR_CRASHED', `the grammar thread ${why}`));
    };
    worker.on('error', (err) => died(`crashed: ${err.message}`));
    worker.on('exit', (code) => died(`exited with code ${code}`));
    return worker;
  }

  private failAll(error: LlmError): void {
    for (const p of [...this.creating.values(), ...this.accepting.values()]) p.reject(error);
    this.creating.clear();
    this.accepting.clear();
    this.guides.clear(); // their matchers went with the thread
  }

  private onMessage(m: GrammarOutbox): void {
    switch (m.kind) {
      case 'created': {
        const p = this.creating.get(m.gid);
        this.creating.delete(m.gid);
        const guide = new RemoteGuide(this, m.gid, m.mask);
        this.guides.set(m.gid, guide);
        p?.resolve(guide);
        return;
      }
      case 'createFailed': {
        const p = this.creating.get(m.gid);
        this.creating.delete(m.gid);
        p?.reject(LlmError.fromPayload(m.error));
        return;
      }
      case 'accepted': {
        const words = Math.ceil(this.data.vocabSize / 32);
        let j = 0;
        m.gids.forEach((gid, i) => {
          const p = this.accepting.get(gid);
          this.accepting.delete(gid);
          const code = m.verdicts[i];
          if (code === 0) {
            const mask = m.masks.subarray(j * words, (j + 1) * words);
            j++;
            this.guides.get(gid)?.setMask(mask);
          }
          if (code < 0) p?.reject(LlmError.fromPayload(m.errors[gid]));
          else p?.resolve(VERDICTS[code]);
        });
        return;
      }
      default:
        unreachable(m);
    }
  }
}

class RemoteGuide implements TokenGuide {
  mask: Int32Array | null;
  private disposed = false;

  constructor(
    private readonly thread: GrammarThread,
    private readonly gid: number,
    mask: Int32Array,
  ) {
    this.mask = mask;
  }

  setMask(mask: Int32Array): void {
    if (!this.disposed) this.mask = mask;
  }

  accept(token: number): Promise<GuideVerdict> {
    if (this.disposed) return Promise.reject(new LlmError('LLM_ERR_INTERNAL', 'the guide was disposed of'));
    this.mask = null;
    return this.thread.accept(this.gid, token);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.mask = null;
    this.thread.dispose(this.gid);
  }
}
