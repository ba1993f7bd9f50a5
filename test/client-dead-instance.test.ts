// A worker that dies (SIGKILL) drops its response streams at once, but the requests it had just acknowledged and not
// yet called back for used to wait until its discovery lease expired (up to 10 s, seen as 8 s stalls in the fault
// soak). Now a dropped response stream fails the instance's uncalled requests after the short grace, as migratable.
// Real worker endpoint on the TCP plane; in front of it a relay that forwards the first request frame and, for the
// second, acknowledges it itself and drops it (the worker "died" between the acknowledgement and the call-home).
import t from 'tap';
import { createServer, connect, type Socket } from 'node:net';
import { instanceKey, encodeDiscoveryRecord, type InstanceRecord } from '../src/protocol/discovery.js';
import type { Annotated } from '../src/protocol/transport.js';
import { EndpointClient } from '../src/runtime/client.js';
import { Discovery, MemStore } from '../src/runtime/discovery/index.js';
import { serveEndpoint } from '../src/runtime/endpoint.js';
import { encodeRequestFrame, encodeResponseFrame, RequestFrameDecoder } from '../src/runtime/request-plane/framing.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { TcpRequestServer } from '../src/runtime/request-plane/tcp-server.js';
import { parseHostPort, parseTcpTransportAddress } from '../src/runtime/request-plane/address.js';

const HOST = '127.0.0.1';
const NS = 'deadinstance';

t.test('a dropped response stream fails the same instance\'s uncalled requests after the grace, not at lease expiry', async (t) => {
  const tcpServer = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const responses = await ResponseServer.start({ host: HOST });
  const workerDiscovery = new Discovery(new MemStore());
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const served = await serveEndpoint({
    discovery: workerDiscovery, namespace: NS, component: 'backend', endpoint: 'generate', plane: 'tcp', tcpServer,
    handler: async function* () {
      yield { n: 1 };
      await released;
    },
  });
  const worker = parseTcpTransportAddress((served.record.transport as { tcp: string }).tcp);
  const workerAt = parseHostPort(worker.hostPort, 'worker');

  const relayed: Socket[] = [];
  const relay = createServer((client) => {
    const upstream = connect(workerAt);
    relayed.push(client, upstream);
    upstream.on('data', (b: Buffer) => client.write(b));
    const decoder = new RequestFrameDecoder(undefined, 'main');
    let frames = 0;
    client.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) {
        if (frame instanceof Error) throw frame;
        if (frames++ === 0) upstream.write(encodeRequestFrame(frame, 'main'));
        else client.write(encodeResponseFrame());
      }
    });
  });
  await new Promise<void>((r) => relay.listen(0, HOST, r));

  // the relay is the instance the client sees: same endpoint path on the worker, its own lease
  const instance = new Discovery(new MemStore());
  const id = instance.instanceId;
  const port = (relay.address() as { port: number }).port;
  const record: InstanceRecord = { type: 'Endpoint', namespace: NS, component: 'backend', endpoint: 'generate', instance_id: id, transport: { tcp: `${HOST}:${port}/${worker.path}` } };
  await instance.store.put(instanceKey(NS, 'backend', 'generate', id), encodeDiscoveryRecord(record));
  const frontend = new Discovery(new MemStore());
  const client = await EndpointClient.create({ discovery: frontend, namespace: NS, component: 'backend', endpoint: 'generate', responses });
  t.teardown(async () => {
    release();
    client.close();
    for (const s of relayed) s.destroy();
    relay.close();
    await served.stop();
    await instance.close();
    await workerDiscovery.close();
    await frontend.close();
    await tcpServer.close();
    await responses.close();
  });
  await client.waitForInstances(1000);

  const streaming = await client.generate({ q: 1 }, { routing: { instanceId: id } });
  const it = streaming[Symbol.asyncIterator]();
  t.same(((await it.next()).value as Annotated).data, { n: 1 }, 'the first request is called back and streams');
  const uncalled = await client.generate({ q: 2 }, { routing: { instanceId: id } });
  t.notOk(uncalled.calledHome, 'the second was acknowledged and never called back');

  // the worker "dies": its response stream goes away without complete_final; its lease is still in discovery
  (streaming as unknown as { socket: Socket }).socket.destroy();
  await t.rejects(it.next(), { name: 'DisconnectedError', migratable: true });
  const drain = async () => {
    for await (const _ of uncalled) void _;
  };
  await t.rejects(drain(), { name: 'DisconnectedError', migratable: true, message: /dropped another response stream and did not call back within 500 ms/ });
  t.ok(client.instances().some((r) => r.instance_id === id), 'failed while the instance was still in discovery');
});
