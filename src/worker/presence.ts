// The worker's presence in discovery follows whether it can serve: when every data-parallel group is down (a rank
// crashed and the group restarts, a follower node of a multi-node group is gone and the leader waits for it to join
// again, or a group gave up after its last restart), the worker withdraws its endpoint instance and model card and
// reports not ready, so routers send its requests elsewhere instead of to a worker that could only hold or fail
// them; when a group serves again it registers again. Transitions run one at a time, in order, and stop at close().
import type { Supervisor } from '../../actors/supervisor.js';
import { logger } from '../runtime/log.js';

const log = logger('worker.presence');
const RETRY_MS = 1000;

export interface PresenceOptions {
  /** The worker's groups (one per data-parallel rank): the worker is listed while at least one serves. */
  readonly groups: readonly Supervisor[];
  /** What the worker is listed as, for the log lines. */
  readonly name: string;
  /** Puts the worker's endpoint instance and model card back into discovery, and marks it ready. */
  readonly list: () => Promise<void>;
  /** Removes them, and marks it not ready. */
  readonly withdraw: () => Promise<void>;
}

export class DiscoveryPresence {
  private listed = true;
  private closed = false;
  private transitions: Promise<void> = Promise.resolve();

  constructor(private readonly options: PresenceOptions) {
    for (const group of options.groups) group.onServingChange(() => this.follow());
  }

  /** Whether the worker is in discovery now. */
  get isListed(): boolean {
    return this.listed;
  }

  /** Stops following the groups (shutdown removes the worker from discovery itself); resolves after the transition
   * under way, if any. */
  close(): Promise<void> {
    this.closed = true;
    return this.transitions;
  }

  private follow(): void {
    this.transitions = this.transitions.then(async () => {
      if (this.closed) return;
      const serving = this.options.groups.some((g) => g.serving);
      if (serving === this.listed) return;
      try {
        if (serving) {
          await this.options.list();
          log.info(`${this.options.name} serves again: registered in discovery`);
        } else {
          await this.options.withdraw();
          log.warn(`${this.options.name} cannot serve (no group running): withdrawn from discovery until it can`);
        }
        this.listed = serving;
      } catch (err) {
        // The store is unreachable: try again shortly (the store's own reconnect logs the outage).
        log.error(`${this.options.name}: discovery update failed, retrying in ${RETRY_MS} ms`, { error: err instanceof Error ? err.message : String(err) });
        setTimeout(() => this.follow(), RETRY_MS).unref();
      }
    });
  }
}
