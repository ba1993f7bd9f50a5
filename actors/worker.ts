// Starting an actor's worker_thread from its module URL. Compiled (dist/*.js) modules start directly. TypeScript
// sources (tests under tsx) start through a bootstrap that registers tsx in the new thread first: on Node 20 the
// parent's `--import=tsx` hooks do not reach a worker's entry module.
import { Worker } from 'node:worker_threads';

/** The sibling module `name` (without extension) of `base`, with base's extension (.ts under tsx, .js in dist). */
export function siblingModule(base: string, name: string): URL {
  return new URL(`./${name}${base.endsWith('.ts') ? '.ts' : '.js'}`, base);
}

export function spawnWorker(entry: URL, workerData: unknown): Worker {
  if (!entry.pathname.endsWith('.ts')) return new Worker(entry, { workerData });
  const bootstrap =
    `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(entry.href)}); })` +
    `.catch((err) => { setImmediate(() => { throw err; }); });`;
  return new Worker(bootstrap, { eval: true, workerData });
}
