// The TCP request plane over real loopback sockets: worker server, caller client and response server, plus raw
// sockets speaking the reference framing by hand to check the exact message sequence and the refusals.
import t from 'tap';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RequestContext } from '../src/runtime/request-plane/context.js';
import { encodeRequestFrame, encodeTwoPart, ResponseFrameDecoder, TwoPartDecoder, type ResponseFrame, type TwoPartMessage } from '../src/runtime/request-plane/framing.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { DisconnectedError } from '../src/runtime/request-plane/response-stream.js';
import { TcpRequestClient } from '../src/runtime/request-plane/tcp-client.js';
import { TcpRequestServer } from '../src/runtime/request-plane/tcp-server.js';
import type { Annotated } from '../src/protocol/transport.js';
import { collect } from './helpers/streams.js';

const HOST = '127.0.0.1';


t.test('tcp plane', async (t) => {
  const server = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main' });
  const responses = await ResponseServer.start({ host: HOST, callHomeTimeoutMs: 5000 });
  const client = new TcpRequestClient(responses);
  t.teardown(async () => {
    client.close();
    await server.close();
    await responses.close();
  });
  const instanceId = 0x1234abcdn;
  const counter = {
    instanceId,
    endpoint: 'count',
    handler: async function* (req: unknown) {
      const { n } = req as { n: number };
      for (let i = 0; i < n; i++) yield { i };
    },
  };
  const address = server.register(counter);
  t.equal(address, `${server.hostPort}/1234abcd/count`);

  let lastCtx: RequestContext | undefined;
  let abortedAt: number | undefined;
  let started!: () => void;
  const slow = server.register({
    instanceId,
    endpoint: 'slow',
    handler: async function* (_req: unknown, ctx: RequestContext) {
      lastCtx = ctx;
      abortedAt = undefined;
      ctx.signal.addEventListener('abort', () => (abortedAt = performance.now()), { once: true });
      started();
      let i = 0;
      while (!ctx.isStopped()) {
        yield { i: i++ };
        await sleep(5);
      }
      yield { stopped: true, killed: ctx.isKilled() };
    },
  });
  const failing = server.register({
    instanceId,
    endpoint: 'fail',
    handler: async function* () {
      yield 'first';
      throw Object.assign(new Error('engine exploded'), { code: 'LLM_ERR_DEVICE' });
    },
  });

  const ctxEcho = server.register({
    instanceId,
    endpoint: 'ctx',
    handler: async function* (_req: unknown, ctx: RequestContext) {
      yield { id: ctx.id, traceId: ctx.traceId, headers: ctx.headers };
    },
  });

  t.test('the handler sees the request id, trace id and transport headers', async (t) => {
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    const [item] = await collect(await client.request(ctxEcho, null, { requestId: 'req-42', headers: { traceparent } }));
    t.same(item.data, {
      id: 'req-42',
      traceId: '0af7651916cd43dd8448eb211c80319c',
      headers: { traceparent, 'request-id': 'req-42', 'x-endpoint-path': '1234abcd/ctx' },
    });
    const [plain] = await collect(await client.request(ctxEcho, null, { requestId: 'req-43' }));
    t.match(plain.data, { id: 'req-43', traceId: 'req-43' });
  });

  t.test('round trip and 10,000 chunks in order', async (t) => {
    const small = await collect(await client.request(address, { n: 3 }));
    t.same(small, [{ data: { i: 0 } }, { data: { i: 1 } }, { data: { i: 2 } }]);
    const big = await collect(await client.request(address, { n: 10_000 }));
    t.equal(big.length, 10_000);
    t.ok(big.every((a, i) => (a.data as { i: number }).i === i), 'in order');
    // pipelined requests on pooled connections
    const many = await Promise.all(Array.from({ length: 50 }, (_, k) => client.request(address, { n: k }).then(collect)));
    t.same(many.map((r) => r.length), Array.from({ length: 50 }, (_, k) => k));
  });

  const waitStart = () => new Promise<void>((r) => (started = r));

  t.test('stop reaches the handler within 100 ms and the stream completes', async (t) => {
    const begun = waitStart();
    const stream = await client.request(slow, {});
    await begun;
    const items: Annotated[] = [];
    let t0 = 0;
    for await (const item of stream) {
      items.push(item);
      if (items.length === 3) {
        t0 = performance.now();
        stream.stop();
      }
    }
    t.ok(abortedAt !== undefined && abortedAt - t0 < 100, `stop delivered in ${(abortedAt ?? NaN) - t0} ms`);
    t.ok(lastCtx?.isStopped());
    t.notOk(lastCtx?.isKilled());
    t.same(items.at(-1), { data: { stopped: true, killed: false } }, 'graceful: the handler finished');
  });

  t.test('kill reaches the handler within 100 ms', async (t) => {
    const begun = waitStart();
    const stream = await client.request(slow, {});
    await begun;
    const it = stream[Symbol.asyncIterator]();
    await it.next();
    const t0 = performance.now();
    stream.kill();
    t.same(await it.next(), { done: true, value: undefined }, 'iteration ends quietly');
    while (abortedAt === undefined && performance.now() - t0 < 1000) await sleep(1);
    t.ok(abortedAt !== undefined && abortedAt - t0 < 100, `kill delivered in ${(abortedAt ?? NaN) - t0} ms`);
    t.ok(lastCtx?.isKilled());
  });

  t.test('leaving the loop early (client disconnect) reaches the handler within 100 ms', async (t) => {
    const begun = waitStart();
    const stream = await client.request(slow, {});
    await begun;
    let t0 = 0;
    for await (const _ of stream) {
      t0 = performance.now();
      break;
    }
    while (abortedAt === undefined && performance.now() - t0 < 1000) await sleep(1);
    t.ok(abortedAt !== undefined && abortedAt - t0 < 100, `disconnect delivered in ${(abortedAt ?? NaN) - t0} ms`);
    t.ok(lastCtx?.isKilled());
  });

  t.test('an AbortSignal kills the request', async (t) => {
    const begun = waitStart();
    const ac = new AbortController();
    const stream = await client.request(slow, {}, { signal: ac.signal });
    await begun;
    const t0 = performance.now();
    ac.abort();
    await collect(stream);
    while (abortedAt === undefined && performance.now() - t0 < 1000) await sleep(1);
    t.ok(abortedAt !== undefined && abortedAt - t0 < 100);
  });

  t.test('a handler exception becomes an error item and the stream completes', async (t) => {
    const items = await collect(await client.request(failing, null));
    t.same(items, [
      { data: 'first' },
      { event: 'error', comment: ['LLM_ERR_DEVICE: engine exploded'] },
    ]);
  });

  t.test('unknown path is refused with an error frame', async (t) => {
    await t.rejects(client.request(`${server.hostPort}/1234abcd/nope`, {}), { code: 'LLM_ERR_TRANSPORT', message: /Unknown endpoint: 1234abcd\/nope/ });
    t.equal(responses.pending, 0, 'the waiting stream was released');
  });

  t.test('exact call-home sequence on the wire (hand-built request, raw response server)', async (t) => {
    const home = await rawCallHome();
    t.teardown(() => home.server.close());
    const control = JSON.stringify({
      id: 'req-1',
      request_type: 'single_in',
      response_type: 'many_out',
      connection_info: { transport: 'tcp_server', info: JSON.stringify({ address: home.address, subject: 'subj-1', context: 'req-1', stream_type: 'response' }) },
    });
    const conn = await rawConnect(server.hostPort);
    conn.send(encodeRequestFrame({ path: '1234abcd/count', headers: { 'request-id': 'req-1' }, payload: encodeTwoPart(control, '{"n":2}') }, 'main'));
    t.same(await conn.next(), { ack: true });
    const socket = await home.accepted;
    const messages = await home.readUntilClose(socket);
    const shown = messages.map((m) => [m.header.toString(), m.body.toString()]);
    t.same(shown, [
      ['{"subject":"subj-1","stream_type":"response"}', ''],
      ['{"error":null}', ''],
      ['', '{"data":{"data":{"i":0}},"complete_final":false}'],
      ['', '{"data":{"data":{"i":1}},"complete_final":false}'],
      ['', '{"complete_final":true}'],
      ['"sentinel"', ''],
    ]);
    conn.socket.destroy();
  });

  t.test('a body that is not JSON gets an error prologue and nothing else', async (t) => {
    const home = await rawCallHome();
    t.teardown(() => home.server.close());
    const conn = await rawConnect(server.hostPort);
    conn.send(encodeRequestFrame({ path: '1234abcd/count', headers: {}, payload: encodeTwoPart(controlFor(home.address, 'r9', 's9'), '{"n":') }, 'main'));
    t.same(await conn.next(), { ack: true });
    const messages = await home.readUntilClose(await home.accepted);
    t.equal(messages.length, 2);
    t.equal(messages[0].header.toString(), '{"subject":"s9","stream_type":"response"}');
    t.match(JSON.parse(messages[1].header.toString()), { error: /^request r9: body is not valid JSON/ });
    conn.socket.destroy();
  });

  t.test('an error prologue fails the caller\'s stream; a missing ACK times out', async (t) => {
    // a fake worker: ACKs, calls home with an error prologue; a mute one never ACKs
    const refusing = createServer((s) =>
      s.once('data', (chunk: Buffer) => {
        const pathLen = chunk.readUInt16BE(0);
        const headersLen = chunk.readUInt16BE(2 + pathLen);
        const payload = chunk.subarray(4 + pathLen + headersLen + 4);
        const control = JSON.parse(payload.subarray(24, 24 + Number(payload.readBigUInt64BE(0))).toString());
        const info = JSON.parse(control.connection_info.info);
        s.write(Buffer.alloc(4));
        const [h, p] = info.address.split(':');
        const back = connect({ host: h, port: Number(p) }, () => {
          back.write(encodeTwoPart(JSON.stringify({ subject: info.subject, stream_type: 'response' }), ''));
          back.end(encodeTwoPart('{"error":"model not loaded"}', ''));
        });
      }),
    );
    const mute = createServer(() => {});
    await new Promise<void>((r) => refusing.listen(0, HOST, r));
    await new Promise<void>((r) => mute.listen(0, HOST, r));
    t.teardown(() => {
      refusing.close();
      mute.close();
    });
    const refusingPort = (refusing.address() as { port: number }).port;
    const stream = await client.request(`${HOST}:${refusingPort}/1/gen`, {});
    await t.rejects(collect(stream), { code: 'LLM_ERR_TRANSPORT', message: new RegExp(`worker ${HOST}:${refusingPort}/1/gen refused request .*: model not loaded`) });
    const impatient = new TcpRequestClient(responses, { ackTimeoutMs: 200 });
    t.teardown(() => impatient.close());
    const mutePort = (mute.address() as { port: number }).port;
    await t.rejects(impatient.request(`${HOST}:${mutePort}/1/gen`, {}), { code: 'LLM_ERR_TIMEOUT', message: `worker ${HOST}:${mutePort} did not acknowledge the request within 200 ms` });
  });

  t.test('a raw caller closing the call-home socket cancels within 100 ms', async (t) => {
    const home = await rawCallHome();
    t.teardown(() => home.server.close());
    const begun = waitStart();
    const conn = await rawConnect(server.hostPort);
    conn.send(encodeRequestFrame({ path: '1234abcd/slow', headers: {}, payload: encodeTwoPart(controlFor(home.address, 'r2', 's2'), '{}') }, 'main'));
    t.same(await conn.next(), { ack: true });
    const socket = await home.accepted;
    await begun;
    await sleep(20);
    const t0 = performance.now();
    socket.destroy();
    while (abortedAt === undefined && performance.now() - t0 < 1000) await sleep(1);
    t.ok(abortedAt !== undefined && abortedAt - t0 < 100, `disconnect delivered in ${(abortedAt ?? NaN) - t0} ms`);
    t.ok(lastCtx?.isKilled());
    conn.socket.destroy();
  });

  t.test('malformed frames get an error frame and the connection keeps working', async (t) => {
    const home = await rawCallHome();
    t.teardown(() => home.server.close());
    const conn = await rawConnect(server.hostPort);
    // headers that are not JSON: boundaries are sound, so the connection goes on
    const bad = Buffer.concat([Buffer.from([0, 3]), Buffer.from('1/a'), Buffer.from([0, 4]), Buffer.from('{no!'), Buffer.from([0, 0, 0, 0])]);
    conn.send(bad);
    t.match(await conn.next(), { ack: false, error: /^Malformed request frame: request frame headers are not valid JSON/ });
    // a payload that is not a TwoPartMessage
    conn.send(encodeRequestFrame({ path: '1234abcd/count', headers: {}, payload: Buffer.from('hello') }, 'main'));
    t.match(await conn.next(), { ack: false, error: /^Malformed request: TwoPartMessage is 5 bytes, shorter than its 24-byte length prefix/ });
    // a control header without connection_info
    conn.send(encodeRequestFrame({ path: '1234abcd/count', headers: {}, payload: encodeTwoPart('{"id":"x"}', '{}') }, 'main'));
    t.match(await conn.next(), { ack: false, error: /^Malformed request: request control header\.request_type: required field is missing/ });
    // the same connection still serves a good request
    conn.send(encodeRequestFrame({ path: '1234abcd/count', headers: {}, payload: encodeTwoPart(controlFor(home.address, 'r3', 's3'), '{"n":1}') }, 'main'));
    t.same(await conn.next(), { ack: true });
    const messages = await home.readUntilClose(await home.accepted);
    t.equal(messages.length, 5);
    conn.socket.destroy();
  });

  t.test('an oversized frame is refused and its connection closed; other connections keep working', async (t) => {
    const conn = await rawConnect(server.hostPort);
    const other = client.request(address, { n: 2 });
    // path "x", no headers, payload_len 2^31: refused from the prefix, nothing is allocated
    conn.send(Buffer.from([0, 1, 0x78, 0, 0, 0x80, 0, 0, 0]));
    t.match(await conn.next(), { ack: false, error: /^Request refused: request frame of 2147483657 bytes exceeds the maximum message size of 33554432 bytes \(DYN_TCP_MAX_MESSAGE_SIZE\)/ });
    await conn.closed;
    t.equal((await collect(await other)).length, 2);
    t.equal((await collect(await client.request(address, { n: 3 }))).length, 3);
  });

  t.test('a stream closing without complete_final yields a migratable DisconnectedError', async (t) => {
    // a fake worker: ACKs, calls home, sends one item and hangs up
    const fake = createServer((s) => {
      const decoder = new (class {
        buf = Buffer.alloc(0);
      })();
      s.on('data', async (chunk: Buffer) => {
        decoder.buf = Buffer.concat([decoder.buf, chunk]);
        const pathLen = decoder.buf.readUInt16BE(0);
        const headersLen = decoder.buf.readUInt16BE(2 + pathLen);
        const payloadAt = 4 + pathLen + headersLen + 4;
        const payloadLen = decoder.buf.readUInt32BE(payloadAt - 4);
        if (decoder.buf.length < payloadAt + payloadLen) return;
        const payload = decoder.buf.subarray(payloadAt);
        const headerLen = Number(payload.readBigUInt64BE(0));
        const control = JSON.parse(payload.subarray(24, 24 + headerLen).toString());
        const info = JSON.parse(control.connection_info.info);
        s.write(Buffer.from([0, 0, 0, 0]));
        const [h, p] = info.address.split(':');
        const back = connect({ host: h, port: Number(p) }, () => {
          back.write(encodeTwoPart(JSON.stringify({ subject: info.subject, stream_type: 'response' }), ''));
          back.write(encodeTwoPart('{"error":null}', ''));
          back.write(encodeTwoPart('', '{"data":{"data":"partial"},"complete_final":false}'));
          setTimeout(() => back.destroy(), 20);
        });
      });
    });
    await new Promise<void>((r) => fake.listen(0, HOST, r));
    t.teardown(() => fake.close());
    const port = (fake.address() as { port: number }).port;
    const stream = await client.request(`${HOST}:${port}/1/gen`, {});
    const seen: Annotated[] = [];
    const err = await collect({ [Symbol.asyncIterator]: () => wrap(stream, seen) }).catch((e: unknown) => e);
    t.same(seen, [{ data: 'partial' }]);
    t.ok(err instanceof DisconnectedError);
    t.match(err, { code: 'LLM_ERR_TRANSPORT', migratable: true, message: /closed before complete_final/ });
  });

  t.test('connection refused names the worker', async (t) => {
    const dead = createServer();
    await new Promise<void>((r) => dead.listen(0, HOST, r));
    const port = (dead.address() as { port: number }).port;
    await new Promise<void>((r) => dead.close(() => r()));
    await t.rejects(client.request(`${HOST}:${port}/1/gen`, {}), { code: 'LLM_ERR_TRANSPORT', message: new RegExp(`cannot connect to worker ${HOST}:${port}`) });
  });
});

t.test('a full queue answers "Server overloaded"', async (t) => {
  const server = await TcpRequestServer.start({ host: HOST, port: 0, maxInflight: 1, maxQueued: 1, wireProfile: 'main' });
  const responses = await ResponseServer.start({ host: HOST });
  const client = new TcpRequestClient(responses);
  t.teardown(async () => {
    client.close();
    await server.close();
    await responses.close();
  });
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const address = server.register({
    instanceId: 1n,
    endpoint: 'gate',
    handler: async function* () {
      await gate;
      yield 'done';
    },
  });
  const first = await client.request(address, {});
  const second = await client.request(address, {});
  await t.rejects(client.request(address, {}), { code: 'LLM_ERR_OVERLOADED', message: /Server overloaded: 1 requests running and 1 queued \(limits 1 and 1\)/ });
  release();
  t.same(await collect(first), [{ data: 'done' }]);
  t.same(await collect(second), [{ data: 'done' }]);
});

// ---------------------------------------------------------------------------------------------------------------

async function* wrap(stream: AsyncIterable<Annotated>, seen: Annotated[]): AsyncGenerator<Annotated> {
  for await (const item of stream) {
    seen.push(item);
    yield item;
  }
}

function controlFor(address: string, id: string, subject: string): string {
  return JSON.stringify({
    id,
    request_type: 'single_in',
    response_type: 'many_out',
    connection_info: { transport: 'tcp_server', info: JSON.stringify({ address, subject, context: id, stream_type: 'response' }) },
  });
}

/** A raw request connection: send bytes, read response frames one by one. */
async function rawConnect(hostPort: string): Promise<{ socket: Socket; send: (b: Buffer) => void; next: () => Promise<ResponseFrame>; closed: Promise<void> }> {
  const [host, port] = hostPort.split(':');
  const socket = connect({ host, port: Number(port) });
  await new Promise<void>((r) => socket.once('connect', () => r()));
  const decoder = new ResponseFrameDecoder();
  const frames: ResponseFrame[] = [];
  let wake: (() => void) | undefined;
  socket.on('data', (c: Buffer) => {
    frames.push(...decoder.push(c));
    wake?.();
  });
  const closed = new Promise<void>((r) => socket.once('close', () => r()));
  return {
    socket,
    closed,
    send: (b) => socket.write(b),
    async next() {
      while (frames.length === 0) await new Promise<void>((r) => (wake = r));
      return frames.shift()!;
    },
  };
}

/** A raw response server: accepts one call-home connection and records the TwoPartMessages on it. */
async function rawCallHome(): Promise<{ server: Server; address: string; accepted: Promise<Socket>; readUntilClose: (s: Socket) => Promise<TwoPartMessage[]> }> {
  let accept!: (s: Socket) => void;
  const accepted = new Promise<Socket>((r) => (accept = r));
  const messages: TwoPartMessage[] = [];
  let resolveEnded!: () => void;
  const ended = new Promise<void>((r) => (resolveEnded = r));
  const server = createServer((s) => {
    const decoder = new TwoPartDecoder();
    s.on('data', (c: Buffer) => messages.push(...decoder.push(c)));
    s.on('error', () => {});
    s.on('close', () => resolveEnded());
    accept(s);
  });
  await new Promise<void>((r) => server.listen(0, HOST, r));
  const port = (server.address() as { port: number }).port;
  return {
    server,
    address: `${HOST}:${port}`,
    accepted,
    readUntilClose: async (s) => {
      s.on('end', () => s.end());
      await ended;
      return messages;
    },
  };
}
