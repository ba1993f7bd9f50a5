// The frontend's one tokenizer pool per process: the OpenAI server sends prompt encoding and chat templates to it,
// and model discovery warms it (loads a model's tokenizer in every thread) as soon as a model appears, so the
// first request does not wait seconds for a Qwen tokenizer to load. Both hold it while they live; the last to
// let go destroys it, so a closed frontend leaves no threads behind.
import { availableParallelism } from 'node:os';
import { TokenizerPool } from '../../actors/tokenizer.js';

let shared: TokenizerPool | null = null;
let holders = 0;

/** The pool, started on first use with min(4, cores - 1) threads (at least 1): the rest of the cores serve HTTP
 * and, in `run`, the engine. Pair every call with releaseTokenizerPool(). */
export function acquireTokenizerPool(): TokenizerPool {
  if (shared === null) shared = new TokenizerPool({ threads: Math.max(1, Math.min(4, availableParallelism() - 1)) });
  holders++;
  return shared;
}

export async function releaseTokenizerPool(): Promise<void> {
  if (holders === 0) return;
  holders--;
  if (holders > 0 || shared === null) return;
  const pool = shared;
  shared = null;
  await pool.destroy();
}
