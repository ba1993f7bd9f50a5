// Text in, text out (--use-sglang-tokenizer, reference §2.1-2.2): the worker registers a Chat model with Text input,
// takes the OpenAI chat request itself (template, tokenize) and streams chat.completion.chunk objects whose deltas
// are the decoded text; wrong combinations are refused at start.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { EndpointClient } from '../src/runtime/client.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { startWorker } from '../src/worker/worker.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

t.test('a text-mode worker: Chat + Text card, OpenAI chunks with the decoded text, bad bodies refused', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  const responses = await ResponseServer.start();
  const config = await finalizeConfig(resolveConfig(['--model-path', MODEL, '--served-model-name', 'stories', '--device', 'cpu', '--cpu-threads', '1',
    '--mem-fraction-static', '0.01', '--tcp-rpc-host', '127.0.0.1', '--use-sglang-tokenizer', '--system-port', '-1'], {}));
  t.same(config.unusedFlags, [], '--use-sglang-tokenizer is used, not listed as unused');
  const worker = await startWorker(config, { discovery, log: () => undefined, publishKvEvents: false });
  const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    client.close();
    await worker.shutdown();
    await responses.close();
    await discovery.close();
  });
  t.equal(worker.card.model_input, 'Text');
  t.equal(worker.card.model_type, 'Chat', 'Chat only');

  const items: Record<string, unknown>[] = [];
  for await (const a of await client.generate({ messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 8, temperature: 0 })) {
    if (a.error !== undefined) throw new Error(JSON.stringify(a.error));
    if (a.data !== undefined) items.push(a.data as Record<string, unknown>);
  }
  t.ok(items.length > 0);
  for (const c of items) t.match(c, { object: 'chat.completion.chunk', model: 'stories', choices: [{ index: 0, delta: { role: 'assistant' } }] });
  const choices = items.map((c) => (c['choices'] as { delta: { content: string }; finish_reason: string | null }[])[0]);
  t.match(choices.map((c) => c.delta.content).join(''), /^, there was a little girl/, 'the decoded greedy text');
  t.equal(choices.at(-1)!.finish_reason, 'length');
  t.ok(new Set(items.map((c) => c['id'])).size === 1, 'one id for the whole stream');

  const refused = async (body: unknown) => {
    for await (const a of await client.generate(body)) if (a.error !== undefined || a.event === 'error') return JSON.stringify(a);
    return 'served';
  };
  t.match(await refused({ prompt: 'a', messages: [{ role: 'user', content: 'b' }] }), /exactly one of messages, prompt and text/);
  t.match(await refused({ token_ids: [1, 2, 3] }), /exactly one of messages, prompt and text/, 'a token request is not what this worker takes');
});

t.test('--use-sglang-tokenizer is refused where it cannot apply', async (t) => {
  const refuse = (extra: string[]) => () => resolveConfig(['--model-path', MODEL, '--use-sglang-tokenizer', ...extra], {});
  t.throws(refuse(['--disaggregation-mode', 'prefill', '--disaggregation-transfer-backend', 'tcp']), /served by aggregated LLM workers only/);
  t.throws(refuse(['--embedding-worker']), /served by aggregated LLM workers only, not with the embedding worker/);
});
