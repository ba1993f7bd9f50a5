// Request-plane benchmark on loopback: request round-trip latency (one request, one response item, sequential) and
// streaming throughput (one request streaming many small items) over the tcp, http and nats planes. Each plane is a
// real server + client pair in this process, responses stream call-home over TCP; nats goes through a real
// nats-server started for the run.
//
//   npx tsx bench/transport/bench.ts [--requests 2000] [--chunks 100000] [--planes tcp,http,nats]
import { parseArgs } from 'node:util';
import { startNats } from '../../test/helpers/services.js';
import type { HandlerRegistration } from '../../src/runtime/request-plane/ingress.js';
import { HttpRequestClient, HttpRequestServer } from '../../src/runtime/request-plane/http.js';
import { connectNats, NatsRequestClient, NatsRequestServer } from '../../src/runtime/request-plane/nats.js';
import { ResponseServer } from '../../src/runtime/request-plane/response-server.js';
import type { ResponseStream } from '../../src/runtime/request-plane/response-stream.js';
import { TcpRequestClient } from '../../src/runtime/request-plane/tcp-client.js';
import { TcpRequestServer } from '../../src/runtime/request-plane/tcp-server.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '2000' },
    chunks: { type: 'string', default: '100000' },
    planes: { type: 'string', default: 'tcp,http,nats' },
  },
});
const REQUESTS = Number(values.requests);
const CHUNKS = Number(values.chunks);
const HOST = '127.0.0.1';

const one: HandlerRegistration = {
  instanceId: 0x1n,
  endpoint: 'one',
  handler: async function* (req: unknown) {
    yield req;
  },
};
const many: HandlerRegistration = {
  instanceId: 0x1n,
  endpoint: 'many',
  handler: async function* (req: unknown) {
    const n = (req as { n: number }).n;
    for (let i = 0; i < n; i++) yield { token_ids: [i], index: i };
  },
};

type Send = (endpoint: 'one' | 'many', body: unknown) => Promise<ResponseStream>;

interface Result {
  plane: string;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  chunksPerSec: number;
}

async function drain(stream: ResponseStream): Promise<number> {
  let n = 0;
  for await (const _ of stream) n++;
  return n;
}

async function measure(plane: string, send: Send): Promise<Result> {
  for (let i = 0; i < 200; i++) await drain(await send('one', { token_ids: [1, 2, 3] }));
  const samples: number[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    const t0 = process.hrtime.bigint();
    await drain(await send('one', { token_ids: [1, 2, 3] }));
    samples.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  samples.sort((a, b) => a - b);
  await drain(await send('many', { n: 1000 }));
  const t0 = process.hrtime.bigint();
  const got = await drain(await send('many', { n: CHUNKS }));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  if (got !== CHUNKS) throw new Error(`${plane}: streamed ${got} of ${CHUNKS} chunks`);
  return {
    plane,
    p50Us: samples[Math.floor(samples.length * 0.5)],
    p99Us: samples[Math.floor(samples.length * 0.99)],
    meanUs: samples.reduce((a, b) => a + b, 0) / samples.length,
    chunksPerSec: CHUNKS / seconds,
  };
}

const planes = values.planes.split(',');
const responses = await ResponseServer.start({ host: HOST });
const results: Result[] = [];

if (planes.includes('tcp')) {
  const server = await TcpRequestServer.start({ host: HOST, port: 0 });
  const addresses = { one: server.register(one), many: server.register(many) };
  const client = new TcpRequestClient(responses);
  results.push(await measure('tcp', (ep, body) => client.request(addresses[ep], body)));
  client.close();
  await server.close();
}
if (planes.includes('http')) {
  const server = await HttpRequestServer.start({ host: HOST, port: 0 });
  const urls = { one: server.register(one), many: server.register(many) };
  const client = new HttpRequestClient(responses);
  results.push(await measure('http', (ep, body) => client.request(urls[ep], body)));
  client.close();
  await server.close();
}
if (planes.includes('nats')) {
  const nats = await startNats();
  const workerNc = await connectNats(nats.url);
  const callerNc = await connectNats(nats.url);
  const server = new NatsRequestServer(workerNc);
  const subjects = { one: server.register('bench', 'worker', one), many: server.register('bench', 'worker', many) };
  await workerNc.flush();
  const client = new NatsRequestClient(callerNc, responses);
  results.push(await measure('nats', (ep, body) => client.request(subjects[ep], body)));
  await workerNc.close();
  await callerNc.close();
  await nats.stop();
}
await responses.close();

console.log(`requests ${REQUESTS} sequential (1 item each), stream ${CHUNKS} items of {"token_ids":[i],"index":i}`);
console.log('| plane | round trip p50 | p99 | mean | streaming chunks/s |');
console.log('|---|---|---|---|---|');
for (const r of results) {
  console.log(`| ${r.plane} | ${r.p50Us.toFixed(0)} µs | ${r.p99Us.toFixed(0)} µs | ${r.meanUs.toFixed(0)} µs | ${Math.round(r.chunksPerSec).toLocaleString('en-US')} |`);
}
