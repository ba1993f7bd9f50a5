// Dynamo 0.8 durable KV events, in process on stories260K with a real nats-server: a worker without the local
// indexer (--durable-kv-events) creates the component's JetStream stream with the reference's configuration and
// publishes its RouterEvents there, not on NATS core; a consumer written from the reference's stream layout
// (fixtures/dynamo-wire/kv-stream-0.8.ts) reads them, and so does our kv router. A nats-server without JetStream is
// named with its setting (fatal when KV events are required, else the worker publishes its load alone).
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { AckPolicy, DeliverPolicy, connect, type NatsConnection } from 'nats';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { EndpointClient } from '../src/runtime/client.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { blockTokensHashes } from '../src/runtime/kv-hash.js';
import { startWorker } from '../src/worker/worker.js';
import { KvRouter } from '../src/frontend/kv-router.js';
import { startNats, type NatsService } from './helpers/services.js';
import { subscribeLoad } from '../src/runtime/events/index.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEFAULT_MAX_AGE_NS,
  STREAM_DYNAMO_BACKEND,
  STREAM_SUBJECTS_DYNAMO_BACKEND,
  SUBJECT_DYNAMO_BACKEND,
  parseRouterEventJson,
  streamName,
} from './fixtures/dynamo-wire/kv-stream-0.8.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const quiet = () => undefined;

let nats: NatsService;
let observer: NatsConnection;
let responses: ResponseServer;
t.before(async () => {
  nats = await startNats({ jetstream: true });
  observer = await connect({ servers: nats.url });
  responses = await ResponseServer.start();
});
t.teardown(async () => {
  await responses?.close();
  await observer?.close();
  await nats?.stop();
});

async function config(natsUrl: string, extra: string[]) {
  return finalizeConfig(
    resolveConfig(['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
      '--mem-fraction-static', '0.01', '--tcp-rpc-host', '127.0.0.1', '--nats-server', natsUrl, ...extra], {}),
  );
}

t.test('the stream name follows the reference slug rule', async (t) => {
  t.equal(streamName('dynamo', 'backend'), STREAM_DYNAMO_BACKEND);
  t.equal(streamName('My_NS', 'prefill'), 'namespace-my-ns-component-prefill-kv-events');
  const { kvEventsStreamName08, kvEventsStreamSubject08, streamMaxAgeSeconds } = await import('../src/runtime/events/jetstream.js');
  t.equal(streamMaxAgeSeconds({}), 3600, 'max age: one hour by default');
  t.equal(streamMaxAgeSeconds({ DYN_NATS_STREAM_MAX_AGE: '120' }), 120);
  t.equal(streamMaxAgeSeconds({ DYN_NATS_STREAM_MAX_AGE: 'ten' }), 3600, 'a value u64 does not parse is ignored');
  t.equal(kvEventsStreamName08('My_NS', 'prefill'), streamName('My_NS', 'prefill'));
  t.equal(kvEventsStreamSubject08('dynamo', 'backend'), SUBJECT_DYNAMO_BACKEND);
});

t.test('--durable-kv-events: RouterEvents go into the JetStream stream, not NATS core', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  const core = observer.subscribe('namespace.dynamo.component.backend.kv-events');
  let coreCount = 0;
  void (async () => {
    for await (const _ of core) coreCount++;
  })();
  await observer.flush();
  const lines: string[] = [];
  const worker = await startWorker(await config(nats.url, ['--page-size', '4', '--durable-kv-events']), {
    discovery, log: (l) => lines.push(l), publishKvEvents: true,
  });
  const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    core.unsubscribe();
    client.close();
    await worker.shutdown();
    await discovery.close();
  });
  t.match(lines.join('\n'), /JetStream namespace-dynamo-component-backend-kv-events\.kv-events/);

  const jsm = await observer.jetstreamManager();
  const info = await jsm.streams.info(STREAM_DYNAMO_BACKEND);
  t.same(info.config.subjects, STREAM_SUBJECTS_DYNAMO_BACKEND, 'subjects');
  t.equal(info.config.max_age, DEFAULT_MAX_AGE_NS, 'max age: one hour');
  t.equal(info.config.retention, 'limits', 'the server default retention');

  const prompt = [1, 403, 407, 261, 378, 300, 270, 290, 320, 330, 340, 350, 360];
  const stream = await client.generate({
    token_ids: prompt,
    stop_conditions: { max_tokens: 3, ignore_eos: true },
    sampling_options: { temperature: 0 },
    eos_token_ids: [2],
  });
  for await (const a of stream) if (a.error !== undefined) throw new Error(JSON.stringify(a.error));

  // a consumer of the stream as the reference's router reads it: from the start, every message on the stream
  await jsm.consumers.add(STREAM_DYNAMO_BACKEND, { durable_name: 'test-router', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });
  const consumer = await observer.jetstream().consumers.get(STREAM_DYNAMO_BACKEND, 'test-router');
  type Stored = { stored: { parent_hash: string | null; blocks: { block_hash: string; tokens_hash: string; mm_extra_info: unknown }[] } };
  const events: { worker_id: string; event: { event_id: string; data: Stored | unknown; dp_rank: string } }[] = [];
  const deadline = Date.now() + 10_000;
  const expected = blockTokensHashes(prompt, 4).map(String);
  const storedHashes = () => events.flatMap((e) => (typeof e.event.data === 'object' && e.event.data !== null && 'stored' in e.event.data ? (e.event.data as Stored).stored.blocks.map((b) => b.tokens_hash) : []));
  while (storedHashes().length < expected.length && Date.now() < deadline) {
    const msg = await consumer.next({ expires: 1000 });
    if (!msg) continue;
    t.equal(msg.subject, SUBJECT_DYNAMO_BACKEND, 'published on {stream}.kv-events');
    events.push(parseRouterEventJson(new TextDecoder().decode(msg.data)) as (typeof events)[number]);
    msg.ack();
  }
  t.same(storedHashes().slice(0, expected.length), expected, 'the prompt blocks, by the router\'s tokens_hash');
  t.ok(events.every((e) => e.worker_id === worker.instanceId.toString()), 'worker_id is the instance id');
  t.same(events.map((e) => e.event.event_id), events.map((_, i) => String(i)), 'event ids count from 0, in order');
  t.same(Object.keys(events[0]), ['worker_id', 'event'], 'RouterEvent fields, 0.8 order');
  await observer.flush();
  t.equal(coreCount, 0, 'nothing on NATS core');

  // our own kv router, started after the events were published, learns of the worker (no local indexer on its
  // card) and replays the stream
  const lines2: string[] = [];
  const router = KvRouter.follow(observer, 'dynamo', 'backend', { blockSize: 4, wireProfile: '0.8', log: (l) => lines2.push(l) });
  t.teardown(() => router.close());
  router.learnWorker(worker.instanceId, false);
  const until = Date.now() + 10_000;
  while (router.overlap(worker.instanceId, router.sequenceHashesOf(prompt)) < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  t.equal(router.overlap(worker.instanceId, router.sequenceHashesOf(prompt)), 3, 'the kv router sees the 3 prompt blocks from the stream');
  t.same(lines2, [], 'nothing to report');
});

t.test('a nats-server without JetStream is named, with the setting', async (t) => {
  const plain = await startNats();
  t.teardown(() => plain.stop());
  const plainObserver = await connect({ servers: plain.url });
  t.teardown(() => plainObserver.close());
  const discovery = await Discovery.open({ backend: 'mem' });
  t.teardown(() => discovery.close());
  await t.rejects(startWorker(await config(plain.url, ['--durable-kv-events']), { discovery, log: quiet, publishKvEvents: true }), {
    code: 'LLM_ERR_TRANSPORT',
    message: new RegExp(`nats-server ${plain.url.replace(/[.]/g, '\\.')} has no JetStream.*-js`),
  });

  // best effort (no --kv-events-config, file discovery): the worker serves, publishing its load alone, and says why
  const lines0: string[] = [];
  const fileRoot = mkdtempSync(join(tmpdir(), 'worker-kv-jetstream-'));
  t.teardown(() => rmSync(fileRoot, { recursive: true, force: true }));
  const load = subscribeLoad(plainObserver, 'dynamo');
  const samples: unknown[] = [];
  void (async () => {
    for await (const e of load) samples.push(e.event);
  })();
  await plainObserver.flush();
  const w = await startWorker(await config(plain.url, ['--durable-kv-events', '--discovery-backend', 'file', '--file-kv-root', fileRoot]), { log: (l) => lines0.push(l) });
  const until0 = Date.now() + 5000;
  while (samples.length === 0 && Date.now() < until0) await new Promise((r) => setTimeout(r, 20));
  await w.shutdown();
  load.close();
  t.match(lines0.join('\n'), /KV events are not published \(load is\): nats-server .* has no JetStream \(not enabled\)/);
  t.ok(samples.length > 0, 'load samples are published');

  // a kv router that meets a worker without the local indexer says why it cannot follow its events
  const lines: string[] = [];
  const router = KvRouter.follow(plainObserver, 'dynamo', 'backend', { blockSize: 4, wireProfile: '0.8', log: (l) => lines.push(l) });
  t.teardown(() => router.close());
  router.learnWorker(5n, false);
  const until = Date.now() + 5000;
  while (lines.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  t.match(lines[0], /not followed: nats-server nats:\/\/127\.0\.0\.1:\d+ has no JetStream \(not enabled\).*-js/);
});
