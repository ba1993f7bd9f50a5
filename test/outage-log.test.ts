// Outages of the services a process depends on are logged once each, with their recovery (issue 22): a NATS server
// restart gives one "unreachable" and one "reachable again" line, however many reconnect attempts happen; so does
// etcd going away under a watch.
import t from 'tap';
import { configureLogging, logger } from '../src/runtime/log.js';
import { OutageLog } from '../src/runtime/outage.js';
import { connectNats } from '../src/runtime/request-plane/nats.js';
import { EtcdStore } from '../src/runtime/discovery/etcd.js';
import { startEtcd, startNats } from './helpers/services.js';

const lines: string[] = [];
configureLogging({ spec: 'info', jsonl: true, destination: { write: (l: string) => lines.push(l) } });
t.teardown(() => configureLogging({}));
const messages = (target: string) => lines.map((l) => JSON.parse(l) as { target: string; message: string }).filter((r) => r.target === target).map((r) => r.message);

async function until(check: () => boolean, ms = 20_000): Promise<void> {
  for (const deadline = Date.now() + ms; !check(); ) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('OutageLog: one line down, one line up, per outage', async (t) => {
  const o = new OutageLog(logger('test.outage'), 'the thing');
  o.down('first failure');
  o.down('second failure');
  t.ok(o.isDown);
  o.up();
  o.up();
  t.same(messages('test.outage').map((m) => m.replace(/\d+ ms/, 'N ms')), ['the thing is unreachable: first failure', 'the thing is reachable again after N ms']);
});

t.test('a NATS restart: one line when the connection drops, one when it is back', async (t) => {
  const nats = await startNats();
  t.teardown(() => nats.stop());
  const nc = await connectNats(nats.url);
  t.teardown(() => nc.close());
  await nats.restart();
  await until(() => messages('runtime.nats').some((m) => /reachable again/.test(m)));
  const got = messages('runtime.nats');
  t.equal(got.filter((m) => /is unreachable/.test(m)).length, 1, 'one outage line');
  t.equal(got.filter((m) => /reachable again/.test(m)).length, 1, 'one recovery line');
  t.match(got[0], /^NATS server nats:\/\/127\.0\.0\.1:\d+ is unreachable/);
});

t.test('etcd going away under a watch: one line, and one when it answers again', async (t) => {
  const etcd = await startEtcd();
  t.teardown(() => etcd.stop());
  const store = await EtcdStore.connect({ endpoints: [`http://${etcd.endpoint}`], leaseTtlMs: 3000 });
  t.teardown(() => store.close());
  const watch = store.watch('v1/');
  t.teardown(() => watch.close());
  await store.put('v1/a', '1');
  await etcd.kill();
  await until(() => messages('runtime.discovery').some((m) => /is unreachable/.test(m)));
  await new Promise((r) => setTimeout(r, 1500)); // many failing retries meanwhile
  await etcd.start();
  await until(() => messages('runtime.discovery').some((m) => /reachable again/.test(m)), 30_000);
  const got = messages('runtime.discovery');
  t.equal(got.filter((m) => /is unreachable/.test(m)).length, 1, 'one outage line');
  t.equal(got.filter((m) => /reachable again/.test(m)).length, 1, 'one recovery line');
  t.match(got[0], /^etcd at .*127\.0\.0\.1:\d+ is unreachable/);
});
