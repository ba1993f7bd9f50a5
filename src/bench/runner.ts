// Runs one benchmark point: a fixed list of prompts sent either with at most N in flight (closed loop) or on
// seeded Poisson arrivals at R requests/s (open loop, optionally capped at N in flight), at a trace's recorded
// times, or all at once when none of these.
// A stop signal (Ctrl-C) ends the point early: nothing new is sent, requests in flight are aborted and left out.
import { setTimeout as delay } from 'node:timers/promises';
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
  /** Stopped before every prompt was sent and answered. */
  interrupted: boolean;
  summary: RunSummary;
  requests: RequestRecord[];
}

/** Waits `ms`, or less when `stop` fires. */
async function sleep(ms: number, stop: AbortSignal): Promise<void> {
  await delay(ms, undefined, { signal: stop }).catch(() => undefined);
}

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

export async function runLoad(
  target: TargetSettings,
  prompts: readonly PromptSpec[],
  load: LoadShape,
  progress: { sink: ProgressSink | null; label: string },
  arrivalSeed: number,
  stop: AbortSignal,
): Promise<RunResult> {
  const bar = new Progress(progress.sink, progress.label, prompts.length);
  const slots = new Slots(load.concurrency ?? prompts.length);
  const rng = new Rng(arrivalSeed);
  const records: (RequestRecord | undefined)[] = new Array<RequestRecord | undefined>(prompts.length);
  const start = performance.now();
  const inFlight: Promise<void>[] = [];
  let nextArrival = 0;
  for (const [i, p] of prompts.entries()) {
    if (p.arrivalMs !== null) {
      const wait = start + p.arrivalMs - performance.now();
      if (wait > 0) await sleep(wait, stop);
    } else if (load.requestRate !== null) {
      // Arrival times are fixed in advance from the seed, so a slow server does not thin out the load.
      if (i > 0) nextArrival += rng.exponential(load.requestRate) * 1000;
      const wait = start + nextArrival - performance.now();
      if (wait > 0) await sleep(wait, stop);
    }
    if (stop.aborted) break;
    await slots.take();
    if (stop.aborted) break;
    inFlight.push(
      timedRequest({ ...target, prompt: p.prompt, maxTokens: p.maxTokens }, start, stop).then((r) => {
        // a request cut off by the stop is no measurement of the server
        if (!(stop.aborted && !r.ok)) records[i] = r;
        slots.give();
        bar.tick(r.ok);
      }),
    );
  }
  await Promise.all(inFlight);
  const durationS = (performance.now() - start) / 1000;
  bar.finish();
  const kept = [...records.entries()].filter((e): e is [number, RequestRecord] => e[1] !== undefined);
  return {
    load,
    interrupted: kept.length < prompts.length,
    summary: summarize(kept.map(([, r]) => r), durationS, kept.map(([i]) => prompts[i].promptTokens)),
    requests: kept.map(([, r]) => r),
  };
}
