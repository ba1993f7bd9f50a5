// The two ends of a KV hand-off inside the scheduler's thread, where the page allocator, the radix cache and the
// rank live. The KV of a prompt crosses as whole pages holding positions [0, promptLength): full pages, then the
// partial last page when the prompt is not a multiple of the page size. Both ends park it in the scheduler
// (scheduler.ts G5), so it is always counted by the integrity checks and never entered into the radix cache as a
// full page unless it is one:
//  - prefill side: the prefill request (parkKvAs) stops at its first token and parks its prompt's KV (full pages
//    cached and pinned, the partial page owned). tcp: export copies the parked pages to the host through the rank
//    (ordered after the step that computed them) and releases them. GPU path (cuda-ipc): they stay parked, in place,
//    until the decode side pulled them or gave up; release frees the partial page and unpins the rest.
//  - decode side: allocate pages for what the cache lacks of the full pages plus the partial page, write or pull
//    the bytes through the rank (ordered before any later step), put the full pages in the cache and park the whole
//    KV under the request's key; the request, submitted next with that key (SchedulerRequest.handOver), adopts it
//    and starts decoding. When the pool is short, only as many full pages as fit become a cached prefix and
//    nothing is parked: the request then recomputes the rest (request.ts Q5).
// An import without a key (the decode side recomputes the prompt's tail, e.g. it needs logprobs the prefill side
// did not send) moves only the full pages, as a cached prefix.
import type { KvIpcOp, KvIpcReply } from '../engine/summary.js';
import type { KvPullStats } from '../engine/types.js';
import type { KvHold } from './request.js';
import type { RadixNode } from './radix.js';
import type { Scheduler } from './scheduler.js';

/** Page copies through the rank, in step order. */
export interface PageCopier {
  exportPages(pages: readonly number[]): Promise<Uint8Array>;
  importPages(pages: readonly number[], data: Uint8Array): Promise<void>;
}

export interface PrefixPages {
  /** The tokens whose KV the pages hold, positions [0, tokenIds.length). */
  tokenIds: number[];
  /** ceil(tokenIds.length / pageSize): the last one partial when tokenIds.length is not a multiple of it. */
  pageCount: number;
  /** pageCount × bytesPerPage bytes, pages in order (the engine's exportPages layout). */
  data: Uint8Array;
}

/** Copies the KV parked under key (tokens[0, its tokenCount)) to the host and releases it; no pages when nothing
 * is parked there. */
export async function exportParked(scheduler: Scheduler, rank: PageCopier, key: string, tokens: readonly number[]): Promise<PrefixPages> {
  const kv = scheduler.parkedKv(key);
  if (!kv) return { tokenIds: [], pageCount: 0, data: new Uint8Array(0) };
  try {
    const data = await rank.exportPages(kv.pages);
    return { tokenIds: tokens.slice(0, kv.tokenCount), pageCount: kv.pages.length, data };
  } finally {
    scheduler.dropParked(key);
  }
}

/** Imports transferred KV. With parkAs, all of it is parked under that key when it fits the pool; otherwise (or
 * without parkAs) its full pages become a cached prefix. Pages the cache already holds are not written again.
 * Returns the number of pages written. */
export async function importPrefix(scheduler: Scheduler, rank: PageCopier, prefix: PrefixPages, parkAs: string | null): Promise<number> {
  const p = beginImport(scheduler, prefix.tokenIds, parkAs !== null);
  if (!p) return 0;
  const bytesPerPage = prefix.pageCount ? prefix.data.length / prefix.pageCount : 0;
  try {
    if (p.fresh.length) await rank.importPages(p.fresh, prefix.data.subarray(p.first * bytesPerPage, (p.first + p.fresh.length) * bytesPerPage));
  } catch (err) {
    endImport(scheduler, p, false, null);
    throw err;
  }
  endImport(scheduler, p, true, parkAs);
  return p.fresh.length;
}

/** An import between allocating its pages and adopting them. */
interface PendingImport {
  /** The cache's match of the full pages, locked (null without a prefix cache). */
  node: RadixNode | null;
  /** The tokens whose KV this import holds once written: whole, or the full pages only. */
  tokenIds: number[];
  /** Cached pages the KV starts with (not written again), then the fresh ones from page `first` on. */
  cached: number[];
  first: number;
  fresh: number[];
  /** Every position of the transferred KV is covered (it can be parked for a hand-over). */
  whole: boolean;
}

/** Locks what the cache has of the full pages and allocates pages for the rest (evicting if needed): all of them
 * (`whole` wanted and the pool allows it), else as many full pages as fit. Null when there is nothing to do. */
function beginImport(scheduler: Scheduler, tokenIds: readonly number[], wantWhole: boolean): PendingImport | null {
  const cache = scheduler.cache;
  const ps = scheduler.pageSize;
  const full = Math.floor(tokenIds.length / ps);
  if (!cache && !wantWhole) return null;
  const match = cache?.match(tokenIds, full * ps) ?? null;
  if (match) cache!.lock(match.node); // before evicting: the matched pages must stay
  const have = match ? match.pages.length : 0;
  const allocator = scheduler.allocator;
  let whole = wantWhole && tokenIds.length > 0;
  let want = (whole ? Math.ceil(tokenIds.length / ps) : full) - have;
  if (want > allocator.freeCount) cache?.evict(want - allocator.freeCount);
  if (whole && want > allocator.freeCount) {
    whole = false;
    want = full - have;
  }
  want = Math.min(want, allocator.freeCount);
  if (!whole && (want <= 0 || !cache)) {
    if (match) cache!.unlock(match.node);
    return null;
  }
  const used = whole ? tokenIds.length : (have + want) * ps;
  return { node: match?.node ?? null, tokenIds: tokenIds.slice(0, used), cached: match?.pages ?? [], first: have, fresh: allocator.alloc(want)!, whole };
}

/** Adopts the written pages (full ones into the cache; with parkAs and a whole import, everything parked under
 * it), or (commit false) frees them. */
function endImport(scheduler: Scheduler, p: PendingImport, commit: boolean, parkAs: string | null): void {
  const cache = scheduler.cache;
  if (!commit) {
    scheduler.allocator.releaseAll(p.fresh);
    if (p.node) cache!.unlock(p.node);
    return;
  }
  const full = Math.floor(p.tokenIds.length / scheduler.pageSize);
  const freshFull = p.fresh.slice(0, full - p.first);
  const partial = p.fresh.slice(full - p.first);
  let node: RadixNode | null = null;
  let fullPages = freshFull;
  if (cache) {
    const added = cache.extend(p.node ?? cache.root, p.tokenIds, p.first, freshFull);
    node = added.node;
    fullPages = added.pages;
  }
  if (parkAs !== null && p.whole) {
    if (node && full) cache!.lock(node);
    const kv: KvHold = { tokenCount: p.tokenIds.length, pages: [...p.cached, ...fullPages, ...partial], cachedPageCount: cache ? full : 0, lockedNode: cache && full ? node : null };
    scheduler.parkKv(parkAs, kv);
  } else scheduler.allocator.releaseAll(partial);
  if (p.node) cache!.unlock(p.node);
}

/** The ranks's GPU-to-GPU ops, as the scheduler thread reaches them. */
export interface KvIpcRank extends PageCopier {
  kvIpc<O extends KvIpcOp>(request: O): Promise<KvIpcReply<O>>;
}

/** What the disaggregation service asks of the scheduler thread for the GPU path (cuda-ipc). Pulls live between
 * two ops, so they are kept here by id until ended. */
export type DisaggKvOp =
  /** Prefill: the pages of the KV parked under key (they stay parked, in place, until released). */
  | { op: 'hold'; key: string }
  /** Prefill: the parked KV copied to the host after all (the decode side fell back to tcp). */
  | { op: 'heldToHost'; key: string }
  /** Either side: free what is parked under key (nothing when nothing is). */
  | { op: 'release'; key: string }
  /** Decode: allocate pages for what the cache lacks of the KV of tokenIds and pull them from an opened remote pool
   * (srcPages hold tokenIds in order); with parkAs, the whole KV when the pool allows (see importPrefix). */
  | { op: 'pullBegin'; tokenIds: number[]; parkAs: string | null; remote: number; srcPages: number[] }
  /** Decode: adopt the pulled pages (the prefill side released its own) or free them. */
  | { op: 'pullEnd'; importId: number; commit: boolean }
  /** Pool export, open, close (src/engine/summary.ts KvIpcOp, run by the rank). */
  | { op: 'ipc'; request: KvIpcOp };

export type DisaggKvReply =
  /** tokenCount 0 and no pages: nothing parked under the key. */
  | { op: 'hold'; tokenCount: number; pages: number[] }
  | { op: 'heldToHost'; data: Uint8Array }
  /** tokens: how many leading tokens the pulled pages cover with what was cached (whole: all of them). */
  | { op: 'pullBegin'; importId: number | null; pages: number; tokens: number; whole: boolean; stats: KvPullStats | null }
  | { op: 'ipc'; reply: KvIpcReply<KvIpcOp> }
  | { op: 'done' };

/** The scheduler thread's side of DisaggKvOp. */
export class DisaggKvOps {
  private readonly imports = new Map<number, { pending: PendingImport; parkAs: string | null }>();
  private nextId = 1;

  constructor(
    private readonly scheduler: Scheduler,
    private readonly rank: KvIpcRank,
  ) {}

  async run(o: DisaggKvOp): Promise<DisaggKvReply> {
    switch (o.op) {
      case 'hold': {
        const kv = this.scheduler.parkedKv(o.key);
        return { op: 'hold', tokenCount: kv?.tokenCount ?? 0, pages: kv ? [...kv.pages] : [] };
      }
      case 'heldToHost': {
        const kv = this.scheduler.parkedKv(o.key);
        return { op: 'heldToHost', data: kv ? await this.rank.exportPages(kv.pages) : new Uint8Array(0) };
      }
      case 'release':
        this.scheduler.dropParked(o.key);
        return { op: 'done' };
      case 'pullBegin': {
        const p = beginImport(this.scheduler, o.tokenIds, o.parkAs !== null);
        if (!p) return { op: 'pullBegin', importId: null, pages: 0, tokens: 0, whole: false, stats: null };
        const ps = this.scheduler.pageSize;
        let stats: KvPullStats | null = null;
        const numTokens = p.tokenIds.length - p.first * ps;
        try {
          if (p.fresh.length) {
            stats = await this.rank.kvIpc({
              op: 'pull', remote: o.remote, srcPages: Int32Array.from(o.srcPages), srcToken0: p.first * ps, dstPages: Int32Array.from(p.fresh), numTokens,
            });
          }
        } catch (err) {
          endImport(this.scheduler, p, false, null);
          throw err;
        }
        const importId = this.nextId++;
        this.imports.set(importId, { pending: p, parkAs: o.parkAs });
        return { op: 'pullBegin', importId, pages: p.fresh.length, tokens: p.tokenIds.length, whole: p.whole, stats };
      }
      case 'pullEnd': {
        const i = this.imports.get(o.importId);
        this.imports.delete(o.importId);
        if (i) endImport(this.scheduler, i.pending, o.commit, i.parkAs);
        return { op: 'done' };
      }
      case 'ipc':
        return { op: 'ipc', reply: await this.rank.kvIpc(o.request) };
    }
  }
}
