// A tensor-parallel group for tests: one engine per rank, each in its own worker_thread as in production, all
// running the same call. Each call answers with rank 0's value (what the group reports) plus every rank's value
// and error, so a test can check that all ranks agree and see which one failed.
import type { Worker } from 'node:worker_threads';
import { spawnWorker } from '../../actors/worker.js';
import { LlmError, type ErrorPayload } from '../../src/errors.js';
import { packStep } from '../../src/engine/step.js';
import type { EngineOptions, KvPoolInfo, ModelSpec, MultimodalStepInput, SeqStep, StepDescriptor, StepResult } from '../../src/engine/types.js';

export type RankCall =
  | { op: 'step'; step: StepDescriptor; multimodal?: MultimodalStepInput }
  | { op: 'embed'; tokenIds: number[] }
  | { op: 'exportPages'; pages: number[] }
  | { op: 'importPages'; pages: number[]; data: Uint8Array }
  | { op: 'kvInfo' }
  | { op: 'close' };

export type RankReply = { ok: true; value: unknown } | { ok: false; error: ErrorPayload };

/** One call on every running rank: the lowest rank's value (rank 0's unless it was left out or closed; undefined if
 *  it failed), and each running rank's value and error, in rank order. */
export interface RankResults<T> {
  value: T | undefined;
  values: (T | undefined)[];
  errors: (LlmError | undefined)[];
}

export interface TpGroupOptions {
  size: number;
  group: string;
  timeoutMs?: number;
  /** The ranks to start (default all): leaving one out makes a group whose rank never joins. */
  ranks?: readonly number[];
}

export class TpRanks {
  private constructor(
    private readonly workers: Map<number, Worker>,
    private readonly pageSize: number,
  ) {}

  /** Starts the ranks and waits until every one opened its engine or failed to. */
  static async start(spec: ModelSpec, options: EngineOptions, tp: TpGroupOptions): Promise<{ ranks: TpRanks; opened: RankResults<void> }> {
    const which = tp.ranks ?? Array.from({ length: tp.size }, (_, r) => r);
    const workers = new Map(
      [...which].sort((a, b) => a - b).map((rank) => [
        rank,
        spawnWorker(new URL('./tp-rank-worker.ts', import.meta.url), {
          spec,
          options: { ...options, tp: { rank, size: tp.size, group: tp.group, timeoutMs: tp.timeoutMs } },
        }),
      ]),
    );
    const ranks = new TpRanks(workers, options.pageSize);
    const opened = await ranks.collect<void>([...workers.values()].map((w) => nextReply(w)));
    return { ranks, opened };
  }

  /** Packs the step once, as the scheduler does, and runs that descriptor on every rank. */
  step(seqs: SeqStep[], options: { returnLogits?: boolean; multimodal?: MultimodalStepInput } = {}): Promise<RankResults<StepResult>> {
    const { multimodal, ...pack } = options;
    const step = packStep(seqs, this.pageSize, pack);
    return this.call<StepResult>(multimodal === undefined ? { op: 'step', step } : { op: 'step', step, multimodal });
  }

  embed(tokenIds: number[]): Promise<RankResults<Float32Array>> {
    return this.call<Float32Array>({ op: 'embed', tokenIds });
  }

  exportPages(pages: number[]): Promise<RankResults<Uint8Array>> {
    return this.call<Uint8Array>({ op: 'exportPages', pages });
  }

  /** data[i] goes to the i-th running rank (KV pages are per rank). */
  importPages(pages: number[], data: Uint8Array[]): Promise<RankResults<void>> {
    return this.collect<void>([...this.workers.values()].map((w, i) => send(w, { op: 'importPages', pages, data: data[i] })));
  }

  kvInfo(): Promise<RankResults<KvPoolInfo>> {
    return this.call<KvPoolInfo>({ op: 'kvInfo' });
  }

  /** Closes one rank's engine (it leaves the group) and ends its thread; later calls go to the others. */
  async closeRank(rank: number): Promise<void> {
    const w = this.workers.get(rank);
    if (!w) return;
    this.workers.delete(rank);
    await send(w, { op: 'close' });
    await w.terminate();
  }

  /** Closes every engine and ends the threads. */
  async close(): Promise<void> {
    await Promise.all([...this.workers.keys()].map((rank) => this.closeRank(rank)));
  }

  private call<T>(call: RankCall): Promise<RankResults<T>> {
    return this.collect<T>([...this.workers.values()].map((w) => send(w, call)));
  }

  private async collect<T>(replies: Promise<RankReply>[]): Promise<RankResults<T>> {
    const all = await Promise.all(replies);
    const values = all.map((r) => (r.ok ? (r.value as T) : undefined));
    const errors = all.map((r) => (r.ok ? undefined : LlmError.fromPayload(r.error)));
    return { value: values[0], values, errors };
  }
}

function nextReply(w: Worker): Promise<RankReply> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: RankReply): void => {
      w.off('error', onError);
      resolve(m);
    };
    const onError = (err: Error): void => {
      w.off('message', onMessage);
      reject(err);
    };
    w.once('message', onMessage);
    w.once('error', onError);
  });
}

function send(w: Worker, call: RankCall): Promise<RankReply> {
  const reply = nextReply(w);
  w.postMessage(call);
  return reply;
}
