// A client that goes away cancels its request at once, whatever the moment: the frontend's HTTP close reaches the
// worker through the request plane, the scheduler aborts the request (it does not run to max_tokens), and the
// worker counts the cancellation (dynamo_component_cancellation_total). Real worker on stories260K (CPU, mem store).
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { startWorker } from '../src/worker/worker.js';
import { frontendSettings, startFrontend, FRONTEND_FLAGS } from '../src/cli/commands/frontend.js';
import { parseCommandLine } from '../src/cli/args.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

function sample(text: string, name: string): number {
  let total = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) total += Number(m[2]);
  }
  return total;
}

t.test('disconnects before and after the first token cancel the work and are counted', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  const worker = await startWorker(await finalizeConfig(resolveConfig(['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
    '--mem-fraction-static', '0.01', '--discovery-backend', 'mem', '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1',
    '--enable-metrics', '--page-size', '4', '--context-length', '4096'], {})), { discovery, log: () => undefined });
  const fe = frontendSettings(parseCommandLine(['--http-port', '0', '--http-host', '127.0.0.1'], FRONTEND_FLAGS).values);
  const { models, server } = await startFrontend(discovery, 'dynamo', fe, () => undefined);
  t.teardown(async () => {
    await server.close();
    await models.close();
    await worker.shutdown();
    await discovery.close();
  });
  await models.waitFor('stories260K', 5000);
  const base = `http://127.0.0.1:${server.port}`;
  const metricsUrl = `http://127.0.0.1:${worker.systemServer!.port}/metrics`;
  const metrics = async () => (await fetch(metricsUrl)).text();

  const MAX = 4000;
  const body = (stream: boolean) => JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: MAX, ignore_eos: true, temperature: 0, stream });
  // whole-body requests and streams, dropped at many moments: before the frontend read the body, while the prompt is
  // tokenized, before and after the request reached the worker; the streams that got an answer are dropped just
  // after their first event. Not one of them may run to max_tokens.
  const warm = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: 'Hi', max_tokens: 2 }) });
  t.equal(warm.status, 200, 'a first request loads the tokenizer and connects');
  await warm.text();
  const warmRequests = 1;
  const drops: Promise<void>[] = [];
  for (let i = 0; i < 16; i++) {
    const stream = i % 2 === 0;
    const controller = new AbortController();
    drops.push(
      (async () => {
        const pending = fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body(stream), signal: controller.signal });
        if (i < 12 || !stream) setTimeout(() => controller.abort(), i * 2);
        try {
          const r = await pending;
          await r.body!.getReader().read();
          controller.abort();
        } catch {
          // aborted before the response
        }
      })(),
    );
  }
  await Promise.all(drops);

  // the worker must settle quickly with nothing running, far short of 6 x MAX tokens
  let text = '';
  for (let tries = 0; tries < 100; tries++) {
    text = await metrics();
    if (sample(text, 'sglang:num_running_reqs') === 0 && sample(text, 'dynamo_component_inflight_requests') === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const tokens = sample(text, 'sglang:generation_tokens_total');
  const requests = sample(text, 'dynamo_component_requests_total') - warmRequests;
  t.ok(requests >= 2, `the streams dropped after their first event reached the worker (${requests} requests did)`);
  t.equal(sample(text, 'dynamo_component_inflight_requests'), 0, 'nothing left in flight');
  t.ok(tokens < MAX, `the dropped requests generated ${tokens} tokens in all, not ${MAX} each`);
  t.equal(sample(text, 'dynamo_component_cancellation_total'), requests, `every request that reached the worker (${requests}) is counted as cancelled`);
  t.equal(sample(text, 'sglang:num_aborted_requests_total'), requests, 'and as aborted in the engine metrics');
});
