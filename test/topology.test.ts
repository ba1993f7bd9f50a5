// The topology (src/topology): the actor graph built from the config (per serving mode and TP size), and
// tensor-parallel groups of rank actors running a fake engine: every rank receives every step (the same descriptor), only rank 0's tokens are reported, and a rank
// that fails to start, crashes, hangs or fails a step fails every in-flight stream with a coded error naming it,
// after which the whole group (scheduler + every rank) is aborted and restarted together.
import t, { type Test } from 'tap';
import { resolveConfig } from '../src/config/resolve.js';
import { createServer } from 'node:net';
import { buildTopology } from '../src/topology/topology.js';
import { startTopology } from '../src/topology/start.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { Supervisor, type SupervisorConfig } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { FakeEngineInit } from './fixtures/fake-engine-module.js';
import { referenceOutput } from './fixtures/fake-engine.js';
import { collect } from './helpers/streams.js';

const VOCAB = 500;
const fakeModule = new URL('./fixtures/fake-engine-module.ts', import.meta.url).href;
// The instance the supervisor loads (by URL), so that its record of aborted groups is the one read here.
const { abortedGroups } = (await import(fakeModule)) as typeof import('./fixtures/fake-engine-module.js');

async function start(t: Test, tpSize: number, fake: Partial<FakeEngineInit> = {}, extra: Partial<SupervisorConfig> = {}): Promise<Supervisor> {
  const init: FakeEngineInit = { numPages: 128, pageSize: 4, vocabSize: VOCAB, lockstep: new SharedArrayBuffer(4 * tpSize), ...fake };
  const sup = await Supervisor.start({
    modelPath: 'fake', engineFactory: { module: fakeModule, init }, tpSize, maxRunningRequests: 32, chunkedPrefillSize: 16, ...extra,
  });
  t.teardown(() => sup.stop());
  return sup;
}

const request = (tokenIds: number[], maxTokens: number): PreprocessedRequest => ({
  token_ids: tokenIds, stop_conditions: { max_tokens: maxTokens }, sampling_options: { temperature: 0 }, eos_token_ids: [],
});
const prompt = (seed: number, len: number) => Array.from({ length: len }, (_, i) => (seed * 31 + i * 7) % VOCAB);
const tokens = async (sup: Supervisor, p: number[], n: number) => (await collect(sup.generate(request(p, n)))).flatMap((c) => c.token_ids);

t.test('buildTopology: one rank per TP rank on baseGpuId + rank; the Supervisor alone has no worker nodes', async (t) => {
  const config: SupervisorConfig = { modelPath: 'm', device: 'cuda', tpSize: 4, baseGpuId: 2, pageSize: 16, maxRunningRequests: 8, chunkedPrefillSize: 16 };
  const g = buildTopology(config);
  t.equal(g.cores.length, 1, 'one data-parallel group by default');
  const core = g.cores[0];
  t.equal(core.dpRank, 0);
  t.same(core.ranks.map((r) => [r.rank, r.deviceId, r.tp]), [0, 1, 2, 3].map((rank) => [rank, 2 + rank, { rank, size: 4 }]));
  t.ok(core.ranks.every((r) => /rank-engine\.ts$/.test(r.engineModule)), 'the native engine factory by default');
  t.match(core.ranks[3].engineInit, { modelPath: 'm', device: 'cuda', options: { pageSize: 16, maxSeqsPerStep: 8 } }, 'every rank opens the same model');
  t.match(core.scheduler.options, { maxRunningRequests: 8, chunkedPrefillSize: 16 });
  t.equal(core.config.tpSize, 4, 'the resolved config the supervisor follows');
  t.same([g.metrics, g.tokenizer, g.kvTransfer], [{ fedBy: 'cores[dpRank].scheduler' }, null, null]);
  t.same(buildTopology({ ...config, tpSize: 1, baseGpuId: 0 }).cores[0].ranks.map((r) => [r.deviceId, r.tp]), [[0, null]], 'one rank: no TP group');
  t.throws(() => buildTopology({ ...config, tpSize: 0 }), { code: 'LLM_ERR_CONFIG', message: /tp size must be an integer >= 1, got 0/ });
  t.throws(() => buildTopology({ ...config, baseGpuId: -1 }), { code: 'LLM_ERR_CONFIG', message: /base GPU id .* got -1/ });
  t.throws(() => buildTopology({ ...config, dpSize: 0 }), { code: 'LLM_ERR_CONFIG', message: /dp size must be an integer >= 1, got 0/ });
});

t.test('buildTopology across nodes: every data-parallel group spans the nodes on its own ports; devices are node-local', async (t) => {
  const config: SupervisorConfig = { modelPath: 'm', device: 'cpu', tpSize: 4, dpSize: 2, nnodes: 2, nodeRank: 1, distInitAddr: '10.0.0.1:29500', baseGpuId: 0 };
  const g = buildTopology(config);
  t.same(g.cores.map((c) => c.multiNode), [0, 1].map((d) => ({ nnodes: 2, nodeRank: 1, distInitAddr: `10.0.0.1:${29500 + 2 * d}` })));
  // node 1 runs ranks 2 and 3 of each group: group d's on its devices d*2 + 0, 1
  t.same(g.cores.map((c) => c.ranks.slice(2).map((r) => r.deviceId)), [[0, 1], [2, 3]]);
  t.throws(() => buildTopology({ ...config, distInitAddr: '10.0.0.1:65533' }), { code: 'LLM_ERR_CONFIG', message: /PORT in \[1, 65532\] \(the 4 ports from PORT on/ });
  t.throws(() => buildTopology({ ...config, distInitAddr: null }), { code: 'LLM_ERR_CONFIG', message: /--nnodes 2 needs --dist-init-addr HOST:PORT/ });
  t.match(g.cores[0].ranks[0].engineInit, { ranksPerNode: 2 }, 'a rank knows how many of its group share its node');
  t.same(buildTopology({ ...config, disableCustomAllReduce: true }).cores[0].ranks[1].tp, { rank: 1, size: 4, customAllReduce: false }, '--disable-custom-all-reduce reaches the ranks');
});

t.test('buildTopology: --dp-size 3 --tp-size 2 gives three cores, dp rank d on devices baseGpuId + d * 2 + r', async (t) => {
  const g = buildTopology({ modelPath: 'm', device: 'cuda', tpSize: 2, dpSize: 3, baseGpuId: 1 });
  t.same(g.cores.map((c) => [c.dpRank, c.ranks.map((r) => [r.rank, r.deviceId, r.tp])]), [0, 1, 2].map((d) => [d, [0, 1].map((r) => [r, 1 + 2 * d + r, { rank: r, size: 2 }])]));
  const config = resolveConfig(['--model-path', 'models/m.gguf', '--dp-size', '2', '--disaggregation-mode', 'prefill', '--disaggregation-transfer-backend', 'tcp'], {});
  t.throws(() => buildTopology(config), { code: 'LLM_ERR_CONFIG', message: /--dp-size 2 with --disaggregation-mode prefill: .*aggregated workers only/ });
});

// A worker's graph per serving mode and TP size, as data: the core, the recorder, the tokenizer, and for prefill /
// decode the KV sender / receiver attached to the core's KV port.
for (const mode of ['aggregated', 'prefill', 'decode'] as const) {
  for (const tpSize of [1, 2]) {
    t.test(`buildTopology: the ${mode} worker's graph at TP ${tpSize}`, async (t) => {
      const flags = mode === 'aggregated' ? [] : ['--disaggregation-mode', mode, '--disaggregation-transfer-backend', 'tcp'];
      const port = mode === 'prefill' ? ['--disaggregation-bootstrap-port', '8998'] : [];
      const config = resolveConfig(['--model-path', 'models/m.gguf', '--tokenizer-path', 'tok.json', '--tp-size', String(tpSize), ...flags, ...port], {});
      const g = buildTopology(config);
      t.same(
        { ...g, cores: g.cores.map((c) => c.ranks.map((r) => ({ deviceId: r.deviceId, tp: r.tp }))) },
        {
          cores: [Array.from({ length: tpSize }, (_, rank) => ({ deviceId: rank, tp: tpSize > 1 ? { rank, size: tpSize } : null }))],
          metrics: { fedBy: 'cores[dpRank].scheduler' },
          tokenizer: { modelPath: 'models/m.gguf', tokenizerPath: 'tok.json' },
          kvTransfer: {
            aggregated: null,
            prefill: { role: 'sender', transferBackend: 'tcp', bootstrapPort: 8998, attachedTo: 'cores[0].kv' },
            decode: { role: 'receiver', transferBackend: 'tcp', bootstrapPort: null, attachedTo: 'cores[0].kv' },
          }[mode],
        },
      );
    });
  }
}

t.test('startTopology: a prefill worker\'s graph at TP 2 starts every node it lists and stops them all', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  t.teardown(() => discovery.close());
  const config = resolveConfig(['--model-path', 'models/stories260K.gguf', '--disaggregation-mode', 'prefill', '--disaggregation-transfer-backend', 'tcp', '--tp-size', '2'], {});
  const init: FakeEngineInit = { numPages: 64, pageSize: 4, vocabSize: VOCAB, lockstep: new SharedArrayBuffer(8) };
  const graph = buildTopology({ ...config, engineFactory: { module: fakeModule, init } });
  const running = await startTopology(graph, { config, discovery, log: () => undefined });
  t.equal(running.graph, graph);
  t.equal(running.core.core.ranks.length, 2, 'the core: two ranks');
  t.same(running.groups, [running.core], 'one group: the core');
  t.equal(running.tokenizer?.bosTokenId, 1, 'the tokenizer, loaded');
  const port = running.kvTransfer?.sender?.port;
  t.ok(port, 'the KV sender listens');
  t.same(await tokens(running.core, prompt(1, 5), 3), referenceOutput(prompt(1, 5), { maxTokens: 3, vocabSize: VOCAB }));
  await running.stop();
  await t.rejects(tokens(running.core, prompt(1, 5), 3), { code: 'LLM_ERR_SHUTDOWN' }, 'the core stopped');
  const reuse = createServer();
  await new Promise<void>((resolve, reject) => reuse.once('error', reject).listen(port, resolve));
  reuse.close();
  t.pass('the KV sender\'s port is free again');
});

t.test('startTopology: a tokenizer that does not load fails the start with its error', async (t) => {
  const config = resolveConfig(['--model-path', 'models/stories260K.gguf', '--tokenizer-path', 'no-such-tokenizer.json'], {});
  await t.rejects(startTopology(buildTopology(config), null), /no-such-tokenizer/);
});

for (const tpSize of [2, 4]) {
  for (const overlap of [false, true]) {
    t.test(`TP ${tpSize}${overlap ? ' (overlap, pipelined steps)' : ''}: every rank runs every step, outputs come from rank 0`, async (t) => {
      const stepLog = new SharedArrayBuffer(8 * tpSize);
      const sup = await start(t, tpSize, { stepLog, pipelined: overlap }, { disableOverlapSchedule: !overlap });
      t.equal(sup.core.ranks.length, tpSize);
      const ps = Array.from({ length: 6 }, (_, i) => prompt(i + 1, 5 + 3 * i));
      const outs = await Promise.all(ps.map((p) => tokens(sup, p, 12)));
      outs.forEach((o, i) => t.same(o, referenceOutput(ps[i], { maxTokens: 12, vocabSize: VOCAB }), `request ${i}: rank 0's tokens`));
      const log = new Int32Array(stepLog);
      const steps = sup.metrics.snapshot().steps;
      // Rank 0 answered the last step; the others may still be finishing it.
      for (let waited = 0; waited < 2000 && Array.from({ length: tpSize }, (_, r) => log[2 * r]).some((n) => n < steps); waited += 10) {
        await new Promise((r) => setTimeout(r, 10));
      }
      for (let r = 0; r < tpSize; r++) t.equal(log[2 * r], steps, `rank ${r} ran all ${steps} steps`);
      // Without overlap no placeholder is resolved per rank, so every rank's descriptors are word for word the same.
      if (!overlap) for (let r = 1; r < tpSize; r++) t.equal(log[2 * r + 1], log[1], `rank ${r} got the same descriptors as rank 0`);
      await sup.scheduler.checkIntegrity();
    });
  }
}

for (const [fault, code] of [
  ['exitAtStep', 'LLM_ERR_ACTOR_CRASHED'],
  ['hangAtStep', 'LLM_ERR_ACTOR_HUNG'],
  ['failAtStep', 'LLM_ERR_DEVICE'],
] as const) {
  t.test(`TP 2: rank 1 ${fault} mid-stream fails every stream with ${code} naming rank 1; the group restarts`, async (t) => {
    const sup = await start(t, 2, { [fault]: 4, faultRank: 1 }, { stepTimeoutMs: 800 });
    const group = sup.core.group;
    const streams = Array.from({ length: 4 }, (_, i) => collect(sup.generate(request(prompt(i, 12), 40))));
    for (const s of await Promise.allSettled(streams)) {
      t.equal(s.status, 'rejected');
      if (s.status === 'rejected') t.match(s.reason, { code, rank: 1 }, String(s.reason));
    }
    // A one-step request fits before the restarted group's own fault step.
    t.same(await tokens(sup, prompt(9, 3), 1), referenceOutput(prompt(9, 3), { maxTokens: 1, vocabSize: VOCAB }), 'the restarted group serves');
    t.ok(abortedGroups.some((a) => a.group === group), 'the failed group was aborted');
    t.not(sup.core.group, group, 'the restarted group has a new name');
    t.equal(sup.core.ranks.length, 2);
  });
}

t.test('a rank (or the scheduler) that fails to start fails the start naming it, and the group is aborted', async (t) => {
  const before = abortedGroups.length;
  await t.rejects(start(t, 2, { failStartRank: 1 }), { code: 'LLM_ERR_DEVICE', rank: 1, message: /fake device 1 failed to open/ });
  t.equal(abortedGroups.length, before + 1, 'abortGroup was called once');
  // long enough for rank 0 to open on a busy machine: only the hanging rank may be named
  await t.rejects(start(t, 2, { hangStartRank: 1 }, { startTimeoutMs: 12_000 }), { code: 'LLM_ERR_ACTOR_HUNG', rank: 1, message: /rank 1 did not open its engine within 12000 ms/ });
  t.equal(abortedGroups.length, before + 2, 'and again for the rank that hung');
  await t.rejects(start(t, 2, {}, { maxPrefillTokens: 0 }), { code: 'LLM_ERR_CONFIG', message: /--max-prefill-tokens must be a positive integer, got 0/ }, 'the scheduler refusing its options: a coded error across comlink');
  await t.rejects(start(t, 4, { smallerPoolRank: 2 }), { code: 'LLM_ERR_CONFIG', rank: 2, message: /rank 2's KV pool \(127 pages of 4 tokens\) differs from rank 0's \(128 pages of 4\)/ });
});

t.test('KV page operations are refused with a clear error under TP', async (t) => {
  const sup = await start(t, 2);
  await t.rejects(sup.disaggKv({ op: 'ipc', request: { op: 'export' } }), { code: 'LLM_ERR_KV_TRANSFER', message: /tensor parallelism \(tp size 2\)/ });
});
