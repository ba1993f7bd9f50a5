// The two ends of a KV hand-off inside the scheduler's thread, where the page allocator, the radix cache and the
// rank live. Both work through the radix cache, so the scheduler needs no special admission path:
//  - export (prefill side): the finished prefill left the prompt's full pages in the cache; lock them, copy them
//    to the host through the rank (ordered after the step that computed them), unlock. They stay ordinary cache.
//  - import (decode side): allocate pages, write the bytes through the rank (ordered before any later step),
//    insert them into the cache under the tokens they were computed for. The request, submitted next, matches
//    them as a cached prefix and computes only the rest of its prompt.
//  - hold (prefill side, GPU path): lock the prompt's full pages and leave them in place until the decode side pulled
//    them (or gave up): the lock keeps them from eviction; release unlocks them.
// Pages are evicted or reused by the scheduler only when unlocked and cached, so neither end can leak a page or
// hand one to two owners; when the pool is short, a shorter prefix moves (the decode side recomputes the rest).
import type { KvIpcOp, KvIpcReply } from '../../actors/rank.js';
import type { KvPullStats } from '../engine/types.js';
import type { RadixCache, RadixNode } from '../scheduler/radix.js';
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
  const p = beginImport(scheduler, prefix.tokenIds, prefix.pageCount);
  if (!p) return 0;
  const bytesPerPage = prefix.data.length / prefix.pageCount;
  try {
    await rank.importPages(p.fresh, prefix.data.subarray(p.first * bytesPerPage, (p.first + p.fresh.length) * bytesPerPage));
  } catch (err) {
    endImport(scheduler, p, false);
    throw err;
  }
  endImport(scheduler, p, true);
  return p.fresh.length;
}

/** An import between allocating its pages and adopting them into the cache. */
interface PendingImport {
  node: RadixNode;
  tokenIds: number[];
  /** Cached pages the prefix starts with (not written again), then the fresh ones for prefix pages first... */
  cached: number[];
  first: number;
  fresh: number[];
}

/** Locks what the cache has of the prefix and allocates pages for the rest (evicting if needed); null when there
 * is nothing to write. */
function beginImport(scheduler: Scheduler, tokenIds: number[], pageCount: number): PendingImport | null {
  const cache = scheduler.cache;
  if (!cache || pageCount === 0) return null;
  const tokens = tokenIds.slice(0, pageCount * scheduler.pageSize);
  const match = cache.match(tokens);
  cache.lock(match.node); // before evicting: the matched pages must stay
  const have = match.pages.length;
  let want = pageCount - have;
  if (want > scheduler.allocator.freeCount) cache.evict(want - scheduler.allocator.freeCount);
  want = Math.min(want, scheduler.allocator.freeCount);
  if (want <= 0) {
    cache.unlock(match.node);
    return null;
  }
  return { node: match.node, tokenIds: tokens, cached: match.pages, first: have, fresh: scheduler.allocator.alloc(want)! };
}

/** Adopts the written pages into the cache, or (commit false) frees them. */
function endImport(scheduler: Scheduler, p: PendingImport, commit: boolean): void {
  const cache = scheduler.cache!;
  if (commit) cache.insert(p.tokenIds.slice(0, (p.first + p.fresh.length) * scheduler.pageSize), [...p.cached, ...p.fresh]);
  else scheduler.allocator.releaseAll(p.fresh);
  cache.unlock(p.node);
}

/** The ranks's GPU-to-GPU ops, as the scheduler thread reaches them. */
export interface KvIpcRank extends PageCopier {
  kvIpc<O extends KvIpcOp>(request: O): Promise<KvIpcReply<O>>;
}

/** What the disaggregation service asks of the scheduler thread for the GPU path (cuda-ipc). Holds and pulls live
 * between two ops, so they are kept here by id until released or ended. */
export type DisaggKvOp =
  /** Prefill: lock the cached full pages of tokenIds[0, maxTokens). */
  | { op: 'hold'; tokenIds: number[]; maxTokens: number }
  /** Prefill: a held prefix copied to the host after all (the decode side fell back to tcp). */
  | { op: 'heldToHost'; holdId: number }
  | { op: 'release'; holdId: number }
  /** Decode: allocate pages for what the cache lacks of the prefix and pull them from an opened remote pool. */
  | { op: 'pullBegin'; tokenIds: number[]; pageCount: number; remote: number; srcPages: number[] }
  /** Decode: adopt the pulled pages (the prefill side released its own) or free them. */
  | { op: 'pullEnd'; importId: number; commit: boolean }
  /** Pool export, open, close (actors/rank.ts). */
  | { op: 'ipc'; request: KvIpcOp };

export type DisaggKvReply =
  | { op: 'hold'; holdId: number; tokenIds: number[]; pages: number[] }
  | { op: 'heldToHost'; data: Uint8Array }
  | { op: 'pullBegin'; importId: number | null; pages: number; stats: KvPullStats | null }
  | { op: 'ipc'; reply: KvIpcReply<KvIpcOp> }
  | { op: 'done' };

/** The scheduler thread's side of DisaggKvOp. */
export class DisaggKvOps {
  private readonly holds = new Map<number, { pages: number[]; node: RadixNode; cache: RadixCache }>();
  private readonly imports = new Map<number, PendingImport>();
  private nextId = 1;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly rank: KvIpcRank,
  ) {}

  async run(o: DisaggKvOp): Promise<DisaggKvReply> {
    switch (o.op) {
      case 'hold': {
        const cache = this.scheduler.cache;
        const match = cache?.match(o.tokenIds, o.maxTokens);
        if (!cache || !match?.pages.length) return { op: 'hold', holdId: 0, tokenIds: [], pages: [] };
        cache.lock(match.node);
        const holdId = this.nextId++;
        this.holds.set(holdId, { pages: match.pages, node: match.node, cache });
        return { op: 'hold', holdId, tokenIds: o.tokenIds.slice(0, match.cachedTokens), pages: match.pages };
      }
      case 'heldToHost': {
        const h = this.holds.get(o.holdId);
        return { op: 'heldToHost', data: h ? await this.rank.exportPages(h.pages) : new Uint8Array(0) };
      }
      case 'release': {
        const h = this.holds.get(o.holdId);
        this.holds.delete(o.holdId);
        h?.cache.unlock(h.node);
        return { op: 'done' };
      }
      case 'pullBegin': {
        const p = beginImport(this.scheduler, o.tokenIds, o.pageCount);
        if (!p) return { op: 'pullBegin', importId: null, pages: 0, stats: null };
        const ps = this.scheduler.pageSize;
        let stats: KvPullStats;
        try {
          stats = await this.rank.kvIpc({
            op: 'pull', remote: o.remote, srcPages: Int32Array.from(o.srcPages), srcToken0: p.first * ps, dstPages: Int32Array.from(p.fresh), numTokens: p.fresh.length * ps,
          });
        } catch (err) {
          endImport(this.scheduler, p, false);
          throw err;
        }
        const importId = this.nextId++;
        this.imports.set(importId, p);
        return { op: 'pullBegin', importId, pages: p.fresh.length, stats };
      }
      case 'pullEnd': {
        const p = this.imports.get(o.importId);
        this.imports.delete(o.importId);
        if (p) endImport(this.scheduler, p, o.commit);
        return { op: 'done' };
      }
      case 'ipc':
        return { op: 'ipc', reply: await this.rank.kvIpc(o.request) };
    }
  }
}
