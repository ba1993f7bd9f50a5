// config/data-parallel.yaml end to end: `dynamo-sglang start --config config/data-parallel.yaml` (two data-parallel
// groups in one worker process, on the CPU with the bundled stories260K) behind a KV-routing `frontend`, with real
// etcd and nats-server. Requests sent together through the frontend land in both groups (their KV events carry
// dp_rank 0 and 1); a repeated prompt goes to the (worker, dp_rank) pair that cached it, so its prefix is served from
// that group's cache. DYN_SGL_STREAM_DELAY_MS keeps the first requests streaming while the next ones are routed.
// Once per Dynamo wire profile, chosen by `--dynamo-wire` on the worker and on the frontend alike.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from 'nats';
import { frontendReady, startCli, type CliProcess } from './helpers/cli-process.js';
import { startEtcd, startNats, type EtcdService, type NatsService } from './helpers/services.js';
import { subscribeKvEvents } from '../src/runtime/events/index.js';
import type { RouterEvent } from '../src/protocol/events.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

let etcd: EtcdService;
let nats: NatsService;

t.before(async () => {
  [etcd, nats] = await Promise.all([startEtcd(), startNats()]);
});

t.teardown(async () => {
  await nats?.stop();
  await etcd?.stop();
});

interface Completion {
  choices: { text: string }[];
  usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } | null };
}

for (const profile of ['0.8', 'main'] as const) {
  t.test(`${profile} wire: both dp ranks serve, and a repeated prompt is served from the cache of the rank that has it`, async (t) => {
    const namespace = `dp${profile.replace('.', '')}`;
    const observer: NatsConnection = await connect({ servers: nats.url });
    const events: RouterEvent[] = [];
    const sub = subscribeKvEvents(observer, namespace, 'backend', undefined, profile);
    void (async () => {
      for await (const e of sub) events.push(e.event);
    })();
    await observer.flush();
    const procs: CliProcess[] = [];
    t.teardown(async () => {
      for (const p of procs) p.kill('SIGKILL');
      await Promise.all(procs.map((p) => p.exited));
      await observer.close();
    });
    const wire = ['--dynamo-wire', profile, '--namespace', namespace, '--etcd-endpoints', `http://${etcd.endpoint}`, '--nats-server', nats.url];
    const worker = startCli([
      'start', '--config', 'config/data-parallel.yaml', '--model-path', MODEL, '--cpu-threads', '1', ...wire,
      '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1',
    ], { DYN_SGL_STREAM_DELAY_MS: '100' });
    procs.push(worker);
    await worker.waitFor(new RegExp(`serving ${namespace}\\.backend\\.generate as instance ([0-9a-f]+)`), 90_000);
    const proc = startCli(['frontend', '--http-port', '0', '--http-host', '127.0.0.1', '--discovery-backend', 'etcd', ...wire, '--router-mode', 'kv']);
    procs.push(proc);
    const frontend = await frontendReady(proc, 'stories260K');

    const complete = async (prompt: string): Promise<Completion> => {
      const res = await fetch(`${frontend}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt, max_tokens: 2, temperature: 0 }),
      });
      if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
      return (await res.json()) as Completion;
    };

    const story =
      'the little dog ran to the park with his friend the cat. They played with a big red ball all day long. ' +
      'When the sun went down, they went home and ate a big dinner. Then they went to sleep in a warm bed.';
    // distinct first words: no two prompts share a first KV block, so only the rank that served a prompt has it
    const prompts = ['One day', 'Tom said', 'Sue had', 'Max saw'].map((opener) => `${opener} ${story}`);
    const first = await Promise.all(prompts.map(complete));
    first.forEach((c, i) => t.notOk(c.usage.prompt_tokens_details?.cached_tokens, `prompt ${i}: nothing cached at first`));
    const storedBy = (d: number) => events.some((e) => e.event.dp_rank === d && typeof e.event.data === 'object' && 'stored' in e.event.data);
    for (let waited = 0; waited < 5000 && !(storedBy(0) && storedBy(1)); waited += 50) await new Promise((r) => setTimeout(r, 50));
    t.ok(storedBy(0) && storedBy(1), 'KV events from both dp ranks');
    // the stored events travel worker → NATS → router
    await new Promise((r) => setTimeout(r, 500));
    for (const [i, prompt] of prompts.entries()) {
      const again = await complete(prompt);
      const cached = again.usage.prompt_tokens_details?.cached_tokens ?? 0;
      t.ok(cached >= 48, `prompt ${i}: the repeat found ${cached} of ${again.usage.prompt_tokens} prompt tokens cached`);
    }
  });
}
