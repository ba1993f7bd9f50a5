// Leases doing their job: a SIGKILLed process leaves discovery within its TTL; an etcd restart or a lost lease
// leaves a live process registered.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Etcd3 } from 'etcd3';
import { Discovery, type DiscoveryConfig } from '../src/runtime/discovery/index.js';
import { startEtcd, type EtcdService } from './helpers/services.js';

const childScript = fileURLToPath(new URL('./helpers/discovery-child.ts', import.meta.url));

async function until(what: string, check: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts a registering child and resolves with it and its instance id (hex) once it is registered. */
function startChild(config: DiscoveryConfig, namespace: string): Promise<{ child: ChildProcess; id: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', childScript, JSON.stringify({ config, namespace })], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /ready ([0-9a-f]+)\n/.exec(out);
      if (m) resolve({ child, id: m[1]! });
    });
    child.on('exit', (code) => reject(new Error(`child exited (${code}) before registering: ${err}`)));
  });
}

let etcd: EtcdService;
const fileRoot = mkdtempSync(join(tmpdir(), 'discovery-crash-'));
t.before(async () => {
  etcd = await startEtcd();
});
t.teardown(async () => {
  await etcd?.stop();
  rmSync(fileRoot, { recursive: true, force: true });
});

const crashCases: [string, number, () => DiscoveryConfig][] = [
  ['file, 1 s TTL', 1000, () => ({ backend: 'file', root: fileRoot, leaseTtlMs: 1000 })],
  ['etcd, 2 s TTL', 2000, () => ({ backend: 'etcd', endpoints: [etcd.endpoint], leaseTtlMs: 2000 })],
  ['etcd, default 10 s TTL', 10_000, () => ({ backend: 'etcd', endpoints: [etcd.endpoint] })],
];

// The cases run side by side: each mostly waits (child start-up, lease expiry).
t.test('a SIGKILLed process leaves discovery within its lease TTL', async (t) => {
  const crash = async ([name, ttlMs, config]: (typeof crashCases)[number]) => {
    const namespace = `crash-${ttlMs}-${config().backend}`;
    const observer = await Discovery.open(config());
    t.teardown(() => observer.close());
    const instances = observer.watchInstances(namespace, 'backend', 'generate');
    t.teardown(() => instances.close());
    const { child, id } = await startChild(config(), namespace);
    t.teardown(() => void child.kill('SIGKILL'));
    await until(`the child in the instance list (${name})`, () => instances.list().some((r) => r.instance_id.toString(16) === id), 15_000);

    const killedAt = Date.now();
    child.kill('SIGKILL');
    await until(`the child gone (${name})`, () => instances.list().length === 0, ttlMs + 5000);
    const elapsed = Date.now() - killedAt;
    // etcd checks expiry every 500 ms; the file store's watcher rescans every min(1 s, ttl/4)
    t.ok(elapsed <= ttlMs + 1500, `${name}: gone after ${elapsed} ms`);
    t.ok(elapsed >= ttlMs - 1000, `${name}: not before its lease could expire`);
  };
  await Promise.all(crashCases.map(crash));
});

t.test('etcd restarted mid-run: the registration survives and watches follow', async (t) => {
  const config = (): DiscoveryConfig => ({ backend: 'etcd', endpoints: [etcd.endpoint], leaseTtlMs: 2000 });
  const worker = await Discovery.open(config());
  const frontend = await Discovery.open(config());
  t.teardown(async () => {
    await worker.close();
    await frontend.close();
  });
  const ns = 'restart';
  const instances = frontend.watchInstances(ns, 'backend', 'generate');
  t.teardown(() => instances.close());
  await worker.registerEndpointInstance({
    namespace: ns,
    component: 'backend',
    endpoint: 'generate',
    transport: { tcp: '127.0.0.1:1/x/generate' },
  });
  await until('registered', () => instances.list().length === 1, 5000);

  // a quick restart: etcd keeps the lease, the keep-alive resumes
  await etcd.restart();
  await until('still listed after a restart', async () => (await worker.listInstances(ns, 'backend', 'generate').catch(() => [])).length === 1, 10_000);
  await worker.registerEndpointInstance({ namespace: ns, component: 'backend', endpoint: 'prefill', transport: { tcp: '127.0.0.1:1/x/prefill' } });
  const prefill = frontend.watchInstances(ns, 'backend', 'prefill');
  t.teardown(() => prefill.close());
  await until('a registration made after the restart is seen', () => prefill.list().length === 1, 10_000);

  // etcd down for longer than twice the TTL: the client gives the lease up, then re-registers under a new one
  const renewed = new Promise<bigint>((resolve) => worker.store.onLeaseRenewed(resolve));
  await etcd.kill();
  await new Promise((r) => setTimeout(r, 5000));
  await etcd.start();
  const newLease = await Promise.race([renewed, new Promise<never>((_, rej) => setTimeout(() => rej(new Error('no lease renewal')), 15_000))]);
  t.not(newLease, worker.instanceId, 'a new lease');
  t.equal(worker.store.leaseId, newLease);
  // the old lease expires 2 s after etcd comes back; the keys moved to the new lease stay
  await new Promise((r) => setTimeout(r, 3000));
  await until('the frontend still sees the worker', () => instances.list().length === 1 && prefill.list().length === 1, 10_000);
  t.same(instances.list()[0]?.instance_id, worker.instanceId, 'same instance id, same key');
  t.same((await frontend.listInstances(ns, 'backend', 'generate')).map((r) => r.instance_id), [worker.instanceId]);
  // and it keeps working
  await worker.unregisterEndpointInstance(ns, 'backend', 'prefill');
  await until('unregister still works', () => prefill.list().length === 0, 5000);
});

t.test('etcd lease revoked behind our back: keys come back under a new lease', async (t) => {
  const config = (): DiscoveryConfig => ({ backend: 'etcd', endpoints: [etcd.endpoint], leaseTtlMs: 2000 });
  const worker = await Discovery.open(config());
  const frontend = await Discovery.open(config());
  t.teardown(async () => {
    await worker.close();
    await frontend.close();
  });
  const ns = 'revoke';
  await worker.registerEndpointInstance({ namespace: ns, component: 'backend', endpoint: 'generate', transport: { tcp: '127.0.0.1:1/x/generate' } });
  const instances = frontend.watchInstances(ns, 'backend', 'generate');
  t.teardown(() => instances.close());
  await instances.ready;
  t.equal(instances.list().length, 1);

  const seen: number[] = [];
  instances.onChange((list) => seen.push(list.length));
  const renewed = new Promise<bigint>((resolve) => worker.store.onLeaseRenewed(resolve));
  const admin = new Etcd3({ hosts: `http://${etcd.endpoint}` });
  t.teardown(() => admin.close());
  await admin.leaseClient.leaseRevoke({ ID: worker.store.leaseId.toString() });
  await renewed;
  await until('back in the list', () => instances.list().length === 1, 5000);
  t.same(seen.slice(-2), [0, 1], 'the watcher saw it leave and come back');
  t.equal(instances.list()[0]?.instance_id, worker.instanceId);
});
