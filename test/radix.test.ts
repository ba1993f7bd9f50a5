import t from 'tap';
import { PageAllocator } from '../src/scheduler/allocator.js';
import { RadixCache, type RadixEvent } from '../src/scheduler/radix.js';

const P = 4;
const seq = (n: number, base = 0) => Array.from({ length: n }, (_, i) => base + i);

function setup(numPages = 16) {
  const alloc = new PageAllocator(numPages);
  const cache = new RadixCache(alloc, P);
  const events: RadixEvent[] = [];
  cache.onEvent((e) => events.push(e));
  const check = () => {
    const refs = new Map<number, number>();
    cache.collectPageRefs(refs);
    alloc.checkIntegrity(refs);
    cache.checkIntegrity();
  };
  return { alloc, cache, events, check };
}

t.test('insert then match returns whole pages and the cached token count', async (t) => {
  const { alloc, cache, events, check } = setup();
  const tokens = seq(10); // 2 full pages + 2 tokens
  const pages = alloc.alloc(2)!;
  cache.insert(tokens, pages);
  check();
  t.same(events, [{ kind: 'stored', parentPage: null, blocks: [{ page: pages[0], tokenIds: [0, 1, 2, 3] }, { page: pages[1], tokenIds: [4, 5, 6, 7] }] }]);
  const m = cache.match(seq(12));
  t.same(m.pages, pages);
  t.equal(m.cachedTokens, 8);
  t.equal(cache.match(seq(12), 7).cachedTokens, 4, 'maxTokens limits the match to whole pages inside it');
  t.equal(cache.match([0, 1, 2, 9, 4]).cachedTokens, 0, 'a differing token in the first page: no match');
});

t.test('inserting a duplicate releases the caller page; matched pages are kept', async (t) => {
  const { alloc, cache, events, check } = setup();
  const a = alloc.alloc(2)!;
  cache.insert(seq(8), a);
  const dup = alloc.alloc(3)!;
  const m = cache.match(seq(12));
  cache.insert(seq(12), [m.pages[0], dup[1], dup[2]]);
  t.equal(alloc.refCount(dup[1]), 0, 'duplicate page released');
  alloc.release(dup[0]);
  check();
  t.equal(cache.cachedPages, 3);
  t.same(events.at(-1), { kind: 'stored', parentPage: a[1], blocks: [{ page: dup[2], tokenIds: [8, 9, 10, 11] }] });
});

t.test('locked paths are not evicted; LRU leaves go first and report removed blocks', async (t) => {
  const { alloc, cache, events, check } = setup(8);
  const x = alloc.alloc(2)!;
  cache.insert(seq(8, 0), x); // older
  const y = alloc.alloc(2)!;
  cache.insert(seq(8, 100), y); // newer
  t.equal(cache.evictablePages, 4);
  const mx = cache.match(seq(8, 0)); // x becomes the most recent
  cache.lock(mx.node);
  t.equal(cache.evictablePages, 2);
  check();
  t.equal(cache.evict(10), 2, 'only the unlocked branch goes');
  t.same(events.at(-1), { kind: 'removed', blocks: [{ page: y[1], tokenIds: [104, 105, 106, 107] }, { page: y[0], tokenIds: [100, 101, 102, 103] }] });
  t.equal(alloc.freeCount, 6);
  cache.unlock(mx.node);
  t.throws(() => cache.unlock(mx.node), /unlocked twice/);
  check();
});

t.test('LRU order: the least recently matched branch is evicted first', async (t) => {
  const { alloc, cache, check } = setup(8);
  const x = alloc.alloc(1)!;
  cache.insert(seq(4, 0), x);
  const y = alloc.alloc(1)!;
  cache.insert(seq(4, 50), y);
  cache.match(seq(4, 0)); // touch x
  t.equal(cache.evict(1), 1);
  t.equal(alloc.refCount(y[0]), 0, 'y was older');
  t.equal(alloc.refCount(x[0]), 1);
  check();
  cache.clear();
  t.equal(alloc.freeCount, 8);
  check();
});

t.test('integrity check catches a lock count that holders do not account for', async (t) => {
  const { alloc, cache } = setup();
  cache.insert(seq(8), alloc.alloc(2)!);
  const m = cache.match(seq(8));
  cache.lock(m.node);
  t.throws(() => cache.checkIntegrity(new Map()), /holders account for/);
  cache.checkIntegrity(new Map([[m.node, 1]]));
});

t.test('extend adds a running sequence\'s new pages below its node and returns the cached pages', async (t) => {
  const { alloc, cache, events, check } = setup();
  const a = alloc.alloc(3)!;
  cache.insert(seq(12), a); // pages for tokens 0..11
  const m = cache.match(seq(8));
  cache.lock(m.node);
  const own = alloc.alloc(2)!; // the caller computed pages 2 and 3 itself
  const r = cache.extend(m.node, seq(16), 2, own);
  t.same(r.pages, [a[2], own[1]], 'page 2 was already cached: swapped for the cached one; page 3 adopted');
  t.equal(alloc.refCount(own[0]), 0, 'the duplicate was freed');
  t.same(events.at(-1), { kind: 'stored', parentPage: a[2], blocks: [{ page: own[1], tokenIds: [12, 13, 14, 15] }] });
  cache.lock(r.node);
  cache.unlock(m.node);
  cache.checkIntegrity(new Map([[r.node, 1]]));
  cache.unlock(r.node);
  check();
});
