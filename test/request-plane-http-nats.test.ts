// The HTTP (h2c and HTTP/1.1) and NATS request planes: real HTTP/2 server and client on loopback, a real nats-server; responses
// stream call-home over TCP as on the TCP plane.
import t, { type Test } from 'tap';
import { Agent, request as http1Request } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { prepareRequest } from '../src/runtime/request-plane/egress.js';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RequestContext } from '../src/runtime/request-plane/context.js';
import { encodeTwoPart } from '../src/runtime/request-plane/framing.js';
import { HttpRequestClient, HttpRequestServer } from '../src/runtime/request-plane/http.js';
import { connectNats, NatsRequestClient, NatsRequestServer } from '../src/runtime/request-plane/nats.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import type { ResponseStream } from '../src/runtime/request-plane/response-stream.js';
import { freePort, startNats } from './helpers/services.js';
import { collect } from './helpers/streams.js';

const HOST = '127.0.0.1';


/** Endpoints shared by both planes: `count` streams {i}, `slow` runs until cancelled and records when. */
function endpoints(instanceId: bigint) {
  const state: { abortedAt?: number; ctx?: RequestContext; started?: () => void } = {};
  return {
    state,
    count: {
      instanceId,
      endpoint: 'count',
      handler: async function* (req: unknown) {
        for (let i = 0; i < (req as { n: number }).n; i++) yield { i };
      },
    },
    slow: {
      instanceId,
      endpoint: 'slow',
      handler: async function* (_req: unknown, ctx: RequestContext) {
        state.ctx = ctx;
        state.abortedAt = undefined;
        ctx.signal.addEventListener('abort', () => (state.abortedAt = performance.now()), { once: true });
        state.started?.();
        while (!ctx.isStopped()) {
          yield 'tick';
          await sleep(5);
        }
      },
    },
  };
}

async function cancelWithin100ms(t: Test, state: ReturnType<typeof endpoints>['state'], start: () => Promise<ResponseStream>, how: 'break' | 'kill') {
  const begun = new Promise<void>((r) => (state.started = r));
  const stream = await start();
  await begun;
  let t0 = 0;
  for await (const _ of stream) {
    t0 = performance.now();
    if (how === 'kill') stream.kill();
    else break;
  }
  while (state.abortedAt === undefined && performance.now() - t0 < 1000) await sleep(1);
  const ms = (state.abortedAt ?? NaN) - t0;
  t.ok(ms < 100, `${how} delivered to the handler in ${ms.toFixed(2)} ms`);
  t.ok(state.ctx?.isKilled());
}

t.test('http plane (h2c, Dynamo framing: 202 ACK, call-home responses)', async (t) => {
  const server = await HttpRequestServer.start({ host: HOST, port: 0, maxMessageSize: 64 * 1024 });
  const responses = await ResponseServer.start({ host: HOST });
  const client = new HttpRequestClient(responses);
  t.teardown(async () => {
    client.close();
    await server.close();
    await responses.close();
  });
  const eps = endpoints(0xabcn);
  const countUrl = server.register(eps.count);
  const slowUrl = server.register(eps.slow);
  t.equal(countUrl, `http://${server.hostPort}/v1/rpc/count`);

  t.test('round trip and streaming', async (t) => {
    t.same(await collect(await client.request(countUrl, { n: 2 })), [{ data: { i: 0 } }, { data: { i: 1 } }]);
    const big = await collect(await client.request(countUrl, { n: 10_000 }));
    t.equal(big.length, 10_000);
    t.ok(big.every((a, i) => (a.data as { i: number }).i === i));
    const many = await Promise.all(Array.from({ length: 20 }, (_, k) => client.request(countUrl, { n: k }).then(collect)));
    t.same(many.map((m) => m.length), Array.from({ length: 20 }, (_, k) => k));
  });

  t.test('client disconnect and kill reach the handler within 100 ms', async (t) => {
    await cancelWithin100ms(t, eps.state, () => client.request(slowUrl, {}), 'break');
    await cancelWithin100ms(t, eps.state, () => client.request(slowUrl, {}), 'kill');
  });

  t.test('refusals: unknown endpoint, malformed body, oversized body', async (t) => {
    await t.rejects(client.request(`http://${server.hostPort}/v1/rpc/nope`, {}), { code: 'LLM_ERR_TRANSPORT', message: /No handler found for path: \/v1\/rpc\/nope/ });
    await t.rejects(client.request(countUrl, { n: 1, pad: 'x'.repeat(70_000) }), { code: 'LLM_ERR_TRANSPORT', message: /Request refused: body of \d+ bytes exceeds the maximum message size of 65536 bytes/ });
    // raw HTTP/2 POSTs by hand
    const session = h2connect(`http://${server.hostPort}`);
    t.teardown(() => session.close());
    const post = (body: Buffer) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = session.request({ ':method': 'POST', ':path': '/v1/rpc/count' });
        let status = 0;
        let text = '';
        req.on('response', (h) => (status = Number(h[':status'])));
        req.on('data', (c: Buffer) => (text += c.toString()));
        req.on('end', () => resolve({ status, text }));
        req.on('error', reject);
        req.end(body);
      });
    t.match(await post(Buffer.from('garbage')), { status: 400, text: /^Malformed request: TwoPartMessage is 7 bytes/ });
    t.match(await post(encodeTwoPart('{"id":"1"}', '{}')), { status: 400, text: /request_type: required field is missing/ });
    t.equal((await collect(await client.request(countUrl, { n: 1 }))).length, 1, 'still serving');
  });

  t.test('HTTP/1.1 clients (Dynamo 0.8) are served on the same port: 202 ACK, then call-home responses', async (t) => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    t.teardown(() => agent.destroy());
    const post = (path: string, body: Buffer, headers: Record<string, string> = {}) =>
      new Promise<{ status: number; version: string; text: string }>((resolve, reject) => {
        const url = new URL(`http://${server.hostPort}${path}`);
        const req = http1Request({ host: url.hostname, port: url.port, path, method: 'POST', agent, headers: { 'content-type': 'application/octet-stream', ...headers } }, (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, version: res.httpVersion, text }));
        });
        req.on('error', reject);
        req.end(body);
      });
    for (const n of [3, 0, 2]) {
      // the same keep-alive connection carries one request after another
      const { stream, payload, headers } = prepareRequest(responses, countUrl, { n }, {}, 64 * 1024);
      const answer = await post('/v1/rpc/count', payload, headers);
      t.same([answer.status, answer.version, answer.text], [202, '1.1', '']);
      t.same(await collect(stream), Array.from({ length: n }, (_, i) => ({ data: { i } })));
    }
    t.match(await post('/v1/rpc/nope', Buffer.from('x')), { status: 404, text: 'No handler found for path: /v1/rpc/nope' });
    t.match(await post('/v1/rpc/count', Buffer.from('garbage')), { status: 400, text: /^Malformed request: TwoPartMessage is 7 bytes/ });
  });
});

t.test('nats plane (real nats-server)', async (t) => {
  const nats = await startNats();
  const workerNc = await connectNats(nats.url);
  const callerNc = await connectNats(nats.url);
  const responses = await ResponseServer.start({ host: HOST });
  const server = new NatsRequestServer(workerNc);
  const client = new NatsRequestClient(callerNc, responses, { serverUrl: nats.url });
  t.teardown(async () => {
    await workerNc.close();
    await callerNc.close();
    await responses.close();
    await nats.stop();
  });
  const eps = endpoints(0x7fn);
  const countSubject = server.register('dyn', 'backend', eps.count);
  const slowSubject = server.register('dyn', 'backend', eps.slow);
  t.equal(countSubject, 'dyn_backend.count-7f');
  await workerNc.flush();

  t.test('round trip and streaming', async (t) => {
    t.same(await collect(await client.request(countSubject, { n: 3 })), [{ data: { i: 0 } }, { data: { i: 1 } }, { data: { i: 2 } }]);
    const big = await collect(await client.request(countSubject, { n: 10_000 }));
    t.equal(big.length, 10_000);
    t.ok(big.every((a, i) => (a.data as { i: number }).i === i));
  });

  t.test('client disconnect and kill reach the handler within 100 ms', async (t) => {
    await cancelWithin100ms(t, eps.state, () => client.request(slowSubject, {}), 'break');
    await cancelWithin100ms(t, eps.state, () => client.request(slowSubject, {}), 'kill');
  });

  t.test('refusals and connection errors name what is at fault', async (t) => {
    await t.rejects(client.request('dyn_backend.nope-7f', {}), { code: 'LLM_ERR_TRANSPORT', message: `no worker is subscribed to dyn_backend.nope-7f on NATS server ${nats.url}` });
    const reply = await callerNc.request(countSubject, Buffer.from('junk'), { timeout: 2000 });
    t.match(Buffer.from(reply.data).toString(), /^Malformed request: TwoPartMessage is 4 bytes/);
    const deadPort = await freePort();
    await t.rejects(connectNats(`nats://127.0.0.1:${deadPort}`, { timeoutMs: 1000 }), { code: 'LLM_ERR_TRANSPORT', message: new RegExp(`cannot connect to NATS server nats://127.0.0.1:${deadPort}`) });
  });
});
