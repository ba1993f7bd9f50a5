// The slot table: the running set, at most maxRunning requests (--max-running-requests), each in a numbered slot.
// Iteration is in admission order, oldest first: the order in which steps serve requests and the reverse of the
// order in which retraction picks victims.
//
// Invariants (checked by checkIntegrity):
//  S1. Each slot index in [0, capacity) is held by at most one request, and each request by at most one slot.
//  S2. Every held request is running (prefilling or decoding).
//  S3. free slots + held slots === capacity.
//  S4. The order list holds exactly the holders, in increasing admitOrder.
import { LlmError } from '../errors.js';
import type { RequestRecord } from './request.js';

export class SlotTable {
  readonly capacity: number;
  private readonly slots: (RequestRecord | null)[];
  private readonly slotOf = new Map<RequestRecord, number>();
  private order: RequestRecord[] = []; // holders in acquisition (= admission) order
  private readonly freeSlots: number[];

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity <= 0) {
      throw new LlmError('LLM_ERR_CONFIG', `--max-running-requests must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.slots = new Array<RequestRecord | null>(capacity).fill(null);
    this.freeSlots = Array.from({ length: capacity }, (_, i) => capacity - 1 - i);
  }

  get size(): number {
    return this.slotOf.size;
  }

  get full(): boolean {
    return this.freeSlots.length === 0;
  }

  acquire(req: RequestRecord): number {
    if (this.slotOf.has(req)) fail(`request ${req.id} already holds a slot`);
    const slot = this.freeSlots.pop();
    if (slot === undefined) fail('no free slot');
    this.slots[slot] = req;
    this.slotOf.set(req, slot);
    this.order.push(req);
    return slot;
  }

  release(req: RequestRecord): void {
    const slot = this.slotOf.get(req);
    if (slot === undefined) fail(`request ${req.id} holds no slot`);
    this.slotOf.delete(req);
    this.order.splice(this.order.indexOf(req), 1);
    this.slots[slot] = null;
    this.freeSlots.push(slot);
  }

  /** Running requests, oldest admission first (a snapshot). */
  running(): RequestRecord[] {
    return this.order.slice();
  }

  checkIntegrity(): void {
    let held = 0;
    for (let i = 0; i < this.capacity; i++) {
      const r = this.slots[i];
      if (!r) continue;
      held++;
      if (this.slotOf.get(r) !== i) fail(`slot ${i} and request ${r.id} disagree`);
      if (!r.isRunning) fail(`slot ${i} holds request ${r.id} in state ${r.state}`);
    }
    if (held !== this.slotOf.size) fail(`${held} slots held, ${this.slotOf.size} requests indexed`);
    if (this.order.length !== held || this.order.some((r) => !this.slotOf.has(r))) fail('admission order list out of step');
    for (let i = 1; i < this.order.length; i++) {
      if (this.order[i - 1].admitOrder >= this.order[i].admitOrder) fail('admission order list not in admission order');
    }
    if (held + this.freeSlots.length !== this.capacity) fail(`${held} held + ${this.freeSlots.length} free != ${this.capacity}`);
    if (new Set(this.freeSlots).size !== this.freeSlots.length) fail('a slot is free twice');
  }
}

function fail(message: string): never {
  throw new LlmError('LLM_ERR_INTERNAL', `slot table integrity: ${message}`);
}
