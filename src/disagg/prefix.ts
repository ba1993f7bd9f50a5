// The two ends of a KV hand-off inside the scheduler's thread, where the page allocator, the radix cache and the
// rank live. Both work through the radix cache, so the scheduler needs no special admission path:
//  - export (prefill side): the finished prefill left the prompt's full pages in the cache; lock them, copy them
//    to the host through the rank (ordered after the step that computed them), unlock. They stay ordinary cache.
//  - import (decode side): allocate pages, write the bytes through the rank (ordered before any later step),
//    insert them into the cache under the tokens they were computed for. The request, submitted next, matches
//    them as a cached prefix and computes only the rest of its prompt.
// Pages are evicted or reused by the scheduler only when unlocked and cached, so neither end can leak a page or
// hand one to two owners; when the pool is short, a shorter prefix moves (the decode side recomputes the rest).
import type { Scheduler } from '../scheduler/scheduler.js';

/** Page copies through the rank, in step order. */
export interface PageCopier {
  exportPages(pages: readonly number[]): Promise<Uint8Array>;
  importPages(pages: readonly number[], data: Uint8Array): Promise<void>;
}

export interface PrefixPages {
  /** pageCount × pageSize leading tokens whose KV the pages hold. */
  tokenIds: number[];
  pageCount: number;
  /** pageCount × bytesPerPage bytes, pages in order (the engine's exportPages layout). */
  data: Uint8Array;
}

/** Copies the cached full pages of tokens[0, maxTokens) to the host. */
export async function exportCachedPrefix(scheduler: Scheduler, rank: PageCopier, tokens: readonly number[], maxTokens: number): Promise<PrefixPages> {
  const cache = scheduler.cache;
  if (!cache) return { tokenIds: [], pageCount: 0, data: new Uint8Array(0) };
  const match = cache.match(tokens, maxTokens);
  if (!match.pages.length) return { tokenIds: [], pageCount: 0, data: new Uint8Array(0) };
  cache.lock(match.node);
  try {
    const data = await rank.exportPages(match.pages);
    return { tokenIds: tokens.slice(0, match.cachedTokens), pageCount: match.pages.length, data };
  } finally {
    cache.unlock(match.node);
  }
}

/** Makes the given pages a cached prefix. Pages the cache already holds are not written again. Returns the number
 * of pages imported. */
export async function importPrefix(scheduler: Scheduler, rank: PageCopier, prefix: PrefixPages): Promise<number> {
  const cache = scheduler.cache;
  const total = prefix.pageCount;
  if (!cache || total === 0) return 0;
  const pageSize = scheduler.pageSize;
  const bytesPerPage = prefix.data.length / total;
  const match = cache.match(prefix.tokenIds);
  cache.lock(match.node);
  const have = match.pages.length;
  let want = total - have;
  if (want > scheduler.allocator.freeCount) cache.evict(want - scheduler.allocator.freeCount);
  want = Math.min(want, scheduler.allocator.freeCount);
  if (want <= 0) {
    cache.unlock(match.node);
    return 0;
  }
  const fresh = scheduler.allocator.alloc(want)!;
  try {
    await rank.importPages(fresh, prefix.data.subarray(have * bytesPerPage, (have + want) * bytesPerPage));
  } catch (err) {
    scheduler.allocator.releaseAll(fresh);
    cache.unlock(match.node);
    throw err;
  }
  cache.insert(prefix.tokenIds.slice(0, (have + want) * pageSize), [...match.pages, ...fresh]);
  cache.unlock(match.node);
  return want;
}
