// A frontend that starts after the workers learns what they cached (reference §5.1, local indexer): real etcd and
// nats-server, `dynamo-sglang start` workers (stories260K, CPU) and `frontend` processes. Worker A serves prompts
// through a first (round-robin) frontend, which then goes away; a `--router-mode kv` frontend started afterwards asks
// A's `worker_kv_indexer_query_dp0` for its cached blocks, and workers B (local indexer) and C
// (`--durable-kv-events`: no local indexer, no endpoint) register later. The repeated prompts go to A and hit its
// cache, though no KV event about them was published after the kv frontend subscribed.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { frontendReady, startCli, type CliProcess } from './helpers/cli-process.js';
import { startEtcd, startNats, type EtcdService, type NatsService } from './helpers/services.js';
import { Discovery } from '../src/runtime/discovery/index.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const STORY =
  'the little dog ran to the park with his friend the cat. They played with a big red ball all day long. ' +
  'When the sun went down, they went home and ate a big dinner.';
// distinct first words: no two prompts share a first KV block
const PROMPTS = ['One day', 'Tom said', 'Sue had'].map((opener) => `${opener} ${STORY}`);

let etcd: EtcdService;
let nats: NatsService;
const procs: CliProcess[] = [];

t.teardown(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await nats?.stop();
  await etcd?.stop();
});

function start(args: string[]): CliProcess {
  const proc = startCli(args);
  procs.push(proc);
  return proc;
}

async function startWorker(extra: string[] = []): Promise<{ proc: CliProcess; instanceId: string }> {
  const proc = start([
    'start', '--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
    '--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcd.endpoint}`, '--nats-server', nats.url,
    '--request-plane', 'tcp', '--tcp-rpc-host', '127.0.0.1', ...extra,
  ]);
  const [, instanceId] = await proc.waitFor(/serving dynamo\.backend\.generate as instance ([0-9a-f]+)/, 90_000);
  return { proc, instanceId };
}

function startFrontend(extra: string[]): CliProcess {
  return start([
    'frontend', '--http-port', '0', '--http-host', '127.0.0.1', '--discovery-backend', 'etcd',
    '--etcd-endpoints', `http://${etcd.endpoint}`, '--nats-server', nats.url, ...extra,
  ]);
}

interface Usage {
  prompt_tokens: number;
  prompt_tokens_details?: { cached_tokens: number } | null;
}

async function complete(url: string, prompt: string): Promise<Usage> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt, max_tokens: 1, temperature: 0 }),
  });
  if (res.status !== 200) throw new Error(`completion failed: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { usage: Usage }).usage;
}

t.test('a kv frontend started after the worker cached prompts routes their repeats to it', async (t) => {
  [etcd, nats] = await Promise.all([startEtcd(), startNats()]);
  const a = await startWorker();

  const first = startFrontend(['--router-mode', 'round-robin']);
  const firstUrl = await frontendReady(first, 'stories260K');
  for (const prompt of PROMPTS) {
    const usage = await complete(firstUrl, prompt);
    t.notOk(usage.prompt_tokens_details?.cached_tokens, 'nothing cached at first');
    t.ok(usage.prompt_tokens > 32, `a long prompt (${usage.prompt_tokens} tokens)`);
  }
  first.kill('SIGKILL');
  await first.exited;

  const kv = startFrontend(['--router-mode', 'kv']);
  const kvUrl = await frontendReady(kv, 'stories260K');
  const [, blocks] = await kv.waitFor(new RegExp(`worker ${a.instanceId}: recovered (\\d+) cached blocks from its local indexer`), 30_000);
  t.ok(Number(blocks) >= PROMPTS.length * 2, `the kv frontend recovered worker A's ${blocks} cached blocks`);

  const [b, c] = await Promise.all([startWorker(), startWorker(['--durable-kv-events'])]);
  await kv.waitFor(new RegExp(`worker ${b.instanceId}: recovered 0 cached blocks`), 30_000);

  const discovery = await Discovery.open({ backend: 'etcd', endpoints: [`http://${etcd.endpoint}`] });
  t.teardown(() => discovery.close());
  const queryable = (await discovery.listInstances('dynamo', 'backend', 'worker_kv_indexer_query_dp0')).map((r) => r.instance_id.toString(16));
  t.same(queryable.sort(), [a.instanceId, b.instanceId].sort(), 'A and B serve the query endpoint, C (--durable-kv-events) does not');
  for (;;) {
    const generate = await discovery.listInstances('dynamo', 'backend', 'generate');
    if (generate.length === 3) break;
    await new Promise((r) => setTimeout(r, 50));
  }

  for (const prompt of PROMPTS) {
    const usage = await complete(kvUrl, prompt);
    const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
    t.ok(cached >= 32, `the repeat went to worker A and found ${cached} of ${usage.prompt_tokens} prompt tokens cached`);
  }
  t.notMatch(kv.stderr() + kv.stdout(), /did not answer/, 'no worker failed its query');
  t.notMatch(kv.stderr() + kv.stdout(), new RegExp(`worker ${c.instanceId}: recovered`), 'C, without the local indexer, is not asked');
});
