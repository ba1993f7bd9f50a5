// Disaggregated prefill/decode on the CPU backend with the tcp transfer, in process on stories260K (each worker its
// own discovery lease on the mem store, its own request-plane server and bootstrap server): the frontend's prefill
// router gives exactly the aggregated greedy output for 32 concurrent requests, with the prompt KV really coming
// from the prefill worker; the older flow (decode calls prefill itself) too. Failures: decode without
// bootstrap_info, mismatched page size, a decode request cancelled while waiting (the prefill side drops the room
// and skips its prefill), a transfer nobody fetches (timeout frees it), a prefill peer dying mid-transfer. After
// each, every scheduler passes its integrity checks (no page leaked) and no room lingers.
import t from 'tap';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { DiscoveredModels } from '../src/frontend/discovered-models.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import { EndpointClient } from '../src/runtime/client.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import { startWorker, type WorkerHandle } from '../src/worker/worker.js';
import { FrameReader } from '../src/disagg/frames.js';
import { randomBootstrapRoom } from '../src/disagg/service.js';
import { errorFromItem } from '../src/protocol/transport.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const quiet = () => undefined;
const TIMEOUT_SECS = 3;

async function worker(ns: string, extra: string[]): Promise<WorkerHandle> {
  const config = await finalizeConfig(
    resolveConfig(
      ['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1', '--mem-fraction-static', '0.01',
        '--tcp-rpc-host', '127.0.0.1', '--discovery-backend', 'mem', '--namespace', ns, '--page-size', '4',
        '--kv-transfer-timeout', String(TIMEOUT_SECS), '--graceful-shutdown-grace-period', '0.5', ...extra],
      {},
    ),
  );
  return startWorker(config, { log: quiet });
}

function request(tokenIds: number[], maxTokens: number, extra: Partial<PreprocessedRequest> = {}): PreprocessedRequest {
  return {
    token_ids: tokenIds,
    stop_conditions: { max_tokens: maxTokens },
    sampling_options: { temperature: 0 },
    eos_token_ids: [2],
    ...extra,
  };
}

/** Deterministic prompts: BOS then tokens of a small LCG, lengths 3..42 (several pages of 4, partial last pages). */
function prompts(n: number): number[][] {
  let x = 12345;
  const next = () => (x = (x * 1103515245 + 12345) % 2 ** 31);
  const out: number[][] = [];
  for (let i = 0; i < n; i++) {
    const len = 3 + (next() % 40);
    const p = [1];
    for (let j = 0; j < len; j++) p.push(3 + (next() % 500));
    // some share a prefix, as chat turns do
    out.push(i % 4 === 3 ? [...out[i - 1].slice(0, 9), ...p.slice(1)] : p);
  }
  return out;
}

async function tokensOf(stream: AsyncIterable<{ token_ids: number[]; finish_reason?: string | null }>): Promise<number[]> {
  const out: number[] = [];
  for await (const c of stream) out.push(...c.token_ids);
  return out;
}

async function clientTokens(client: EndpointClient, body: unknown, signal?: AbortSignal): Promise<{ tokens: number[]; chunks: unknown[] }> {
  const stream = await client.generate(body, signal ? { signal } : {});
  const tokens: number[] = [];
  const chunks: unknown[] = [];
  for await (const a of stream) {
    if (a.event === 'error' || a.error !== undefined) {
      const e = errorFromItem(a);
      throw Object.assign(new Error(`${e.code}: ${e.message}`), { payload: { code: e.code, message: e.message } });
    }
    if (a.data === undefined) continue;
    chunks.push(a.data);
    tokens.push(...((a.data as { token_ids?: number[] }).token_ids ?? []));
  }
  return { tokens, chunks };
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Null when the worker's scheduler passes its integrity checks (no page leaked) and runs nothing. */
async function problems(w: WorkerHandle): Promise<string | null> {
  const s = w.supervisor.scheduler;
  try {
    await s.checkIntegrity();
  } catch (err) {
    return (err as Error).message;
  }
  return s.runningCount + s.queuedCount ? `${s.runningCount} running, ${s.queuedCount} queued` : null;
}

t.test('disaggregated prefill + decode over tcp', async (t) => {
  const agg = await worker('agg', []);
  const prefill = await worker('dis', ['--disaggregation-mode', 'prefill']);
  const decode = await worker('dis', ['--disaggregation-mode', 'decode']);
  const frontDiscovery = await Discovery.open({ backend: 'mem' });
  const aggModels = await DiscoveredModels.create({ discovery: frontDiscovery, namespace: 'agg' });
  const disModels = await DiscoveredModels.create({ discovery: frontDiscovery, namespace: 'dis' });
  const responses = await ResponseServer.start({ host: '127.0.0.1' });
  const decodeClient = await EndpointClient.create({ discovery: frontDiscovery, namespace: 'dis', component: 'backend', endpoint: 'generate', responses });
  const prefillClient = await EndpointClient.create({ discovery: frontDiscovery, namespace: 'dis', component: 'prefill', endpoint: 'generate', responses });
  t.teardown(async () => {
    decodeClient.close();
    prefillClient.close();
    await responses.close();
    await aggModels.close();
    await disModels.close();
    await frontDiscovery.close();
    for (const w of [agg, prefill, decode]) await w.shutdown();
  });
  const sender = prefill.disagg!.sender!;
  const bootstrap = prefill.disagg!.endpoint!;

  t.test('the prefill worker registers as Prefill with its bootstrap endpoint', async (t) => {
    t.equal(prefill.card.model_type, 'Prefill');
    t.same(prefill.card.runtime_config.disaggregated_endpoint, bootstrap);
    t.equal(bootstrap.bootstrap_port, sender.port);
    t.equal(prefill.config.endpoint.component, 'prefill');
    t.equal(decode.config.endpoint.component, 'backend');
  });

  t.test('32 concurrent requests through the prefill router equal the aggregated greedy output', async (t) => {
    const aggModel = await aggModels.waitFor('stories260K', 5000);
    const disModel = await disModels.waitFor('stories260K', 5000);
    const ps = prompts(32);
    const signal = () => new AbortController().signal;  // one per request, as the HTTP server gives each
    const expected = await Promise.all(ps.map((p) => tokensOf(aggModel.generate(request(p, 12), { signal: signal() }))));
    const before = { ...decode.supervisor.scheduler.stats };
    const got = await Promise.all(ps.map((p) => tokensOf(disModel.generate(request(p, 12), { signal: signal() }))));
    for (let i = 0; i < ps.length; i++) t.same(got[i], expected[i], `request ${i} (${ps[i].length} prompt tokens)`);
    t.ok(expected.every((e) => e.length > 0));
    // Every prompt was handed over whole (partial last pages included) with its first token: decode ran no prefill.
    const promptTotal = ps.reduce((n, p) => n + p.length, 0);
    const after = decode.supervisor.scheduler.stats;
    t.equal(after.handedOverTokens - before.handedOverTokens, promptTotal, 'the KV of every prompt position came from the prefill worker');
    t.equal(after.prefillTokens - before.prefillTokens, 0, 'the decode worker ran no prefill step');
    await until('rooms settled', () => sender.pending.rooms === 0);
    for (const [w, n] of [[agg, 'agg'], [prefill, 'prefill'], [decode, 'decode']] as const) t.equal(await problems(w), null, `${n}: integrity`);
  });

  t.test('older flow: the decode worker calls the prefill worker itself', async (t) => {
    const ps = prompts(3);
    for (const p of ps) {
      const { tokens } = await clientTokens(decodeClient, request(p, 10));
      const aggModel = await aggModels.waitFor('stories260K', 5000);
      t.same(tokens, await tokensOf(aggModel.generate(request(p, 10), { signal: new AbortController().signal })));
    }
    await until('rooms settled', () => sender.pending.rooms === 0);
    t.equal(await problems(decode), null, 'decode: integrity');
    t.equal(await problems(prefill), null, 'prefill: integrity');
  });

  t.test('the prefill handler yields the bootstrap chunk first and only', async (t) => {
    const room = randomBootstrapRoom();
    const done = clientTokens(prefillClient, request([1, 50, 60, 70, 80, 90], 5, { bootstrap_info: { ...bootstrap, bootstrap_room: room } }));
    const fetched = clientTokens(decodeClient, request([1, 50, 60, 70, 80, 90], 5, { bootstrap_info: { ...bootstrap, bootstrap_room: room } }));
    const { chunks } = await done;
    t.equal(chunks.length, 1);
    t.same(chunks[0], { token_ids: [], text: null, finish_reason: null, disaggregated_params: { ...bootstrap, bootstrap_room: room } });
    t.equal((await fetched).tokens.length, 5);
  });

  t.test('the legacy {request, sampling_params} prefill wrapper and the disagg health-check payload', async (t) => {
    const fake = { bootstrap_host: '2.2.2.2', bootstrap_port: bootstrap.bootstrap_port, bootstrap_room: 0 };
    const legacy = await clientTokens(prefillClient, {
      request: { token_ids: [1, 5, 6, 7], bootstrap_info: fake },
      sampling_params: { max_new_tokens: 1, temperature: 0, top_p: 1, top_k: -1, ignore_eos: false },
    });
    t.same(legacy.chunks, [{ token_ids: [], text: null, finish_reason: null, disaggregated_params: fake }]);
    const health = { stop_conditions: { max_tokens: 1, ignore_eos: false }, sampling_options: { temperature: 0, top_p: 1, top_k: -1 }, eos_token_ids: [], annotations: [], token_ids: [1], bootstrap_info: fake };
    t.equal((await clientTokens(prefillClient, health)).chunks.length, 1, 'prefill answers the health check');
    t.equal((await clientTokens(decodeClient, health)).tokens.length, 1, 'decode answers the health check without a transfer');
    t.equal(sender.pending.rooms, 0);
  });

  t.test('a cancelled decode request makes the prefill side drop its room', async (t) => {
    const room = randomBootstrapRoom();
    const p = [1, 7, 8, 9, 10, 11, 12, 13, 14, 15];
    const ac = new AbortController();
    const pending = clientTokens(decodeClient, request(p, 8, { bootstrap_info: { ...bootstrap, bootstrap_room: room } }), ac.signal);
    await until('the decode side waits at the bootstrap server', () => sender.pending.rooms === 1);
    ac.abort();
    await pending.catch(() => undefined);
    await until('the room is dropped', () => sender.pending.rooms === 0);
    // its prefill, arriving late, is skipped: it yields the bootstrap chunk and ends without computing
    const stepsBefore = prefill.supervisor.scheduler.stats.steps;
    const { chunks } = await clientTokens(prefillClient, request(p, 8, { bootstrap_info: { ...bootstrap, bootstrap_room: room } }));
    t.equal(chunks.length, 1);
    t.equal(prefill.supervisor.scheduler.stats.steps, stepsBefore, 'no prefill step ran for the given-up room');
    t.equal(sender.pending.rooms, 0);
    t.equal(await problems(prefill), null, 'prefill: integrity');
    t.equal(await problems(decode), null, 'decode: integrity');
  });

  t.test('pages nobody fetches are released after --kv-transfer-timeout', async (t) => {
    const room = randomBootstrapRoom();
    const t0 = Date.now();
    const err = await clientTokens(prefillClient, request([1, 20, 21, 22, 23, 24, 25, 26, 27], 4, { bootstrap_info: { ...bootstrap, bootstrap_room: room } })).then(
      () => null,
      (e: Error) => e,
    );
    t.match(err?.message, new RegExp(`LLM_ERR_TIMEOUT.*bootstrap room ${room}: no decode worker fetched its KV pages within ${TIMEOUT_SECS} s`));
    t.ok(Date.now() - t0 >= TIMEOUT_SECS * 1000 - 100);
    t.same(sender.pending, { rooms: 0, bytes: 0 });
    t.equal(await problems(prefill), null, 'prefill: integrity');
  });

  t.test('a decode request whose prefill never comes fails after the timeout', async (t) => {
    const room = randomBootstrapRoom();
    const err = await clientTokens(decodeClient, request([1, 30, 31, 32, 33], 4, { bootstrap_info: { ...bootstrap, bootstrap_room: room } })).then(
      () => null,
      (e: Error) => e,
    );
    t.match(err?.message, new RegExp(`LLM_ERR_TIMEOUT.*bootstrap room ${room}`));
    await until('rooms settled', () => sender.pending.rooms === 0);
    t.equal(await problems(decode), null, 'decode: integrity');
  });

  t.test('a prefill peer dying mid-transfer fails the decode request cleanly', async (t) => {
    // A bootstrap server that starts sending the pages and dies half-way.
    const sockets = new Set<Socket>();
    const dying = createServer((s) => {
      sockets.add(s);
      const reader = new FrameReader('test');
      s.on('data', (chunk) => {
        for (const f of reader.push(chunk)) {
          if (f.header.type !== 'fetch') continue;
          const layout = f.header.layout;
          const full = new Uint8Array(2 * layout.bytesPerPage);
          // the frame announces two pages; only the header and half a page go out before the "crash"
          const json = Buffer.from(JSON.stringify({ type: 'pages', room: f.header.room, layout, token_ids: Array.from({ length: 2 * layout.pageSize }, () => 5), page_count: 2 }));
          const prefix = Buffer.alloc(8);
          prefix.writeUInt32BE(4 + json.length + full.length, 0);
          prefix.writeUInt32BE(json.length, 4);
          s.write(Buffer.concat([prefix, json, full.subarray(0, layout.bytesPerPage / 2)]), () => s.destroy());
        }
      });
    });
    await new Promise<void>((r) => dying.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => dying.close(() => r())));
    const port = (dying.address() as { port: number }).port;
    const err = await clientTokens(decodeClient, request([1, 5, 5, 5, 5, 5, 5, 5, 5, 9], 4, { bootstrap_info: { bootstrap_host: '127.0.0.1', bootstrap_port: port, bootstrap_room: 42n } })).then(
      () => null,
      (e: Error) => e,
    );
    t.match(err?.message, /LLM_ERR_KV_TRANSFER.*prefill worker at 127\.0\.0\.1:\d+ closed the connection before the KV pages of bootstrap room 42 .* arrived/);
    t.equal(await problems(decode), null, 'decode: integrity');
    // the decode worker still serves
    const ok = await clientTokens(decodeClient, request([1, 50, 60, 70], 3, { bootstrap_info: { bootstrap_host: '2.2.2.2', bootstrap_port: 0, bootstrap_room: 0n } }));
    t.equal(ok.tokens.length, 3, 'a fake-bootstrap (health check) request runs without a transfer');
  });

  // last: this stops the prefill worker
  t.test('a prefill worker shutting down ends the rooms still waiting for a decode worker', async (t) => {
    const room = randomBootstrapRoom();
    const pending = clientTokens(prefillClient, request([1, 40, 41, 42, 43, 44, 45, 46, 47, 48], 4, { bootstrap_info: { ...bootstrap, bootstrap_room: room } })).then(
      () => null,
      (e: Error) => e,
    );
    await until('the pages wait for a decode worker', () => sender.pending.bytes > 0);
    const t0 = Date.now();
    await prefill.shutdown();
    t.ok(Date.now() - t0 < TIMEOUT_SECS * 1000, `shut down in ${Date.now() - t0} ms, before the transfer timeout`);
    // a request the shutdown ends is dropped mid-stream (what Dynamo's migration retries), not failed
    t.match((await pending)?.message, /closed before complete_final/);
    t.same(sender.pending, { rooms: 0, bytes: 0 });
  });
});

t.test('refusal without bootstrap_info; page sizes 16 (prefill) and 4 (decode) are converted on the tcp path', async (t) => {
  const agg = await worker('ps-agg', []);
  const prefill = await worker('ps', ['--disaggregation-mode', 'prefill', '--page-size', '16']);
  const decode = await worker('ps-decode', ['--disaggregation-mode', 'decode', '--page-size', '4']);
  const discovery = await Discovery.open({ backend: 'mem' });
  const aggModels = await DiscoveredModels.create({ discovery, namespace: 'ps-agg' });
  const responses = await ResponseServer.start({ host: '127.0.0.1' });
  const client = await EndpointClient.create({ discovery, namespace: 'ps-decode', component: 'backend', endpoint: 'generate', responses });
  const prefillClient = await EndpointClient.create({ discovery, namespace: 'ps', component: 'prefill', endpoint: 'generate', responses });
  t.teardown(async () => {
    client.close();
    prefillClient.close();
    await responses.close();
    await aggModels.close();
    await discovery.close();
    for (const w of [decode, prefill, agg]) await w.shutdown();
  });
  const noInfo = await clientTokens(client, request([1, 2, 3], 2)).then(() => null, (e: Error) => e);
  t.match(noInfo?.message, /bootstrap_info is required for disaggregated decode but was not provided/);
  const bootstrap = prefill.disagg!.endpoint!;
  const aggModel = await aggModels.waitFor('stories260K', 5000);
  const ps = prompts(8).map((p, i) => [...p, ...p].slice(0, 17 + i * 5)); // 17..52 tokens: one to three pages of 16
  for (const p of ps) {
    const room = randomBootstrapRoom();
    const before = { ...decode.supervisor.scheduler.stats };
    const info = { ...bootstrap, bootstrap_room: room };
    const [, got] = await Promise.all([clientTokens(prefillClient, request(p, 1, { bootstrap_info: info })), clientTokens(client, request(p, 10, { bootstrap_info: info }))]);
    t.same(got.tokens, await tokensOf(aggModel.generate(request(p, 10), { signal: new AbortController().signal })), `${p.length} prompt tokens`);
    const after = decode.supervisor.scheduler.stats;
    t.equal(after.handedOverTokens - before.handedOverTokens, p.length, 'the converted pages (the partial last one repacked) were used');
    t.equal(after.prefillTokens - before.prefillTokens, 0, 'no prefill on the decode side');
  }
  await until('rooms settled', () => prefill.disagg!.sender!.pending.rooms === 0);
  t.equal(await problems(decode), null, 'decode: integrity');
  t.equal(await problems(prefill), null, 'prefill: integrity');
});
