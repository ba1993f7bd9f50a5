// A Scheduler over a FakeEngine for scheduler-level tests: every invariant is checked whenever a step executes (the
// scheduler is then between plan and apply), requests run to their finish, and a drained scheduler is checked for
// leaks. Shared by the scheduler, overlap-feedback and disaggregation hand-over tests.
import type { Test } from 'tap';
import { Scheduler, engineExecutor, type RequestOutput, type SchedulerOptions, type SchedulerRequest } from '../../src/scheduler/scheduler.js';
import { FakeEngine, type FakeEngineOptions } from '../fixtures/fake-engine.js';

export const VOCAB = 1000;

export const GREEDY: SchedulerRequest['sampling'] = { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 };

/** A greedy request with no stop conditions but maxTokens (16 unless `over` says otherwise). */
export function schedulerRequest(id: string, prompt: number[], over: Partial<SchedulerRequest> = {}): SchedulerRequest {
  return { id, tokenIds: prompt, maxTokens: 16, minTokens: 0, ignoreEos: false, eosTokenIds: [], stopTokenIds: [], sampling: GREEDY, ...over };
}

export interface SchedulerUnderTest {
  engine: FakeEngine;
  sched: Scheduler;
}

/** Starts a scheduler (stopped at teardown) over a fake engine of 256 pages of 4 tokens unless told otherwise;
 *  `onStep` runs after the integrity check of each step. */
export function startScheduler(
  t: Test,
  engineOpts: Partial<FakeEngineOptions> = {},
  opts: Partial<SchedulerOptions> = {},
  onStep?: (n: number, sched: Scheduler) => void,
): SchedulerUnderTest {
  let sched: Scheduler | undefined;
  const engine = new FakeEngine({
    numPages: 256, pageSize: 4, vocabSize: VOCAB, ...engineOpts,
    onStep: (n, seqs, desc) => {
      sched?.checkIntegrity();
      if (sched) onStep?.(n, sched);
      engineOpts.onStep?.(n, seqs, desc);
    },
  });
  sched = new Scheduler(engineExecutor(engine), {
    maxRunningRequests: 64, chunkedPrefillSize: 8, maxPrefillTokens: 32, maxBatchTokens: 256, maxSeqsPerStep: 128,
    enableOverlap: true, enablePrefixCache: true, ...opts,
  });
  sched.start();
  const s = sched;
  t.teardown(() => s.stop());
  return { engine, sched: s };
}

/** Submits a request and resolves with every output it produced, once it finished. */
export function runRequest(s: Scheduler, req: SchedulerRequest, onOutput?: (o: RequestOutput) => void): Promise<RequestOutput[]> {
  return new Promise((resolve) => {
    const outs: RequestOutput[] = [];
    s.submit(req, (o) => {
      outs.push(o);
      onOutput?.(o);
      if (o.finishReason) resolve(outs);
    });
  });
}

export const tokensOf = (outs: RequestOutput[]): number[] => outs.flatMap((o) => o.tokenIds);

/** After all requests ended: no request holds a page, only the radix cache does; then every page is free. */
export function checkDrained(t: Test, sched: Scheduler): void {
  sched.checkIntegrity();
  t.equal(sched.runningCount + sched.queuedCount, 0, 'no live requests');
  t.equal(sched.allocator.usedCount, sched.cache?.cachedPages ?? 0, 'every used page is a cached page');
  sched.cache?.clear();
  t.equal(sched.allocator.freeCount, sched.allocator.numPages, 'all pages free after clearing the cache');
}
