// config/tensor-parallel.yaml and config/multinode-{leader,follower}.yaml end to end on the CPU with the bundled
// stories260K, real etcd and nats-server, behind a `frontend` answering real completions. The configs run as
// shipped except for what a second deployment on the same machine must change (ports, the dist-init-addr) and the
// thread count. The multi-node pair: node 1 dying fails nothing silently: the leader withdraws from discovery (the
// frontend stops listing the model) and registers again once node 1 is back, serving the same greedy text; the
// leader dying makes node 1 exit non-zero naming the leader.
import t from 'tap';
import { frontendReady, startCli, type CliProcess } from './helpers/cli-process.js';
import { freePort, freePortRun, startEtcd, startNats, type EtcdService, type NatsService } from './helpers/services.js';
import { Discovery } from '../src/runtime/discovery/index.js';

// The bundled model's greedy continuation of the prompt (models/README.md), the same at TP 1 and TP 2.
const PROMPT = 'Once upon a time';
const GREEDY = ', there was a little girl named Lily. She loved';

let etcd: EtcdService;
let nats: NatsService;
const procs: CliProcess[] = [];

t.before(async () => {
  [etcd, nats] = await Promise.all([startEtcd(), startNats()]);
});

t.teardown(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await nats?.stop();
  await etcd?.stop();
});

function cli(args: string[]): CliProcess {
  const proc = startCli(args);
  procs.push(proc);
  return proc;
}

async function worker(config: string, namespace: string, extra: string[] = []): Promise<CliProcess> {
  return cli([
    'start', '--config', config, '--namespace', namespace, '--cpu-threads', '1', '--etcd-endpoints', `http://${etcd.endpoint}`,
    '--nats-server', nats.url, '--tcp-rpc-host', '127.0.0.1', '--system-host', '127.0.0.1', '--system-port', String(await freePort()), ...extra,
  ]);
}

function frontend(namespace: string): CliProcess {
  return cli(['frontend', '--http-port', '0', '--http-host', '127.0.0.1', '--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcd.endpoint}`,
    '--nats-server', nats.url, '--namespace', namespace]);
}

async function complete(url: string): Promise<string> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: PROMPT, max_tokens: 14, temperature: 0 }),
  });
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  return ((await res.json()) as { choices: { text: string }[] }).choices[0]!.text;
}

async function listsModel(url: string): Promise<boolean> {
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  return models.data.some((m) => m.id === 'stories260K');
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !(await check()); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('config/tensor-parallel.yaml: two ranks serve the greedy text through the frontend', async (t) => {
  const proc = await worker('config/tensor-parallel.yaml', 'tp');
  await proc.waitFor(/serving tp\.backend\.generate as instance/, 90_000);
  const url = await frontendReady(frontend('tp'), 'stories260K');
  t.equal(await complete(url), GREEDY);
  const texts = await Promise.all([0, 1, 2, 3].map(() => complete(url)));
  t.same(texts, [GREEDY, GREEDY, GREEDY, GREEDY], 'concurrent requests too');
});

t.test('config/multinode-*.yaml: a two-process group serves; it leaves discovery while node 1 is gone and comes back with it', async (t) => {
  const addr = `127.0.0.1:${await freePortRun()}`;
  const follower = () => worker('config/multinode-follower.yaml', 'mn', ['--dist-init-addr', addr]);
  let node1 = await follower(); // the follower first: start order does not matter
  const leader = await worker('config/multinode-leader.yaml', 'mn', ['--dist-init-addr', addr]);
  await leader.waitFor(/serving mn\.backend\.generate as instance/, 90_000);
  const url = await frontendReady(frontend('mn'), 'stories260K');
  t.equal(await complete(url), GREEDY, 'greedy text through the frontend');

  const discovery = await Discovery.open({ backend: 'etcd', endpoints: [`http://${etcd.endpoint}`] });
  t.teardown(() => discovery.close());
  t.equal((await discovery.listInstances('mn', 'backend', 'generate')).length, 1, 'the leader is listed');

  node1.kill('SIGKILL');
  await until('the leader withdraws', async () => (await discovery.listInstances('mn', 'backend', 'generate')).length === 0);
  await until('the frontend drops the model', async () => !(await listsModel(url)));
  t.pass('node 1 gone: the leader withdrew its instance and model card');

  node1 = await follower();
  await until('the leader is listed again', async () => (await discovery.listInstances('mn', 'backend', 'generate')).length === 1, 90_000);
  await until('the frontend lists the model again', () => listsModel(url));
  t.equal(await complete(url), GREEDY, 'node 1 back: the same greedy text');

  leader.kill('SIGKILL');
  const { code } = await node1.exited;
  t.equal(code, 1, 'the leader dying ends node 1 non-zero');
  t.match(node1.stderr() + node1.stdout(), /the leader \(node 0\) at --dist-init-addr 127\.0\.0\.1:\d+/, 'naming the leader');
});

t.test('the same pair with --dp-size 2: two groups, each spanning both nodes, serve through one leader', async (t) => {
  const addr = `127.0.0.1:${await freePortRun(4)}`;
  const dp = ['--dp-size', '2', '--dist-init-addr', addr];
  const leader = await worker('config/multinode-leader.yaml', 'mndp', dp);
  const node1 = await worker('config/multinode-follower.yaml', 'mndp', dp);
  await leader.waitFor(/serving mndp\.backend\.generate as instance/, 90_000);
  const url = await frontendReady(frontend('mndp'), 'stories260K');
  const texts = await Promise.all([0, 1, 2, 3, 4, 5].map(() => complete(url)));
  t.same(texts, texts.map(() => GREEDY), 'concurrent requests, balanced over both groups (each started only with node 1\'s ranks joined): the greedy text');
  leader.kill('SIGKILL');
  t.equal((await node1.exited).code, 1, 'the leader dying ends node 1 (both groups) non-zero');
});
