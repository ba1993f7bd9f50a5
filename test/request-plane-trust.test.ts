// The request plane serves only its own deployment (issue 22): reply addresses the worker may connect to, the
// shared-secret request proof, and the write timeout that cuts a reply stream whose reader stopped reading.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RequestContext } from '../src/runtime/request-plane/context.js';
import { encodeRequestFrame, encodeTwoPart, ResponseFrameDecoder, type ResponseFrame } from '../src/runtime/request-plane/framing.js';
import { Ingress } from '../src/runtime/request-plane/ingress.js';
import { ResponseServer } from '../src/runtime/request-plane/response-server.js';
import { TcpRequestClient } from '../src/runtime/request-plane/tcp-client.js';
import { TcpRequestServer } from '../src/runtime/request-plane/tcp-server.js';
import { AUTH_HEADER, ReplyAddressPolicy, requestPlaneTrustFromEnv, signRequest, tcpPlaneTlsFromEnv, type RequestPlaneTrust, type TcpPlaneTls } from '../src/runtime/request-plane/trust.js';
import { collect } from './helpers/streams.js';

const HOST = '127.0.0.1';
const SECRET = Buffer.from('a-request-plane-secret-of-some-length');

function controlFor(address: string, id: string): string {
  return JSON.stringify({
    id,
    request_type: 'single_in',
    response_type: 'many_out',
    connection_info: { transport: 'tcp_server', info: JSON.stringify({ address, subject: `s-${id}`, context: id, stream_type: 'response' }) },
  });
}

/** A listener that records every connection it gets (the "arbitrary listener" a forged frame points at). */
async function listener(): Promise<{ server: Server; address: string; connections: Socket[] }> {
  const connections: Socket[] = [];
  const server = createServer((s) => connections.push(s));
  await new Promise<void>((r) => server.listen(0, HOST, () => r()));
  const a = server.address();
  return { server, address: `${HOST}:${typeof a === 'object' && a ? a.port : 0}`, connections };
}

/** Sends raw request frames and reads the worker's response frames. */
async function rawConnection(hostPort: string): Promise<{ send(frame: Buffer): Promise<ResponseFrame>; close(): void }> {
  const [host, port] = hostPort.split(':');
  const socket = connect({ host, port: Number(port) });
  await new Promise<void>((r) => socket.once('connect', () => r()));
  const decoder = new ResponseFrameDecoder(1 << 20);
  const waiting: Array<(f: ResponseFrame) => void> = [];
  socket.on('data', (chunk: Buffer) => {
    for (const f of decoder.push(chunk)) waiting.shift()?.(f);
  });
  return {
    send: (frame) => new Promise((resolve) => {
      waiting.push(resolve);
      socket.write(frame);
    }),
    close: () => socket.destroy(),
  };
}

function trust(overrides: Partial<RequestPlaneTrust> = {}): RequestPlaneTrust {
  return { secret: null, replyPolicy: new ReplyAddressPolicy(), replyWriteTimeoutMs: 30_000, ...overrides };
}

t.test('reply-address rule', async (t) => {
  const policy = new ReplyAddressPolicy();
  t.equal(policy.check('10.1.2.3', '10.1.2.3'), null, 'the peer itself');
  t.equal(policy.check('10.1.2.3', '::ffff:10.1.2.3'), null, 'the peer as an IPv4-mapped address');
  t.equal(policy.check('127.0.0.1', '127.0.0.1'), null);
  t.match(policy.check('10.9.9.9', '10.1.2.3'), /reply address host 10\.9\.9\.9 is neither the requesting peer 10\.1\.2\.3/);
  t.match(policy.check('127.0.0.1', '10.1.2.3'), /neither the requesting peer/, 'a remote peer cannot point the worker at its own loopback');
  t.equal(policy.check('10.9.9.9', undefined), null, 'NATS (no peer) without an allowlist is not checked');

  const listed = new ReplyAddressPolicy(['10.0.0.0/8', '192.0.2.7', 'frontend.internal']);
  t.equal(listed.check('10.200.1.1', '172.16.0.1'), null, 'in the CIDR');
  t.equal(listed.check('192.0.2.7', undefined), null, 'a listed IP over NATS');
  t.equal(listed.check('FRONTEND.internal', '172.16.0.1'), null, 'a listed host name');
  t.match(listed.check('192.0.2.8', undefined), /is not in DYN_REPLY_ADDRESS_ALLOW/);
  t.throws(() => new ReplyAddressPolicy(['10.0.0.0/33']), /DYN_REPLY_ADDRESS_ALLOW entry "10\.0\.0\.0\/33"/);
  t.throws(() => new ReplyAddressPolicy(['bad_host!']), /expected a CIDR, an IP address or a host name/);
  t.throws(() => requestPlaneTrustFromEnv({ DYN_REQUEST_PLANE_SECRET: 'short' }), /at least 16 characters/);
  t.throws(() => requestPlaneTrustFromEnv({ DYN_REQUEST_PLANE_SECRET_FILE: '/nonexistent/secret' }), /DYN_REQUEST_PLANE_SECRET_FILE \/nonexistent\/secret cannot be read/);
  t.throws(() => requestPlaneTrustFromEnv({ DYN_REPLY_WRITE_TIMEOUT_MS: '0' }), /DYN_REPLY_WRITE_TIMEOUT_MS must be a positive integer/);
});

t.test('a forged frame naming a foreign reply address is refused and the listener gets no connection', async (t) => {
  let ran = 0;
  const registration = { instanceId: 1n, endpoint: 'gen', handler: async function* () { ran++; yield 'x'; } };
  const target = await listener();
  t.teardown(() => target.server.close());

  // through the ingress, as a request from another host would arrive
  const ingress = new Ingress({ trust: trust() });
  const refused = ingress.accept(registration, encodeTwoPart(controlFor(target.address, 'r1'), '{}'), {}, '203.0.113.5');
  t.same(refused.ok, false);
  t.match(refused, { error: /Reply address refused \(LLM_ERR_REPLY_ADDRESS\).*neither the requesting peer 203\.0\.113\.5/ });
  t.equal(ingress.trustCounters.replyAddressRefused, 1);

  // over a real TCP plane: a frame naming an address that is not this host
  const server = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main', trust: trust() });
  t.teardown(() => server.close());
  const path = server.register(registration).split('/').slice(1).join('/');
  const conn = await rawConnection(server.hostPort);
  t.teardown(() => conn.close());
  const answer = await conn.send(encodeRequestFrame({ path, headers: {}, payload: encodeTwoPart(controlFor('198.51.100.7:9', 'r2'), '{}') }, 'main'));
  t.same(answer.ack, false);
  t.match(answer, { error: /Reply address refused.*198\.51\.100\.7/ });

  // the same frame pointing back at this host is served (the listener gets the call-home)
  const ok = await conn.send(encodeRequestFrame({ path, headers: {}, payload: encodeTwoPart(controlFor(target.address, 'r3'), '{}') }, 'main'));
  t.same(ok.ack, true);
  for (let i = 0; i < 100 && target.connections.length === 0; i++) await sleep(10);
  t.equal(target.connections.length, 1, 'only the allowed request called home');
  await sleep(50);
  t.equal(ran, 1, 'the refused requests never ran');
  for (const s of target.connections) s.destroy();
});

t.test('shared secret: requests without a valid, fresh proof are refused and never run', async (t) => {
  let ran = 0;
  const server = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main', trust: trust({ secret: SECRET }) });
  const responses = await ResponseServer.start({ host: HOST, callHomeTimeoutMs: 5000 });
  const signed = new TcpRequestClient(responses, { secret: SECRET });
  const unsigned = new TcpRequestClient(responses, { secret: null });
  const wrong = new TcpRequestClient(responses, { secret: Buffer.from('another-secret-entirely-wrong') });
  t.teardown(async () => {
    signed.close();
    unsigned.close();
    wrong.close();
    await server.close();
    await responses.close();
  });
  const address = server.register({ instanceId: 2n, endpoint: 'gen', handler: async function* () { ran++; yield 'ok'; } });

  const items = await collect(await signed.request(address, {}));
  t.same(items.map((i) => i.data), ['ok'], 'a signed request is served');
  await t.rejects(unsigned.request(address, {}), /Unauthenticated request \(LLM_ERR_UNAUTHENTICATED\): no x-dyn-request-auth header/);
  await t.rejects(wrong.request(address, {}), /proof does not match/);

  // a captured frame replayed byte for byte, and a proof moved to another payload
  const target = await listener();
  t.teardown(() => target.server.close());
  const path = address.split('/').slice(1).join('/');
  const payload = encodeTwoPart(controlFor(target.address, 'r-replay'), '{}');
  const frame = encodeRequestFrame({ path, headers: { [AUTH_HEADER]: signRequest(SECRET, payload) }, payload }, 'main');
  const conn = await rawConnection(server.hostPort);
  t.teardown(() => conn.close());
  t.same((await conn.send(frame)).ack, true, 'first use is accepted');
  t.match(await conn.send(frame), { ack: false, error: /already used \(replayed request\)/ });
  const other = encodeTwoPart(controlFor(target.address, 'r-other'), '{}');
  t.match(await conn.send(encodeRequestFrame({ path, headers: { [AUTH_HEADER]: signRequest(SECRET, payload) }, payload: other }, 'main')), { ack: false, error: /does not match/ });
  const stale = encodeTwoPart(controlFor(target.address, 'r-stale'), '{}');
  t.match(await conn.send(encodeRequestFrame({ path, headers: { [AUTH_HEADER]: signRequest(SECRET, stale, Date.now() - 120_000) }, payload: stale }, 'main')), { ack: false, error: /away from this worker's clock/ });
  await sleep(50);
  t.equal(ran, 2, 'only the signed request and the first use of the captured frame ran');
  t.equal(server.ingress.trustCounters.unauthenticated, 5);
  for (const s of target.connections) s.destroy();
});

t.test('a reader that stops reading has its stream cut and its request killed', async (t) => {
  let killed: boolean | undefined;
  let reason: string | undefined;
  const registration = {
    instanceId: 3n,
    endpoint: 'flood',
    handler: async function* (_req: unknown, ctx: RequestContext) {
      ctx.signal.addEventListener('abort', () => (reason = String((ctx.signal.reason as Error).message)), { once: true });
      const chunk = 'x'.repeat(64 * 1024);
      while (!ctx.isStopped()) yield chunk;
      killed = ctx.isKilled();
    },
  };
  const streamErrors: string[] = [];
  const server = await TcpRequestServer.start({
    host: HOST, port: 0, wireProfile: 'main',
    trust: trust({ replyWriteTimeoutMs: 300 }),
    onStreamError: (err) => streamErrors.push(err.message),
  });
  t.teardown(() => server.close());
  const path = server.register(registration).split('/').slice(1).join('/');
  // the caller's "response server" accepts the call-home connection and never reads from it
  const stalled = await listener();
  for (const s of stalled.connections) s.pause();
  stalled.server.on('connection', (s: Socket) => s.pause());
  t.teardown(() => {
    for (const s of stalled.connections) s.destroy();
    stalled.server.close();
  });
  const conn = await rawConnection(server.hostPort);
  t.teardown(() => conn.close());
  t.same((await conn.send(encodeRequestFrame({ path, headers: {}, payload: encodeTwoPart(controlFor(stalled.address, 'r-stall'), '{}') }, 'main'))).ack, true);
  for (let i = 0; i < 500 && killed === undefined; i++) await sleep(20);
  t.equal(killed, true, 'the handler saw a kill');
  t.match(reason, /caller killed the request/);
  t.equal(server.ingress.trustCounters.replyWriteTimeouts, 1);
  t.match(streamErrors.join('\n'), /the reader took no bytes for 300 ms; request cancelled/);
  for (let i = 0; i < 100 && server.ingress.inflight > 0; i++) await sleep(10);
  t.equal(server.ingress.inflight, 0, 'the slot is free again');
});

t.test('mutual TLS on the TCP plane: only callers with a certificate from the CA get in; answers call home over it too', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'rp-mtls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const ca = (name: string) => openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`);
  const cert = (name: string, by: string) => {
    writeFileSync(join(dir, `${name}.ext`), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${by}.crt`, '-CAkey', `${by}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`);
  };
  ca('ca');
  ca('otherca');
  cert('worker', 'ca');
  cert('frontend', 'ca');
  cert('intruder', 'otherca');
  const env = (name: string, by: string) => ({ DYN_TCP_RPC_TLS_CERT: join(dir, `${name}.crt`), DYN_TCP_RPC_TLS_KEY: join(dir, `${name}.key`), DYN_TCP_RPC_TLS_CA: join(dir, `${by}.crt`) });
  const tlsOf = (name: string, by: string): TcpPlaneTls => tcpPlaneTlsFromEnv(env(name, by)) as TcpPlaneTls;
  t.throws(() => tcpPlaneTlsFromEnv({ DYN_TCP_RPC_TLS_CERT: join(dir, 'worker.crt') }), /needs DYN_TCP_RPC_TLS_CERT, DYN_TCP_RPC_TLS_KEY, DYN_TCP_RPC_TLS_CA together/);
  t.equal(readFileSync(join(dir, 'ca.crt'), 'utf8').includes('BEGIN CERTIFICATE'), true);

  let ran = 0;
  const server = await TcpRequestServer.start({ host: HOST, port: 0, wireProfile: 'main', trust: trust(), tls: tlsOf('worker', 'ca') });
  const responses = await ResponseServer.start({ host: HOST, callHomeTimeoutMs: 5000, tls: tlsOf('frontend', 'ca') });
  const good = new TcpRequestClient(responses, { tls: tlsOf('frontend', 'ca'), secret: null });
  const intruder = new TcpRequestClient(responses, { tls: tlsOf('intruder', 'ca'), secret: null });
  const plaintext = new TcpRequestClient(responses, { tls: null, secret: null, ackTimeoutMs: 2000 });
  t.teardown(async () => {
    good.close();
    intruder.close();
    plaintext.close();
    await server.close();
    await responses.close();
  });
  const address = server.register({ instanceId: 4n, endpoint: 'gen', handler: async function* () { ran++; yield 'ok'; } });
  t.same((await collect(await good.request(address, {}))).map((i) => i.data), ['ok'], 'a caller with a certificate from the CA is served');
  await t.rejects(intruder.request(address, {}), /worker 127\.0\.0\.1:\d+/, 'a certificate from another CA is refused');
  await t.rejects(plaintext.request(address, {}), /worker 127\.0\.0\.1:\d+/, 'a plaintext caller is refused');
  await sleep(50);
  t.equal(ran, 1, 'refused callers ran nothing');
  // the call-home port takes only workers with a certificate from the CA: a plaintext connection gets nothing
  const [, port] = /:(\d+)$/.exec(responses.address)!;
  const rogue = connect({ host: HOST, port: Number(port) });
  rogue.on('error', () => undefined);
  rogue.write('not a TLS hello');
  await new Promise<void>((resolve) => rogue.once('close', () => resolve()));
  t.pass('a plaintext call-home is cut');
  // a worker whose call-home cannot verify the caller's response server sends nothing (the request is lost)
  const plainResponses = await ResponseServer.start({ host: HOST, callHomeTimeoutMs: 1500, tls: null });
  const toPlain = new TcpRequestClient(plainResponses, { tls: tlsOf('frontend', 'ca'), secret: null });
  t.teardown(async () => {
    toPlain.close();
    await plainResponses.close();
  });
  await t.rejects(collect(await toPlain.request(address, {})), /did not call back/, 'a response server without TLS gets no answers');
});
