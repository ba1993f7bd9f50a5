// `dynamo-sglang bench`: a serving load generator for any OpenAI-compatible endpoint (ours or another engine's).
// Streams every request over SSE and reports TTFT, TPOT, ITL and E2E percentiles and throughput, for one load
// point (concurrency, Poisson request rate, or all at once) or a concurrency sweep; JSON and a PNG chart on request.
import { writeFileSync } from 'node:fs';
import { Type } from '@sinclair/typebox';
import { parseCommandLine, renderHelp, usageError, type FlagSpec } from '../args.js';
import { packageVersion } from '../main.js';
import { LlmError } from '../../errors.js';
import { loadTokenizer, type Tokenizer } from '../../tokenizer/index.js';
import { sweepChartPng } from '../../bench/chart.js';
import { listModels, type Endpoint } from '../../bench/client.js';
import { buildPrompts } from '../../bench/prompts.js';
import { configLine, describeLoad, runBlock, sweepTable } from '../../bench/report.js';
import type { BenchConfig, BenchResults, LengthSpec, LoadShape } from '../../bench/results.js';
import { runLoad, type RunResult, type TargetSettings } from '../../bench/runner.js';
import { logger } from '../../runtime/log.js';

const benchLog = logger('bench');

const G_TARGET = 'Target';
const G_DATA = 'Dataset';
const G_LOAD = 'Load';
const G_SAMPLING = 'Sampling';
const G_OUTPUT = 'Output';
const DEFAULT_LEN = 128;
/** Exit status after Ctrl-C, as shells report a SIGINT death (128 + 2). */
const INTERRUPTED_EXIT = 130;

const Positive = Type.Integer({ minimum: 1 });

export const BENCH_FLAGS: readonly FlagSpec[] = [
  { name: 'url', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'URL', default: 'http://127.0.0.1:8000', defaultText: 'http://127.0.0.1:8000', group: G_TARGET,
    help: 'Base URL of the OpenAI-compatible server (with or without a trailing /v1).' },
  { name: 'model', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'NAME', default: null, defaultText: 'the first of /v1/models', group: G_TARGET,
    help: 'Model name sent with every request.' },
  { name: 'endpoint', kind: 'string', schema: Type.Union([Type.Literal('completions'), Type.Literal('chat')]), valueName: 'KIND', default: 'completions', defaultText: 'completions', group: G_TARGET,
    help: 'Which API to load: /v1/completions or /v1/chat/completions (the prompt as one user message).' },
  { name: 'timeout', kind: 'number', schema: Type.Number({ exclusiveMinimum: 0 }), valueName: 'SECONDS', default: 300, defaultText: '300', group: G_TARGET,
    help: 'Per-request limit; a request past it counts as failed.' },

  { name: 'dataset', kind: 'string', schema: Type.Literal('random'), valueName: 'NAME', default: 'random', defaultText: 'random', group: G_DATA,
    help: 'Where prompts come from: random token ids (with --tokenizer) or random words.' },
  { name: 'num-prompts', kind: 'int', schema: Positive, valueName: 'N', default: 100, defaultText: '100', group: G_DATA,
    help: 'Requests per load point.' },
  { name: 'input-len', kind: 'int', schema: Positive, valueName: 'TOKENS', default: null, defaultText: String(DEFAULT_LEN), group: G_DATA,
    help: 'Fixed prompt length in tokens.' },
  { name: 'output-len', kind: 'int', schema: Positive, valueName: 'TOKENS', default: null, defaultText: String(DEFAULT_LEN), group: G_DATA,
    help: 'Fixed output budget (max_tokens); with --ignore-eos every request produces exactly this many.' },
  { name: 'random-input-len', kind: 'int', schema: Positive, valueName: 'TOKENS', default: null, group: G_DATA,
    help: 'Upper bound of uniformly drawn prompt lengths (see --random-range-ratio).' },
  { name: 'random-output-len', kind: 'int', schema: Positive, valueName: 'TOKENS', default: null, group: G_DATA,
    help: 'Upper bound of uniformly drawn output budgets (see --random-range-ratio).' },
  { name: 'random-range-ratio', kind: 'number', schema: Type.Number({ minimum: 0, maximum: 1 }), valueName: 'R', default: null, defaultText: '0', group: G_DATA,
    help: 'Random lengths are uniform in [max(1, floor(LEN * R)), LEN].' },
  { name: 'tokenizer', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'PATH', default: null, group: G_DATA,
    help: 'Tokenizer (GGUF file, tokenizer.json or an HF directory) to build prompts of exact token counts; without it prompts are random words of approximate length and the real count comes from the server\'s usage.' },

  { name: 'concurrency', aliases: ['max-concurrency'], kind: 'int', schema: Positive, valueName: 'N', default: null, group: G_LOAD,
    help: 'At most N requests in flight (a new one starts when one ends). With --request-rate: a cap on in-flight requests. Without both: all requests at once.' },
  { name: 'request-rate', kind: 'number', schema: Type.Number({ exclusiveMinimum: 0 }), valueName: 'R', default: null, group: G_LOAD,
    help: 'Poisson arrivals at R requests/s (seeded by --seed).' },
  { name: 'concurrency-sweep', kind: 'list', schema: Type.Array(Type.String({ pattern: '^[1-9][0-9]*$' }), { minItems: 1 }), expected: 'a comma-separated list of positive integers', valueName: 'N,N,...', default: null, group: G_LOAD,
    help: 'Run one load point per concurrency, e.g. 1,4,16,64,256 (--num-prompts requests each).' },
  { name: 'warmup', kind: 'int', schema: Type.Integer({ minimum: 0 }), valueName: 'N', default: 1, defaultText: '1', group: G_LOAD,
    help: 'Requests sent and discarded before measuring.' },

  { name: 'ignore-eos', kind: 'bool', schema: Type.Boolean(), default: false, group: G_SAMPLING,
    help: 'Send "ignore_eos": true (an extension field of SGLang, vLLM and ours) so outputs run to their budget.' },
  { name: 'temperature', kind: 'number', schema: Type.Number({ minimum: 0, maximum: 2 }), valueName: 'T', default: 0, defaultText: '0', group: G_SAMPLING,
    help: 'Sampling temperature sent with every request.' },
  { name: 'seed', kind: 'int', schema: Type.Integer({ minimum: 0, maximum: 0xffffffff }), valueName: 'N', default: 0, defaultText: '0', group: G_SAMPLING,
    help: 'Seeds prompts, lengths and arrival times, and is sent as the request "seed".' },

  { name: 'json', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'FILE', default: null, group: G_OUTPUT,
    help: 'Write the full results (config, summaries, every request\'s timings) as JSON.' },
  { name: 'png', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'FILE', default: null, group: G_OUTPUT,
    help: 'Draw the sweep (throughput, TTFT and TPOT vs concurrency) as a PNG; needs --concurrency-sweep.' },
  { name: 'progress', kind: 'bool', schema: Type.Boolean(), default: true, defaultText: 'on', group: G_OUTPUT,
    help: 'Progress on stderr: a bar on a terminal, a line per 10% otherwise.' },
];

interface BenchPlan {
  config: Omit<BenchConfig, 'model' | 'promptTokensMean'> & { model: string | null };
  loads: LoadShape[];
  json: string | null;
  png: string | null;
  progress: boolean;
}

/** Base URL without a trailing slash or /v1; errors name --url. */
function baseUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw usageError(`--url: expected an http(s) URL such as http://127.0.0.1:8000, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usageError(`--url: expected an http:// or https:// URL, got ${JSON.stringify(raw)}`);
  return url.href.replace(/\/+$/, '').replace(/\/v1$/, '');
}

function lengthSpec(v: Record<string, unknown>, which: 'input' | 'output'): LengthSpec {
  const fixed = v[`${which}-len`] as number | null;
  const random = v[`random-${which}-len`] as number | null;
  if (fixed !== null && random !== null) throw usageError(`--${which}-len and --random-${which}-len exclude each other: give a fixed length or a random upper bound`);
  if (random !== null) return { len: random, ratio: (v['random-range-ratio'] as number | null) ?? 0 };
  return { len: fixed ?? DEFAULT_LEN, ratio: 1 };
}

function plan(v: Record<string, unknown>): BenchPlan {
  const input = lengthSpec(v, 'input');
  const output = lengthSpec(v, 'output');
  if (v['random-range-ratio'] !== null && v['random-input-len'] === null && v['random-output-len'] === null) {
    throw usageError('--random-range-ratio applies to random lengths: give --random-input-len and/or --random-output-len');
  }
  const sweep = v['concurrency-sweep'] as string[] | null;
  const concurrency = v['concurrency'] as number | null;
  const rate = v['request-rate'] as number | null;
  if (sweep !== null && (concurrency !== null || rate !== null)) {
    throw usageError(`--concurrency-sweep excludes --${concurrency !== null ? 'concurrency' : 'request-rate'}: the sweep sets the concurrency of each point`);
  }
  if (v['png'] !== null && sweep === null) throw usageError('--png draws a concurrency sweep: give --concurrency-sweep (e.g. 1,4,16)');
  const loads: LoadShape[] = sweep !== null
    ? sweep.map((c) => ({ concurrency: Number(c), requestRate: null }))
    : [{ concurrency, requestRate: rate }];
  return {
    config: {
      url: baseUrl(v['url'] as string),
      model: v['model'] as string | null,
      endpoint: v['endpoint'] as Endpoint,
      dataset: 'random',
      numPrompts: v['num-prompts'] as number,
      input,
      output,
      tokenizer: v['tokenizer'] as string | null,
      ignoreEos: v['ignore-eos'] as boolean,
      temperature: v['temperature'] as number,
      seed: v['seed'] as number,
      warmup: v['warmup'] as number,
      timeoutS: v['timeout'] as number,
    },
    loads,
    json: v['json'] as string | null,
    png: v['png'] as string | null,
    progress: v['progress'] as boolean,
  };
}

function openTokenizer(path: string): Tokenizer {
  try {
    return loadTokenizer(path);
  } catch (err) {
    throw usageError(`--tokenizer ${path}: ${(err as Error).message}`);
  }
}

function writeOutput(path: string, data: string | Buffer, flag: string): void {
  try {
    writeFileSync(path, data);
  } catch (err) {
    throw new LlmError('LLM_ERR_CONFIG', `${flag} ${path}: cannot write: ${(err as Error).message}`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const cl = parseCommandLine(argv, BENCH_FLAGS);
  if (cl.help) {
    const section = (title: string) => ({ title, flags: BENCH_FLAGS.filter((f) => f.group === title) });
    process.stdout.write(renderHelp('dynamo-sglang bench [options]',
      'Serving load generator for any OpenAI-compatible endpoint: streams every request and reports TTFT, TPOT, ITL and E2E (mean, p50, p90, p99), requests/s and output/total tok/s. Example: dynamo-sglang bench --url http://127.0.0.1:8000 --input-len 128 --output-len 128 --ignore-eos --concurrency-sweep 1,4,16 --png sweep.png',
      [G_TARGET, G_DATA, G_LOAD, G_SAMPLING, G_OUTPUT].map(section)));
    return 0;
  }
  const p = plan(cl.values);
  // Ctrl-C stops the benchmark and reports what finished; a second Ctrl-C quits at once (default handler).
  const stop = new AbortController();
  const onInterrupt = () => {
    process.off('SIGINT', onInterrupt);
    benchLog.warn('interrupted: reporting the requests that finished (Ctrl-C again to quit at once)');
    stop.abort();
  };
  process.on('SIGINT', onInterrupt);
  try {
    return await runBenchmark(p, stop.signal);
  } finally {
    process.off('SIGINT', onInterrupt);
  }
}

async function runBenchmark(p: BenchPlan, stop: AbortSignal): Promise<number> {
  const c = p.config;
  const tokenizer = c.tokenizer !== null ? openTokenizer(c.tokenizer) : null;
  const progressSink = p.progress ? process.stderr : null;
  const log = (line: string) => benchLog.info(line);

  let served: string[];
  try {
    served = await listModels(c.url, c.timeoutS * 1000, stop);
  } catch (err) {
    if (stop.aborted) return INTERRUPTED_EXIT;
    throw err;
  }
  let model = c.model;
  if (model === null) {
    if (served.length === 0) throw new LlmError('LLM_ERR_PROTOCOL', `${c.url}/v1/models lists no models; name one with --model`);
    model = served[0];
  } else if (!served.includes(model)) {
    log(`warning: ${c.url}/v1/models does not list "${model}" (it lists: ${served.join(', ') || 'none'})`);
  }

  const prompts = buildPrompts(c.numPrompts, c.input, c.output, c.seed, tokenizer);
  const counted = prompts.map((x) => x.promptTokens).filter((x): x is number => x !== null);
  const config: BenchConfig = { ...c, model, promptTokensMean: counted.length ? counted.reduce((s, x) => s + x, 0) / counted.length : null };
  const target: TargetSettings = { url: c.url, endpoint: c.endpoint, model, temperature: c.temperature, seed: c.seed, ignoreEos: c.ignoreEos, timeoutMs: c.timeoutS * 1000 };
  log(`bench: ${configLine(config)}`);

  if (c.warmup > 0) {
    const warm = buildPrompts(c.warmup, c.input, c.output, c.seed + 1, tokenizer);
    const firstConcurrency = p.loads[0].concurrency ?? c.warmup;
    const w = await runLoad(target, warm, { concurrency: Math.min(firstConcurrency, c.warmup), requestRate: null }, { sink: progressSink, label: 'warm-up' }, c.seed, stop);
    if (stop.aborted) return INTERRUPTED_EXIT;
    if (w.summary.completed === 0) {
      throw new LlmError('LLM_ERR_PROTOCOL', `every warm-up request failed; first error: ${w.summary.errors[0]?.message ?? 'unknown'}`);
    }
  }

  const started = new Date();
  const runs: RunResult[] = [];
  for (const load of p.loads) {
    if (stop.aborted) break;
    if (load.concurrency !== null && load.concurrency > c.numPrompts) log(`note: ${describeLoad(load)} with only ${c.numPrompts} prompts never fills up; raise --num-prompts`);
    runs.push(await runLoad(target, prompts, load, { sink: progressSink, label: describeLoad(load) }, c.seed, stop));
  }

  if (runs.length === 0) return INTERRUPTED_EXIT;
  const blocks = runs.map((r) => runBlock(r.load, r.summary, r.interrupted));
  const text = [`Benchmark: ${configLine(config)}`, '', blocks.join('\n\n')];
  if (runs.length > 1) text.push('', '== sweep (latencies in ms) ==', sweepTable(runs));
  process.stdout.write(`${text.join('\n')}\n`);

  if (p.json !== null) {
    const results: BenchResults = { tool: 'dynamo-sglang bench', version: packageVersion(), date: started.toISOString(), config, runs };
    writeOutput(p.json, `${JSON.stringify(results, null, 2)}\n`, '--json');
    log(`wrote ${p.json}`);
  }
  if (p.png !== null) {
    writeOutput(p.png, sweepChartPng(runs.map((r) => ({ concurrency: r.load.concurrency as number, summary: r.summary }))), '--png');
    log(`wrote ${p.png}`);
  }
  if (stop.aborted) return INTERRUPTED_EXIT;
  const completed = runs.reduce((s, r) => s + r.summary.completed, 0);
  if (completed === 0) {
    log(`bench: every request failed; first error: ${runs[0].summary.errors[0]?.message ?? 'unknown'}`);
    return 1;
  }
  return 0;
}
