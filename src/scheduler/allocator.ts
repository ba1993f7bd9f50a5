// KV page allocator: a free list over the engine's page pool with a reference count per page.
//
// Invariants (checked by checkIntegrity):
//  A1. Every page index in [0, numPages) is either on the free list exactly once with refcount 0, or off it with
//      refcount >= 1. Nothing else is on the free list.
//  A2. freeCount + usedCount === numPages.
//  A3. A page is freed exactly when its refcount drops to 0; releasing a page whose refcount is 0 is a double free
//      and throws (it is a scheduler bug, never silently absorbed).
//  A4. alloc is all-or-nothing: it either returns n distinct pages or changes nothing.
// Leak detection: checkIntegrity(expected) compares every page's refcount against the references its owners
// (running requests and the radix cache) claim to hold; a page counted by the allocator but by no owner is a leak.
import { LlmError } from '../errors.js';

export class PageAllocator {
  readonly numPages: number;
  private readonly refs: Uint32Array;
  private readonly freeList: Int32Array; // stack: freeList[0, freeTop) are free pages
  private freeTop: number;

  constructor(numPages: number) {
    if (!Number.isInteger(numPages) || numPages <= 0) {
      throw new LlmError('LLM_ERR_CONFIG', `KV pool must have a positive whole number of pages, got ${numPages}`);
    }
    this.numPages = numPages;
    this.refs = new Uint32Array(numPages);
    this.freeList = new Int32Array(numPages);
    // Highest index on the bottom so that low pages come out first: easier to read in test failures.
    for (let i = 0; i < numPages; i++) this.freeList[i] = numPages - 1 - i;
    this.freeTop = numPages;
  }

  get freeCount(): number {
    return this.freeTop;
  }

  get usedCount(): number {
    return this.numPages - this.freeTop;
  }

  refCount(page: number): number {
    this.checkIndex(page);
    return this.refs[page];
  }

  /** n fresh pages with refcount 1, or null when fewer than n are free (A4). */
  alloc(n: number): number[] | null {
    if (n > this.freeTop) return null;
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      const page = this.freeList[--this.freeTop];
      this.refs[page] = 1;
      out[i] = page;
    }
    return out;
  }

  retain(page: number): void {
    this.checkIndex(page);
    if (this.refs[page] === 0) throw new LlmError('LLM_ERR_INTERNAL', `KV page ${page} retained while free`);
    this.refs[page]++;
  }

  release(page: number): void {
    this.checkIndex(page);
    if (this.refs[page] === 0) throw new LlmError('LLM_ERR_INTERNAL', `KV page ${page} released twice (double free)`);
    if (--this.refs[page] === 0) this.freeList[this.freeTop++] = page;
  }

  releaseAll(pages: Iterable<number>): void {
    for (const p of pages) this.release(p);
  }

  /** Throws LLM_ERR_INTERNAL naming the first broken invariant. `expected`, when given, maps each page to the
   * number of references its owners hold; pages absent from it must be free. */
  checkIntegrity(expected?: ReadonlyMap<number, number>): void {
    const onFree = new Uint8Array(this.numPages);
    for (let i = 0; i < this.freeTop; i++) {
      const p = this.freeList[i];
      if (p < 0 || p >= this.numPages) fail(`free list holds out-of-range page ${p}`);
      if (onFree[p]) fail(`page ${p} is on the free list twice`);
      onFree[p] = 1;
      if (this.refs[p] !== 0) fail(`free page ${p} has refcount ${this.refs[p]}`);
    }
    let used = 0;
    for (let p = 0; p < this.numPages; p++) {
      if (!onFree[p]) {
        used++;
        if (this.refs[p] === 0) fail(`page ${p} is neither free nor referenced (lost)`);
      }
      if (expected) {
        const want = expected.get(p) ?? 0;
        if (want !== this.refs[p]) {
          fail(
            want < this.refs[p]
              ? `page ${p} leaked: refcount ${this.refs[p]} but owners hold ${want}`
              : `page ${p} has refcount ${this.refs[p]} but owners hold ${want} (use after free)`,
          );
        }
      }
    }
    if (used + this.freeTop !== this.numPages) fail(`used ${used} + free ${this.freeTop} != ${this.numPages}`);
  }

  private checkIndex(page: number): void {
    if (!Number.isInteger(page) || page < 0 || page >= this.numPages) {
      throw new LlmError('LLM_ERR_INTERNAL', `KV page index ${page} out of range [0, ${this.numPages})`);
    }
  }
}

function fail(message: string): never {
  throw new LlmError('LLM_ERR_INTERNAL', `page allocator integrity: ${message}`);
}
