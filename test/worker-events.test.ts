// The worker's event plane and health check, in process on stories260K with a real nats-server: prefix-cache
// events become RouterEvents whose tokens_hash chain is the one a KV router computes for the same prompt, blocks
// chain through parent hashes, evictions name the hashes stored, load samples and the cache-usage gauge follow the
// KV in use, the kv-events channel is advertised in discovery; the canary probes the worker's own handler; an
// unreachable NATS server is named.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { EndpointClient } from '../src/runtime/client.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { DisconnectedError } from '../src/runtime/request-plane/response-stream.js';
import { subscribeKvEvents, subscribeLoad, type ReceivedEvent } from '../src/runtime/events/index.js';
import type { ActiveLoad, RouterEvent } from '../src/protocol/events.js';
import { blockTokensHashes } from '../src/runtime/kv-hash.js';
import { startWorker, type WorkerHandle } from '../src/worker/worker.js';
import { KvRouter } from '../src/frontend/kv-router.js';
import { freePort, startNats, type NatsService } from './helpers/services.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const quiet = () => undefined;

let nats: NatsService;
let observer: NatsConnection;
let responses: ResponseServer;
t.before(async () => {
  nats = await startNats();
  observer = await connect({ servers: nats.url });
  responses = await ResponseServer.start();
});
t.teardown(async () => {
  await responses?.close();
  await observer?.close();
  await nats?.stop();
});

async function config(extra: string[]) {
  return finalizeConfig(
    resolveConfig(['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
      '--mem-fraction-static', '0.01', '--tcp-rpc-host', '127.0.0.1', '--nats-server', nats.url, ...extra], {}),
  );
}

/** Collects decoded events of a subscription as they come. */
function collect<T>(sub: AsyncIterable<ReceivedEvent<T>>): T[] {
  const out: T[] = [];
  void (async () => {
    for await (const e of sub) out.push(e.event);
  })();
  return out;
}

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function generate(client: EndpointClient, tokenIds: number[], maxTokens: number): Promise<void> {
  const stream = await client.generate({
    token_ids: tokenIds,
    stop_conditions: { max_tokens: maxTokens, ignore_eos: true },
    sampling_options: { temperature: 0 },
    eos_token_ids: [2],
  });
  for await (const a of stream) if (a.error !== undefined) throw new Error(JSON.stringify(a.error));
}

t.test('KV events, load, the event channel and the cache gauge', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  const kvEvents = subscribeKvEvents(observer, 'dynamo', 'backend');
  const loads = subscribeLoad(observer, 'dynamo');
  const events = collect<RouterEvent>(kvEvents);
  const samples = collect<ActiveLoad>(loads);
  await observer.flush();
  const worker: WorkerHandle = await startWorker(await config(['--page-size', '4', '--system-port', '0', '--system-host', '127.0.0.1']), {
    discovery, log: quiet, publishKvEvents: true,
  });
  const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    kvEvents.close();
    loads.close();
    client.close();
    await worker.shutdown();
    await discovery.close();
  });

  await until('the initial zero load sample', () => samples.length > 0);
  t.same(samples[0], { worker_id: worker.instanceId, dp_rank: 0, active_decode_blocks: 0, active_prefill_tokens: null, kv_used_blocks: 0 });

  const channels = await discovery.store.get('v1/event_channels/dynamo/backend/kv-events/');
  t.equal(channels.length, 1, 'the kv-events channel is in discovery');
  t.match(JSON.parse(channels[0].value), { type: 'EventChannel', transport: { kind: 'Nats', config: { subject_prefix: 'namespace.dynamo.component.backend' } } });

  // 13 prompt tokens = 3 full pages of 4; the router's sequence hashes of the prompt must be the worker's
  const prompt = [1, 403, 407, 261, 378, 300, 270, 290, 320, 330, 340, 350, 360];
  await generate(client, prompt, 3);
  const router = new KvRouter({ blockSize: 4 });
  await until('stored events', () => {
    for (const e of events.splice(0)) router.applyEvent(e);
    return router.overlap(worker.instanceId, router.sequenceHashesOf(prompt)) === 3;
  });
  t.pass('the router sees all 3 prompt blocks cached on this worker');
  t.equal(router.select(prompt, [worker.instanceId, 7n]).instanceId, worker.instanceId, 'and picks it over an empty worker');

  // a second prompt sharing the first two pages: its stored run hangs off the shared parent
  const events2: RouterEvent[] = [];
  const sub2 = collect<RouterEvent>(subscribeKvEvents(observer, 'dynamo', 'backend'));
  await observer.flush();
  const branch = [...prompt.slice(0, 8), 500, 501, 502, 503];
  await generate(client, branch, 1);
  await until('the branch stored event', () => {
    events2.push(...sub2.splice(0));
    return events2.some((e) => typeof e.event.data === 'object' && 'stored' in e.event.data);
  });
  const stored = events2.map((e) => e.event.data).find((d) => typeof d === 'object' && 'stored' in d);
  t.ok(stored && typeof stored === 'object' && 'stored' in stored && stored.stored.parent_hash !== null, 'the branch names its parent block');
  const tokens = blockTokensHashes(branch, 4);
  t.equal(stored && typeof stored === 'object' && 'stored' in stored ? stored.stored.blocks[0].tokens_hash : null, tokens[2], 'tokens_hash of the new page');

  const metrics = await (await fetch(worker.systemServer!.url('/metrics'))).text();
  t.match(metrics, /dynamo_component_total_blocks\{[^}]*\} \d+/);
  t.match(metrics, /dynamo_component_gpu_cache_usage_percent\{[^}]*model="stories260K"[^}]*\} [0-9.e-]+/);
});

t.test('load follows the KV blocks of running requests', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  const loads = subscribeLoad(observer, 'dynamo');
  const samples = collect<ActiveLoad>(loads);
  await observer.flush();
  const worker = await startWorker(await config(['--page-size', '4']), { discovery, log: quiet, publishKvEvents: true });
  const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    loads.close();
    client.close();
    await worker.shutdown();
    await discovery.close();
  });
  const running = generate(client, Array.from({ length: 200 }, (_, i) => 3 + (i % 400)), 200);
  await until('a non-zero load sample', () => samples.some((s) => s.worker_id === worker.instanceId && (s.kv_used_blocks ?? 0) > 0), 20_000);
  await running;
  await until('load back to zero', () => samples.filter((s) => s.worker_id === worker.instanceId).at(-1)?.kv_used_blocks === 0);
  t.pass('kv_used_blocks rose while the request ran and fell back to 0');
});

t.test('the canary health check probes the worker\'s own handler', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  // an override the handler refuses: the canary fails and the endpoint turns notready
  const worker = await startWorker(
    await config(['--health-check-enabled', '--canary-wait-time', '0.2', '--health-check-payload', '{"token_ids":[]}', '--kv-events-config', '{"publisher":"null"}']),
    { discovery, log: quiet },
  );
  t.teardown(async () => {
    await worker.shutdown();
    await discovery.close();
  });
  t.equal(worker.health.endpointStatus('dynamo.backend.generate'), 'ready');
  await until('the failed canary', () => worker.health.endpointStatus('dynamo.backend.generate') === 'notready');
  t.equal(worker.health.snapshot().status, 'ready', 'the system status is the worker\'s own');

  const healthyDiscovery = await Discovery.open({ backend: 'mem' });
  const healthy = await startWorker(await config(['--health-check-enabled', '--canary-wait-time', '0.2', '--system-port', '0', '--system-host', '127.0.0.1']), {
    discovery: healthyDiscovery,
    log: quiet,
  });
  t.teardown(async () => {
    await healthy.shutdown();
    await healthyDiscovery.close();
  });
  await new Promise((r) => setTimeout(r, 600));
  const metrics = await (await fetch(healthy.systemServer!.url('/metrics'))).text();
  const served = Number(/dynamo_component_requests_total\{[^}]*\} (\d+)/.exec(metrics)?.[1] ?? 0);
  t.ok(served >= 1, `the default payload ({token_ids:[bos]}) was served (${served} requests)`);
  t.equal(healthy.health.endpointStatus('dynamo.backend.generate'), 'ready');
});

t.test('an unreachable NATS server is named', async (t) => {
  const url = `nats://127.0.0.1:${await freePort()}`;
  const base = await config([]);
  const required = { ...structuredClone(base), natsServer: url };
  const discovery = await Discovery.open({ backend: 'mem' });
  t.teardown(() => discovery.close());
  await t.rejects(startWorker(required, { discovery, log: quiet, publishKvEvents: true }), { code: 'LLM_ERR_TRANSPORT', message: new RegExp(url.replace(/[.]/g, '\\.')) });

  // no --kv-events-config on a file-store deployment: best effort, the worker serves and says why there are no events
  const lines: string[] = [];
  const fileRoot = (await import('node:fs')).mkdtempSync(`${(await import('node:os')).tmpdir()}/worker-events-`);
  const optional = await finalizeConfig(resolveConfig(['--model-path', MODEL, '--device', 'cpu', '--cpu-threads', '1', '--mem-fraction-static', '0.01',
    '--tcp-rpc-host', '127.0.0.1', '--nats-server', url, '--discovery-backend', 'file', '--file-kv-root', fileRoot], {}));
  const w = await startWorker(optional, { log: (l) => lines.push(l) });
  await w.shutdown();
  t.match(lines.join('\n'), new RegExp(`KV events and load are not published: cannot connect to NATS server ${url.replace(/[.]/g, '\\.')}`));
});

t.test('shutdown: past the grace period an in-flight request is dropped mid-stream, which callers migrate', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  process.env['DYN_SGL_STREAM_DELAY_MS'] = '10';
  const worker = await startWorker(await config(['--graceful-shutdown-grace-period', '0.3', '--kv-events-config', '{"publisher":"null"}']), { discovery, log: quiet }).finally(() => {
    delete process.env['DYN_SGL_STREAM_DELAY_MS'];
  });
  const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    client.close();
    await discovery.close();
  });
  const stream = await client.generate({
    token_ids: [1, 403, 407, 261, 378],
    stop_conditions: { max_tokens: 300, ignore_eos: true },
    sampling_options: { temperature: 0 },
    eos_token_ids: [2],
  });
  let tokens = 0;
  let error: unknown;
  let stopping: Promise<void> | undefined;
  const t0 = Date.now();
  try {
    for await (const a of stream) {
      t.not(a.event, 'error', 'no error item: the stream is dropped, not failed');
      tokens += (a.data as { token_ids?: number[] } | undefined)?.token_ids?.length ?? 0;
      if (tokens >= 5 && !stopping) stopping = worker.shutdown();
    }
  } catch (err) {
    error = err;
  }
  await stopping;
  t.ok(tokens > 5 && tokens < 300, `the stream was cut short after ${tokens} tokens`);
  // the reference's frontend migrates a stream that closes before complete_final; so does ours
  t.ok(error instanceof DisconnectedError && error.migratable, `a migratable disconnect: ${String(error)}`);
  t.ok(Date.now() - t0 < 3000, 'within about the grace period');
  t.same(await discovery.listInstances('dynamo', 'backend', 'generate'), [], 'the instance left discovery');
});
