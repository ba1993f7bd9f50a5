// The frontend routes a model's requests only to the workers whose card names it (two models registered on one
// endpoint stay apart), reports outages as 503 with a retry hint (no worker, prefill workers gone), logs each
// worker departure and recovery once, and closes a streaming reply's connection when the client asked for it.
// Fake workers on the real TCP request plane and the mem store.
import t from 'tap';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Discovery, MemStore } from '../src/runtime/discovery/index.js';
import { serveEndpoint, type ServedEndpoint } from '../src/runtime/endpoint.js';
import { TcpRequestServer } from '../src/runtime/request-plane/tcp-server.js';
import { DiscoveredModels } from '../src/frontend/discovered-models.js';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { modelTypeToWire, ModelTypeFlag, type ModelDeploymentCard } from '../src/protocol/mdc.js';
import type { LlmResponseChunk } from '../src/protocol/response.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import { configureLogging } from '../src/runtime/log.js';
import { LlmError } from '../src/errors.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const HOST = '127.0.0.1';
const NS = 'routing-faults';

const logLines: string[] = [];
configureLogging({ spec: 'info', jsonl: true, destination: { write: (line: string) => logLines.push(line) } });
const logged = (msg: string, model: string) =>
  logLines.map((l) => JSON.parse(l) as { msg?: string; message?: string; model?: string }).filter((r) => (r.msg ?? r.message) === msg && r.model === model).length;

function card(name: string, bits: number): ModelDeploymentCard {
  return {
    display_name: name,
    slug: name,
    source_path: MODEL,
    context_length: 512,
    kv_cache_block_size: 16,
    model_type: modelTypeToWire(bits),
    model_input: 'Tokens',
    runtime_config: {},
  };
}

interface FakeWorker {
  discovery: Discovery;
  served: ServedEndpoint;
  stop(): Promise<void>;
}

/** A worker answering every request with one token, `token`, on `NS/backend/generate`, its card naming `model`. */
async function fakeWorker(tcpServer: TcpRequestServer, model: string, token: number, bits = ModelTypeFlag.Chat | ModelTypeFlag.Completions, component = 'backend'): Promise<FakeWorker> {
  const discovery = new Discovery(new MemStore());
  const served = await serveEndpoint({
    discovery,
    namespace: NS,
    component,
    endpoint: 'generate',
    plane: 'tcp',
    tcpServer,
    handler: async function* (): AsyncIterable<LlmResponseChunk> {
      yield { token_ids: [token], finish_reason: 'length' };
    },
  });
  await discovery.registerModel({ namespace: NS, component, endpoint: 'generate', card: card(model, bits) });
  return {
    discovery,
    served,
    async stop() {
      await discovery.unregisterModel(NS, component, 'generate');
      await served.stop();
      await discovery.close();
    },
  };
}

function preprocessed(model: string): PreprocessedRequest {
  return { model, token_ids: [1, 2, 3], stop_conditions: { max_tokens: 1 }, sampling_options: {}, output_options: {}, eos_token_ids: [] } as PreprocessedRequest;
}

async function tokens(models: DiscoveredModels, model: string): Promise<number[]> {
  const out: number[] = [];
  for await (const c of models.get(model)!.generate(preprocessed(model), { signal: new AbortController().signal })) out.push(...c.token_ids);
  return out;
}

async function until(what: string, cond: () => boolean): Promise<void> {
  for (let i = 0; !cond(); i++) {
    if (i > 500) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('two models on one endpoint: each model is answered only by its own workers', async (t) => {
  const tcpServer = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const a1 = await fakeWorker(tcpServer, 'model-a', 11);
  const a2 = await fakeWorker(tcpServer, 'model-a', 11);
  const b = await fakeWorker(tcpServer, 'model-b', 22);
  const frontend = new Discovery(new MemStore());
  const models = await DiscoveredModels.create({ discovery: frontend, namespace: NS, responseHost: HOST });
  t.teardown(async () => {
    await models.close();
    for (const w of [a1, a2, b]) await w.stop().catch(() => undefined);
    await frontend.close();
    await tcpServer.close();
  });
  await models.waitFor('model-a', 5000);
  await models.waitFor('model-b', 5000);
  for (let i = 0; i < 12; i++) {
    t.same(await tokens(models, 'model-a'), [11], `request ${i} for model-a went to a model-a worker`);
    t.same(await tokens(models, 'model-b'), [22], `request ${i} for model-b went to the model-b worker`);
  }

  // model-b's only worker leaves: model-b is an outage (503 in the HTTP layer), model-a is untouched
  await b.stop();
  await until('model-b to leave', () => models.get('model-b') === undefined);
  t.same(await tokens(models, 'model-a'), [11]);
});

t.test('no worker left: 503 with Retry-After in the OpenAI error shape; departures and recovery logged once', async (t) => {
  const tcpServer = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const w = await fakeWorker(tcpServer, 'model-c', 33);
  const frontend = new Discovery(new MemStore());
  const models = await DiscoveredModels.create({ discovery: frontend, namespace: NS, responseHost: HOST });
  const server = await OpenAiServer.listen({ models, host: HOST, port: 0 });
  let back: FakeWorker | null = null;
  t.teardown(async () => {
    await server.close();
    await models.close();
    await w.stop().catch(() => undefined);
    await back?.stop();
    await frontend.close();
    await tcpServer.close();
  });
  const model = await models.waitFor('model-c', 5000);

  // the worker leaves the endpoint but its card lingers (a crash before the lease expires): the model is still
  // listed and every request is an outage
  await w.served.stop();
  for (let i = 0; i < 3; i++) {
    const res = await fetch(`http://${HOST}:${server.port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'model-c', prompt: 'Hi', max_tokens: 1 }) });
    t.equal(res.status, 503, 'a model with no reachable worker is a server outage');
    t.ok(Number(res.headers.get('retry-after')) > 0, 'with a retry hint');
    const body = (await res.json()) as { error: { type: string; message: string } };
    t.equal(body.error.type, 'service_unavailable');
    t.match(body.error.message, /model-c|instances|discovery/);
  }
  t.equal(models.get('model-c'), model);

  await w.discovery.unregisterModel(NS, 'backend', 'generate');
  await until('model-c to leave', () => models.get('model-c') === undefined);
  back = await fakeWorker(tcpServer, 'model-c', 34);
  await models.waitFor('model-c', 5000);
  t.same(await tokens(models, 'model-c'), [34]);
  t.equal(logged('worker left discovery', 'model-c'), 1, 'the departure is logged once');
  t.equal(logged('model has no worker left: its requests get 503 until one registers', 'model-c'), 1, 'the outage is logged once, not per request');
  t.equal(logged('model has workers again', 'model-c'), 1, 'and its recovery once');
});

t.test('a disaggregated model whose prefill workers all left: 503, not 400', async (t) => {
  const tcpServer = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const decode = await fakeWorker(tcpServer, 'model-d', 44);
  const prefill = await fakeWorker(tcpServer, 'model-d', 45, ModelTypeFlag.Prefill, 'prefill');
  const frontend = new Discovery(new MemStore());
  const models = await DiscoveredModels.create({ discovery: frontend, namespace: NS, responseHost: HOST });
  t.teardown(async () => {
    await models.close();
    await decode.stop();
    await prefill.stop().catch(() => undefined);
    await frontend.close();
    await tcpServer.close();
  });
  await models.waitFor('model-d', 5000);
  await prefill.stop();
  await until('the prefill outage to be seen', () => logged('model has no prefill worker left: its requests get 503 until one registers', 'model-d') === 1);
  const err = await tokens(models, 'model-d').then(
    () => null,
    (e: unknown) => e,
  );
  t.ok(err instanceof LlmError && err.code === 'LLM_ERR_TRANSPORT', `an outage error (got ${String(err)})`);
  t.match((err as Error).message, /prefill/);
});

t.test('a streaming reply honours Connection: close', async (t) => {
  const tcpServer = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const w = await fakeWorker(tcpServer, 'model-e', 55);
  const frontend = new Discovery(new MemStore());
  const models = await DiscoveredModels.create({ discovery: frontend, namespace: NS, responseHost: HOST });
  const server = await OpenAiServer.listen({ models, host: HOST, port: 0 });
  t.teardown(async () => {
    await server.close();
    await models.close();
    await w.stop();
    await frontend.close();
    await tcpServer.close();
  });
  await models.waitFor('model-e', 5000);
  // a raw socket, so that what ends it is the server (an HTTP client may drop a `close` connection itself)
  const stream = (connection: 'close' | 'keep-alive') =>
    new Promise<{ head: string; body: string; closedByServer: Promise<void>; socket: Socket }>((resolve, reject) => {
      const body = JSON.stringify({ model: 'model-e', prompt: 'Hi', max_tokens: 1, stream: true });
      const socket = connect(server.port, HOST);
      let text = '';
      const closedByServer = new Promise<void>((done) => socket.once('end', () => done()));
      socket.setEncoding('utf8');
      socket.on('error', reject);
      socket.on('data', (d: string) => {
        text += d;
        if (text.includes('[DONE]')) {
          const at = text.indexOf('\r\n\r\n');
          resolve({ head: text.slice(0, at).toLowerCase(), body: text.slice(at), closedByServer, socket });
        }
      });
      socket.write(`POST /v1/completions HTTP/1.1\r\nhost: ${HOST}\r\ncontent-type: application/json\r\nconnection: ${connection}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    });
  const closed = await stream('close');
  t.match(closed.head, /\r\nconnection: close/, 'the reply says close');
  await closed.closedByServer; // the test's timeout bounds this: the server must end the socket itself
  t.pass('the server closed the connection after the stream');
  const kept = await stream('keep-alive');
  t.match(kept.head, /\r\nconnection: keep-alive/, 'keep-alive otherwise');
  t.notOk(kept.socket.readableEnded, 'and the connection stays open');
  kept.socket.destroy();
});
