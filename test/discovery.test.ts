import t from 'tap';
import { mkdtempSync, readdirSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LlmError } from '../src/errors.js';
import { instanceKey, formatInstanceId } from '../src/protocol/discovery.js';
import {
  Discovery,
  FileStore,
  openDiscoveryStore,
  type DiscoveryConfig,
  type DiscoveryWatch,
  type WatchEvent,
} from '../src/runtime/discovery/index.js';
import { startEtcd, type EtcdService } from './helpers/services.js';

/** Next event of a watch, failing after `ms`. */
async function nextEvent(watch: DiscoveryWatch, ms = 5000): Promise<WatchEvent> {
  const it = watch[Symbol.asyncIterator]();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no watch event within ${ms} ms`)), ms);
  });
  try {
    const r = await Promise.race([it.next(), timeout]);
    if (r.done) throw new Error('watch ended');
    return r.value;
  } finally {
    clearTimeout(timer);
  }
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let etcd: EtcdService;
const fileRoot = mkdtempSync(join(tmpdir(), 'discovery-test-'));
t.before(async () => {
  etcd = await startEtcd();
});
t.teardown(async () => {
  await etcd?.stop();
  rmSync(fileRoot, { recursive: true, force: true });
});

const configs: Record<string, () => DiscoveryConfig> = {
  mem: () => ({ backend: 'mem' }),
  file: () => ({ backend: 'file', root: fileRoot }),
  etcd: () => ({ backend: 'etcd', endpoints: [`http://${etcd.endpoint}`] }),
};

for (const [name, config] of Object.entries(configs)) {
  t.test(`${name}: put, get, create-if-absent, delete, watch, close`, async (t) => {
    const a = await openDiscoveryStore(config());
    const b = await openDiscoveryStore(config());
    t.teardown(async () => {
      await a.close();
      await b.close();
    });
    t.equal(a.backend, name);
    t.ok(a.instanceId > 0n && a.instanceId < 1n << 64n, 'instance id is a non-zero u64');
    t.not(a.instanceId, b.instanceId);
    const prefix = `test/${name}/`;

    const watch = a.watch(prefix);
    await watch.synced;
    await a.put(`${prefix}x`, 'one');
    t.same(await nextEvent(watch), { type: 'put', key: `${prefix}x`, value: 'one' });

    await t.rejects(b.put(`${prefix}x`, 'two'), { code: 'LLM_ERR_DISCOVERY', message: /already exists/ });
    await t.rejects(a.put(`${prefix}x`, 'again'), { code: 'LLM_ERR_DISCOVERY' }, 'even for its owner');

    await b.put(`${prefix}y`, 'b-owned');
    t.same(await nextEvent(watch), { type: 'put', key: `${prefix}y`, value: 'b-owned' });
    t.same(await b.get(prefix), [
      { key: `${prefix}x`, value: 'one' },
      { key: `${prefix}y`, value: 'b-owned' },
    ]);
    t.same(await a.get(`test/${name}/nothing-here/`), []);

    // a second watch starts with the current state
    const late = b.watch(prefix);
    t.same(await nextEvent(late), { type: 'put', key: `${prefix}x`, value: 'one' });
    t.same(await nextEvent(late), { type: 'put', key: `${prefix}y`, value: 'b-owned' });
    const noSnapshot = b.watch(prefix, { snapshot: false });
    await noSnapshot.synced;

    await a.delete(`${prefix}x`);
    t.same(await nextEvent(watch), { type: 'delete', key: `${prefix}x` });
    t.same(await nextEvent(late), { type: 'delete', key: `${prefix}x` });
    t.same(await nextEvent(noSnapshot), { type: 'delete', key: `${prefix}x` }, 'deletes of keys older than the watch');

    // closing b revokes its lease: its key goes
    await b.close();
    t.same(await nextEvent(watch), { type: 'delete', key: `${prefix}y` });
    t.same(await a.get(prefix), []);
    await t.rejects(b.put(`${prefix}z`, 'v'), { code: 'LLM_ERR_DISCOVERY', message: /after close/ });
    const drained: WatchEvent[] = [];
    for await (const event of late) drained.push(event);
    t.pass(`a closed store's watches end (after ${drained.length} queued events)`);
    watch.close();
    noSnapshot.close();
  });

  t.test(`${name}: typed registration and the live instance list`, async (t) => {
    const worker1 = await Discovery.open(config());
    const worker2 = await Discovery.open(config());
    const frontend = await Discovery.open(config());
    t.teardown(async () => {
      await worker1.close();
      await worker2.close();
      await frontend.close();
    });
    const ns = `ns-${name}`;
    const record = await worker1.registerEndpointInstance({
      namespace: ns,
      component: 'backend',
      endpoint: 'generate',
      transport: { tcp: `127.0.0.1:5000/${formatInstanceId(worker1.instanceId)}/generate` },
    });
    t.equal(record.instance_id, worker1.instanceId);

    // the exact key and JSON of the reference
    const key = instanceKey(ns, 'backend', 'generate', worker1.instanceId);
    t.equal(key, `v1/instances/${ns}/backend/generate/${worker1.instanceId.toString(16)}`);
    const [stored] = await frontend.store.get(key);
    t.equal(
      stored?.value,
      `{"type":"Endpoint","namespace":"${ns}","component":"backend","endpoint":"generate","instance_id":${worker1.instanceId},` +
        `"transport":{"tcp":"127.0.0.1:5000/${worker1.instanceId.toString(16)}/generate"}}`,
    );

    const instances = frontend.watchInstances(ns, 'backend', 'generate');
    t.teardown(() => instances.close());
    await instances.ready;
    t.same(instances.list().map((r) => r.instance_id), [worker1.instanceId]);

    const changes: bigint[][] = [];
    instances.onChange((list) => changes.push(list.map((r) => r.instance_id)));
    await worker2.registerEndpointInstance({
      namespace: ns,
      component: 'backend',
      endpoint: 'generate',
      transport: { nats_tcp: `${ns}_backend.generate-${worker2.instanceId.toString(16)}` },
    });
    await until('worker2 listed', () => instances.list().length === 2);
    t.same(
      instances.list().map((r) => r.instance_id).sort(),
      [worker1.instanceId, worker2.instanceId].sort(),
    );
    t.same(
      (await frontend.listInstances(ns, 'backend', 'generate')).map((r) => r.instance_id).sort(),
      [worker1.instanceId, worker2.instanceId].sort(),
    );

    await worker1.unregisterEndpointInstance(ns, 'backend', 'generate');
    await until('worker1 gone', () => instances.list().length === 1);
    t.same(instances.list()[0]?.instance_id, worker2.instanceId);
    t.ok(changes.length >= 2, 'onChange saw both changes');

    // a model card and an event channel go under their own keys
    await worker2.registerEventChannel({
      namespace: ns,
      component: 'backend',
      topic: 'kv-events',
      transport: { kind: 'Nats', config: { subject_prefix: `namespace.${ns}.component.backend` } },
    });
    const [channel] = await frontend.store.get(`v1/event_channels/${ns}/backend/kv-events/`);
    t.equal(channel?.key, `v1/event_channels/${ns}/backend/kv-events/${worker2.instanceId.toString(16)}`);
    t.match(JSON.parse(channel!.value), { type: 'EventChannel', topic: 'kv-events', transport: { kind: 'Nats' } });

    // the whole process leaves discovery on close
    await worker2.close();
    await until('worker2 gone', () => instances.list().length === 0);
    t.same(await frontend.store.get(`v1/event_channels/${ns}/`), []);
  });
}

t.test('file: a stalled owner is reaped as dead, then takes its lease and keys back', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'discovery-stall-'));
  const owner = new FileStore({ root, leaseTtlMs: 600 });
  const reader = new FileStore({ root, leaseTtlMs: 600 });
  t.teardown(async () => {
    await owner.close();
    await reader.close();
    rmSync(root, { recursive: true, force: true });
  });
  await owner.put('v1/instances/a/b/c/1', 'record');
  const renewed = new Promise<bigint>((resolve) => owner.onLeaseRenewed(resolve));
  // as if the owner had not kept its lease alive for a while
  const past = new Date(Date.now() - 60_000);
  utimesSync(join(root, 'leases', `${owner.leaseId.toString(16)}.json`), past, past);
  t.same(await reader.get('v1/'), [], 'a key of an expired lease is absent');
  t.same(readdirSync(join(root, 'keys')), [], 'and reaped');
  // another process may now take the name
  await reader.put('v1/instances/a/b/c/2', 'other');
  t.equal(await renewed, owner.instanceId, 'the owner notices within a keep-alive period and keeps its id');
  t.same(await reader.get('v1/instances/a/b/c/'), [
    { key: 'v1/instances/a/b/c/1', value: 'record' },
    { key: 'v1/instances/a/b/c/2', value: 'other' },
  ]);
});

t.test('errors name the server', async (t) => {
  const err = await openDiscoveryStore({ backend: 'etcd', endpoints: ['http://127.0.0.1:1'] }).catch((e: unknown) => e);
  t.ok(err instanceof LlmError);
  t.equal((err as LlmError).code, 'LLM_ERR_DISCOVERY');
  t.match((err as LlmError).message, /^etcd at 127\.0\.0\.1:1 unreachable/);
});
