// The parts of `bench` that need no server: percentiles, seeded prompts of exact token counts, the progress
// display on a terminal and off one, and a request that times out.
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { distribution, percentile, summarize } from '../src/bench/metrics.js';
import { buildPrompts } from '../src/bench/prompts.js';
import { Progress } from '../src/bench/progress.js';
import { Rng } from '../src/bench/random.js';
import { timedRequest } from '../src/bench/client.js';
import type { RequestRecord } from '../src/bench/results.js';

t.test('percentiles interpolate between closest ranks', async (t) => {
  const sorted = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  t.equal(percentile(sorted, 50), 5.5);
  t.equal(percentile(sorted, 90), 9.1);
  t.equal(percentile([7], 99), 7);
  t.same(distribution([3, 1, 2]), { mean: 2, p50: 2, p90: 2.8, p99: 2.98, count: 3 });
  t.equal(distribution([]), null);
});

t.test('summary: TPOT from E2E and TTFT, failures grouped by message', async (t) => {
  const ok = (ttft: number, e2e: number, out: number): RequestRecord => ({
    ok: true, error: null, startMs: 0, ttftMs: ttft, e2eMs: e2e, itlMs: [1, 2], promptTokens: 10, outputTokens: out, outputTokensFrom: 'usage',
  });
  const bad = (error: string): RequestRecord => ({ ...ok(0, 0, 0), ok: false, error, ttftMs: null, e2eMs: null, itlMs: [], promptTokens: null });
  const s = summarize([ok(10, 110, 11), ok(20, 60, 5), bad('boom'), bad('boom'), bad('other')], 2, [null, null, null, null, null]);
  t.equal(s.completed, 2);
  t.equal(s.failed, 3);
  t.same(s.tpotMs?.p50, 10, 'TPOT = (E2E - TTFT) / (out - 1): 10 and 10');
  t.equal(s.outputThroughput, 8);
  t.equal(s.totalThroughput, 18);
  t.equal(s.requestThroughput, 1);
  t.same(s.errors, [{ message: 'boom', count: 2 }, { message: 'other', count: 1 }]);
});

t.test('prompts repeat for a seed and hit exact token counts with a tokenizer', async (t) => {
  const a = new Rng(7);
  const b = new Rng(7);
  t.same([a.next(), a.next(), a.int(1, 6)], [b.next(), b.next(), b.int(1, 6)]);

  const tok = loadTokenizer('models/stories260K.gguf');
  const prompts = buildPrompts(12, { len: 40, ratio: 0.25 }, { len: 20, ratio: 1 }, 3, tok);
  t.same(prompts, buildPrompts(12, { len: 40, ratio: 0.25 }, { len: 20, ratio: 1 }, 3, tok), 'same seed, same prompts');
  t.not(prompts[0].prompt, buildPrompts(1, { len: 40, ratio: 0.25 }, { len: 20, ratio: 1 }, 4, tok)[0].prompt, 'another seed, another prompt');
  for (const p of prompts) {
    t.equal(tok.encode(p.prompt, { addSpecialTokens: false }).length, p.promptTokens, 'reported count is the re-encoded count');
    t.ok(p.promptTokens !== null && p.promptTokens >= 10 && p.promptTokens <= 40, `length within [10, 40]: ${p.promptTokens}`);
    t.equal(p.maxTokens, 20);
  }
  t.ok(new Set(prompts.map((p) => p.promptTokens)).size > 3, 'lengths vary with a range ratio');
});

t.test('progress: a redrawn bar on a terminal, a line per 10% otherwise', async (t) => {
  const tty: string[] = [];
  const bar = new Progress({ isTTY: true, columns: 80, write: (s: string) => tty.push(s) }, 'run', 4);
  bar.tick(true);
  bar.tick(false);
  bar.finish();
  t.match(tty[2], /^\r\x1b\[2Krun \[#+\.+\] 2\/4, 1 failed/);
  t.equal(tty.at(-1), '\n');

  const plain: string[] = [];
  const p = new Progress({ isTTY: false, write: (s: string) => plain.push(s) }, 'run', 100);
  for (let i = 0; i < 100; i++) p.tick(true);
  p.finish();
  t.equal(plain.length, 10, 'one line per 10%');
  t.match(plain.at(-1), /^run: 100\/100, [\d.]+ s\n$/);
  t.ok(plain.every((l) => !l.includes('\r')));
});

t.test('a request past --timeout fails with a message saying so', async (t) => {
  const server = createServer(() => { /* never answers */ });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.closeAllConnections());
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const r = await timedRequest({ url, endpoint: 'chat', model: 'm', prompt: 'hi', maxTokens: 4, temperature: 0, seed: 0, ignoreEos: false, timeoutMs: 200 }, performance.now());
  t.equal(r.ok, false);
  t.equal(r.error, `${url}/v1/chat/completions: no response within 0.2 s`);
});

t.test('output counts: from a usage chunk without "choices", else one token per content chunk', async (t) => {
  // every event comes in one write: the first read carries both tokens, so no gap is measurable
  let withUsage = true;
  const server = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const events = [{ choices: [{ delta: { role: 'assistant', content: '' } }] }, { choices: [{ delta: { content: 'a' } }] }, { choices: [{ delta: { content: 'b' } }] }];
    if (withUsage) events.push({ usage: { prompt_tokens: 9, completion_tokens: 5 } } as never);
    res.end(`${events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join('')}data: [DONE]\n\n`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const params = { url, endpoint: 'chat' as const, model: 'm', prompt: 'hi', maxTokens: 4, temperature: 0, seed: 0, ignoreEos: false, timeoutMs: 5000 };
  const a = await timedRequest(params, performance.now());
  t.match(a, { ok: true, outputTokens: 5, outputTokensFrom: 'usage', promptTokens: 9 });
  t.equal(a.itlMs.length, 0, 'tokens that arrive with the first have no gap of their own (and the empty role chunk is no token)');
  withUsage = false;
  const b = await timedRequest(params, performance.now());
  t.match(b, { ok: true, outputTokens: 2, outputTokensFrom: 'chunks', promptTokens: null });
});
