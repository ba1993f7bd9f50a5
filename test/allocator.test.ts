import t from 'tap';
import { PageAllocator } from '../src/scheduler/allocator.js';

t.test('alloc is all-or-nothing and pages are distinct', async (t) => {
  const a = new PageAllocator(8);
  const p = a.alloc(5)!;
  t.equal(new Set(p).size, 5);
  t.equal(a.freeCount, 3);
  t.equal(a.alloc(4), null, 'too many: nothing taken');
  t.equal(a.freeCount, 3);
  a.checkIntegrity(new Map(p.map((x) => [x, 1])));
  a.releaseAll(p);
  t.equal(a.freeCount, 8);
  a.checkIntegrity(new Map());
});

t.test('refcounts: a retained page is freed by its last release', async (t) => {
  const a = new PageAllocator(4);
  const [p] = a.alloc(1)!;
  a.retain(p);
  t.equal(a.refCount(p), 2);
  a.release(p);
  t.equal(a.freeCount, 3, 'still held once');
  a.release(p);
  t.equal(a.freeCount, 4);
});

t.test('double free, retain of a free page and bad indices throw coded errors', async (t) => {
  const a = new PageAllocator(4);
  const [p] = a.alloc(1)!;
  a.release(p);
  t.throws(() => a.release(p), { code: 'LLM_ERR_INTERNAL', message: /double free/ });
  t.throws(() => a.retain(p), /retained while free/);
  t.throws(() => a.release(4), /out of range/);
  t.throws(() => new PageAllocator(0), { code: 'LLM_ERR_CONFIG' });
});

t.test('leak detection: a page no owner claims fails the check', async (t) => {
  const a = new PageAllocator(4);
  const [p, q] = a.alloc(2)!;
  t.throws(() => a.checkIntegrity(new Map([[p, 1]])), new RegExp(`page ${q} leaked`));
  t.throws(() => a.checkIntegrity(new Map([[p, 1], [q, 2]])), /use after free/);
  a.checkIntegrity(new Map([[p, 1], [q, 1]]));
});
