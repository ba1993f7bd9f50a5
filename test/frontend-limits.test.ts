// Hostile request shapes against the OpenAI frontend: work per request is bounded before it is spent. Each shape
// gets its specific OpenAI-style error naming the limit, and /health keeps answering while they arrive.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { StaticModelDirectory, type ServedModel } from '../src/frontend/models.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';

const modelPath = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const tokenizer = loadTokenizer(modelPath);
let generated = 0;
const model: ServedModel = {
  name: 'stories',
  tokenizer,
  tokenizerSource: { modelPath },
  contextLength: 512,
  created: 1,
  async *generate(req: PreprocessedRequest): AsyncIterable<LlmResponseChunk> {
    generated++;
    yield { token_ids: [tokenizer.eosTokenIds[0] ?? 2], finish_reason: 'eos', completion_usage: { prompt_tokens: req.token_ids.length, completion_tokens: 1, total_tokens: req.token_ids.length + 1 } } as LlmResponseChunk;
  },
};

type ErrorBody = { error: { message: string; type: string; param: string | null; code: string | null } };

t.test('hostile shapes get their specific errors while /health keeps answering', async (t) => {
  const server = await OpenAiServer.listen({
    models: new StaticModelDirectory([model]),
    host: '127.0.0.1',
    port: 0,
    limits: { maxRequestBytes: 2 * 1024 * 1024, maxPromptBytes: 64 * 1024, maxChoices: 32 },
  });
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${server.port}`;
  const post = (path: string, body: string) => fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

  // /health polled the whole time: every probe must be answered (how long the event loop blocks is measured by
  // bench/hostile/event-loop.ts, not asserted here: no timings in tests)
  let polling = true;
  const probes: { status: number }[] = [];
  const poller = (async () => {
    while (polling) {
      const r = await fetch(`${base}/health`);
      await r.text();
      probes.push({ status: r.status });
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();

  const manyPrompts = JSON.stringify({ model: 'stories', prompt: Array.from({ length: 20_000 }, (_, i) => `p${i}`), n: 16, max_tokens: 1 });
  const bigPrompt = JSON.stringify({ model: 'stories', prompt: 'x'.repeat(1024 * 1024), max_tokens: 1 });
  const bigChat = JSON.stringify({ model: 'stories', messages: [{ role: 'user', content: 'y'.repeat(200 * 1024) }], max_tokens: 1 });
  const hugeBody = JSON.stringify({ model: 'stories', prompt: 'z'.repeat(3 * 1024 * 1024) });
  const chatN = JSON.stringify({ model: 'stories', messages: [{ role: 'user', content: 'hi' }], n: 16, max_tokens: 1 });
  const [a, b, c, d, e] = await Promise.all([
    post('/v1/completions', manyPrompts),
    post('/v1/completions', bigPrompt),
    post('/v1/chat/completions', bigChat),
    post('/v1/completions', hugeBody).catch(() => null), // the server may close before the client finished sending
    post('/v1/chat/completions', chatN),
  ]);
  polling = false;
  await poller;

  t.equal(a.status, 400);
  t.match((await a.json()) as ErrorBody, { error: { type: 'invalid_request_error', code: 'too_many_choices', param: 'prompt', message: /320000 choices.*at most 32 .*--max-choices/ } });
  t.equal(b.status, 400);
  t.match((await b.json()) as ErrorBody, { error: { code: 'prompt_too_large', param: 'prompt', message: /1048576 bytes.*at most 65536.*--max-prompt-bytes/ } });
  t.equal(c.status, 400);
  t.match((await c.json()) as ErrorBody, { error: { code: 'prompt_too_large', param: 'messages' } });
  if (d !== null) {
    t.equal(d.status, 413);
    t.match((await d.json()) as ErrorBody, { error: { type: 'invalid_request_error', code: 'request_too_large', message: /--max-request-bytes/ } });
  }
  t.equal(e.status, 200, 'n = 16 of one chat prompt is within 32 choices');
  t.equal(generated, 16, 'only the request within the limits reached the backend');

  t.ok(probes.length > 0, 'health was probed');
  t.ok(probes.every((p) => p.status === 200), 'every health probe answered 200');
});

t.test('a body over the limit is a 413 naming the limit', async (t) => {
  const server = await OpenAiServer.listen({ models: new StaticModelDirectory([model]), host: '127.0.0.1', port: 0, limits: { maxRequestBytes: 4096 } });
  t.teardown(() => server.close());
  const r = await fetch(`http://127.0.0.1:${server.port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories', prompt: 'a'.repeat(5000) }) });
  t.equal(r.status, 413);
  t.match((await r.json()) as ErrorBody, { error: { code: 'request_too_large', message: /5\d{3} bytes exceeds this server's limit of 4096 \(--max-request-bytes\)/ } });
});

t.test('tokenizing past the time bound is a 400 naming the bound', async (t) => {
  const server = await OpenAiServer.listen({ models: new StaticModelDirectory([model]), host: '127.0.0.1', port: 0, limits: { tokenizeTimeoutMs: 1 } });
  t.teardown(() => server.close());
  const words = Array.from({ length: 40_000 }, (_, i) => `word${i}`).join(' ');
  const r = await fetch(`http://127.0.0.1:${server.port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories', prompt: words, max_tokens: 1 }) });
  t.equal(r.status, 400);
  t.match((await r.json()) as ErrorBody, { error: { code: 'tokenize_timeout', param: 'prompt', message: /longer than 1 ms \(--tokenize-timeout-ms\)/ } });
});
