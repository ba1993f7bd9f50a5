// EndpointClient over real discovery (memory store: one key space per process, one lease per store = one worker
// instance) and real request planes on loopback: routing modes, instances coming and going, unreachable instances.
import t from 'tap';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { instanceKey, encodeDiscoveryRecord, type InstanceRecord } from '../src/protocol/discovery.js';
import type { Annotated } from '../src/protocol/transport.js';
import { EndpointClient } from '../src/runtime/client.js';
import { Discovery, MemStore } from '../src/runtime/discovery/index.js';
import { serveEndpoint, requestPlaneFromEnv, type ServedEndpoint } from '../src/runtime/endpoint.js';
import { HttpRequestServer } from '../src/runtime/request-plane/http.js';
import { connectNats, NatsRequestClient, NatsRequestServer } from '../src/runtime/request-plane/nats.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { TcpRequestServer } from '../src/runtime/request-plane/tcp-server.js';
import { startNats } from './helpers/services.js';

const HOST = '127.0.0.1';
const NS = 'clienttest';
const COMP = 'backend';

async function collect(stream: AsyncIterable<Annotated>): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const item of stream) out.push(item.data);
  return out;
}

t.test('EndpointClient follows discovery and routes', async (t) => {
  const tcpServer = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const httpServer = await HttpRequestServer.start({ host: HOST, port: 0 });
  const responses = await ResponseServer.start({ host: HOST });
  const frontend = new Discovery(new MemStore());
  const workers: Array<{ name: string; discovery: Discovery; served: ServedEndpoint }> = [];
  const startWorker = async (name: string, plane: 'tcp' | 'http' = 'tcp') => {
    const discovery = new Discovery(new MemStore());
    const served = await serveEndpoint({
      discovery,
      namespace: NS,
      component: COMP,
      endpoint: 'generate',
      plane,
      tcpServer,
      httpServer,
      handler: async function* (req: unknown) {
        yield { worker: name, echo: req };
      },
    });
    const w = { name, discovery, served };
    workers.push(w);
    return w;
  };
  const client = await EndpointClient.create({ discovery: frontend, namespace: NS, component: COMP, endpoint: 'generate', responses, downCooldownMs: 60_000 });
  t.teardown(async () => {
    client.close();
    for (const w of workers) await w.discovery.close();
    await frontend.close();
    await tcpServer.close();
    await httpServer.close();
    await responses.close();
  });
  const whoServes = async (options?: Parameters<EndpointClient['generate']>[1]) => {
    const [out] = (await collect(await client.generate({ q: 1 }, options))) as Array<{ worker: string }>;
    return out.worker;
  };

  t.test('no instances: a clear error, or a wait until one appears', async (t) => {
    await t.rejects(client.generate({}), { code: 'LLM_ERR_DISCOVERY', message: `no instances of ${NS}/${COMP}/generate in discovery (memory store)` });
    const pending = whoServes({ waitForInstancesMs: 5000 });
    await sleep(50);
    await startWorker('w1');
    t.equal(await pending, 'w1');
  });

  t.test('round robin, random and direct', async (t) => {
    await startWorker('w2');
    await startWorker('w3', 'http');
    await sleep(10);
    t.equal(client.instances().length, 3);
    t.ok('http' in client.instances().find((r) => workers[2].discovery.instanceId === r.instance_id)!.transport, 'w3 advertises http');
    const order: string[] = [];
    for (let i = 0; i < 6; i++) order.push(await whoServes());
    t.same(new Set(order.slice(0, 3)).size, 3, `first cycle hits every instance: ${order}`);
    t.same(order.slice(3), order.slice(0, 3), 'second cycle repeats the order');
    const random = new Set<string>();
    for (let i = 0; i < 40; i++) random.add(await whoServes({ routing: 'random' }));
    t.equal(random.size, 3);
    for (let i = 0; i < 3; i++) t.equal(await whoServes({ routing: { instanceId: workers[1].discovery.instanceId } }), 'w2');
    const direct = await client.generate({}, { routing: { instanceId: workers[1].discovery.instanceId } });
    t.equal(direct.instanceId, workers[1].discovery.instanceId, 'the stream names its instance');
    await collect(direct);
    await t.rejects(client.generate({}, { routing: { instanceId: 0xdeadn } }), { code: 'LLM_ERR_DISCOVERY', message: `instance dead of ${NS}/${COMP}/generate is not in discovery (memory store)` });
  });

  t.test('an instance that leaves gets no more requests; one that comes is used', async (t) => {
    await workers[0].served.stop();
    await sleep(10);
    t.equal(client.instances().length, 2);
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++) seen.add(await whoServes());
    t.same([...seen].sort(), ['w2', 'w3']);
    await startWorker('w4');
    await sleep(10);
    seen.clear();
    for (let i = 0; i < 6; i++) seen.add(await whoServes());
    t.same([...seen].sort(), ['w2', 'w3', 'w4']);
  });

  t.test('an unreachable instance is skipped and marked down', async (t) => {
    // a record whose address nobody listens on (a crashed worker whose lease has not expired yet)
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(0, HOST, r));
    const port = (dead.address() as { port: number }).port;
    await new Promise<void>((r) => dead.close(() => r()));
    const ghost = new Discovery(new MemStore());
    const record: InstanceRecord = { type: 'Endpoint', namespace: NS, component: COMP, endpoint: 'generate', instance_id: ghost.instanceId, transport: { tcp: `${HOST}:${port}/${ghost.instanceId.toString(16)}/generate` } };
    await ghost.store.put(instanceKey(NS, COMP, 'generate', ghost.instanceId), encodeDiscoveryRecord(record));
    await sleep(10);
    t.equal(client.instances().length, 4);
    const seen = new Set<string>();
    for (let i = 0; i < 8; i++) seen.add(await whoServes());
    t.same([...seen].sort(), ['w2', 'w3', 'w4'], 'every request succeeded on a live instance');
    t.equal(client.available().length, 3, 'the ghost is out of rotation');
    await t.rejects(client.generate({}, { routing: { instanceId: ghost.instanceId } }), { code: 'LLM_ERR_TRANSPORT', message: new RegExp(`cannot connect to worker ${HOST}:${port}`) });
    // it leaves discovery: forgotten
    await ghost.close();
    await sleep(10);
    t.equal(client.instances().length, 3);
  });

  t.test('when every instance is marked down, they are tried again instead of refusing the request', async (t) => {
    for (const r of client.instances()) client.reportInstanceDown(r.instance_id);
    t.equal(client.available().length, 0);
    t.ok(['w2', 'w3', 'w4'].includes(await whoServes()), 'a live instance marked down still serves');
  });

  t.test('a stream dropped mid-way fails with a migratable error and takes the instance out of rotation', async (t) => {
    const dropper = new Discovery(new MemStore());
    let dropNow!: () => void;
    const dropped = new Promise<void>((r) => (dropNow = r));
    const served = await serveEndpoint({
      discovery: dropper,
      namespace: NS,
      component: COMP,
      endpoint: 'generate',
      plane: 'tcp',
      tcpServer,
      handler: async function* (_req: unknown) {
        yield { worker: 'dropper' };
        await dropped;
        throw new Error('unreachable: the test closes the call-home socket first');
      },
    });
    t.teardown(async () => {
      await dropper.close();
    });
    await sleep(10);
    const stream = await client.generate({}, { routing: { instanceId: dropper.instanceId } });
    const it = stream[Symbol.asyncIterator]();
    t.same((await it.next()).value, { data: { worker: 'dropper' } });
    // the worker process "dies": its call-home connection goes away without complete_final
    const calls = (stream as unknown as { socket: import('node:net').Socket }).socket;
    calls.destroy();
    await t.rejects(it.next(), { name: 'DisconnectedError', code: 'LLM_ERR_TRANSPORT', migratable: true });
    dropNow();
    t.notOk(client.available().some((r) => r.instance_id === dropper.instanceId), 'marked down');
    t.ok(client.instances().some((r) => r.instance_id === dropper.instanceId), 'still in discovery');
    await served.stop();
  });

  t.test('a request accepted by an instance that leaves before calling back fails as disconnected', async (t) => {
    // a worker that acknowledges every request and never calls home, then loses its lease
    const mute = createServer((s) => s.on('data', () => s.write(Buffer.alloc(4))));
    await new Promise<void>((r) => mute.listen(0, HOST, r));
    t.teardown(() => mute.close());
    const vanishing = new Discovery(new MemStore());
    const port = (mute.address() as { port: number }).port;
    const id = vanishing.instanceId;
    const record: InstanceRecord = { type: 'Endpoint', namespace: NS, component: COMP, endpoint: 'generate', instance_id: id, transport: { tcp: `${HOST}:${port}/${id.toString(16)}/generate` } };
    await vanishing.store.put(instanceKey(NS, COMP, 'generate', id), encodeDiscoveryRecord(record));
    await sleep(10);
    const stream = await client.generate({}, { routing: { instanceId: id } });
    t.notOk(stream.calledHome);
    const t0 = performance.now();
    await vanishing.close();
    await t.rejects(collect(stream), { name: 'DisconnectedError', migratable: true, message: /left discovery and did not call back within 500 ms/ });
    t.ok(performance.now() - t0 < 1500, 'failed after the grace period, not at the call-home timeout');
  });

  t.test('stop() leaves discovery at once and waits for in-flight requests', async (t) => {
    const draining = new Discovery(new MemStore());
    let finish!: () => void;
    const gate = new Promise<void>((r) => (finish = r));
    const served = await serveEndpoint({
      discovery: draining,
      namespace: NS,
      component: 'drain',
      endpoint: 'generate',
      plane: 'tcp',
      tcpServer,
      handler: async function* () {
        await gate;
        yield 'finished';
      },
    });
    t.teardown(() => draining.close());
    const drainClient = await EndpointClient.create({ discovery: frontend, namespace: NS, component: 'drain', endpoint: 'generate', responses });
    t.teardown(() => drainClient.close());
    const stream = await drainClient.generate({});
    let stopped = false;
    const stopping = served.stop().then(() => (stopped = true));
    await sleep(30);
    t.equal(drainClient.instances().length, 0, 'gone from discovery');
    t.notOk(stopped, 'still waiting for the in-flight request');
    finish();
    t.same(await collect(stream), ['finished']);
    await stopping;
    t.ok(stopped);
  });
});

t.test('nats-plane instances through the same client', async (t) => {
  const nats = await startNats();
  const workerNc = await connectNats(nats.url);
  const callerNc = await connectNats(nats.url);
  const responses = await ResponseServer.start({ host: HOST });
  const worker = new Discovery(new MemStore());
  const frontend = new Discovery(new MemStore());
  const served = await serveEndpoint({
    discovery: worker,
    namespace: NS,
    component: COMP,
    endpoint: 'embed',
    plane: 'nats',
    natsServer: new NatsRequestServer(workerNc),
    handler: async function* () {
      yield 'via nats';
    },
  });
  t.same(served.record.transport, { nats_tcp: `${NS}_${COMP}.embed-${worker.instanceId.toString(16)}` });
  const client = await EndpointClient.create({ discovery: frontend, namespace: NS, component: COMP, endpoint: 'embed', responses, nats: new NatsRequestClient(callerNc, responses) });
  t.teardown(async () => {
    client.close();
    await served.stop();
    await worker.close();
    await frontend.close();
    await workerNc.close();
    await callerNc.close();
    await responses.close();
    await nats.stop();
  });
  t.same(await collect(await client.generate({})), ['via nats']);
  const noNats = await EndpointClient.create({ discovery: frontend, namespace: NS, component: COMP, endpoint: 'embed', responses });
  t.teardown(() => noNats.close());
  await t.rejects(noNats.generate({}), { code: 'LLM_ERR_CONFIG', message: /serves the nats request plane .* but this client has no NATS connection/ });
});

t.test('DYN_REQUEST_PLANE', async (t) => {
  t.equal(requestPlaneFromEnv({}), 'tcp');
  t.equal(requestPlaneFromEnv({ DYN_REQUEST_PLANE: 'NATS' }), 'nats');
  t.throws(() => requestPlaneFromEnv({ DYN_REQUEST_PLANE: 'grpc' }), { code: 'LLM_ERR_CONFIG', message: 'DYN_REQUEST_PLANE must be tcp, http or nats, got "grpc"' });
});
