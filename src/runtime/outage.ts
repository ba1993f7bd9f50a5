// One log line when a service this process depends on (etcd, a NATS server) becomes unreachable and one when it is
// back, however many calls fail in between: operators see each outage once, with its length.
import type { Logger } from './log.js';

export class OutageLog {
  private since: number | null = null;

  constructor(
    private readonly log: Logger,
    /** What is out, as the lines name it (e.g. "etcd at http://10.0.0.5:2379"). */
    private readonly what: string,
  ) {}

  get isDown(): boolean {
    return this.since !== null;
  }

  down(reason: string): void {
    if (this.since !== null) return;
    this.since = Date.now();
    this.log.warn(`${this.what} is unreachable: ${reason}`);
  }

  up(): void {
    if (this.since === null) return;
    const ms = Date.now() - this.since;
    this.since = null;
    this.log.info(`${this.what} is reachable again after ${ms} ms`);
  }
}
