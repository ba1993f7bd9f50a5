// Starting an actor's worker_thread from its module URL. Compiled (dist/*.js) modules start directly. TypeScript
// sources (tests under tsx) start through a bootstrap that registers tsx in the new thread first: on Node 20 the
// parent's `--import=tsx` hooks do not reach modules loaded inside a worker.
import { createHash } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

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
