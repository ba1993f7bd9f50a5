// A worker on the nats request plane (subject {ns}_{component}.{endpoint}-{id:x}, responses by TCP call-home),
// reached by the frontend's model directory through the same NATS connection: the golden stories260K text.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { connectNats } from '../src/runtime/request-plane/nats.js';
import { startWorker } from '../src/worker/worker.js';
import { DiscoveredModels } from '../src/frontend/discovered-models.js';
import { startNats } from './helpers/services.js';

const model = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

t.test('generate over the nats request plane', async (t) => {
  const nats = await startNats();
  t.teardown(() => nats.stop());
  const config = await finalizeConfig(
    resolveConfig(['--model-path', model, '--served-model-name', 'stories', '--discovery-backend', 'mem', '--request-plane', 'nats', '--nats-server', nats.url, '--device', 'cpu'], {}),
  );
  const discovery = await Discovery.open({ backend: 'mem' });
  const worker = await startWorker(config, { discovery, log: () => undefined });
  t.teardown(() => worker.shutdown());
  const instances = await discovery.listInstances('dynamo', 'backend', 'generate');
  t.match(instances[0].transport, { nats_tcp: `dynamo_backend.generate-${worker.instanceId.toString(16)}` });

  const conn = await connectNats(nats.url);
  t.teardown(() => conn.drain());
  const models = await DiscoveredModels.create({ discovery, nats: conn });
  t.teardown(() => models.close());
  const served = await models.waitFor('stories', 5000);
  const tokens: number[] = [];
  const prompt = served.tokenizer.encode('Once upon a time', { addSpecialTokens: true });
  for await (const chunk of served.generate(
    { token_ids: prompt, stop_conditions: { max_tokens: 12 }, sampling_options: { temperature: 0 }, eos_token_ids: [2] },
    { signal: new AbortController().signal },
  )) tokens.push(...chunk.token_ids);
  t.equal(tokens.length, 12);
  t.equal(served.tokenizer.decode(tokens), ', there was a little girl named Lily. She', 'the golden greedy text');
});

t.test('an unreachable NATS server fails the start before the model loads, naming the URL', async (t) => {
  const url = 'nats://127.0.0.1:1';
  const config = await finalizeConfig(
    resolveConfig(['--model-path', model, '--discovery-backend', 'mem', '--request-plane', 'nats', '--nats-server', url, '--device', 'cpu'], {}),
  );
  const lines: string[] = [];
  const discovery = await Discovery.open({ backend: 'mem' });
  t.teardown(() => discovery.close());
  await t.rejects(startWorker(config, { discovery, log: (l) => lines.push(l) }), { code: 'LLM_ERR_TRANSPORT', message: /cannot connect to NATS server nats:\/\/127\.0\.0\.1:1/ });
  t.notOk(lines.some((l) => l.startsWith('loading model')), 'the model was not loaded');
});
