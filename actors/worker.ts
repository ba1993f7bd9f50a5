// Starting an actor's worker_thread from its module URL. Compiled (dist/*.js) modules start directly. TypeScript
// sources (tests under tsx) start through a bootstrap that registers tsx in the new thread first: on Node 20 the
// parent's `--import=tsx` hooks do not reach modules loaded inside a worker.
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker, type TransferListItem } from 'node:worker_threads';
import { LlmError, toErrorPayload } from '../src/errors.js';

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

/** The Node flags an actor thread starts with: none. A worker inherits the host process's execArgv by default, and
 * some host flags are refused in a worker (`--input-type=module` fails its start); TypeScript sources get tsx from
 * their bootstrap, not from the host's `--import=tsx`. */
export const ACTOR_EXEC_ARGV: readonly string[] = [];

export function spawnWorker(entry: URL, workerData: unknown, transferList: TransferListItem[] = []): Worker {
  return new Worker(new URL(workerModuleUrl(entry)), { workerData, transferList, execArgv: [...ACTOR_EXEC_ARGV] });
}

export interface StartWait {
  /** The actor in messages, e.g. "rank 0" or "the scheduler". */
  who: string;
  timeoutMs: number;
  /** The message of the time-limit error. */
  hungMessage: string;
  rank?: number;
}

/**
 * Waits for a spawned actor's start (`started`: its control object's start() call): resolves with what it answers;
 * rejects with its coded error, with LLM_ERR_ACTOR_CRASHED when the thread crashes or exits first, or with
 * LLM_ERR_ACTOR_HUNG at the time limit. The worker is terminated whenever the start fails.
 */
export function awaitStart<T>(worker: Worker, wait: StartWait, started: Promise<T>): Promise<T> {
  const details = wait.rank === undefined ? undefined : { rank: wait.rank };
  return new Promise<T>((resolve, reject) => {
    const failed = (error: LlmError) => {
      cleanup();
      void worker.terminate();
      reject(error);
    };
    const timer = setTimeout(() => failed(new LlmError('LLM_ERR_ACTOR_HUNG', wait.hungMessage, details)), wait.timeoutMs);
    const onError = (err: Error) => failed(new LlmError('LLM_ERR_ACTOR_CRASHED', `${wait.who} crashed while starting: ${err.message}`, details));
    const onExit = (code: number) => failed(new LlmError('LLM_ERR_ACTOR_CRASHED', `${wait.who} exited with code ${code} while starting`, details));
    const cleanup = () => {
      clearTimeout(timer);
      worker.off('error', onError).off('exit', onExit);
    };
    worker.on('error', onError).on('exit', onExit);
    started.then(
      (value) => {
        cleanup();
        resolve(value);
      },
      (err: unknown) => failed(err instanceof LlmError ? err : LlmError.fromPayload(toErrorPayload(err, wait.rank))),
    );
  });
}
