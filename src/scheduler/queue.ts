// The waiting queue: requests not yet admitted, first come first served; retracted requests go back to the front
// so that they resume before newer work.
//
// Invariants (checked by checkIntegrity):
//  W1. Every queued request is in state 'queued', and appears once.
//  W2. The id index and the order list hold the same requests.
import { LlmError } from '../errors.js';
import type { RequestRecord } from './request.js';

export class RequestQueue {
  private order: RequestRecord[] = [];
  private readonly byId = new Map<string, RequestRecord>();

  get length(): number {
    return this.order.length;
  }

  has(id: string): boolean {
    return this.byId.has(id);
  }

  pushBack(req: RequestRecord): void {
    this.add(req);
    this.order.push(req);
  }

  pushFront(req: RequestRecord): void {
    this.add(req);
    this.order.unshift(req);
  }

  /** Requests in service order (a snapshot: safe to remove while iterating). */
  snapshot(): readonly RequestRecord[] {
    return this.order.slice();
  }

  remove(req: RequestRecord): boolean {
    if (!this.byId.delete(req.id)) return false;
    this.order = this.order.filter((r) => r !== req);
    return true;
  }

  drain(): RequestRecord[] {
    const all = this.order;
    this.order = [];
    this.byId.clear();
    return all;
  }

  checkIntegrity(): void {
    if (this.order.length !== this.byId.size) fail(`order holds ${this.order.length}, index ${this.byId.size}`);
    for (const r of this.order) {
      if (this.byId.get(r.id) !== r) fail(`request ${r.id} missing from the index or duplicated`);
      if (r.state !== 'queued') fail(`request ${r.id} is queued in state ${r.state}`);
    }
  }

  private add(req: RequestRecord): void {
    if (this.byId.has(req.id)) fail(`request ${req.id} queued twice`);
    this.byId.set(req.id, req);
  }
}

function fail(message: string): never {
  throw new LlmError('LLM_ERR_INTERNAL', `request queue integrity: ${message}`);
}
