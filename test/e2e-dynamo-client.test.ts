// End to end, once per wire profile, with a Dynamo caller written from the reference's wire rules
// (test/helpers/dynamo-client.ts, which imports nothing of ours): real etcd and nats-server, `dynamo-sglang start`
// worker processes (stories260K on the CPU) in the default profile (0.8) and with DYN_WIRE_PROFILE=main. The caller
// finds the worker in etcd, accepts its model card by the reference's field rules, generates over that release's TCP
// frames (and, for 0.8, an HTTP/1.1 POST on the HTTP plane) with call-home responses, cancels with "kill", reads the KV events in that release's form, recovers the
// worker's cache through that release's local-indexer query, and migrates a stream that a draining worker drops to
// another worker, ending with the same tokens as an uninterrupted run.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { connect as natsConnect } from 'nats';
import { startCli, type CliProcess } from './helpers/cli-process.js';
import { startEtcd, startNats, type EtcdService, type NatsService } from './helpers/services.js';
import {
  DynamoCaller,
  followKvEvents,
  generateWithMigration,
  listHttpUrls,
  listInstances,
  listModelCards,
  queryLocalIndexer,
  queryLocalIndexerEndpoint,
  type DynamoVersion,
  type Instance,
} from './helpers/dynamo-client.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const NS = 'dynamo';
// BOS and "Once upon a time" four times, in the model's own vocabulary (README): several KV blocks of 4 tokens
const PROMPT = [1, ...[403, 407, 261, 378, 403, 407, 261, 378, 403, 407, 261, 378, 403, 407, 261, 378]];

let etcdService: EtcdService;
let natsService: NatsService;
const procs: CliProcess[] = [];

t.teardown(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await natsService?.stop();
  await etcdService?.stop();
});

async function startWorker(version: DynamoVersion, plane: 'tcp' | 'http' = 'tcp'): Promise<{ proc: CliProcess; instanceId: string }> {
  const proc = startCli(
    [
      'start', '--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
      '--page-size', '4', '--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcdService.endpoint}`,
      '--nats-server', natsService.url, '--request-plane', plane, '--tcp-rpc-host', '127.0.0.1',
      '--graceful-shutdown-grace-period', '0',
    ],
    // paced so that a test can stop a worker mid-stream
    { DYN_SGL_STREAM_DELAY_MS: '15', ...(version === 'main' ? { DYN_WIRE_PROFILE: 'main' } : {}) },
  );
  procs.push(proc);
  const [, instanceId] = await proc.waitFor(/serving dynamo\.backend\.generate as instance ([0-9a-f]+)/, 90_000);
  return { proc, instanceId };
}

const request = (maxTokens: number, tokens = PROMPT) => ({
  token_ids: tokens,
  stop_conditions: { max_tokens: maxTokens, ignore_eos: true },
  sampling_options: { temperature: 0 },
  eos_token_ids: [2],
  annotations: [],
});

t.before(async () => {
  [etcdService, natsService] = await Promise.all([startEtcd(), startNats()]);
});

for (const version of ['0.8', 'main'] as const) t.test(`a Dynamo ${version} caller uses a worker of wire profile ${version}`, async (t) => {
  // the previous profile's workers go first: both groups serve dynamo.backend.generate
  for (const p of procs.splice(0)) {
    p.kill('SIGKILL');
    await p.exited;
  }
  const etcd = new Etcd3({ hosts: `http://${etcdService.endpoint}` });
  const nats = await natsConnect({ servers: natsService.url });
  const client = await DynamoCaller.start(version);
  t.teardown(async () => {
    client.close();
    await nats.drain();
    etcd.close();
  });
  const kvEvents = followKvEvents(nats, NS, 'backend', version);
  const a = await startWorker(version);
  const instances = () => listInstances(etcd, NS, 'backend', 'generate');
  while ((await instances()).length !== 1) await new Promise((r) => setTimeout(r, 50)); // a killed worker's lease may linger

  // discovery: 0.8's address is host:port/{endpoint}, main's host:port/{instance_id:x}/{endpoint}
  const [instanceA] = await instances();
  t.equal(instanceA.instanceIdHex, a.instanceId);
  t.equal(instanceA.path, version === '0.8' ? 'generate' : `${a.instanceId}/generate`);

  // the model card decodes by the reference's rules
  const [card] = await listModelCards(etcd, NS, 'backend', 'generate');
  t.equal(card.display_name, 'stories260K');
  t.equal(card.migration_limit, 0);
  // the card's slug is Slug::from_string(display name): lowercase, a-z 0-9 - _ kept, no hash suffix
  t.equal(card.slug, 'stories260k');

  let greedy: number[] = [];
  t.test('generate: every chunk streams back, then complete_final and the sentinel', async (t) => {
    const { done } = await client.send(instanceA, request(12));
    const result = await done;
    t.ok(result.completed && result.sentinel, JSON.stringify(result.items).slice(0, 200));
    const chunks = result.items as { token_ids: number[]; finish_reason?: string; completion_usage?: { completion_tokens: number } }[];
    greedy = chunks.flatMap((c) => c.token_ids);
    t.equal(greedy.length, 12);
    t.equal(chunks.at(-1)?.finish_reason, 'length');
    t.equal(chunks.at(-1)?.completion_usage?.completion_tokens, 12);
  });

  t.test('a request the worker cannot read comes back as an error item in the reference form', async (t) => {
    const { done } = await client.send(instanceA, { token_ids: 'not tokens' });
    const result = await done;
    t.ok(result.completed, 'the stream still completes');
    t.equal(result.items.length, 1);
    const item = result.items[0] as Record<string, unknown>;
    t.same(Object.keys(item).sort(), ['comment', 'event'], 'Annotated::from_error: event and comment, nothing else');
    t.equal(item.event, 'error');
    t.match((item.comment as string[])[0], /^LLM_ERR_BAD_REQUEST: request\./);
  });

  t.test(`KV events arrive as ${version === '0.8' ? "0.8's JSON RouterEvents" : "main's msgpack envelopes"} of this worker`, async (t) => {
    while (!kvEvents.events.some((e) => typeof e.value.event.data === 'object' && e.value.event.data !== null && 'stored' in e.value.event.data)) {
      await new Promise((r) => setTimeout(r, 20));
    }
    const stored = kvEvents.events.find((e) => typeof e.value.event.data === 'object' && e.value.event.data !== null && 'stored' in e.value.event.data)!;
    if (version === '0.8') {
      t.ok(stored.raw.startsWith(`{"worker_id":${instanceA.instanceIdDec},"event":{"event_id":`), stored.raw.slice(0, 80));
      t.notOk('storage_tier' in stored.value, 'no field 0.8 lacks');
    } else {
      t.equal(String(stored.value.worker_id), instanceA.instanceIdDec);
      t.equal(stored.value.storage_tier, 'device');
    }
    const data = stored.value.event.data as { stored: { parent_hash: unknown; blocks: { block_hash: unknown; tokens_hash: unknown; mm_extra_info: unknown }[] } };
    t.ok(data.stored.blocks.length > 0);
    if (version === '0.8') t.same(Object.keys(data.stored.blocks[0]), ['block_hash', 'tokens_hash', 'mm_extra_info']);
  });

  t.test(`local-indexer recovery: the ${version} query returns the cached blocks`, async (t) => {
    type Dumped = { event: { data: { stored?: { blocks: unknown[] } } } }[];
    let dumped: Dumped;
    if (version === '0.8') {
      const dump = await queryLocalIndexer(nats, NS, 'backend', instanceA, null);
      t.ok(Array.isArray(dump.TreeDump), JSON.stringify(dump).slice(0, 120));
      dumped = dump.TreeDump as Dumped;
      const events = await queryLocalIndexer(nats, NS, 'backend', instanceA, 0);
      t.ok(Array.isArray(events.Events), 'a range from event 0 is answered with the buffered events');
      // 0.8 has no error answer: a query the worker cannot read gets no reply, and the router's request times out
      const subject = `namespace.${NS}.component.backend.worker_kv_indexer_query.${instanceA.instanceIdDec}`;
      await t.rejects(nats.request(subject, new TextEncoder().encode('{"start_event_id":"x"}'), { timeout: 500 }), 'an unreadable query is not answered');
    } else {
      const [query] = (await listInstances(etcd, NS, 'backend', 'worker_kv_indexer_query_dp0')).filter((i) => i.instanceIdHex === a.instanceId);
      t.equal(query.path, `${a.instanceId}/worker_kv_indexer_query_dp0`);
      const dump = await queryLocalIndexerEndpoint(client, query, null);
      const batch = dump.TreeDump as { events: Dumped; last_event_id: number };
      t.ok(batch && Array.isArray(batch.events), JSON.stringify(dump).slice(0, 120));
      dumped = batch.events;
    }
    const blocks = dumped.flatMap((e) => e.event.data.stored?.blocks ?? []);
    t.ok(blocks.length >= Math.floor(PROMPT.length / 4), `${blocks.length} cached blocks recovered`);
  });

  t.test('cancellation: "kill" ends the stream early and the worker keeps serving', async (t) => {
    let got = 0;
    let killed = false;
    const { done, kill } = await client.send(instanceA, request(200), () => {
      got++;
      if (got === 2 && !killed) {
        killed = true;
        kill();
      }
    });
    const result = await done;
    t.notOk(result.completed, 'no complete_final after kill');
    t.ok(got < 200, `${got} chunks before the stream ended`);
    const after = await (await client.send(instanceA, request(3))).done;
    t.ok(after.completed);
  });

  if (version === '0.8') t.test('the HTTP request plane takes 0.8\'s HTTP/1.1 POST', async (t) => {
    const c = await startWorker(version, 'http');
    let urls: string[] = [];
    while ((urls = await listHttpUrls(etcd, NS, 'backend', 'generate')).length === 0) await new Promise((r) => setTimeout(r, 50));
    t.match(urls[0], /^http:\/\/127\.0\.0\.1:\d+\/v1\/rpc\/generate$/);
    const { done } = await client.send({ httpUrl: urls[0], instanceIdHex: c.instanceId, instanceIdDec: '', hostPort: '', path: '' }, request(12));
    const result = await done;
    t.ok(result.completed);
    t.same((result.items as { token_ids: number[] }[]).flatMap((i) => i.token_ids), greedy, 'the same greedy tokens');
    c.proc.kill('SIGTERM');
    await c.proc.exited;
  });

  t.test('a worker that drains mid-stream drops the stream; the caller migrates it to another worker', async (t) => {
    const b = await startWorker(version);
    while ((await instances()).length < 2) await new Promise((r) => setTimeout(r, 50));
    const first = async (): Promise<Instance[]> => {
      const all = await instances();
      // A first, then whatever else is listed
      return [...all.filter((i) => i.instanceIdHex === a.instanceId), ...all.filter((i) => i.instanceIdHex !== a.instanceId)];
    };
    let stopped = false;
    const result = await generateWithMigration(client, first, request(12), 1, (produced, instance) => {
      if (!stopped && produced >= 4 && instance.instanceIdHex === a.instanceId) {
        stopped = true;
        a.proc.kill('SIGTERM');
      }
    });
    t.equal(result.migrations, 1, 'migrated once');
    t.equal(result.finishReason, 'length');
    t.same(result.tokens, greedy, 'the same tokens as the uninterrupted greedy run');
    t.ok(b.instanceId !== a.instanceId);
  });
});
