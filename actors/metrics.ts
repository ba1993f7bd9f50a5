// The metrics actor: one place that collects per-step samples from the scheduler and per-request samples from the
// supervisor, and answers snapshot requests. The worker's load publisher, its Prometheus gauges and the offline
// bench all read from it (through Supervisor.load() and Supervisor.metrics()).
//
// It runs on the supervisor's (main) thread, as an actor with one typed inbox, rather than in a worker_thread of its
// own. Measured on the 2-core CI box (Node 20): the step samples ride in the one message per step the scheduler
// sends to the main thread anyway (outputs, KV events, state), and recording one here is a few additions; a metrics
// worker_thread would cost the scheduler's thread a second postMessage per step (7-8 µs of send for a message this
// size, on the thread whose gap between a result and the next step is the critical path), wake a fourth thread on
// two cores, and turn every snapshot (load sampled every 20 ms, Prometheus scrapes) into an asynchronous round trip.
import { unreachable } from './messages.js';
import type { FinishReason } from '../src/scheduler/scheduler.js';

/** One engine step, as the scheduler saw it. */
export interface StepSample {
  /** Sequences in the step. */
  batchSize: number;
  prefillTokens: number;
  decodeTokens: number;
  /** Requests waiting and running when the step was submitted. */
  queued: number;
  running: number;
  kvUsedPages: number;
  /** Prompt tokens served from the prefix cache by admissions since the previous step. */
  cacheHitTokens: number;
  /** Submission (or the previous step's result, when that came later: overlap) to result, on the scheduler's thread. */
  stepMs: number;
  /** Time the engine spent in the step, inside the rank's thread. */
  engineMs: number;
  /** Host time on the critical path before this step: how long the rank waited between the end of the previous
   * engine step and the start of this one (null when the scheduler had nothing to run in between). */
  submitGapMs: number | null;
  /** Submitted before the step before it had answered (overlap): the rank had it queued when that step ended,
   * unless that step's result was already on its way. */
  queuedBehind: boolean;
}

/** One finished request, as its stream saw it. */
export interface RequestSample {
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  cachedTokens: number;
  /** generate() call to the first token (null when no token came). */
  firstTokenMs: number | null;
  totalMs: number;
}

/** The scheduler's state after a step's outputs were applied. */
export interface SchedulerLoad {
  kvTotalPages: number;
  kvUsedPages: number;
  kvEvictablePages: number;
  runningRequests: number;
  queuedRequests: number;
}

export interface MetricsSnapshot {
  load: SchedulerLoad;
  steps: number;
  prefillTokens: number;
  decodeTokens: number;
  cacheHitTokens: number;
  /** Sums over every step, ms. */
  stepMs: number;
  engineBusyMs: number;
  /** Sum of submitGapMs over the steps that had one, and how many did. */
  submitGapMs: number;
  gappedSteps: number;
  /** Steps with queuedBehind. */
  queuedSteps: number;
  /** Last step's batch size and the largest seen. */
  lastBatchSize: number;
  maxBatchSize: number;
  requests: { finished: number; cancelled: number; failed: number; promptTokens: number; completionTokens: number; cachedTokens: number; firstTokenMs: number; totalMs: number };
}

/** The metrics actor's inbox. */
export type MetricsInbox =
  | { kind: 'steps'; samples: StepSample[] }
  | { kind: 'load'; load: SchedulerLoad }
  | { kind: 'request'; sample: RequestSample }
  | { kind: 'snapshot'; reply: (s: MetricsSnapshot) => void };

const IDLE: SchedulerLoad = { kvTotalPages: 0, kvUsedPages: 0, kvEvictablePages: 0, runningRequests: 0, queuedRequests: 0 };

export class MetricsActor {
  private readonly totals: MetricsSnapshot = {
    load: IDLE, steps: 0, prefillTokens: 0, decodeTokens: 0, cacheHitTokens: 0, stepMs: 0, engineBusyMs: 0, submitGapMs: 0,
    gappedSteps: 0, queuedSteps: 0, lastBatchSize: 0, maxBatchSize: 0,
    requests: { finished: 0, cancelled: 0, failed: 0, promptTokens: 0, completionTokens: 0, cachedTokens: 0, firstTokenMs: 0, totalMs: 0 },
  };

  send(m: MetricsInbox): void {
    const t = this.totals;
    switch (m.kind) {
      case 'steps':
        for (const s of m.samples) {
          t.steps++;
          t.prefillTokens += s.prefillTokens;
          t.decodeTokens += s.decodeTokens;
          t.cacheHitTokens += s.cacheHitTokens;
          t.stepMs += s.stepMs;
          t.engineBusyMs += s.engineMs;
          if (s.submitGapMs !== null) {
            t.submitGapMs += s.submitGapMs;
            t.gappedSteps++;
          }
          if (s.queuedBehind) t.queuedSteps++;
          t.lastBatchSize = s.batchSize;
          t.maxBatchSize = Math.max(t.maxBatchSize, s.batchSize);
        }
        return;
      case 'load':
        t.load = m.load;
        return;
      case 'request': {
        const r = t.requests;
        const s = m.sample;
        if (s.finishReason === 'cancelled') r.cancelled++;
        else if (s.finishReason === 'error') r.failed++;
        else r.finished++;
        r.promptTokens += s.promptTokens;
        r.completionTokens += s.completionTokens;
        r.cachedTokens += s.cachedTokens;
        if (s.firstTokenMs !== null) r.firstTokenMs += s.firstTokenMs;
        r.totalMs += s.totalMs;
        return;
      }
      case 'snapshot':
        m.reply({ ...t, load: { ...t.load }, requests: { ...t.requests } });
        return;
      default:
        unreachable(m);
    }
  }

  snapshot(): MetricsSnapshot {
    let out: MetricsSnapshot | undefined;
    this.send({ kind: 'snapshot', reply: (s) => (out = s) });
    return out!;
  }
}

export const IDLE_LOAD: Readonly<SchedulerLoad> = IDLE;

/** One worker's totals over its data-parallel groups' recorders: sums, the largest batch seen, and the load summed
 * (so used over total pages is the worker's KV usage). */
export function mergeSnapshots(snapshots: readonly MetricsSnapshot[]): MetricsSnapshot {
  const sum = (f: (s: MetricsSnapshot) => number) => snapshots.reduce((a, s) => a + f(s), 0);
  const sumLoad = (k: keyof SchedulerLoad) => sum((s) => s.load[k]);
  const sumReq = (k: keyof MetricsSnapshot['requests']) => sum((s) => s.requests[k]);
  return {
    load: {
      kvTotalPages: sumLoad('kvTotalPages'), kvUsedPages: sumLoad('kvUsedPages'), kvEvictablePages: sumLoad('kvEvictablePages'),
      runningRequests: sumLoad('runningRequests'), queuedRequests: sumLoad('queuedRequests'),
    },
    steps: sum((s) => s.steps),
    prefillTokens: sum((s) => s.prefillTokens),
    decodeTokens: sum((s) => s.decodeTokens),
    cacheHitTokens: sum((s) => s.cacheHitTokens),
    stepMs: sum((s) => s.stepMs),
    engineBusyMs: sum((s) => s.engineBusyMs),
    submitGapMs: sum((s) => s.submitGapMs),
    gappedSteps: sum((s) => s.gappedSteps),
    queuedSteps: sum((s) => s.queuedSteps),
    lastBatchSize: sum((s) => s.lastBatchSize),
    maxBatchSize: Math.max(0, ...snapshots.map((s) => s.maxBatchSize)),
    requests: {
      finished: sumReq('finished'), cancelled: sumReq('cancelled'), failed: sumReq('failed'), promptTokens: sumReq('promptTokens'),
      completionTokens: sumReq('completionTokens'), cachedTokens: sumReq('cachedTokens'), firstTokenMs: sumReq('firstTokenMs'), totalMs: sumReq('totalMs'),
    },
  };
}
