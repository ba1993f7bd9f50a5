// A --dp-size 2 worker on stories260K (CPU) with a real nats-server, per wire profile: requests naming a dp rank run
// in that group; KV events and load samples come from both groups, each with its dp_rank; each group's local indexer
// answers for its own blocks (the `worker_kv_indexer_query_dp{N}` endpoints, and 0.8's NATS query by dp_rank); the
// cache gauges and SGLang's scheduler gauges carry a dp_rank label per group.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { EndpointClient } from '../src/runtime/client.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { subscribeKvEvents, subscribeLoad, type ReceivedEvent } from '../src/runtime/events/index.js';
import type { ActiveLoad, RouterEvent } from '../src/protocol/events.js';
import { decodeWorkerKvQueryResponse08, workerKvIndexerQuerySubject08 } from '../src/protocol/events-0.8.js';
import type { WorkerKvQueryResponse } from '../src/protocol/kv-query.js';
import { stringifyJsonExact } from '../src/protocol/json.js';
import { startWorker } from '../src/worker/worker.js';
import { startNats, type NatsService } from './helpers/services.js';

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

function collect<T>(sub: AsyncIterable<ReceivedEvent<T>>): T[] {
  const out: T[] = [];
  void (async () => {
    for await (const e of sub) out.push(e.event);
  })();
  return out;
}

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const storedBlocks = (events: RouterEvent[], dpRank: number) =>
  events.filter((e) => e.event.dp_rank === dpRank).flatMap((e) => (typeof e.event.data === 'object' && 'stored' in e.event.data ? e.event.data.stored.blocks : []));

for (const profile of ['0.8', 'main'] as const) {
  t.test(`dp 2 (${profile} wire): named ranks, events and load from both groups, a local indexer per group, gauges per dp_rank`, async (t) => {
    const discovery = await Discovery.open({ backend: 'mem' });
    const events = collect<RouterEvent>(subscribeKvEvents(observer, 'dynamo', 'backend', undefined, profile));
    const loads = collect<ActiveLoad>(subscribeLoad(observer, 'dynamo', undefined, profile));
    await observer.flush();
    const config = await finalizeConfig(resolveConfig(['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
      '--mem-fraction-static', '0.01', '--tcp-rpc-host', '127.0.0.1', '--nats-server', nats.url, '--page-size', '4', '--dp-size', '2',
      '--dynamo-wire', profile, '--system-port', '0', '--system-host', '127.0.0.1', '--enable-metrics'], {}));
    const worker = await startWorker(config, { discovery, log: quiet, publishKvEvents: true });
    const client = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: 'generate', responses });
    t.teardown(async () => {
      client.close();
      await worker.shutdown();
      await discovery.close();
    });
    t.equal(worker.card.runtime_config.data_parallel_size, 2, 'the card says 2 dp ranks');
    await until('the initial load of both ranks', () => [0, 1].every((d) => loads.some((l) => l.worker_id === worker.instanceId && l.dp_rank === d)));

    // 9 prompt tokens: 2 full pages of 4 each; one prompt per dp rank
    const prompts = [[1, 403, 407, 261, 378, 300, 270, 290, 320], [1, 300, 301, 302, 303, 304, 305, 306, 307]];
    for (const d of [0, 1]) {
      const stream = await client.generate({
        token_ids: prompts[d], stop_conditions: { max_tokens: 2, ignore_eos: true }, sampling_options: { temperature: 0 }, eos_token_ids: [2],
        routing: { dp_rank: d },
      });
      for await (const a of stream) if (a.error !== undefined) throw new Error(JSON.stringify(a.error));
    }
    t.same(worker.topology.groups.map((g) => g.metrics.snapshot().requests.finished), [1, 1], 'each request ran in the group it named');
    await until('stored blocks from both ranks', () => storedBlocks(events, 0).length >= 2 && storedBlocks(events, 1).length >= 2);
    t.ok(events.every((e) => e.worker_id === worker.instanceId && (e.event.dp_rank === 0 || e.event.dp_rank === 1)), 'every event names its dp rank');
    t.notSame(storedBlocks(events, 0).map((b) => b.tokens_hash), storedBlocks(events, 1).map((b) => b.tokens_hash), 'each rank stored its own prompt');

    const query = async (d: number): Promise<WorkerKvQueryResponse> => {
      const request = { worker_id: worker.instanceId, dp_rank: d, start_event_id: null, end_event_id: null };
      if (profile === '0.8') {
        const reply = await observer.request(workerKvIndexerQuerySubject08('dynamo', 'backend', worker.instanceId), new TextEncoder().encode(stringifyJsonExact(request)), { timeout: 5000 });
        return decodeWorkerKvQueryResponse08(reply.data);
      }
      const q = await EndpointClient.create({ discovery, namespace: 'dynamo', component: 'backend', endpoint: `worker_kv_indexer_query_dp${d}`, responses });
      try {
        const answers: unknown[] = [];
        for await (const a of await q.generate(request)) answers.push(a.data);
        return answers[0] as WorkerKvQueryResponse;
      } finally {
        q.close();
      }
    };
    for (const d of [0, 1]) {
      const answer = await query(d);
      const dump = 'TreeDump' in answer ? answer.TreeDump.events : [];
      t.ok(dump.length > 0 && dump.every((e) => e.event.dp_rank === d), `rank ${d}'s indexer dumps its own blocks`);
      const hashes = new Set(dump.flatMap((e) => (typeof e.event.data === 'object' && 'stored' in e.event.data ? e.event.data.stored.blocks.map((b) => b.tokens_hash) : [])));
      t.ok(storedBlocks(events, d).every((b) => hashes.has(b.tokens_hash)), `rank ${d}'s dump holds what it published`);
    }
    for (const d of [0, 1]) {
      t.ok((await discovery.listInstances('dynamo', 'backend', `worker_kv_indexer_query_dp${d}`)).some((r) => r.instance_id === worker.instanceId), `the dp${d} query endpoint is registered`);
    }
    if (profile === '0.8') {
      // 0.8 has no error answer: a rank the worker does not have gets no reply, and the request times out
      const request = { worker_id: worker.instanceId, dp_rank: 2, start_event_id: null, end_event_id: null };
      const subject = workerKvIndexerQuerySubject08('dynamo', 'backend', worker.instanceId);
      await t.rejects(observer.request(subject, new TextEncoder().encode(stringifyJsonExact(request)), { timeout: 500 }), 'a rank the worker does not have');
    }

    const metrics = await (await fetch(worker.systemServer!.url('/metrics'))).text();
    for (const d of [0, 1]) {
      t.match(metrics, new RegExp(`dynamo_component_total_blocks\\{[^}]*dp_rank="${d}"[^}]*\\} \\d+`), `total blocks of dp rank ${d}`);
      t.match(metrics, new RegExp(`sglang:num_running_reqs\\{[^}]*dp_rank="${d}"[^}]*\\} 0`), `SGLang's scheduler gauges of dp rank ${d}`);
    }
  });
}

t.test('--dp-size 2 with a disaggregated mode is refused before the model loads', async (t) => {
  const config = await finalizeConfig(resolveConfig(['--model-path', MODEL, '--device', 'cpu', '--dp-size', '2', '--disaggregation-mode', 'prefill',
    '--disaggregation-transfer-backend', 'tcp', '--kv-events-config', '{"publisher":"null"}'], {}));
  const discovery = await Discovery.open({ backend: 'mem' });
  t.teardown(() => discovery.close());
  await t.rejects(startWorker(config, { discovery, log: quiet }), { code: 'LLM_ERR_CONFIG', message: /--dp-size 2 with --disaggregation-mode prefill/ });
});
