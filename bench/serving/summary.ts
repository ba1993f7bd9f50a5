// The short tables printed at the end of bench/serving/gpu.sh: offline throughput beside its memory-bandwidth floor
// and the engine's own ceiling (issue 5), the serving sweep with the concurrency-1 goals (issue 7), and how long each
// step of the run took. Reads the files gpu.sh wrote; prints markdown to stdout.
//
//   node --import tsx bench/serving/summary.ts --offline offline.json --sweep sweep.json --bandwidth-gbs N [--bandwidth-source TEXT] --model DIR --steps steps.tsv
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { BenchResults, Distribution } from '../../src/bench/results.js';

/** The fields of bench/offline/run.ts's --out JSON read here. */
interface OfflineResult {
  num: number;
  lengths: [number, number];
  seed: number;
  totalIn: number;
  totalOut: number;
  meanDecodeContext: number;
  floor: { kvBytesPerToken: number; kvBytesRead: number; bandwidthGBs: number; floorTokS: number };
  engine: { ceilingTokS: number; ceilingContext: number; itl1Ms: number } | null;
  actors: { seconds: number; outTokS: number; itl1Ms: number; steps: number; retractions: number; engineBusySeconds: number; schedulerHostSeconds: number };
}

const { values: a } = parseArgs({
  options: {
    offline: { type: 'string' },
    sweep: { type: 'string' },
    'bandwidth-gbs': { type: 'string' },
    'bandwidth-source': { type: 'string', default: 'measured in this run' },
    model: { type: 'string' },
    steps: { type: 'string' },
  },
});

const fmt = (x: number, digits = 0) => x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
/** Signed difference of a ratio from 1, e.g. 1.18 -> "+18.0%". */
const above = (ratio: number) => `${ratio >= 1 ? '+' : ''}${pct(ratio - 1)}`;
const readJson = <T>(path: string | undefined): T | null => (path && existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as T) : null);

/**
 * Longest output of the offline workload, by replaying bench/offline/run.ts's generator (per sequence: input length,
 * output length, then one draw per input token). Null when the replay does not reproduce the run's totals.
 */
function longestOutput(r: OfflineResult): number | null {
  let s = r.seed >>> 0;
  const rand = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const [lo, hi] = r.lengths;
  const uniform = () => lo + Math.floor(rand() * (hi - lo + 1));
  let sumIn = 0;
  let sumOut = 0;
  let longest = 0;
  for (let i = 0; i < r.num; i++) {
    const input = uniform();
    const output = uniform();
    for (let k = 0; k < input; k++) rand();
    sumIn += input;
    sumOut += output;
    longest = Math.max(longest, output);
  }
  return sumIn === r.totalIn && sumOut === r.totalOut ? longest : null;
}

const offline = readJson<OfflineResult>(a.offline);
const engineItl1Ms = offline?.engine?.itl1Ms ?? null;
console.log('### Offline throughput through the Supervisor API (bench/offline/run.ts)\n');
if (!offline) {
  console.log(`no result (${a.offline ?? 'no --offline'} missing): see offline.log\n`);
} else {
  const bw = Number(a['bandwidth-gbs'] ?? offline.floor.bandwidthGBs) * 1e9;
  const weightsFile = a.model ? join(a.model, 'model.safetensors') : null;
  const weightBytes = weightsFile && existsSync(weightsFile) ? statSync(weightsFile).size : 0;
  const longest = longestOutput(offline);
  // Every decode step reads the weights once; the workload needs at least as many steps as its longest output.
  const weightSteps = longest ?? offline.lengths[1];
  const weightBytesRead = weightBytes * weightSteps;
  const kvSeconds = offline.floor.kvBytesRead / bw;
  const allSeconds = (offline.floor.kvBytesRead + weightBytesRead) / bw;
  const floorKv = offline.totalOut / kvSeconds;
  const floorAll = offline.totalOut / allSeconds;
  const out = offline.actors.outTokS;
  console.log(
    `Workload: ${offline.num} sequences, input and output lengths uniform in [${offline.lengths[0]}, ${offline.lengths[1]}], seed ${offline.seed}, ` +
      `ignore_eos, greedy: ${fmt(offline.totalIn)} input and ${fmt(offline.totalOut)} output tokens, mean decode context ${fmt(offline.meanDecodeContext)}.`,
  );
  console.log(
    `Floor: KV read ${fmt(offline.floor.kvBytesPerToken / 1024, 1)} KiB per token per step, summed over every decode step = ` +
      `${(offline.floor.kvBytesRead / 1e12).toFixed(3)} TB; weights ${(weightBytes / 1e9).toFixed(3)} GB x ${fmt(weightSteps)} steps ` +
      `(${longest === null ? 'upper end of the output range: the generator replay did not match' : 'the longest output'}) = ` +
      `${(weightBytesRead / 1e12).toFixed(3)} TB; copy bandwidth ${(bw / 1e12).toFixed(3)} TB/s ${a['bandwidth-source']}. ` +
      `Floor = ${fmt(offline.totalOut)} tokens / ${allSeconds.toFixed(3)} s = ${fmt(floorAll)} tok/s (KV only: ${kvSeconds.toFixed(3)} s, ${fmt(floorKv)} tok/s).\n`,
  );
  console.log('| output tok/s | floor (KV+weights) | % of it | floor (KV only) | % of it | wall | engine busy | scheduler host | steps | retractions | engine batch-N ceiling | % of it |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
  const st = offline.actors;
  const ceiling = offline.engine ? `${fmt(offline.engine.ceilingTokS)} tok/s (batch ${offline.num}, ctx ${offline.engine.ceilingContext})` : 'skipped';
  console.log(
    `| ${fmt(out)} | ${fmt(floorAll)} | ${pct(out / floorAll)} | ${fmt(floorKv)} | ${pct(out / floorKv)} | ${st.seconds.toFixed(2)} s | ` +
      `${st.engineBusySeconds.toFixed(2)} s (${pct(st.engineBusySeconds / st.seconds)}) | ${st.schedulerHostSeconds.toFixed(2)} s | ${st.steps} | ${st.retractions} | ` +
      `${ceiling} | ${offline.engine ? pct(out / offline.engine.ceilingTokS) : '-'} |\n`,
  );
  const itl = engineItl1Ms === null ? `through the actors ${st.itl1Ms.toFixed(3)} ms (engine alone skipped)`
    : `engine alone ${engineItl1Ms.toFixed(3)} ms vs through the actors ${st.itl1Ms.toFixed(3)} ms: ${above(st.itl1Ms / engineItl1Ms)} (goal <= 10%: ${st.itl1Ms <= 1.1 * engineItl1Ms ? 'met' : 'missed'})`;
  console.log(`Batch-1 ITL (128-token prompt, 128 new tokens): ${itl}.\n`);
}

const sweep = readJson<BenchResults>(a.sweep);
console.log('### Serving sweep (`dynamo-sglang bench` against `dynamo-sglang run`)\n');
if (!sweep) {
  console.log(`no result (${a.sweep ?? 'no --sweep'} missing): see bench.log and server.log\n`);
} else {
  const c = sweep.config;
  console.log(`${c.numPrompts} requests per point after ${c.warmup} warm-up, prompt ${c.input.len} tokens${c.tokenizer ? ' (exact, via the model tokenizer)' : ''}, output ${c.output.len}, ignore_eos ${c.ignoreEos}; times in ms.\n`);
  console.log('| conc | ok/fail | req/s | out tok/s | TTFT p50 | TTFT p99 | TPOT p50 | TPOT p99 | ITL p50 | ITL p99 | E2E p50 | E2E p99 |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
  const ms = (d: Distribution | null, k: 'p50' | 'p99') => (d ? d[k].toFixed(2) : '-');
  for (const run of sweep.runs) {
    const s = run.summary;
    console.log(
      `| ${run.load.concurrency ?? 'all'} | ${s.completed}/${s.failed} | ${s.requestThroughput.toFixed(2)} | ${fmt(s.outputThroughput, 1)} | ` +
        `${ms(s.ttftMs, 'p50')} | ${ms(s.ttftMs, 'p99')} | ${ms(s.tpotMs, 'p50')} | ${ms(s.tpotMs, 'p99')} | ${ms(s.itlMs, 'p50')} | ${ms(s.itlMs, 'p99')} | ` +
        `${ms(s.e2eMs, 'p50')} | ${ms(s.e2eMs, 'p99')} |`,
    );
  }
  const errors = sweep.runs.flatMap((r) => r.summary.errors.map((e) => `${e.count}x ${e.message}`));
  if (errors.length) console.log(`\nErrors: ${errors.join('; ')}`);
  const one = sweep.runs.find((r) => r.load.concurrency === 1)?.summary;
  if (one?.ttftMs && one.tpotMs) {
    const ttft = one.ttftMs.p50;
    const tpot = one.tpotMs.p50;
    console.log(`\nConcurrency 1: TTFT p50 ${ttft.toFixed(2)} ms for a ${c.input.len}-token prompt (goal <= 15 ms: ${ttft <= 15 ? 'met' : 'missed'}); ` +
      (engineItl1Ms === null ? `TPOT p50 ${tpot.toFixed(3)} ms (no engine batch-1 ITL to compare).`
        : `TPOT p50 ${tpot.toFixed(3)} ms vs the engine's batch-1 ITL ${engineItl1Ms.toFixed(3)} ms: ${above(tpot / engineItl1Ms)} (goal <= 20%: ${tpot <= 1.2 * engineItl1Ms ? 'met' : 'missed'}).`));
  }
  console.log('');
}

if (a.steps && existsSync(a.steps)) {
  console.log('### Steps\n\n| step | seconds | exit |\n|---|---|---|');
  for (const line of readFileSync(a.steps, 'utf8').trim().split('\n')) {
    const [name, seconds, rc] = line.split('\t');
    console.log(`| ${name} | ${seconds} | ${rc} |`);
  }
}
