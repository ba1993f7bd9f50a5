// Radix prefix cache at page granularity. Each node below the root is one full KV page: the pageSize token ids it
// holds and the page index where their KV lives. A path from the root spells a token prefix page by page, so a new
// request reuses the KV of every leading full page it shares with an earlier sequence.
//
// Ownership: a node owns exactly one allocator reference to its page. A request that reuses a cached prefix
// locks the path (lock counts, not allocator references); a locked node is never evicted. When a request gives its
// pages back, insert() adopts the full pages it computed: a page the cache lacks moves into a new node (the
// reference changes owner), a page whose tokens the cache already has is released as a duplicate.
//
// Invariants (checked by checkIntegrity):
//  R1. Tree shape: every child's parent link points to the node holding it under its key, and its key is the
//      string form of its tokens; every non-root node's tokens are exactly pageSize long.
//  R2. lockRef(node) = locks taken with node as the deepest locked node + sum of children's lockRef, so
//      lockRef(parent) >= lockRef(child) and a lock pins the whole path to the root.
//  R3. No two nodes hold the same page; each node's page is referenced in the allocator.
//  R4. evictablePages equals the number of nodes with lockRef 0 (all of them are evictable, leaves first, because
//      an unlocked node's descendants are unlocked too).
// Eviction takes least recently used unlocked leaves first. Every node added or removed is reported to listeners
// with its page and token ids, so a KV-event publisher can hash blocks without reading the tree.
import { LlmError } from '../errors.js';
import type { PageAllocator } from './allocator.js';

export interface RadixNode {
  readonly key: string;
  readonly tokens: readonly number[];
  readonly page: number;
  readonly parent: RadixNode | null;
  readonly children: Map<string, RadixNode>;
  lockRef: number;
  lastAccess: number;
}

export interface RadixBlock {
  page: number;
  tokenIds: number[];
}

export type RadixEvent =
  | { kind: 'stored'; parentPage: number | null; blocks: RadixBlock[] }
  | { kind: 'removed'; blocks: RadixBlock[] };

export interface RadixMatch {
  /** Deepest matched node (the root when nothing matched): what lock/unlock take. */
  node: RadixNode;
  pages: number[];
  cachedTokens: number;
}

export class RadixCache {
  readonly pageSize: number;
  readonly root: RadixNode;
  private readonly allocator: PageAllocator;
  private readonly listeners: ((e: RadixEvent) => void)[] = [];
  private tick = 0;
  private nodeCount = 0;
  private unlockedCount = 0;

  constructor(allocator: PageAllocator, pageSize: number) {
    this.allocator = allocator;
    this.pageSize = pageSize;
    // The root holds no page; it is permanently locked so it is never counted or evicted.
    this.root = { key: '', tokens: [], page: -1, parent: null, children: new Map(), lockRef: 1, lastAccess: 0 };
  }

  /** Pages held by the cache, evictable or not. */
  get cachedPages(): number {
    return this.nodeCount;
  }

  /** Pages eviction could give back now (R4). */
  get evictablePages(): number {
    return this.unlockedCount;
  }

  onEvent(listener: (e: RadixEvent) => void): void {
    this.listeners.push(listener);
  }

  /** Longest cached prefix of tokens[0, maxTokens), whole pages only. Marks the path as recently used. */
  match(tokens: ArrayLike<number>, maxTokens = tokens.length): RadixMatch {
    const now = ++this.tick;
    const pages: number[] = [];
    let node = this.root;
    const limit = Math.min(maxTokens, tokens.length);
    for (let start = 0; start + this.pageSize <= limit; start += this.pageSize) {
      const child = node.children.get(pageKey(tokens, start, this.pageSize));
      if (!child) break;
      child.lastAccess = now;
      pages.push(child.page);
      node = child;
    }
    return { node, pages, cachedTokens: pages.length * this.pageSize };
  }

  lock(node: RadixNode): void {
    for (let n: RadixNode | null = node; n && n !== this.root; n = n.parent) {
      if (n.lockRef++ === 0) this.unlockedCount--;
    }
  }

  unlock(node: RadixNode): void {
    for (let n: RadixNode | null = node; n && n !== this.root; n = n.parent) {
      if (n.lockRef <= 0) throw new LlmError('LLM_ERR_INTERNAL', `radix node for page ${n.page} unlocked twice`);
      if (--n.lockRef === 0) this.unlockedCount++;
    }
  }

  /** Adopts the full pages of a sequence: pages[i] holds tokens[i*pageSize, (i+1)*pageSize). The caller gives up
   * its reference to each of pages[0, pages.length): kept in a new node, or released when the cache already holds
   * those tokens (in another page, or in this very page because the caller matched it). Returns the deepest node. */
  insert(tokens: ArrayLike<number>, pages: readonly number[]): RadixNode {
    if (tokens.length < pages.length * this.pageSize) {
      throw new LlmError('LLM_ERR_INTERNAL', `radix insert: ${pages.length} pages but only ${tokens.length} tokens`);
    }
    const now = ++this.tick;
    let node = this.root;
    let stored: RadixBlock[] = [];
    let storedParent: number | null = null;
    for (let i = 0; i < pages.length; i++) {
      const start = i * this.pageSize;
      const key = pageKey(tokens, start, this.pageSize);
      let child = node.children.get(key);
      if (child) {
        if (child.page !== pages[i]) this.allocator.release(pages[i]);
        if (stored.length) {
          this.emit({ kind: 'stored', parentPage: storedParent, blocks: stored });
          stored = [];
        }
      } else {
        const blockTokens = Array.from({ length: this.pageSize }, (_, j) => tokens[start + j]);
        child = { key, tokens: blockTokens, page: pages[i], parent: node, children: new Map(), lockRef: 0, lastAccess: now };
        node.children.set(key, child);
        this.nodeCount++;
        this.unlockedCount++;
        if (!stored.length) storedParent = node === this.root ? null : node.page;
        stored.push({ page: child.page, tokenIds: blockTokens });
      }
      child.lastAccess = now;
      node = child;
    }
    if (stored.length) this.emit({ kind: 'stored', parentPage: storedParent, blocks: stored });
    return node;
  }

  /** Adds a running sequence's newly computed full pages below `from` (its deepest cached node, at depth
   * `firstPage`): pages[i] holds tokens of page firstPage + i. Like insert, the caller gives up each page (kept, or
   * released when the cache already holds those tokens). Returns the new deepest node and, for each given page, the
   * page that now holds those tokens in the cache (the caller's own, or the one already cached). */
  extend(from: RadixNode, tokens: ArrayLike<number>, firstPage: number, pages: readonly number[]): { node: RadixNode; pages: number[] } {
    if (tokens.length < (firstPage + pages.length) * this.pageSize) {
      throw new LlmError('LLM_ERR_INTERNAL', `radix extend: pages up to ${firstPage + pages.length} but only ${tokens.length} tokens`);
    }
    const now = ++this.tick;
    const canonical: number[] = [];
    const stored: RadixBlock[] = [];
    let storedParent: number | null = null;
    let node = from;
    for (let i = 0; i < pages.length; i++) {
      const start = (firstPage + i) * this.pageSize;
      const key = pageKey(tokens, start, this.pageSize);
      let child = node.children.get(key);
      if (child) {
        if (child.page !== pages[i]) this.allocator.release(pages[i]);
      } else {
        // Once a new node is made, every later page is new too (a new node has no children).
        if (!stored.length) storedParent = node === this.root ? null : node.page;
        const blockTokens = Array.from({ length: this.pageSize }, (_, j) => tokens[start + j]);
        child = { key, tokens: blockTokens, page: pages[i], parent: node, children: new Map(), lockRef: 0, lastAccess: now };
        node.children.set(key, child);
        this.nodeCount++;
        this.unlockedCount++;
        stored.push({ page: child.page, tokenIds: blockTokens });
      }
      child.lastAccess = now;
      canonical.push(child.page);
      node = child;
    }
    if (stored.length) this.emit({ kind: 'stored', parentPage: storedParent, blocks: stored });
    return { node, pages: canonical };
  }

  /** Frees up to n pages, least recently used unlocked leaves first. Returns how many were freed. */
  evict(n: number): number {
    if (n <= 0 || this.unlockedCount === 0) return 0;
    const leaves: RadixNode[] = [];
    const collect = (node: RadixNode): void => {
      for (const c of node.children.values()) {
        if (c.children.size === 0) {
          if (c.lockRef === 0) leaves.push(c);
        } else collect(c);
      }
    };
    collect(this.root);
    // Most recent first, so pop() yields the least recent.
    leaves.sort((a, b) => b.lastAccess - a.lastAccess);
    const removed: RadixBlock[] = [];
    while (removed.length < n && leaves.length) {
      const leaf = leaves.pop()!;
      const parent = leaf.parent!;
      parent.children.delete(leaf.key);
      this.nodeCount--;
      this.unlockedCount--;
      removed.push({ page: leaf.page, tokenIds: leaf.tokens.slice() });
      this.allocator.release(leaf.page);
      if (parent !== this.root && parent.children.size === 0 && parent.lockRef === 0) {
        // Keep `leaves` ordered: insert the new leaf by its access time.
        let i = leaves.length;
        while (i > 0 && leaves[i - 1].lastAccess < parent.lastAccess) i--;
        leaves.splice(i, 0, parent);
      }
    }
    if (removed.length) this.emit({ kind: 'removed', blocks: removed });
    return removed.length;
  }

  /** Drops every node (e.g. after an engine failure, when the KV contents are unknown). All must be unlocked. */
  clear(): void {
    if (this.unlockedCount !== this.nodeCount) {
      throw new LlmError('LLM_ERR_INTERNAL', 'radix cache cleared while requests still lock cached pages');
    }
    this.evict(this.nodeCount);
  }

  /** Adds one reference per cached page to `refs` (for the allocator's leak check). */
  collectPageRefs(refs: Map<number, number>): void {
    const walk = (node: RadixNode): void => {
      for (const c of node.children.values()) {
        refs.set(c.page, (refs.get(c.page) ?? 0) + 1);
        walk(c);
      }
    };
    walk(this.root);
  }

  /** Checks R1-R4; `directLocks` maps a node to the locks taken on it as the deepest node (for R2's equality). */
  checkIntegrity(directLocks?: ReadonlyMap<RadixNode, number>): void {
    const seenPages = new Set<number>();
    let nodes = 0;
    let unlocked = 0;
    const walk = (node: RadixNode): number => {
      let childLocks = 0;
      for (const [key, c] of node.children) {
        nodes++;
        if (c.parent !== node) fail(`page ${c.page}: parent link broken`);
        if (c.key !== key || pageKey(c.tokens, 0, this.pageSize) !== key) fail(`page ${c.page}: key does not match tokens`);
        if (c.tokens.length !== this.pageSize) fail(`page ${c.page}: holds ${c.tokens.length} tokens, not ${this.pageSize}`);
        if (seenPages.has(c.page)) fail(`page ${c.page} held by two nodes`);
        seenPages.add(c.page);
        if (this.allocator.refCount(c.page) < 1) fail(`page ${c.page} is cached but free in the allocator`);
        if (c.lockRef < 0) fail(`page ${c.page}: negative lockRef`);
        if (c.lockRef === 0) unlocked++;
        const sub = walk(c);
        if (c.lockRef < sub) fail(`page ${c.page}: lockRef ${c.lockRef} < children's ${sub}`);
        if (directLocks && c.lockRef !== sub + (directLocks.get(c) ?? 0)) {
          fail(`page ${c.page}: lockRef ${c.lockRef} but holders account for ${sub + (directLocks.get(c) ?? 0)}`);
        }
        childLocks += c.lockRef;
      }
      return childLocks;
    };
    walk(this.root);
    if (nodes !== this.nodeCount) fail(`counted ${nodes} nodes, tracked ${this.nodeCount}`);
    if (unlocked !== this.unlockedCount) fail(`counted ${unlocked} unlocked nodes, tracked ${this.unlockedCount}`);
  }

  private emit(e: RadixEvent): void {
    for (const l of this.listeners) l(e);
  }
}

function pageKey(tokens: ArrayLike<number>, start: number, pageSize: number): string {
  let key = '';
  for (let i = 0; i < pageSize; i++) key += (i ? ',' : '') + tokens[start + i];
  return key;
}

function fail(message: string): never {
  throw new LlmError('LLM_ERR_INTERNAL', `radix cache integrity: ${message}`);
}
