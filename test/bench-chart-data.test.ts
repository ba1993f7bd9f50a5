// bench without a server of ours: per-token ITL when a server packs several tokens into one write, the
// embeddings client against a fake of OpenAI's /v1/embeddings, the SVG/PNG chart of overlaid runs, and the
// ShareGPT and trace datasets with their errors.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import t from 'tap';
import { setTimeout as delay } from 'node:timers/promises';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { timedRequest, type RequestParams } from '../src/bench/client.js';
import { summarize } from '../src/bench/metrics.js';
import { benchChartSvg, CHART_HEIGHT, CHART_WIDTH, svgToPng } from '../src/bench/chart.js';
import { loadShareGpt, loadTrace } from '../src/bench/datasets.js';
import type { BenchResults, RequestRecord } from '../src/bench/results.js';
import { readFileSync } from 'node:fs';
import { main as bench } from '../src/cli/commands/bench.js';

const dir = mkdtempSync(join(tmpdir(), 'bench-data-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const tok = loadTokenizer('models/stories260K.gguf');

async function listen(handler: (body: string, res: ServerResponse) => void): Promise<string> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => handler(body, res));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const sse = (e: unknown) => `data: ${JSON.stringify(e)}\n\n`;
const chunk = (text: string, usage?: number) => ({ choices: [{ index: 0, text }], ...(usage !== undefined ? { usage: { prompt_tokens: 3, completion_tokens: usage } } : {}) });

function params(url: string, over: Partial<RequestParams> = {}): RequestParams {
  return { url, endpoint: 'completions', model: 'm', prompt: 'hi', maxTokens: 8, temperature: 0, seed: 0, ignoreEos: false, timeoutMs: 5000, ...over };
}

t.test('ITL is per token and never 0 when several tokens come in one write', async (t) => {
  // three writes of 1, 3 and 2 events, 40 ms apart; within a write the events coalesce into one read
  const url = await listen(async (_, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(sse(chunk('Once')));
    await delay(40);
    res.write(sse(chunk(' upon')) + sse(chunk(' a')) + sse(chunk(' time')));
    await delay(40);
    res.write(sse(chunk(' there')) + sse(chunk(' was')));
    res.end(sse({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 6 } }) + 'data: [DONE]\n\n');
  });
  const r = await timedRequest(params(url), performance.now());
  t.equal(r.ok, true, r.error ?? '');
  t.equal(r.outputTokens, 6);
  t.equal(r.itlMs.length, 5, 'one gap per token after the first');
  t.ok(r.itlMs.every((g) => g > 0), `no zero gaps: ${r.itlMs.map((g) => g.toFixed(2)).join(', ')}`);
  t.equal(r.itlMs[0], r.itlMs[2], 'a read\'s gap is spread evenly over its tokens');
  const s = summarize([r], 1, [3]);
  t.ok((s.itlMs?.p50 ?? 0) > 0, 'ITL p50 is not 0');
});

t.test('a chunk carrying k tokens counts k by the streamed usage, else one per event', async (t) => {
  const url = await listen(async (_, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(sse(chunk('Once', 1)));
    await delay(30);
    res.write(sse(chunk(' upon a time', 4)));
    res.end(`${sse({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 4 } })}data: [DONE]\n\n`);
  });
  const byUsage = await timedRequest(params(url), performance.now());
  t.equal(byUsage.itlMs.length, 3, 'cumulative usage 1 -> 4: three tokens in the second chunk');
  t.ok(byUsage.itlMs.every((g) => g > 0));

  // without usage in each chunk, every content event is one token
  const url2 = await listen(async (_, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(sse(chunk('Once')));
    await delay(30);
    res.end(`${sse(chunk(' upon a time'))}data: [DONE]\n\n`);
  });
  const byEvents = await timedRequest(params(url2), performance.now());
  t.equal(byEvents.itlMs.length, 1);
  t.equal(byEvents.outputTokens, 2, 'without usage the output count is one per content event');
});

t.test('embeddings: posts the input, reads OpenAI\'s response shape, times the request', async (t) => {
  let seen: unknown = null;
  const url = await listen((body, res) => {
    seen = JSON.parse(body);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({
      object: 'list',
      data: [{ object: 'embedding', embedding: [0.1, -0.2, 0.3], index: 0 }],
      model: 'emb',
      usage: { prompt_tokens: 7, total_tokens: 7 },
    }));
  });
  const r = await timedRequest(params(url, { endpoint: 'embeddings', model: 'emb', prompt: 'one two three' }), performance.now());
  t.match(r, { ok: true, promptTokens: 7, outputTokens: 0, ttftMs: null });
  t.ok((r.e2eMs ?? -1) >= 0);
  t.match(seen, { model: 'emb', input: 'one two three' });
  const s = summarize([r], 1, [7]);
  t.equal(s.requestThroughput, 1);
  t.equal(s.ttftMs, null);
  t.ok(s.e2eMs !== null);

  const badUrl = await listen((_, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ object: 'list', data: [{ embedding: [1] }] }));
  });
  const bad = await timedRequest(params(badUrl, { endpoint: 'embeddings' }), performance.now());
  t.equal(bad.ok, false);
  t.match(bad.error, /\/v1\/embeddings: not an OpenAI embeddings response/);
});

t.test('bench --endpoint embeddings: inputs of exact token lengths, requests/s and latency, a chart', async (t) => {
  const inputs: string[] = [];
  const url = await listen((body, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    if (body === '') return res.end(JSON.stringify({ object: 'list', data: [{ id: 'emb', object: 'model', created: 0, owned_by: 'test' }] }));
    const req = JSON.parse(body) as { input: string };
    inputs.push(req.input);
    const n = tok.encode(req.input, { addSpecialTokens: false }).length;
    res.end(JSON.stringify({ object: 'list', data: [{ object: 'embedding', embedding: [0.5, 0.5], index: 0 }], model: 'emb', usage: { prompt_tokens: n, total_tokens: n } }));
  });
  const json = join(dir, 'emb.json');
  const svg = join(dir, 'emb.svg');
  const code = await bench(['--url', url, '--endpoint', 'embeddings', '--tokenizer', 'models/stories260K.gguf', '--input-len', '24', '--num-prompts', '5',
    '--concurrency', '2', '--warmup', '0', '--no-progress', '--json', json, '--svg', svg]);
  t.equal(code, 0);
  t.equal(inputs.length, 5);
  t.ok(inputs.every((x) => tok.encode(x, { addSpecialTokens: false }).length === 24), 'every input is 24 tokens');
  const res = JSON.parse(readFileSync(json, 'utf8')) as BenchResults;
  const s = res.runs[0].summary;
  t.equal(s.completed, 5);
  t.equal(s.totalInputTokens, 5 * 24);
  t.ok(s.requestThroughput > 0 && s.e2eMs !== null && s.ttftMs === null);
  const chart = readFileSync(svg, 'utf8');
  t.ok(chart.includes('Requests / s') && chart.includes('input 24 tokens') && chart.includes('/v1/embeddings'));
});

function results(label: string, card: string, commit: string, ttft: number): BenchResults {
  const rec = (c: number): RequestRecord => ({ ok: true, error: null, startMs: 0, ttftMs: ttft * c, e2eMs: ttft * c + 100, itlMs: [2 * c, 3 * c], promptTokens: 128, outputTokens: 16, outputTokensFrom: 'usage' });
  return {
    tool: 'dynamo-sglang bench', version: '0.0.0', date: '2026-12-08T03:00:00.000Z', label, card, commit,
    config: {
      url: 'http://x', model: 'Qwen3-0.6B', endpoint: 'completions', dataset: 'random', numPrompts: 8,
      input: { len: 128, ratio: 1 }, output: { len: 16, ratio: 1 }, tokenizer: 'models/x', ignoreEos: true,
      temperature: 0, seed: 0, warmup: 0, timeoutS: 10, promptTokensMean: 128,
    },
    runs: [1, 4, 16].map((c) => ({ load: { concurrency: c, requestRate: null }, interrupted: false, summary: summarize([rec(c)], 1, [128]), requests: [rec(c)] })),
  };
}

/** Decodes a PNG far enough to prove it is one: chunk CRCs, IHDR, and IDAT inflating to the image's size. */
function decodePng(png: Buffer): { width: number; height: number } {
  if (!png.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]))) throw new Error('no PNG signature');
  let off = 8;
  let width = 0;
  let height = 0;
  let bytesPerPixel = 0;
  const idat: Buffer[] = [];
  while (off < png.length) {
    const len = png.readUInt32BE(off);
    const type = png.toString('latin1', off + 4, off + 8);
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      bytesPerPixel = { 2: 3, 6: 4, 0: 1, 4: 2 }[data[9]] ?? 0;
      if (data[8] !== 8 || bytesPerPixel === 0) throw new Error(`unexpected PNG format ${data[8]}/${data[9]}`);
    }
    if (type === 'IDAT') idat.push(data);
    off += 12 + len;
    if (type === 'IEND') break;
  }
  const raw = inflateSync(Buffer.concat(idat));
  if (raw.length !== height * (1 + width * bytesPerPixel)) throw new Error(`IDAT holds ${raw.length} bytes, not ${height} rows of ${width} pixels`);
  return { width, height };
}

t.test('the chart: a title block with model, lengths, card, date, commit; one series per run; PNG decodes', async (t) => {
  const svg = benchChartSvg([
    { label: 'main', results: results('main', 'H100 80GB', 'abc1234', 10) },
    { label: 'branch', results: results('branch', 'H200', 'def5678', 7) },
  ]);
  for (const field of ['Qwen3-0.6B', 'input 128 / output 16 tokens', 'card H100 80GB', 'card H200', '2026-12-08 03:00', 'commit abc1234', 'commit def5678']) {
    t.ok(svg.includes(field), `title block names ${field}`);
  }
  for (const panel of ['Output tokens / s', 'TTFT p50, p99 (ms)', 'ITL p50, p99 (ms)', 'concurrency']) t.ok(svg.includes(panel), `has ${panel}`);
  t.equal(svg.match(/<g class="series" data-run="main">/g)?.length, 3, 'the first run: one series in each of 3 panels');
  t.equal(svg.match(/<g class="series" data-run="branch">/g)?.length, 3, 'the second run overlaid in each panel');
  t.same(decodePng(svgToPng(svg)), { width: CHART_WIDTH, height: CHART_HEIGHT });

  const rate = results('rate', 'x', 'y', 1);
  rate.runs[0].load = { concurrency: null, requestRate: 2 };
  t.throws(() => benchChartSvg([{ label: 'a', results: rate }]), /cannot overlay runs whose load is measured differently/);
});

t.test('ShareGPT: first human turn is the prompt, the gpt answer\'s tokens the output length; bad entries named', async (t) => {
  const file = join(dir, 'sharegpt.json');
  writeFileSync(file, JSON.stringify([
    { id: 'a', conversations: [{ from: 'human', value: 'Tell me a story.' }, { from: 'gpt', value: 'Once upon a time there was a cat.' }] },
    { id: 'b', conversations: [{ from: 'gpt', value: 'skipped: starts with gpt' }] },
    { id: 'c', conversations: [{ from: 'human', value: 'Hi' }, { from: 'gpt', value: 'Hello there' }, { from: 'human', value: 'more' }] },
  ]));
  const prompts = loadShareGpt(file, 2, tok);
  t.equal(prompts.length, 2);
  t.equal(prompts[0].prompt, 'Tell me a story.');
  t.equal(prompts[0].maxTokens, tok.encode('Once upon a time there was a cat.', { addSpecialTokens: false }).length);
  t.equal(prompts[0].promptTokens, tok.encode('Tell me a story.', { addSpecialTokens: false }).length);
  t.equal(prompts[1].prompt, 'Hi');
  t.throws(() => loadShareGpt(file, 3, tok), { message: `--dataset-path ${file}: only 2 usable conversations, --num-prompts asks for 3` });

  const bad = join(dir, 'bad.json');
  writeFileSync(bad, JSON.stringify([{ conversations: [{ from: 'human', value: 'x' }, { from: 'gpt', value: 'y' }] }, { conversations: [{ from: 'human', value: 3 }] }]));
  t.throws(() => loadShareGpt(bad, 5, tok), { message: `--dataset-path ${bad}: entry 1, turn 0: expected {"from": string, "value": string}` });
  writeFileSync(bad, '{"not": "an array"}');
  t.throws(() => loadShareGpt(bad, 1, tok), /--dataset-path .*bad\.json: expected a ShareGPT JSON array/);
  writeFileSync(bad, '[{"conversations": [}');
  t.throws(() => loadShareGpt(bad, 1, tok), /--dataset-path .*bad\.json: not JSON/);
  t.throws(() => loadShareGpt(join(dir, 'missing.json'), 1, tok), /--dataset-path .*missing\.json: cannot read/);
});

t.test('traces: arrivals from timestamps (scaled), exact input lengths or given prompts; bad lines named', async (t) => {
  const file = join(dir, 'trace.jsonl');
  writeFileSync(file, [
    '{"timestamp": 1000, "input_length": 12, "output_length": 5, "hash_ids": [1, 2]}',
    '',
    '{"timestamp": 1500, "prompt": "Once upon a time", "output_length": 3}',
    '{"timestamp": 3000, "input_length": 20, "output_length": 7}',
  ].join('\n'));
  const prompts = loadTrace(file, 3, 0.5, tok, 0);
  t.same(prompts.map((p) => p.arrivalMs), [0, 250, 1000], 'relative to the first, times the scale');
  t.same(prompts.map((p) => p.maxTokens), [5, 3, 7]);
  t.equal(prompts[0].promptTokens, 12);
  t.equal(tok.encode(prompts[0].prompt, { addSpecialTokens: false }).length, 12, 'input_length is exact by the tokenizer');
  t.equal(prompts[1].prompt, 'Once upon a time');
  t.same(loadTrace(file, 3, 0.5, tok, 0), prompts, 'seeded');

  const bad = join(dir, 'bad.jsonl');
  const cases: [string, RegExp][] = [
    ['{"timestamp": 0, "input_length": 4, "output_length": 2}\n{"timestamp": 5, "output_length": 2}', /bad\.jsonl:2: needs "input_length" \(a positive integer\) or "prompt"/],
    ['{"timestamp": 0, "input_length": 4, "output_length": 2}\nnot json', /bad\.jsonl:2: not JSON/],
    ['{"timestamp": -1, "input_length": 4, "output_length": 2}', /bad\.jsonl:1: "timestamp" must be a non-negative number/],
    ['{"timestamp": 9, "input_length": 4, "output_length": 2}\n{"timestamp": 5, "input_length": 4, "output_length": 2}', /bad\.jsonl:2: "timestamp" 5 is earlier than the line before \(9\)/],
    ['{"timestamp": 0, "input_length": 4, "output_length": 0}', /bad\.jsonl:1: "output_length" must be a positive integer/],
    ['[1]', /bad\.jsonl:1: expected a JSON object/],
    ['', /bad\.jsonl: the trace has no requests/],
  ];
  for (const [text, error] of cases) {
    writeFileSync(bad, text);
    t.throws(() => loadTrace(bad, 2, 1, tok, 0), error, String(error));
  }
});
