// Worker load for the KV router (reference §5.2): ActiveLoad {worker_id, dp_rank, active_decode_blocks: null,
// active_prefill_tokens: null, kv_used_blocks} (0.8 profile: the used blocks in active_decode_blocks, JSON, see
// events-0.8.ts) on `namespace.{ns}.kv_metrics`, per DP rank, only when the value
// changed and debounced (1 ms) so a burst of scheduler steps sends one sample; a zero sample goes out at start.
import type { NatsConnection } from 'nats';
import { KV_METRICS_TOPIC, encodeActiveLoad, type ActiveLoad } from '../../protocol/events.js';
import { encodeActiveLoad08 } from '../../protocol/events-0.8.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from '../../protocol/wire-profile.js';
import { EventPublisher } from './plane.js';

export interface LoadPublisherOptions {
  namespace: string;
  workerId: bigint;
  debounceMs?: number;
  wireProfile?: WireProfile;
}

export class LoadPublisher {
  private readonly publisher: EventPublisher;
  private readonly workerId: bigint;
  private readonly debounceMs: number;
  private readonly published = new Map<number, number>();
  private readonly latest = new Map<number, number>();
  private timer: NodeJS.Timeout | undefined;

  constructor(connection: NatsConnection, options: LoadPublisherOptions) {
    this.publisher = new EventPublisher(connection, { namespace: options.namespace, topic: KV_METRICS_TOPIC }, options.workerId, options.wireProfile ?? DEFAULT_WIRE_PROFILE);
    this.workerId = options.workerId;
    this.debounceMs = options.debounceMs ?? 1;
  }

  get subject(): string {
    return this.publisher.subject;
  }

  /** The initial zero sample of each local DP rank. */
  start(dpRanks: readonly number[] = [0]): void {
    for (const dpRank of dpRanks) {
      this.latest.set(dpRank, 0);
      this.send(dpRank, 0);
    }
  }

  /** Records the rank's used KV blocks; published after the debounce if it differs from the last sample. */
  update(dpRank: number, kvUsedBlocks: number): void {
    this.latest.set(dpRank, kvUsedBlocks);
    this.timer ??= setTimeout(() => this.flush(), this.debounceMs);
  }

  /** Publishes every changed rank now. */
  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const [dpRank, value] of this.latest) if (this.published.get(dpRank) !== value) this.send(dpRank, value);
  }

  close(): void {
    this.flush();
  }

  private send(dpRank: number, kvUsedBlocks: number): void {
    const load: ActiveLoad = {
      worker_id: this.workerId,
      dp_rank: dpRank,
      active_decode_blocks: null,
      active_prefill_tokens: null,
      kv_used_blocks: kvUsedBlocks,
    };
    this.publisher.publish(this.publisher.wireProfile === '0.8' ? encodeActiveLoad08(load) : encodeActiveLoad(load));
    this.published.set(dpRank, kvUsedBlocks);
  }
}
