// Offline throughput through the programmatic API: N sequences (default 256) with input and output lengths uniform
// in [min, max] (default [100, 1024]), a fixed seed, ignore_eos, greedy, all submitted at once. Reports output tok/s
// beside the workload's memory-bandwidth floor (the KV-cache bytes every decode step must read plus the weights every
// forward pass reads, over at least max(output) passes; the KV-only figure beside it), the engine's own
// batch-N decode ceiling (steps driven directly and pipelined as the rank does, no scheduler, no actors), and batch-1
// inter-token latency through the actors vs. the engine alone.
//
//   npx tsx bench/offline/run.ts (--model PATH | --make-shape qwen3-0.6b) [--device cuda] [--num 256] [--min 100] [--max 1024] [--seed 1]
//     [--bandwidth-gbs 3350] [--mem-fraction 0.85] [--num-pages N] [--page-size 16] [--chunked-prefill-size N] [--disable-overlap]
//     [--skip-engine] [--out results.json]
import { mkdtempSync, writeFileSync } from 'node:fs';
import { packFor } from '../../src/engine/step.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openEngine } from '../../src/engine/engine.js';
import { MODEL_SHAPE_NAMES, makeModel, type ModelShapeName } from '../../src/engine/make-model.js';
import { loadModelSpec } from '../../src/engine/model.js';
import type { BackendKind, Engine, SamplingParams, SeqStep } from '../../src/engine/types.js';
import { placeholderFor } from '../../src/scheduler/placeholder.js';
import { Supervisor } from '../../src/supervisor.js';

const { values: a } = parseArgs({
  options: {
    model: { type: 'string' },
    'make-shape': { type: 'string' },
    device: { type: 'string', default: 'cuda' },
    num: { type: 'string', default: '256' },
    min: { type: 'string', default: '100' },
    max: { type: 'string', default: '1024' },
    seed: { type: 'string', default: '1' },
    'bandwidth-gbs': { type: 'string', default: '3350' },
    'mem-fraction': { type: 'string', default: '0.85' },
    'num-pages': { type: 'string' },
    'page-size': { type: 'string', default: '16' },
    'chunked-prefill-size': { type: 'string' },
    'cpu-threads': { type: 'string' },
    'disable-overlap': { type: 'boolean', default: false },
    'skip-engine': { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
const shape = a['make-shape'];
if (shape !== undefined) {
  if (!(MODEL_SHAPE_NAMES as readonly string[]).includes(shape)) throw new Error(`--make-shape: one of ${MODEL_SHAPE_NAMES.join(', ')}`);
  // Random bf16 weights of the real shape: speed does not depend on the values.
  a.model = makeModel({ shape: shape as ModelShapeName, seed: 1, outDir: join(mkdtempSync(join(tmpdir(), 'offline-')), shape) }).dir;
}
if (!a.model) throw new Error('--model PATH or --make-shape NAME is required');
const device = a.device as BackendKind;
const num = Number(a.num);
const [minLen, maxLen] = [Number(a.min), Number(a.max)];
const pageSize = Number(a['page-size']);
const numPages = a['num-pages'] ? Number(a['num-pages']) : undefined;
const memFraction = Number(a['mem-fraction']);
const threads = a['cpu-threads'] ? Number(a['cpu-threads']) : undefined;
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 };

// ---- the workload
let s = Number(a.seed) >>> 0;
const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
const spec = await loadModelSpec(a.model);
const uniform = () => minLen + Math.floor(rand() * (maxLen - minLen + 1));
const work = Array.from({ length: num }, () => {
  const input = uniform();
  const output = uniform();
  return { tokens: Array.from({ length: input }, () => 3 + Math.floor(rand() * (spec.vocabSize - 3))), output };
});
const totalIn = work.reduce((n, w) => n + w.tokens.length, 0);
const totalOut = work.reduce((n, w) => n + w.output, 0);
// Decode step k of a sequence with input I reads the KV of I + k tokens.
const sumContext = work.reduce((n, w) => n + w.output * w.tokens.length + (w.output * (w.output - 1)) / 2, 0);
const meanContext = sumContext / totalOut;

// ---- the engine alone: batch-N decode ceiling and batch-1 ITL
async function engineAlone() {
  const engine = openEngine(spec, {
    backend: device, deviceId: 0, pageSize, ...(numPages ? { numPages } : {}), memFractionStatic: memFraction,
    maxBatchTokens: 16384 + num, maxSeqsPerStep: num, ...(threads ? { threads } : {}),
  });
  try {
    const ctx = Math.round(meanContext);
    const decodeSteps = 32;
    const ceiling = decodeRate(engine, num, ctx, decodeSteps);
    const itl1 = decodeRate(engine, 1, 128, 128);
    return { ceilingTokS: ceiling.tokPerS, ceilingContext: ctx, itl1Ms: itl1.msPerStep };
  } finally {
    engine.close();
  }
}

/** Prefills `batch` sequences of `ctx` tokens, then times `steps` decode steps of all of them. */
function decodeRate(engine: Engine, batch: number, ctx: number, steps: number) {
  const P = engine.kv.pageSize;
  const perSeq = Math.ceil((ctx + steps + 1) / P);
  if (perSeq * batch > engine.kv.numPages) throw new Error(`KV pool too small: ${perSeq * batch} pages needed, ${engine.kv.numPages} exist`);
  const pages = Array.from({ length: batch }, (_, b) => Array.from({ length: perSeq }, (_, i) => b * perSeq + i));
  const last = new Array<number>(batch).fill(0);
  const group = Math.max(1, Math.floor(16384 / ctx));
  for (let b0 = 0; b0 < batch; b0 += group) {
    const seqs: SeqStep[] = [];
    for (let b = b0; b < Math.min(batch, b0 + group); b++) {
      const tokenIds = Int32Array.from({ length: ctx }, (_, i) => 3 + ((b * 7919 + i * 104729) % (spec.vocabSize - 3)));
      seqs.push({ tokenIds, startPos: 0, pages: pages[b].slice(0, Math.ceil(ctx / P)), sample: true, sampling: greedy, outputIndex: 0 });
    }
    const r = engine.step(packFor(engine, seqs));
    seqs.forEach((_, k) => (last[b0 + k] = r.tokens[k]));
  }
  const decodeStep = (k: number, input: (b: number) => number): SeqStep[] =>
    last.map((_, b) => ({
      tokenIds: Int32Array.of(input(b)), startPos: ctx + k, pages: pages[b].slice(0, Math.ceil((ctx + k + 1) / P)), sample: true, sampling: greedy, outputIndex: k + 1,
    }));
  let t0 = 0;
  if (engine.stepBegin && engine.stepEnd) {
    // The engine at its best, as the rank drives it: step k + 1 begun before step k ends, its tokens fed from k's
    // samples on the device (placeholders).
    engine.stepBegin(packFor(engine, decodeStep(0, (b) => last[b]), { placeholders: true }));
    for (let k = 1; k <= steps; k++) {
      engine.stepBegin(packFor(engine, decodeStep(k, placeholderFor), { placeholders: true }));
      engine.stepEnd();
      if (k === 1) t0 = performance.now(); // step 0 warms up
    }
    engine.stepEnd();
  } else {
    for (let k = 0; k <= steps; k++) {
      if (k === 1) t0 = performance.now(); // step 0 warms up
      const r = engine.step(packFor(engine, decodeStep(k, (b) => last[b])));
      last.forEach((_, b) => (last[b] = r.tokens[b]));
    }
  }
  const ms = performance.now() - t0;
  return { tokPerS: (batch * steps * 1000) / ms, msPerStep: ms / steps };
}

// ---- through the actors
async function throughActors() {
  const sup = await Supervisor.start({
    modelPath: a.model!, device, pageSize, numPages: numPages ?? null, memFractionStatic: memFraction, maxRunningRequests: num,
    disableOverlapSchedule: a['disable-overlap'], cpuThreads: threads ?? null, startTimeoutMs: 600_000, stepTimeoutMs: 600_000,
    ...(a['chunked-prefill-size'] ? { chunkedPrefillSize: Number(a['chunked-prefill-size']) } : {}),
  });
  try {
    const request = (tokens: number[], maxTokens: number) => ({
      token_ids: tokens, stop_conditions: { max_tokens: maxTokens, ignore_eos: true }, sampling_options: { temperature: 0 }, eos_token_ids: [],
    });
    // batch-1 inter-token latency (a warm-up request first)
    for await (const _ of sup.generate(request(work[0].tokens.slice(0, 128), 8)));
    const stamps: number[] = [];
    const itl1Before = sup.metrics.snapshot();
    for await (const c of sup.generate(request(work[1].tokens.slice(0, 128), 129))) if (c.token_ids.length) stamps.push(performance.now());
    const itl1Ms = (stamps.at(-1)! - stamps[1]) / (stamps.length - 2);
    // Per batch-1 step, on the scheduler's thread: submission to result minus the engine's own time (two thread hops,
    // packing), and the gap from a result to the next submission (the scheduler's part of the critical path).
    const itl1After = sup.metrics.snapshot();
    const itl1Steps = itl1After.steps - itl1Before.steps;
    // The engine's own time per step inside the rank: above the engine-alone ITL means the engine itself runs slower
    // when driven through the actors (idle gaps between steps), not host overhead.
    const itl1EngineMs = (itl1After.engineBusyMs - itl1Before.engineBusyMs) / itl1Steps;
    const itl1HostMs = (itl1After.stepMs - itl1Before.stepMs) / itl1Steps - itl1EngineMs;
    const itl1SubmitGapUs = (1000 * (itl1After.submitGapMs - itl1Before.submitGapMs)) / Math.max(1, itl1After.gappedSteps - itl1Before.gappedSteps);
    const before = { ...sup.scheduler.stats };
    const metricsBefore = sup.metrics.snapshot();
    const t0 = performance.now();
    let produced = 0;
    await Promise.all(
      work.map(async (w) => {
        for await (const c of sup.generate(request(w.tokens, w.output))) produced += c.token_ids.length;
      }),
    );
    const seconds = (performance.now() - t0) / 1000;
    const st = sup.scheduler.stats;
    const m = sup.metrics.snapshot();
    const steps = m.steps - metricsBefore.steps;
    return {
      seconds, produced, outTokS: produced / seconds, totalTokS: (produced + totalIn) / seconds, itl1Ms, itl1EngineMs, itl1HostMs, itl1SubmitGapUs,
      steps: st.steps - before.steps, retractions: st.retractions - before.retractions, kv: sup.engine.kv,
      // Where the wall time went: the engine inside the rank, and the scheduler's own planning/applying.
      engineBusySeconds: (m.engineBusyMs - metricsBefore.engineBusyMs) / 1000,
      schedulerHostSeconds: (st.hostMs - before.hostMs) / 1000,
      // Per step, on the scheduler's thread: submission (or the previous result, when later) to result minus the
      // engine's own time (thread hops, packing), and the rank's wait between engine steps (the critical path).
      hostOverheadPerStepMs: ((m.stepMs - metricsBefore.stepMs) - (m.engineBusyMs - metricsBefore.engineBusyMs)) / steps,
      submitGapUs: (1000 * (m.submitGapMs - metricsBefore.submitGapMs)) / Math.max(1, m.gappedSteps - metricsBefore.gappedSteps),
    };
  } finally {
    await sup.stop();
  }
}

const engine = a['skip-engine'] ? null : await engineAlone();
const actors = await throughActors();
const kvBytesPerToken = actors.kv.bytesPerPage / actors.kv.pageSize;
const kvBytesRead = sumContext * kvBytesPerToken;
// Every forward pass also reads the weights once (bf16 on the device), and a sequence makes one output token per
// pass, so the run needs at least max(output) passes. The embedding table is only gathered from, unless tied (then
// it is the lm_head, read in full).
const weightBytesPerPass = spec.tensors.reduce(
  (n, t) => (t.name === 'model.embed_tokens.weight' && !spec.tieWordEmbeddings ? n : n + 2 * t.shape.reduce((x, y) => x * y, 1)), 0);
const minPasses = work.reduce((n, w) => Math.max(n, w.output), 0);
const weightBytesRead = minPasses * weightBytesPerPass;
const bandwidth = Number(a['bandwidth-gbs']) * 1e9;
const floorTokS = totalOut / ((kvBytesRead + weightBytesRead) / bandwidth);
const kvOnlyFloorTokS = totalOut / (kvBytesRead / bandwidth);
const result = {
  model: a.model, device, num, lengths: [minLen, maxLen], seed: Number(a.seed), overlap: !a['disable-overlap'],
  totalIn, totalOut, meanDecodeContext: Math.round(meanContext),
  floor: {
    kvBytesPerToken, kvBytesRead, weightBytesPerPass, minPasses, weightBytesRead, bandwidthGBs: Number(a['bandwidth-gbs']),
    floorTokS: Math.round(floorTokS), kvOnlyFloorTokS: Math.round(kvOnlyFloorTokS),
  },
  engine, actors: { ...actors, outTokS: Math.round(actors.outTokS), totalTokS: Math.round(actors.totalTokS) },
  ofFloor: +(actors.outTokS / floorTokS).toFixed(3),
  ofKvOnlyFloor: +(actors.outTokS / kvOnlyFloorTokS).toFixed(3),
  ofEngineCeiling: engine ? +(actors.outTokS / engine.ceilingTokS).toFixed(3) : null,
};
if (a.out) writeFileSync(a.out, JSON.stringify(result, null, 2));
console.log(JSON.stringify(result, null, 2));
console.log(
  `| ${num} seqs [${minLen},${maxLen}] | ${Math.round(actors.outTokS)} out tok/s | floor ${Math.round(floorTokS)} ` +
    `((${(kvBytesRead / 1e12).toFixed(2)} TB KV + ${minPasses} passes x ${(weightBytesPerPass / 1e9).toFixed(3)} GB weights = ` +
    `${((kvBytesRead + weightBytesRead) / 1e12).toFixed(2)} TB) at ${a['bandwidth-gbs']} GB/s) | ${(100 * result.ofFloor).toFixed(1)}% of floor ` +
    `(${(100 * result.ofKvOnlyFloor).toFixed(1)}% of the KV-only ${Math.round(kvOnlyFloorTokS)}) | ` +
    `engine busy ${actors.engineBusySeconds.toFixed(2)} s, scheduler ${actors.schedulerHostSeconds.toFixed(2)} s of ${actors.seconds.toFixed(2)} s | ` +
    (engine ? `engine batch-${num} ceiling ${Math.round(engine.ceilingTokS)} tok/s at ctx ${engine.ceilingContext} | ITL1 engine ${engine.itl1Ms.toFixed(2)} ms vs actors ${actors.itl1Ms.toFixed(2)} ms |` : `ITL1 actors ${actors.itl1Ms.toFixed(2)} ms |`) +
    ` batch-1 step in the rank's engine ${actors.itl1EngineMs.toFixed(3)} ms, outside it ${(1000 * actors.itl1HostMs).toFixed(0)} us, result to next step ${actors.itl1SubmitGapUs.toFixed(0)} us |`,
);
