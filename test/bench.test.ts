// `dynamo-sglang bench` against a real `dynamo-sglang run` process serving stories260K: a small closed-loop run,
// exact prompt lengths by the served model's tokenizer with no flag, a concurrency sweep with its SVG and PNG chart
// and --compare, Poisson request rate, the chat endpoint, a replayed trace; flag errors, an unreachable URL and
// servers that do not speak OpenAI.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { Value } from '@sinclair/typebox/value';
import { main as bench } from '../src/cli/commands/bench.js';
import { CHART_HEIGHT, CHART_WIDTH } from '../src/bench/chart.js';
import { BenchResultsSchema, type BenchResults, type Distribution } from '../src/bench/results.js';
import { startCli } from './helpers/cli-process.js';

const dir = mkdtempSync(join(tmpdir(), 'bench-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const server = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--device', 'cpu']);
t.teardown(() => server.kill('SIGKILL'));
let url = '';
t.before(async () => {
  [, url] = await server.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/);
});

/** Runs the bench CLI as a process; resolves with its exit code and output. */
async function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = startCli(['bench', '--url', url, '--no-progress', ...args]);
  const exit = await p.exited;
  return { code: exit.code, stdout: p.stdout(), stderr: p.stderr() };
}

function readResults(path: string): BenchResults {
  const parsed: unknown = JSON.parse(readFileSync(path, 'utf8'));
  const first = Value.Errors(BenchResultsSchema, parsed).First();
  if (first) throw new Error(`results JSON ${first.path}: ${first.message}`);
  return parsed as BenchResults;
}

function ordered(t: Test, name: string, d: Distribution | null): void {
  t.ok(d !== null, `${name} present`);
  if (d === null) return;
  t.ok(d.p50 <= d.p90 && d.p90 <= d.p99, `${name} p50 <= p90 <= p99 (${d.p50}, ${d.p90}, ${d.p99})`);
  t.ok(d.mean >= 0 && d.p50 >= 0, `${name} non-negative`);
}

/** Width and height from a PNG's signature and IHDR chunk. */
function pngSize(png: Buffer): { width: number; height: number } {
  if (!png.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10])) || png.toString('latin1', 12, 16) !== 'IHDR') throw new Error('not a PNG');
  return { width: png.readUInt32BE(16), height: png.readUInt32BE(20) };
}

t.test('a small closed-loop run: exact prompt lengths with no tokenizer flag, sane metrics, JSON of the documented shape', async (t) => {
  const json = join(dir, 'small.json');
  const r = await runBench(['--num-prompts', '8', '--concurrency', '4', '--input-len', '16', '--output-len', '12', '--ignore-eos',
    '--json', json, '--progress']);
  t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr})`);
  t.match(r.stdout, /== concurrency 4 ==/);
  t.match(r.stdout, /requests\s+8 completed, 0 failed/);
  t.match(r.stdout, /TTFT\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+/);
  t.match(r.stderr, /concurrency 4: 8\/8/, 'plain progress lines when stderr is not a TTY');

  const res = readResults(json);
  t.equal(res.config.model, 'stories260K', 'model defaults to the first of /v1/models');
  t.equal(res.config.promptTokensMean, 16, 'the served model\'s tokenizer builds prompts of exactly 16 tokens');
  t.match(res.config.tokenizer, /stories260K\.gguf$/, 'found from the served name: the bundled model');
  t.equal(res.label, 'stories260K');
  t.equal(res.runs.length, 1);
  const [run] = res.runs;
  t.same(run.load, { concurrency: 4, requestRate: null });
  const s = run.summary;
  t.equal(s.completed, 8);
  t.equal(s.failed, 0);
  t.equal(s.totalOutputTokens, 8 * 12, 'ignore_eos runs every request to its budget');
  t.ok(run.requests.every((q) => q.outputTokensFrom === 'usage' && q.outputTokens === 12), 'output counts from the usage chunk');
  t.ok(run.requests.every((q) => q.promptTokens !== null && q.promptTokens >= 16 && q.promptTokens <= 17), 'server counts 16 prompt tokens (+ BOS)');
  t.ok(run.requests.every((q) => q.itlMs.length <= 11 && q.itlMs.every((g) => g > 0)), 'at most one gap per token after the first, none 0');
  t.ok((s.itlMs?.p50 ?? 0) > 0, 'ITL p50 is not 0');
  t.ok(s.requestThroughput > 0 && s.outputThroughput > 0 && s.totalThroughput > s.outputThroughput, 'throughputs');
  t.ok(s.inputTokensFromUsage);
  for (const [name, d] of [['TTFT', s.ttftMs], ['TPOT', s.tpotMs], ['ITL', s.itlMs], ['E2E', s.e2eMs]] as const) ordered(t, name, d);
  t.ok((s.ttftMs?.p50 ?? Infinity) <= (s.e2eMs?.p50 ?? 0), 'TTFT below E2E');
  t.equal(s.ttftMs?.count, 8);
  t.equal(s.tpotMs?.count, 8);
});

t.test('a concurrency sweep draws its SVG and PNG chart; --compare overlays saved runs', async (t) => {
  const json = join(dir, 'sweep.json');
  const png = join(dir, 'sweep.png');
  const svg = join(dir, 'sweep.svg');
  const r = await runBench(['--num-prompts', '4', '--concurrency-sweep', '1,2', '--input-len', '8', '--output-len', '6', '--ignore-eos',
    '--warmup', '0', '--json', json, '--png', png, '--svg', svg, '--label', 'sweep', '--card', 'CPU test box']);
  t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr})`);
  t.match(r.stdout, /== sweep \(latencies in ms\) ==/);
  t.match(r.stdout, /\n1\s+4\/0\s/);
  t.match(r.stdout, /\n2\s+4\/0\s/);
  const res = readResults(json);
  t.same(res.runs.map((x) => x.load.concurrency), [1, 2]);
  t.ok(res.runs.every((x) => x.summary.completed === 4 && x.summary.totalOutputTokens === 24));
  t.same(pngSize(readFileSync(png)), { width: CHART_WIDTH, height: CHART_HEIGHT });
  const text = readFileSync(svg, 'utf8');
  for (const field of ['stories260K', 'input 8 / output 6 tokens', 'card CPU test box', res.date.slice(0, 10), `commit ${res.commit ?? 'unknown'}`]) t.ok(text.includes(field), `title names ${field}`);
  t.equal(text.match(/<g class="series" data-run="sweep">/g)?.length, 3, 'one series per panel');

  const both = join(dir, 'both.svg');
  const c = await runBench(['--compare', json, join(dir, 'small.json'), '--svg', both]);
  t.equal(c.code, 0, `compare exits 0 (stderr: ${c.stderr})`);
  const overlaid = readFileSync(both, 'utf8');
  t.equal(overlaid.match(/<g class="series" data-run="sweep">/g)?.length, 3);
  t.equal(overlaid.match(/<g class="series" data-run="stories260K">/g)?.length, 3, 'the second file overlaid');
  const bad = join(dir, 'not-results.json');
  writeFileSync(bad, '{"tool": "other"}');
  const e = await runBench(['--compare', bad, '--svg', both]);
  t.equal(e.code, 2);
  t.match(e.stderr, /--compare .*not-results\.json: not a bench --json result/);
});

t.test('a trace replays at its recorded times, scaled', async (t) => {
  const trace = join(dir, 'trace.jsonl');
  writeFileSync(trace, [0, 100, 300].map((ts) => JSON.stringify({ timestamp: ts, input_length: 10, output_length: 3 })).join('\n'));
  const json = join(dir, 'trace.json');
  const r = await runBench(['--dataset', 'trace', '--dataset-path', trace, '--trace-time-scale', '0.5', '--num-prompts', '3', '--ignore-eos', '--warmup', '0', '--json', json]);
  t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr})`);
  t.match(r.stdout, /== trace replay at 0.5x recorded gaps ==/);
  const run = readResults(json).runs[0];
  t.equal(run.summary.completed, 3);
  t.ok(run.requests.every((q) => q.outputTokens === 3));
  t.ok(run.requests[2].startMs >= 140, `the last starts at 300 ms x 0.5 (${run.requests[2].startMs})`); // scheduled at 150 ms; the start is stamped a little after the timer, from another clock reading
});

t.test('request-rate mode spreads seeded Poisson arrivals; the chat endpoint', async (t) => {
  const json = join(dir, 'rate.json');
  const r = await runBench(['--num-prompts', '6', '--request-rate', '40', '--endpoint', 'chat', '--output-len', '4', '--input-len', '12', '--json', json]);
  t.equal(r.code, 0, `exit 0 (stderr: ${r.stderr})`);
  t.match(r.stdout, /== request rate 40 req\/s \(Poisson\) ==/);
  const res = readResults(json);
  const [run] = res.runs;
  t.same(run.load, { concurrency: null, requestRate: 40 });
  t.equal(run.summary.completed, 6);
  t.equal(res.config.promptTokensMean, 12, 'exact prompt lengths');
  t.ok(run.summary.totalInputTokens > 0);
  const starts = run.requests.map((q) => q.startMs);
  t.ok(starts.every((s, i) => i === 0 || s >= starts[i - 1]), 'requests start in arrival order');
  t.ok(starts[5] - starts[0] > 20, `arrivals spread over time (${starts[5] - starts[0]} ms for 5 gaps at 40/s)`);
});

t.test('Ctrl-C stops a run and reports what finished (exit 130)', async (t) => {
  const json = join(dir, 'interrupted.json');
  const p = startCli(['bench', '--url', url, '--num-prompts', '10', '--concurrency-sweep', '1,2', '--input-len', '8', '--output-len', '400',
    '--ignore-eos', '--warmup', '0', '--json', json]);
  t.teardown(() => p.kill('SIGKILL'));
  await p.waitFor(/concurrency 1: 2\/10/);
  p.kill('SIGINT');
  const exit = await p.exited;
  t.equal(exit.code, 130, `exit 130 (stderr: ${p.stderr()})`);
  t.match(p.stderr(), /interrupted: reporting the requests that finished/);
  t.match(p.stdout(), /== concurrency 1 \(interrupted\) ==/);
  const res = readResults(json);
  t.equal(res.runs.length, 1, 'the sweep stops at the interrupted point');
  t.equal(res.runs[0].interrupted, true);
  const n = res.runs[0].requests.length;
  t.ok(n >= 2 && n < 10, `only finished requests are kept (${n})`);
  t.ok(res.runs[0].requests.every((q) => q.ok && q.outputTokens === 400));
});

t.test('flag errors are usage errors naming the flag (exit 2)', async (t) => {
  const usage = (argv: string[], message: RegExp) => t.rejects(bench(argv), { code: 'LLM_ERR_USAGE', message }, argv.join(' '));
  await usage(['--concurrency', '0'], /--concurrency: expected an integer >= 1, got "0"/);
  await usage(['--request-rate', 'fast'], /--request-rate: expected a number > 0/);
  await usage(['--endpoint', 'images'], /--endpoint: expected one of "completions", "chat", "embeddings"/);
  await usage(['--dataset', 'sharegpt'], /--dataset sharegpt reads a file: give --dataset-path/);
  await usage(['--dataset-path', 'x.json'], /--dataset-path is the file of --dataset sharegpt or trace/);
  await usage(['--trace-time-scale', '2'], /--trace-time-scale applies to --dataset trace/);
  await usage(['--dataset', 'trace', '--dataset-path', 'x', '--request-rate', '3'], /--dataset trace sends at the recorded times: --request-rate does not apply/);
  await usage(['a.json'], /unexpected argument "a.json": result files are read with --compare/);
  await usage(['--compare', 'a.json'], /--compare draws a chart: give --svg and\/or --png/);
  await usage(['--concurrency-sweep', '1,x'], /--concurrency-sweep: expected a comma-separated list of positive integers/);
  await usage(['--concurrency-sweep', '1,4', '--concurrency', '2'], /--concurrency-sweep excludes --concurrency/);
  await usage(['--input-len', '8', '--random-input-len', '9'], /--input-len and --random-input-len exclude each other/);
  await usage(['--random-range-ratio', '0.5'], /--random-range-ratio applies to random lengths/);
  await usage(['--random-input-len', '8', '--random-range-ratio', '1.5'], /--random-range-ratio: expected a number >= 0 and <= 1/);
  await usage(['--url', 'localhost:8000'], /--url: expected an http/);
  await usage(['--tokenizer', join(dir, 'missing.gguf')], /--tokenizer .*missing\.gguf: .*does not exist/);
  await usage(['--concurency', '2'], /unknown flag --concurency; did you mean --concurrency\?/);

  const p = startCli(['bench', '--num-prompts', '-3']);
  const exit = await p.exited;
  t.equal(exit.code, 2, 'exit code 2 from the CLI');
  t.match(p.stderr(), /dynamo-sglang: --num-prompts/);
});

async function listen(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; url: string }> {
  const s = createServer(handler);
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return { server: s, url: `http://127.0.0.1:${(s.address() as AddressInfo).port}` };
}

t.test('an unreachable URL and non-OpenAI servers are named with what was wrong', async (t) => {
  const closed = await listen((_, res) => res.end());
  const closedUrl = closed.url;
  await new Promise((resolve) => closed.server.close(resolve));
  await t.rejects(bench(['--url', closedUrl, '--no-progress']), { message: new RegExp(`cannot reach ${closedUrl}/v1/models: ECONNREFUSED`) });

  const html = await listen((_, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>hello</html>'));
  t.teardown(() => html.server.close());
  await t.rejects(bench(['--url', html.url, '--no-progress']), { message: /\/v1\/models did not return JSON \(not an OpenAI-compatible server\?\): <html>hello<\/html>/ });

  // lists a model, but answers a streamed request with one JSON body instead of SSE
  const unknownModel = await listen((_, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ data: [{ id: 'org/remote-model' }] })));
  t.teardown(() => unknownModel.server.close());
  await t.rejects(bench(['--url', unknownModel.url, '--no-progress']), { message: /cannot count prompt tokens for model "org\/remote-model": it is not a local path; give --model-path .* or --tokenizer/ });

  const noStream = await listen((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(req.url === '/v1/models' ? JSON.stringify({ data: [{ id: 'm' }] }) : JSON.stringify({ choices: [{ text: 'hi' }] }));
  });
  t.teardown(() => noStream.server.close());
  await t.rejects(bench(['--url', noStream.url, '--no-progress', '--num-prompts', '1', '--tokenizer', 'models/stories260K.gguf']), {
    message: /every warm-up request failed; first error: POST http:\/\/127\.0\.0\.1:\d+\/v1\/completions: expected an SSE stream \(content-type text\/event-stream\), got application\/json/,
  });

  // SSE, but the events are not OpenAI chunks
  const wrongSse = await listen((req, res) => {
    if (req.url === '/v1/models') return res.writeHead(200).end(JSON.stringify({ data: [{ id: 'm' }] }));
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.end('data: {"token": "hi"}\n\ndata: [DONE]\n\n');
  });
  t.teardown(() => wrongSse.server.close());
  await t.rejects(bench(['--url', wrongSse.url, '--no-progress', '--num-prompts', '1', '--tokenizer', 'models/stories260K.gguf']), { message: /SSE event is not an OpenAI completion chunk \(needs a "choices" array or "usage"\): \{"token": "hi"\}/ });
});
