// Bad input from a user's side, the HTTP layer: invalid UTF-8 and out-of-range seeds are a 400 naming the field
// (the worker's request schema refuses such a seed too), "no worker reachable" is a 503, a wrong method a 405
// client error.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { StaticModelDirectory, type ServedModel } from '../src/frontend/models.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { LlmError } from '../src/errors.js';
import { parseWire } from '../src/protocol/validate.js';
import { PreprocessedRequestSchema, type PreprocessedRequest } from '../src/protocol/request.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';

const modelPath = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

t.test('HTTP layer', async (t) => {
  const tokenizer = loadTokenizer(modelPath);
  const model: ServedModel = {
    name: 'stories',
    tokenizer,
    contextLength: 512,
    created: 1,
    async *generate(_req: PreprocessedRequest): AsyncIterable<LlmResponseChunk> {
      throw new LlmError('LLM_ERR_TRANSPORT', 'all 1 instances of dynamo/backend/generate are marked unreachable: 1');
    },
  };
  const server = await OpenAiServer.listen({ models: new StaticModelDirectory([model]), host: '127.0.0.1', port: 0 });
  t.teardown(() => server.close());
  const url = `http://127.0.0.1:${server.port}/v1/completions`;
  const post = (body: string | Uint8Array) => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body });

  t.test('invalid UTF-8 in the body is refused, not replaced by U+FFFD in the prompt', async (t) => {
    const body = Buffer.concat([Buffer.from('{"model":"stories","prompt":"hi '), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}')]);
    const r = await post(body);
    t.equal(r.status, 400);
    t.match(await r.json(), { error: { type: 'invalid_request_error', message: /not valid UTF-8/ } });
  });

  for (const seed of [-5, 1e30]) {
    t.test(`seed ${seed} is a 400 naming the field (the engine takes 0 .. 2^53-1)`, async (t) => {
      const r = await post(JSON.stringify({ model: 'stories', prompt: 'hi', seed }));
      t.equal(r.status, 400);
      t.match(await r.json(), { error: { param: 'seed', message: /^seed: / } });
    });
  }

  t.test('no reachable worker is 503 service_unavailable, not 500', async (t) => {
    const r = await post(JSON.stringify({ model: 'stories', prompt: 'hi' }));
    t.equal(r.status, 503);
    t.match(await r.json(), { error: { type: 'service_unavailable', message: /marked unreachable/ } });
  });

  t.test('a wrong method is the client error invalid_request_error', async (t) => {
    const r = await fetch(url);
    t.equal(r.status, 405);
    t.match(await r.json(), { error: { type: 'invalid_request_error' } });
  });
});

t.test('worker request: an out-of-range seed names sampling_options.seed', async (t) => {
  const request = { token_ids: [1, 2], stop_conditions: {}, sampling_options: { seed: -1 }, eos_token_ids: [] };
  t.throws(() => parseWire(PreprocessedRequestSchema, request, 'request'), /request\.sampling_options\.seed/);
});
