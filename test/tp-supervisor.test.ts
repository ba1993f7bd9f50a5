// Tensor parallelism end to end through the Supervisor, on the CPU backend's real engine: `tpSize: N` is all it
// takes. Greedy output of concurrent requests is the same at TP 1, 2 and 4 (the overlap-scheduled, pipelined path);
// a --tp-size that does not divide the heads is refused at start naming the numbers; a rank that exits or stops
// answering mid-stream fails the in-flight streams with a coded error naming it, the group (left blocked in its
// collectives) is aborted and restarted together, and the next request is served with the same output.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { Supervisor } from '../actors/supervisor.js';
import type { RankEngineInit } from '../actors/rank-engine.js';
import { LlmError } from '../src/errors.js';
import type { FaultyRankInit } from './fixtures/faulty-rank-engine.js';
import { PROMPTS, tinyGroup, tokensOf } from './helpers/tiny-group.js';

const { dir, modelPath, base } = tinyGroup('tp-supervisor-', (fn) => t.teardown(fn));

async function greedyOutputs(tpSize: number): Promise<number[][]> {
  const sup = await Supervisor.start({ ...base, tpSize });
  try {
    return await Promise.all(PROMPTS.map((p) => tokensOf(sup, p, 12)));
  } finally {
    await sup.stop();
  }
}

t.test('greedy output of concurrent requests is the same at TP 1, 2 and 4', async (t) => {
  const tp1 = await greedyOutputs(1);
  t.equal(tp1.length, PROMPTS.length);
  tp1.forEach((o) => t.equal(o.length, 12));
  t.same(await greedyOutputs(2), tp1, 'TP 2');
  t.same(await greedyOutputs(4), tp1, 'TP 4');
});

t.test('a --tp-size that does not divide the attention heads is refused at start, naming the numbers', async (t) => {
  const err = await Supervisor.start({ ...base, tpSize: 3 }).then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof LlmError, 'a coded error');
  t.equal((err as LlmError).code, 'LLM_ERR_CONFIG');
  t.match((err as LlmError).message, /--tp-size 3/);
  t.match((err as LlmError).message, /4 attention heads/);
});

for (const fault of ['exit', 'hang'] as const) {
  t.test(`rank 1 that ${fault === 'exit' ? 'exits' : 'stops answering'} mid-stream: streams fail naming it, the group restarts`, async (t) => {
    const onceFile = join(dir, `fault-${fault}`);
    const engine: RankEngineInit = {
      modelPath, device: 'cpu', options: { pageSize: 4, numPages: 96, memFractionStatic: 0.5, maxBatchTokens: 72, maxSeqsPerStep: 8, threads: 1 }, ranksPerNode: 2,
    };
    const init: FaultyRankInit = { engine, faultRank: 1, faultAtStep: 6, fault, onceFile };
    const sup = await Supervisor.start({
      ...base, tpSize: 2, stepTimeoutMs: fault === 'hang' ? 1500 : 20_000,
      engineFactory: { module: new URL('./fixtures/faulty-rank-engine.ts', import.meta.url).href, init },
    });
    t.teardown(() => sup.stop());
    const firstGroup = sup.core.group;
    const errors = await Promise.all(PROMPTS.map((p) => tokensOf(sup, p, 40).then(() => null, (e: unknown) => e)));
    t.ok(existsSync(onceFile), 'the fault fired');
    for (const err of errors) {
      t.ok(err instanceof LlmError, 'the stream failed with a coded error');
      const e = err as LlmError;
      t.equal(e.code, fault === 'exit' ? 'LLM_ERR_ACTOR_CRASHED' : 'LLM_ERR_ACTOR_HUNG');
      t.equal(e.rank, 1, 'naming rank 1');
      t.match(e.message, /rank 1/);
    }
    // The restarted group serves, with the output a clean TP 2 group gives.
    const after = await tokensOf(sup, PROMPTS[0], 12);
    t.not(sup.core.group, firstGroup, 'a new group');
    const clean = await greedyOutputs(2);
    t.same(after, clean[0]);
  });
}
