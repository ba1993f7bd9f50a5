// `dynamo-sglang bench`: a serving load generator for any OpenAI-compatible endpoint (ours or another engine's).
// Streams every request over SSE and reports TTFT, TPOT, ITL and E2E percentiles and throughput, for one load
// point (concurrency, Poisson request rate, a replayed trace, or all at once) or a concurrency sweep; embeddings
// requests give requests/s and latency. JSON, an SVG and a PNG chart on request; `--compare` overlays saved runs.
//
// Prompt tokens are always counted by the served model's own tokenizer, loaded locally: from --tokenizer or
// --model-path, else from the served model id when it is a local path (our default served name) or the bundled
// model. Loading the same files the server loaded works against any OpenAI-compatible server, needs no endpoint
// that only ours would have, and counts exactly; when none is found the bench says what to pass instead of
// guessing lengths.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Value } from '@sinclair/typebox/value';
import { Type } from '@sinclair/typebox';
import { parseCommandLine, renderHelp, usageError, type FlagSpec } from '../args.js';
import { packageVersion } from '../main.js';
import { LlmError } from '../../errors.js';
import { loadTokenizer, type Tokenizer } from '../../tokenizer/index.js';
import { benchChartSvg, svgToPng, type ChartRun } from '../../bench/chart.js';
import { listModels, type Endpoint } from '../../bench/client.js';
import { loadShareGpt, loadTrace } from '../../bench/datasets.js';
import { buildPrompts, type PromptSpec } from '../../bench/prompts.js';
import { configLine, describeLoad, runBlock, sweepTable } from '../../bench/report.js';
import { BenchResultsSchema, type BenchConfig, type BenchResults, type LengthSpec, type LoadShape } from '../../bench/results.js';
import { runLoad, type RunResult, type TargetSettings } from '../../bench/runner.js';
import { bundledModel } from './run.js';
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
  { name: 'endpoint', kind: 'string', schema: Type.Union([Type.Literal('completions'), Type.Literal('chat'), Type.Literal('embeddings')]), valueName: 'KIND', default: 'completions', defaultText: 'completions', group: G_TARGET,
    help: 'Which API to load: /v1/completions, /v1/chat/completions (the prompt as one user message) or /v1/embeddings (the prompt as the input; requests/s and latency).' },
  { name: 'timeout', kind: 'number', schema: Type.Number({ exclusiveMinimum: 0 }), valueName: 'SECONDS', default: 300, defaultText: '300', group: G_TARGET,
    help: 'Per-request limit; a request past it counts as failed.' },

  { name: 'dataset', kind: 'string', schema: Type.Union([Type.Literal('random'), Type.Literal('sharegpt'), Type.Literal('trace')]), valueName: 'NAME', default: 'random', defaultText: 'random', group: G_DATA,
    help: 'Where prompts come from: random (random tokens of --input-len), sharegpt (a ShareGPT JSON file: the first human turn is the prompt, the gpt answer\'s token count the output length) or trace (JSONL lines {"timestamp": ms, "input_length" or "prompt", "output_length"}, sent at the recorded times).' },
  { name: 'dataset-path', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'FILE', default: null, group: G_DATA,
    help: 'The file of --dataset sharegpt or trace.' },
  { name: 'trace-time-scale', kind: 'number', schema: Type.Number({ exclusiveMinimum: 0 }), valueName: 'F', default: null, defaultText: '1', group: G_DATA,
    help: 'Replaying a trace: multiply the recorded gaps by F (0.5 sends twice as fast).' },
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
  { name: 'model-path', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'PATH', default: null, defaultText: 'the served model id when it is a local path', group: G_DATA,
    help: 'The served model (the same --model-path the server got: GGUF file or HF directory); its tokenizer counts prompt tokens exactly.' },
  { name: 'tokenizer', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'PATH', default: null, group: G_DATA,
    help: 'A tokenizer (GGUF file, tokenizer.json or an HF directory) instead of the model\'s, when the server was given one.' },

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
  { name: 'svg', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'FILE', default: null, group: G_OUTPUT,
    help: 'Chart as SVG: a title block (model, lengths, card, date, commit), throughput, TTFT and ITL (or, for embeddings, requests/s and latency) against the load.' },
  { name: 'png', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'FILE', default: null, group: G_OUTPUT,
    help: 'The same chart as PNG.' },
  { name: 'compare', kind: 'bool', schema: Type.Boolean(), default: false, group: G_OUTPUT,
    help: 'Send nothing: overlay the result files given as arguments (written by --json) in one chart (--svg, --png), one series per file.' },
  { name: 'label', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'NAME', default: null, defaultText: 'the model name', group: G_OUTPUT,
    help: 'This run\'s name in charts and in its JSON.' },
  { name: 'card', kind: 'string', schema: Type.String({ minLength: 1 }), valueName: 'TEXT', default: null, group: G_OUTPUT,
    help: 'The server\'s accelerator or machine (e.g. "H100 80GB"), recorded in the JSON and the chart title.' },
  { name: 'progress', kind: 'bool', schema: Type.Boolean(), default: true, defaultText: 'on', group: G_OUTPUT,
    help: 'Progress on stderr: a bar on a terminal, a line per 10% otherwise.' },
];

interface BenchPlan {
  config: Omit<BenchConfig, 'model' | 'promptTokensMean' | 'tokenizer'> & { model: string | null };
  tokenizerPath: string | null;
  modelPath: string | null;
  traceTimeScale: number;
  loads: LoadShape[];
  json: string | null;
  svg: string | null;
  png: string | null;
  label: string | null;
  card: string | null;
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
  const dataset = v['dataset'] as BenchConfig['dataset'];
  const datasetPath = v['dataset-path'] as string | null;
  if (dataset !== 'random' && datasetPath === null) throw usageError(`--dataset ${dataset} reads a file: give --dataset-path`);
  if (dataset === 'random' && datasetPath !== null) throw usageError('--dataset-path is the file of --dataset sharegpt or trace');
  const scale = v['trace-time-scale'] as number | null;
  if (scale !== null && dataset !== 'trace') throw usageError('--trace-time-scale applies to --dataset trace');
  if (dataset === 'trace' && (sweep !== null || rate !== null)) throw usageError(`--dataset trace sends at the recorded times: --${sweep !== null ? 'concurrency-sweep' : 'request-rate'} does not apply`);
  const endpoint = v['endpoint'] as Endpoint;
  if (endpoint === 'embeddings' && dataset !== 'random') throw usageError('--endpoint embeddings takes --dataset random (inputs of --input-len tokens)');
  const loads: LoadShape[] = sweep !== null
    ? sweep.map((c) => ({ concurrency: Number(c), requestRate: null }))
    : dataset === 'trace' ? [{ concurrency, requestRate: null, traceTimeScale: scale ?? 1 }] : [{ concurrency, requestRate: rate }];
  return {
    config: {
      url: baseUrl(v['url'] as string),
      model: v['model'] as string | null,
      endpoint,
      dataset,
      datasetPath,
      numPrompts: v['num-prompts'] as number,
      input,
      output,
      ignoreEos: v['ignore-eos'] as boolean,
      temperature: v['temperature'] as number,
      seed: v['seed'] as number,
      warmup: v['warmup'] as number,
      timeoutS: v['timeout'] as number,
    },
    tokenizerPath: v['tokenizer'] as string | null,
    modelPath: v['model-path'] as string | null,
    traceTimeScale: scale ?? 1,
    loads,
    json: v['json'] as string | null,
    svg: v['svg'] as string | null,
    png: v['png'] as string | null,
    label: v['label'] as string | null,
    card: v['card'] as string | null,
    progress: v['progress'] as boolean,
  };
}

function openTokenizer(path: string, flag: string): Tokenizer {
  try {
    return loadTokenizer(path);
  } catch (err) {
    throw usageError(`${flag} ${path}: ${(err as Error).message}`);
  }
}

/** The served model's tokenizer and where it came from (see the header comment for the order). */
function givenTokenizer(p: BenchPlan): { tokenizer: Tokenizer; source: string } | null {
  if (p.tokenizerPath !== null) return { tokenizer: openTokenizer(p.tokenizerPath, '--tokenizer'), source: p.tokenizerPath };
  if (p.modelPath !== null) return { tokenizer: openTokenizer(p.modelPath, '--model-path'), source: p.modelPath };
  return null;
}

async function servedTokenizer(model: string): Promise<{ tokenizer: Tokenizer; source: string }> {
  if (existsSync(model)) return { tokenizer: openTokenizer(model, `the served model id (a local path; pass --model-path to override)`), source: model };
  if (model === 'stories260K') {
    // the name `run` gives the bundled model
    const bundled = await bundledModel();
    if (existsSync(bundled)) return { tokenizer: openTokenizer(bundled, 'the bundled model'), source: bundled };
  }
  throw usageError(`cannot count prompt tokens for model "${model}": it is not a local path; give --model-path (the files the server loaded) or --tokenizer`);
}

/** The short commit of the checkout the bench runs from, when it is a git checkout. */
function currentCommit(): string | null {
  try {
    const here = dirname(fileURLToPath(import.meta.url));
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: here, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim() || null;
  } catch {
    return null;
  }
}

function readResultsFile(path: string): BenchResults {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw usageError(`--compare ${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : (err as Error).message}`);
  }
  const first = Value.Errors(BenchResultsSchema, parsed).First();
  if (first) throw usageError(`--compare ${path}: not a bench --json result (${first.path || '/'}: ${first.message})`);
  return parsed as BenchResults;
}

function writeCharts(p: { svg: string | null; png: string | null }, runs: ChartRun[], log: (line: string) => void): void {
  if (p.svg === null && p.png === null) return;
  const svg = benchChartSvg(runs);
  if (p.svg !== null) {
    writeOutput(p.svg, svg, '--svg');
    log(`wrote ${p.svg}`);
  }
  if (p.png !== null) {
    writeOutput(p.png, svgToPng(svg), '--png');
    log(`wrote ${p.png}`);
  }
}

function compare(files: string[], v: Record<string, unknown>): number {
  if (files.length === 0) throw usageError('--compare takes the result files to overlay, e.g. --compare a.json b.json --png ab.png');
  const svg = v['svg'] as string | null;
  const png = v['png'] as string | null;
  if (svg === null && png === null) throw usageError('--compare draws a chart: give --svg and/or --png');
  const runs = files.map((f) => {
    const results = readResultsFile(f);
    return { label: results.label ?? f, results };
  });
  writeCharts({ svg, png }, runs, (line) => process.stderr.write(`${line}\n`));
  return 0;
}

function writeOutput(path: string, data: string | Buffer, flag: string): void {
  try {
    writeFileSync(path, data);
  } catch (err) {
    throw new LlmError('LLM_ERR_CONFIG', `${flag} ${path}: cannot write: ${(err as Error).message}`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const cl = parseCommandLine(argv, BENCH_FLAGS, { maxPositionals: Number.MAX_SAFE_INTEGER });
  if (cl.help) {
    const section = (title: string) => ({ title, flags: BENCH_FLAGS.filter((f) => f.group === title) });
    process.stdout.write(renderHelp('dynamo-sglang bench [options]',
      'Serving load generator for any OpenAI-compatible endpoint: streams every request and reports TTFT, TPOT, ITL and E2E (mean, p50, p90, p99), requests/s and output/total tok/s. Example: dynamo-sglang bench --url http://127.0.0.1:8000 --input-len 128 --output-len 128 --ignore-eos --concurrency-sweep 1,4,16 --json a.json --png sweep.png; later: dynamo-sglang bench --compare a.json b.json --svg ab.svg',
      [G_TARGET, G_DATA, G_LOAD, G_SAMPLING, G_OUTPUT].map(section)));
    return 0;
  }
  if (cl.values['compare'] === true) return compare(cl.positionals, cl.values);
  if (cl.positionals.length > 0) throw usageError(`unexpected argument ${JSON.stringify(cl.positionals[0])}: result files are read with --compare`);
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
  // a tokenizer named by a flag is checked before anything is sent
  const given = givenTokenizer(p);
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

  const { tokenizer, source } = given ?? await servedTokenizer(model);
  let prompts: PromptSpec[];
  if (c.dataset === 'sharegpt') prompts = loadShareGpt(c.datasetPath as string, c.numPrompts, tokenizer);
  else if (c.dataset === 'trace') prompts = loadTrace(c.datasetPath as string, c.numPrompts, p.traceTimeScale, tokenizer, c.seed);
  else prompts = buildPrompts(c.numPrompts, c.input, c.output, c.seed, tokenizer);
  const config: BenchConfig = { ...c, model, tokenizer: source, promptTokensMean: prompts.reduce((s, x) => s + x.promptTokens, 0) / prompts.length };
  const target: TargetSettings = { url: c.url, endpoint: c.endpoint, model, temperature: c.temperature, seed: c.seed, ignoreEos: c.ignoreEos, timeoutMs: c.timeoutS * 1000 };
  log(`bench: ${configLine(config)}`);

  if (c.warmup > 0) {
    // warm-up prompts are random ones of the configured lengths (for file datasets: of the first prompt's)
    const warmIn = c.dataset === 'random' ? c.input : { len: prompts[0].promptTokens || 1, ratio: 1 };
    const warmOut = c.dataset === 'random' ? c.output : { len: prompts[0].maxTokens, ratio: 1 };
    const warm = buildPrompts(c.warmup, warmIn, warmOut, c.seed + 1, tokenizer);
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

  const results: BenchResults = {
    tool: 'dynamo-sglang bench', version: packageVersion(), date: started.toISOString(),
    label: p.label ?? model, card: p.card, commit: currentCommit(), config, runs,
  };
  if (p.json !== null) {
    writeOutput(p.json, `${JSON.stringify(results, null, 2)}\n`, '--json');
    log(`wrote ${p.json}`);
  }
  writeCharts(p, [{ label: results.label ?? model, results }], log);
  if (stop.aborted) return INTERRUPTED_EXIT;
  const completed = runs.reduce((s, r) => s + r.summary.completed, 0);
  if (completed === 0) {
    log(`bench: every request failed; first error: ${runs[0].summary.errors[0]?.message ?? 'unknown'}`);
    return 1;
  }
  return 0;
}
