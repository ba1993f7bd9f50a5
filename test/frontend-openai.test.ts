// The OpenAI HTTP layer over a scripted backend and the real stories260K tokenizer: request validation and
// error bodies, SSE framing, stop strings (also split across tokens), usage, n > 1 and client disconnects. Prompts
// and chat templates go through the frontend's tokenizer pool (the models name their tokenizer's source).
import t from 'tap';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { StaticModelDirectory, type ServedModel } from '../src/frontend/models.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { LlmError } from '../src/errors.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';

const modelPath = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const tokenizer = loadTokenizer(modelPath);
const script = tokenizer.encode(', there was a little girl named Lily. She loved to play', { addSpecialTokens: false });
// What a client sees for a run of generated tokens: their bytes in order (a continuation keeps its leading space).
const streamed = (ids: number[]) => Buffer.concat(ids.map((id) => tokenizer.tokenBytes(id))).toString('utf8');

const seen: PreprocessedRequest[] = [];
let aborted = 0;
const model: ServedModel = {
  name: 'stories',
  tokenizer,
  tokenizerSource: { modelPath },
  contextLength: 512,
  created: 1,
  async *generate(req: PreprocessedRequest, { signal }): AsyncIterable<LlmResponseChunk> {
    seen.push(req);
    const max = req.stop_conditions.max_tokens ?? script.length;
    const delayMs = req.sampling_options.seed === 999 ? 20 : 0;
    for (let i = 0; i < Math.min(max, script.length); i++) {
      if (signal.aborted) {
        aborted++;
        return;
      }
      if (delayMs) await new Promise((r) => setTimeout(r, delayMs));
      const last = i + 1 === Math.min(max, script.length);
      yield {
        token_ids: [script[i]],
        ...(req.output_options?.logprobs != null ? { log_probs: [-0.5], top_logprobs: [[{ rank: 1, token_id: script[i], token: null, logprob: -0.5 }]] } : {}),
        ...(last ? { finish_reason: i + 1 === max ? 'length' : 'stop', completion_usage: { prompt_tokens: req.token_ids.length, completion_tokens: i + 1, total_tokens: req.token_ids.length + i + 1 } } : {}),
      } as LlmResponseChunk;
    }
  },
};

// Models with chat templates: the Qwen3 fixture's, and one whose template fails when rendered.
const QWEN3_DIR = fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url));
const badTemplateDir = mkdtempSync(join(tmpdir(), 'frontend-bad-template-'));
t.teardown(() => rmSync(badTemplateDir, { recursive: true, force: true }));
copyFileSync(join(QWEN3_DIR, 'tokenizer.json'), join(badTemplateDir, 'tokenizer.json'));
writeFileSync(join(badTemplateDir, 'tokenizer_config.json'), JSON.stringify({ chat_template: "{{ raise_exception('only user turns') }}" }));
const qwen = loadTokenizer(QWEN3_DIR);
const qwenModel: ServedModel = { ...model, name: 'qwen', tokenizer: qwen, tokenizerSource: { modelPath: QWEN3_DIR } };
const badTemplateModel: ServedModel = { ...model, name: 'bad-template', tokenizer: loadTokenizer(badTemplateDir), tokenizerSource: { modelPath: badTemplateDir } };

const server = await OpenAiServer.listen({ models: new StaticModelDirectory([model, qwenModel, badTemplateModel]), host: '127.0.0.1', port: 0 });
t.teardown(() => server.close());
const base = `http://127.0.0.1:${server.port}`;
const post = (path: string, body: unknown) =>
  fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });

t.test('models list', async (t) => {
  const r = await fetch(base + '/v1/models');
  t.equal(r.status, 200);
  t.match(await r.json(), { object: 'list', data: [{ id: 'stories', object: 'model' }] });
});

t.test('completion, whole body: text, finish reason and usage', async (t) => {
  const r = await post('/v1/completions', { model: 'stories', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
  t.equal(r.status, 200);
  const body = (await r.json()) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };
  t.equal(body.choices[0].text, streamed(script.slice(0, 5)));
  t.equal(body.choices[0].finish_reason, 'length');
  t.equal(body.usage.completion_tokens, 5);
  const req = seen.at(-1)!;
  t.equal(req.token_ids[0], tokenizer.bosTokenId, 'BOS added to a text prompt');
  t.equal(req.stop_conditions.max_tokens, 5);
  t.equal(req.sampling_options.temperature, 0);
});

t.test('stop strings end the choice, even when split across tokens, and are not streamed', async (t) => {
  const r = await post('/v1/chat/completions', { model: 'stories', messages: [{ role: 'user', content: 'hi' }], stop: ['Lily'], stream: true, stream_options: { include_usage: true } });
  t.equal(r.status, 200);
  t.match(r.headers.get('content-type'), /text\/event-stream/);
  const text = await r.text();
  const events = text.split('\n\n').filter(Boolean);
  t.equal(events.at(-1), 'data: [DONE]');
  const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice('data: '.length)));
  t.equal(chunks[0].choices[0].delta.role, 'assistant');
  const content = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  const full = streamed(script);
  t.equal(content, full.slice(0, full.indexOf('Lily')));
  t.notOk(content.includes('Lil'), 'no part of the stop string leaked');
  const finish = chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason);
  t.same(finish, ['stop']);
  t.ok(chunks.at(-1).usage, 'usage chunk last');
  t.equal(chunks.at(-1).object, 'chat.completion.chunk');
});

t.test('n > 1 and logprobs', async (t) => {
  const r = await post('/v1/completions', { model: 'stories', prompt: ['a', 'b'], n: 2, max_tokens: 3, logprobs: 1 });
  const body = (await r.json()) as { choices: { index: number; logprobs: { tokens: string[]; token_logprobs: number[] } }[] };
  t.same(body.choices.map((c) => c.index), [0, 1, 2, 3]);
  t.equal(body.choices[0].logprobs.tokens.length, 3);
  t.same(body.choices[0].logprobs.token_logprobs, [-0.5, -0.5, -0.5]);
});

t.test('chat templates render in the pool; echo of prompt ids decodes there', async (t) => {
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
  const r = await post('/v1/chat/completions', { model: 'qwen', messages, max_tokens: 2 });
  t.equal(r.status, 200);
  t.same(seen.at(-1)!.token_ids, qwen.encode(qwen.applyChatTemplate(messages), { addSpecialTokens: false }));
  const plain = await post('/v1/chat/completions', { model: 'stories', messages, max_tokens: 2 });
  t.equal(plain.status, 200);
  t.same(seen.at(-1)!.token_ids, tokenizer.encode('Be brief.\nHi', { addSpecialTokens: true }), 'no template: the text after BOS');
  const ids = tokenizer.encode('Once upon a time', { addSpecialTokens: false });
  const echoed = await post('/v1/completions', { model: 'stories', prompt: ids, echo: true, max_tokens: 2 });
  const body = (await echoed.json()) as { choices: { text: string }[] };
  t.equal(body.choices[0].text, tokenizer.decode(ids) + streamed(script.slice(0, 2)));
});

t.test('a chat template that fails is a 400 naming messages', async (t) => {
  const r = await post('/v1/chat/completions', { model: 'bad-template', messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(r.status, 400);
  t.match(await r.json(), { error: { type: 'invalid_request_error', param: 'messages', message: /^messages: chat template failed/ } });
});

t.test('bad input: OpenAI error bodies naming the field', async (t) => {
  const cases: [unknown, number, RegExp][] = [
    [{ model: 'nope', prompt: 'x' }, 404, /model "nope" does not exist/],
    [{ model: 'stories', prompt: 'x', temperature: -1 }, 400, /temperature/],
    [{ model: 'stories' }, 400, /prompt/],
    [{ model: 'stories', prompt: 'x', max_tokens: 100000 }, 400, /max_tokens.*context length/],
    [{ model: 'stories', prompt: [1, 2, 99999] }, 400, /token id 99999/],
    [{ model: 'stories', prompt: [[1, 2], [3, 99999]] }, 400, /prompt\[1\]\[1\]: token id 99999 is outside the vocabulary/],
    [{ model: 'stories', prompt: ['a', ''] }, 400, /prompt\[1\]: empty prompt/],
    ['{not json', 400, /not valid JSON/],
  ];
  for (const [body, status, re] of cases) {
    const r = await post('/v1/completions', body);
    t.equal(r.status, status, JSON.stringify(body));
    const err = (await r.json()) as { error: { message: string; type: string } };
    t.match(err.error.message, re);
    t.type(err.error.type, 'string');
  }
  const r = await fetch(base + '/v1/nothing');
  t.equal(r.status, 404);
  const g = await fetch(base + '/v1/completions');
  t.equal(g.status, 405);
});

t.test('a client that disconnects mid-stream cancels the backend stream', async (t) => {
  const before = aborted;
  const controller = new AbortController();
  const r = await post('/v1/completions', { model: 'stories', prompt: 'x', max_tokens: 12, stream: true, seed: 999 });
  const reader = r.body!.getReader();
  await reader.read();
  await reader.cancel();
  controller.abort();
  for (let i = 0; i < 50 && aborted === before; i++) await new Promise((res) => setTimeout(res, 20));
  t.equal(aborted, before + 1);
});

t.test('requests beyond the in-flight limit get 429 with retry-after', async (t) => {
  const limited = await OpenAiServer.listen({ models: new StaticModelDirectory([model]), host: '127.0.0.1', port: 0, maxInflight: 1 });
  t.teardown(() => limited.close());
  const url = `http://127.0.0.1:${limited.port}/v1/completions`;
  const slow = fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories', prompt: 'x', max_tokens: 10, seed: 999 }) });
  await new Promise((r) => setTimeout(r, 50));
  const refused = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories', prompt: 'x', max_tokens: 1 }) });
  t.equal(refused.status, 429);
  t.equal(refused.headers.get('retry-after'), '1');
  t.match(((await refused.json()) as { error: { type: string; message: string } }).error, { type: 'rate_limit_error', message: /limit of 1 requests/ });
  t.equal((await slow).status, 200);
});

t.test('a streamed request that fails before its first token gets a real error status, not a 200 stream', async (t) => {
  const failing: ServedModel = {
    ...model,
    name: 'failing',
    async *generate(): AsyncIterable<LlmResponseChunk> {
      throw new LlmError('LLM_ERR_DISCOVERY', 'no instances of dynamo/backend/generate in discovery');
    },
  };
  const s = await OpenAiServer.listen({ models: new StaticModelDirectory([failing]), host: '127.0.0.1', port: 0 });
  t.teardown(() => s.close());
  const r = await fetch(`http://127.0.0.1:${s.port}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'failing', messages: [{ role: 'user', content: 'hi' }], stream: true }),
  });
  t.equal(r.status, 503);
  t.match(r.headers.get('content-type'), /application\/json/);
  t.match(((await r.json()) as { error: { message: string } }).error.message, /no instances/);
});
