// Starting an actor's worker_thread from its module URL. Compiled (dist/*.js) modules start directly. TypeScript
// sources (tests under tsx) start through a bootstrap that registers tsx in the new thread first: on Node 20 the
// parent's `--import=tsx` hooks do not reach modules loaded inside a worker.
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { LlmError, type ErrorPayload } from '../src/errors.js';

/** The sibling module `name` (without extension) of `base`, with base's extension (.ts under tsx, .js in dist). */
export function siblingModule(base: string, name: string): URL {
  return new URL(`./${name}${base.endsWith('.ts') ? '.ts' : '.js'}`, base);
}

/** A module URL a worker can import: the module itself, or for a .ts source a data: module that registers tsx
 * and re-exports the source's default export (what piscina calls). */
export function workerModuleUrl(entry: URL): string {
  if (!entry.pathname.endsWith('.ts')) return entry.href;
  return `data:text/javascript,${encodeURIComponent(tsxBootstrap(entry))}`;
}

/** Like workerModuleUrl, as a file: URL (piscina takes only files). The bootstrap for a .ts source is written once
 * to the temp directory, named by its content. */
export function workerModuleFile(entry: URL): string {
  if (!entry.pathname.endsWith('.ts')) return entry.href;
  const code = tsxBootstrap(entry);
  const file = join(tmpdir(), `dynamo-sglang-worker-${createHash('sha256').update(code).digest('hex').slice(0, 16)}.mjs`);
  if (!existsSync(file)) writeFileSync(file, code);
  return pathToFileURL(file).href;
}

function tsxBootstrap(entry: URL): string {
  const tsxApi = import.meta.resolve('tsx/esm/api');
  return (
    `const { register } = await import(${JSON.stringify(tsxApi)}); register();\n` +
    `const m = await import(${JSON.stringify(entry.href)}); export default m.default;\n`
  );
}

export function spawnWorker(entry: URL, workerData: unknown): Worker {
  return new Worker(new URL(workerModuleUrl(entry)), { workerData });
}

/** How a freshly spawned actor answers its start: with a ready message, or with the coded error that stopped it. */
export type StartAnswer = { kind: 'ready' } | { kind: 'initError'; error: ErrorPayload };

export interface StartWait {
  /** The actor in messages, e.g. "rank 0" or "the scheduler". */
  who: string;
  timeoutMs: number;
  /** The message of the time-limit error. */
  hungMessage: string;
  rank?: number;
}

/**
 * Waits for a spawned actor's start: its 'ready' message resolves with build(message), called inside the message
 * handler so that the handle it makes listens before the actor's next message; its 'initError' rejects with that coded error, a
 * crash or an exit with LLM_ERR_ACTOR_CRASHED, the time limit with LLM_ERR_ACTOR_HUNG (the worker is terminated on
 * initError and time-out). The start's listeners are removed whatever happens.
 */
export function awaitStarted<M extends { kind: string }, T>(worker: Worker, wait: StartWait, build: (ready: Extract<M, { kind: 'ready' }>) => T): Promise<T> {
  const details = wait.rank === undefined ? undefined : { rank: wait.rank };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      cleanup();
      void worker.terminate();
      reject(new LlmError('LLM_ERR_ACTOR_HUNG', wait.hungMessage, details));
    }, wait.timeoutMs);
    const onMessage = (m: M) => {
      const answer = m as unknown as StartAnswer;
      if (answer.kind === 'ready') {
        cleanup();
        resolve(build(m as Extract<M, { kind: 'ready' }>));
      } else if (answer.kind === 'initError') {
        cleanup();
        void worker.terminate();
        reject(LlmError.fromPayload(answer.error));
      }
    };
    const onError = (err: Error) => {
      cleanup();
      reject(new LlmError('LLM_ERR_ACTOR_CRASHED', `${wait.who} crashed while starting: ${err.message}`, details));
    };
    const onExit = (code: number) => {
      cleanup();
      reject(new LlmError('LLM_ERR_ACTOR_CRASHED', `${wait.who} exited with code ${code} while starting`, details));
    };
    const cleanup = () => {
      clearTimeout(timer);
      worker.off('message', onMessage).off('error', onError).off('exit', onExit);
    };
    worker.on('message', onMessage).on('error', onError).on('exit', onExit);
  });
}

/**
 * Requests a handle sends its worker by number, awaiting answers that carry the number back: each is a promise,
 * settled by its answer, or rejected with every other open one when the worker fails. Answers to numbers no longer
 * open (already failed) are ignored.
 */
export class OpTable<T> {
  private readonly open = new Map<number, { resolve: (answer: T) => void; reject: (e: LlmError) => void }>();
  private last = 0;

  /** Opens an op; `send(opNo)` posts its request. */
  start<R extends T>(send: (opNo: number) => void): Promise<R> {
    const opNo = ++this.last;
    return new Promise<R>((resolve, reject) => {
      this.open.set(opNo, { resolve: resolve as (answer: T) => void, reject });
      send(opNo);
    });
  }

  resolve(opNo: number, answer: T): void {
    const op = this.open.get(opNo);
    this.open.delete(opNo);
    op?.resolve(answer);
  }

  reject(opNo: number, error: LlmError): void {
    const op = this.open.get(opNo);
    this.open.delete(opNo);
    op?.reject(error);
  }

  rejectAll(error: LlmError): void {
    for (const op of this.open.values()) op.reject(error);
    this.open.clear();
  }
}
