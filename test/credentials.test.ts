// TLS and credentials for NATS and etcd against real servers (issue 22): every way in works, every wrong one is
// refused with an error naming the server, and no password ever appears in an error.
import t from 'tap';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nkeys } from 'nats';
import { Etcd3 } from 'etcd3';
import { connectNats } from '../src/runtime/request-plane/nats.js';
import { EtcdStore } from '../src/runtime/discovery/etcd.js';
import { etcdClientSettings, natsConnectSettings, redactUrl } from '../src/runtime/credentials.js';
import { freePort } from './helpers/services.js';

const dir = mkdtempSync(join(tmpdir(), 'creds-test-'));
const children: ChildProcess[] = [];
t.teardown(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
}

/** A CA, and a certificate it signs (`name`.crt/.key), valid for 127.0.0.1 and localhost. */
function makeCa(ca: string): void {
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=${ca}`, '-keyout', `${ca}.key`, '-out', `${ca}.crt`);
}
function makeCert(name: string, ca: string, cn: string): void {
  writeFileSync(join(dir, `${name}.ext`), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${cn}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.crt`);
}
makeCa('ca');
makeCa('otherca');
makeCert('server', 'ca', 'server');
makeCert('client', 'ca', 'client');
makeCert('rogue', 'otherca', 'server');
const f = (name: string) => join(dir, name);

async function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

async function launch(cmd: string, args: string[], port: number): Promise<void> {
  const child = spawn(cmd, args, { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 300; i++) {
    if (await portOpen(port)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${cmd} did not open port ${port}`);
}

async function nats(args: string[]): Promise<number> {
  const port = await freePort();
  await launch('nats-server', ['-a', '127.0.0.1', '-p', String(port), ...args], port);
  return port;
}

const PASSWORD = 'pw-Secret-7781';
const TOKEN = 'tok-Secret-5512';

t.test('redaction', async (t) => {
  t.equal(redactUrl(`nats://alice:${PASSWORD}@h:4222`), 'nats://alice:***@h:4222');
  t.equal(redactUrl(`nats://${TOKEN}@h:4222`), 'nats://***@h:4222');
  t.equal(redactUrl('127.0.0.1:2379'), '127.0.0.1:2379');
  t.throws(() => natsConnectSettings('http://h:4222', {}), /scheme http:\/\/ is not supported/);
  t.throws(() => natsConnectSettings(`nats://a:${PASSWORD}@h:1`, { NATS_AUTH_TOKEN: TOKEN }), /give one way to authenticate, not credentials in the URL and NATS_AUTH_TOKEN/);
  t.throws(() => etcdClientSettings(['http://h:2379'], { ETCD_AUTH_CA: f('ca.crt') }), /etcd endpoint http:\/\/h:2379 is http:\/\/ but TLS is configured/);
  t.throws(() => etcdClientSettings(['h:2379'], { ETCD_AUTH_USERNAME: 'root' }), /ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD go together/);
});

t.test('NATS user and password in the URL', async (t) => {
  const port = await nats(['--user', 'alice', '--pass', PASSWORD]);
  const nc = await connectNats(`nats://alice:${PASSWORD}@127.0.0.1:${port}`, { env: {} });
  await nc.flush();
  await nc.close();
  const err = await connectNats(`nats://alice:wrong-${PASSWORD}@127.0.0.1:${port}`, { env: {} }).catch((e: Error) => e);
  t.match(String(err), new RegExp(`cannot connect to NATS server nats://alice:\\*\\*\\*@127\\.0\\.0\\.1:${port}: .*(AUTHORIZATION_VIOLATION|Authorization)`, 'i'));
  t.notMatch(String(err), PASSWORD, 'the password is not in the error');
  const none = await connectNats(`nats://127.0.0.1:${port}`, { env: {} }).catch((e: Error) => e);
  t.match(String(none), /AUTHORIZATION_VIOLATION|Authorization/i);
  // and from the environment
  const viaEnv = await connectNats(`nats://127.0.0.1:${port}`, { env: { NATS_AUTH_USERNAME: 'alice', NATS_AUTH_PASSWORD: PASSWORD } });
  await viaEnv.close();
});

t.test('NATS token', async (t) => {
  const port = await nats(['--auth', TOKEN]);
  await (await connectNats(`nats://127.0.0.1:${port}`, { env: { NATS_AUTH_TOKEN: TOKEN } })).close();
  await (await connectNats(`nats://${TOKEN}@127.0.0.1:${port}`, { env: {} })).close();
  const err = await connectNats(`nats://127.0.0.1:${port}`, { env: { NATS_AUTH_TOKEN: `x${TOKEN}` } }).catch((e: Error) => e);
  t.match(String(err), /AUTHORIZATION_VIOLATION|Authorization/i);
  t.notMatch(String(err), TOKEN);
});

t.test('NATS nkey seed', async (t) => {
  const user = nkeys.createUser();
  const seedFile = f('user.nk');
  writeFileSync(seedFile, new TextDecoder().decode(user.getSeed()));
  const conf = f('nkey.conf');
  writeFileSync(conf, `authorization { users = [ { nkey: ${user.getPublicKey()} } ] }\n`);
  const port = await nats(['-c', conf]);
  await (await connectNats(`nats://127.0.0.1:${port}`, { env: { NATS_AUTH_NKEY: seedFile } })).close();
  const other = nkeys.createUser();
  const otherFile = f('other.nk');
  writeFileSync(otherFile, new TextDecoder().decode(other.getSeed()));
  t.match(String(await connectNats(`nats://127.0.0.1:${port}`, { env: { NATS_AUTH_NKEY: otherFile } }).catch((e: Error) => e)), /AUTHORIZATION_VIOLATION|Authorization/i);
  writeFileSync(otherFile, 'not a seed');
  t.match(String(await connectNats(`nats://127.0.0.1:${port}`, { env: { NATS_AUTH_NKEY: otherFile } }).catch((e: Error) => e)), /NATS_AUTH_NKEY .*expected a user nkey seed/);
});

t.test('NATS TLS verifies the server', async (t) => {
  const plain = await nats([]);
  const err = await connectNats(`tls://127.0.0.1:${plain}`, { env: {} }).catch((e: Error) => e);
  t.match(String(err), new RegExp(`cannot connect to NATS server tls://127\\.0\\.0\\.1:${plain}: the server offers no TLS`), 'tls:// to a plaintext server fails');

  const tlsPort = await nats(['--tls', '--tlscert', f('server.crt'), '--tlskey', f('server.key')]);
  const ok = await connectNats(`tls://127.0.0.1:${tlsPort}`, { env: { NATS_TLS_CA_FILE: f('ca.crt') } });
  await ok.close();
  const selfSigned = await connectNats(`tls://127.0.0.1:${tlsPort}`, { env: { NATS_TLS_CA_FILE: f('otherca.crt') } }).catch((e: Error) => e);
  t.match(String(selfSigned), new RegExp(`NATS server tls://127\\.0\\.0\\.1:${tlsPort}: the server's TLS certificate does not verify`));
  const systemCas = await connectNats(`tls://127.0.0.1:${tlsPort}`, { env: {} }).catch((e: Error) => e);
  t.match(String(systemCas), /does not verify against the system CAs/, 'a private CA is not trusted without NATS_TLS_CA_FILE');

  // mutual TLS: the server asks for a client certificate signed by its CA
  const mtls = await nats(['--tlsverify', '--tlscert', f('server.crt'), '--tlskey', f('server.key'), '--tlscacert', f('ca.crt')]);
  const withCert = await connectNats(`tls://127.0.0.1:${mtls}`, { env: { NATS_TLS_CA_FILE: f('ca.crt'), NATS_TLS_CERT_FILE: f('client.crt'), NATS_TLS_KEY_FILE: f('client.key') } });
  await withCert.close();
  const rogue = await connectNats(`tls://127.0.0.1:${mtls}`, { env: { NATS_TLS_CA_FILE: f('ca.crt'), NATS_TLS_CERT_FILE: f('rogue.crt'), NATS_TLS_KEY_FILE: f('rogue.key') } }).catch((e: Error) => e);
  t.match(String(rogue), /cannot connect to NATS server tls:\/\/127\.0\.0\.1/, 'a client certificate from another CA is refused');
});

async function etcd(extra: string[], scheme: 'http' | 'https'): Promise<string> {
  const clientPort = await freePort();
  const peerPort = await freePort();
  const data = mkdtempSync(join(dir, 'etcd-'));
  await launch('etcd', [
    '--name', 'default', '--data-dir', data,
    '--listen-client-urls', `${scheme}://127.0.0.1:${clientPort}`, '--advertise-client-urls', `${scheme}://127.0.0.1:${clientPort}`,
    '--listen-peer-urls', `http://127.0.0.1:${peerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peerPort}`,
    '--initial-cluster', `default=http://127.0.0.1:${peerPort}`, '--log-level', 'error', ...extra,
  ], clientPort);
  return `127.0.0.1:${clientPort}`;
}

t.test('etcd over mutual TLS', async (t) => {
  const endpoint = await etcd(['--cert-file', f('server.crt'), '--key-file', f('server.key'), '--trusted-ca-file', f('ca.crt'), '--client-cert-auth'], 'https');
  const good = { ETCD_AUTH_CA: f('ca.crt'), ETCD_AUTH_CLIENT_CERT: f('client.crt'), ETCD_AUTH_CLIENT_KEY: f('client.key') };
  const store = await EtcdStore.connect({ endpoints: [endpoint], env: good });
  await store.put('v1/trust-test', 'ok');
  t.same((await store.get('v1/trust-test')).map((kv) => kv.value), ['ok']);
  await store.close();
  await t.rejects(EtcdStore.connect({ endpoints: [endpoint], env: { ETCD_AUTH_CA: f('ca.crt') } }), new RegExp(`etcd at ${endpoint}`), 'no client certificate: refused');
  await t.rejects(EtcdStore.connect({ endpoints: [endpoint], env: { ...good, ETCD_AUTH_CA: f('otherca.crt') } }), new RegExp(`etcd at ${endpoint}`), 'a server certificate outside the CA: refused');
  await t.rejects(EtcdStore.connect({ endpoints: [endpoint], env: {} }), new RegExp(`etcd at ${endpoint}`), 'plaintext to a TLS etcd: refused');
});

t.test('etcd user and password', async (t) => {
  const endpoint = await etcd([], 'http');
  const admin = new Etcd3({ hosts: `http://${endpoint}` });
  await admin.user('root').create(PASSWORD);
  await admin.user('root').addRole('root');
  await admin.auth.authEnable();
  admin.close();
  const store = await EtcdStore.connect({ endpoints: [endpoint], env: { ETCD_AUTH_USERNAME: 'root', ETCD_AUTH_PASSWORD: PASSWORD } });
  await store.put('v1/auth-test', 'ok');
  await store.close();
  const wrong = await EtcdStore.connect({ endpoints: [endpoint], env: { ETCD_AUTH_USERNAME: 'root', ETCD_AUTH_PASSWORD: `${PASSWORD}x` } }).catch((e: Error) => e);
  t.match(String(wrong), new RegExp(`etcd at ${endpoint}`));
  t.notMatch(String(wrong), PASSWORD, 'the password is not in the error');
  // etcd grants leases without authentication; the first key write is what it refuses
  const anonymous = await EtcdStore.connect({ endpoints: [endpoint], env: {} });
  await t.rejects(anonymous.put('v1/auth-test', 'x'), new RegExp(`etcd at ${endpoint}`), 'no credentials: writes refused');
  await anonymous.close();
});
