// Runs one benchmark point: a fixed list of prompts sent either with at most N in flight (closed loop) or on
// seeded Poisson arrivals at R requests/s (open loop, optionally capped at N in flight), all at once when neither.
import { timedRequest, type Endpoint } from './client.js';
import { summarize } from './metrics.js';
import type { LoadShape, RequestRecord, RunSummary } from './results.js';
import type { PromptSpec } from './prompts.js';
import { Progress, type ProgressSink } from './progress.js';
import { Rng } from './random.js';

export interface TargetSettings {
  url: string;
  endpoint: Endpoint;
  model: string;
  temperature: number;
  seed: number;
  ignoreEos: boolean;
  timeoutMs: number;
}

export interface RunResult {
  load: LoadShape;
  summary: RunSummary;
  requests: RequestRecord[];
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A counting semaphore for the in-flight cap. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];

  constructor(count: number) {
    this.free = count;
  }

  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  give(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

export async function runLoad(target: TargetSettings, prompts: readonly PromptSpec[], load: LoadShape, progress: { sink: ProgressSink | null; label: string }, arrivalSeed: number): Promise<RunResult> {
  const bar = new Progress(progress.sink, progress.label, prompts.length);
  const slots = new Slots(load.concurrency ?? prompts.length);
  const rng = new Rng(arrivalSeed);
  const records: RequestRecord[] = new Array<RequestRecord>(prompts.length);
  const start = performance.now();
  const inFlight: Promise<void>[] = [];
  let nextArrival = 0;
  for (const [i, p] of prompts.entries()) {
    if (load.requestRate !== null) {
      // Arrival times are fixed in advance from the seed, so a slow server does not thin out the load.
      if (i > 0) nextArrival += rng.exponential(load.requestRate) * 1000;
      const wait = start + nextArrival - performance.now();
      if (wait > 0) await sleep(wait);
    }
    await slots.take();
    inFlight.push(
      timedRequest({ ...target, prompt: p.prompt, maxTokens: p.maxTokens }, start).then((r) => {
        records[i] = r;
        slots.give();
        bar.tick(r.ok);
      }),
    );
  }
  await Promise.all(inFlight);
  const durationS = (performance.now() - start) / 1000;
  bar.finish();
  return { load, summary: summarize(records, durationS, prompts.map((p) => p.promptTokens)), requests: records };
}
