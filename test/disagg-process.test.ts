// Disaggregated serving as deployed, on the CPU backend with the tcp KV transfer: real etcd and nats-server,
// `dynamo-sglang start --disaggregation-mode prefill|decode` processes (three prefill, one decode), an aggregated
// worker, and `frontend` processes. 32 concurrent greedy completions through the prefill router equal the
// aggregated ones. Then the prefill process serving a request is SIGKILLed while the decode side waits for its KV
// pages: without migration the client gets a clear error at once (not after the transfer timeout); with
// --migration-limit the request is routed again through a live prefill worker and completes with the same text.
// DYN_SGL_STREAM_DELAY_MS on the prefill workers holds their bootstrap chunk (and so their prefill) back 1.5 s, so
// the kill lands while the decode side is connected and waiting.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { frontendReady, startCli, type CliProcess } from './helpers/cli-process.js';
import { startEtcd, startNats, type EtcdService, type NatsService } from './helpers/services.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

let etcd: EtcdService;
let nats: NatsService;
const procs: CliProcess[] = [];

function discoveryArgs(): string[] {
  return ['--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcd.endpoint}`, '--nats-server', nats.url];
}

interface Worker {
  proc: CliProcess;
  systemUrl: string;
}

async function startWorker(ns: string, mode: 'aggregated' | 'prefill' | 'decode', env: NodeJS.ProcessEnv = {}): Promise<Worker> {
  const proc = startCli(
    [
      'start', '--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1', '--page-size', '4',
      '--namespace', ns, ...discoveryArgs(), '--request-plane', 'tcp', '--tcp-rpc-host', '127.0.0.1', '--kv-transfer-timeout', '60',
      '--system-port', '0', '--system-host', '127.0.0.1', ...(mode === 'aggregated' ? [] : ['--disaggregation-mode', mode]),
    ],
    env,
  );
  procs.push(proc);
  const [, systemUrl] = await proc.waitFor(/system server on (http:\/\/[0-9.:]+)\//, 90_000);
  await proc.waitFor(new RegExp(`serving ${ns}\\.${mode === 'prefill' ? 'prefill' : 'backend'}\\.generate as instance`), 90_000);
  return { proc, systemUrl };
}

/** Requests being served by the worker now (its dynamo_component_inflight_requests gauge). */
async function inflight(w: Worker): Promise<number> {
  const text = await (await fetch(`${w.systemUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('dynamo_component_inflight_requests{'));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

/** SIGKILLs the prefill worker serving a request now. */
async function killServingPrefill(): Promise<Worker> {
  for (const deadline = Date.now() + 5000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 20))) {
    const loads = await Promise.all(prefills.map(inflight));
    const i = loads.findIndex((n) => n > 0);
    if (i < 0) continue;
    const [victim] = prefills.splice(i, 1);
    // the decode side connects to the victim's bootstrap server right after the prefill request is accepted; the
    // victim holds its prefill for 1.5 s, so 300 ms from now the decode side is waiting for the pages
    await new Promise((r) => setTimeout(r, 300));
    victim.proc.kill('SIGKILL');
    await victim.proc.exited;
    return victim;
  }
  throw new Error('no prefill worker is serving a request');
}

async function startFrontend(ns: string, extra: string[] = []): Promise<string> {
  const proc = startCli(['frontend', '--http-port', '0', '--http-host', '127.0.0.1', '--namespace', ns, ...discoveryArgs(), ...extra]);
  procs.push(proc);
  return frontendReady(proc, 'stories260K');
}

interface Completion {
  choices?: { text: string; finish_reason: string }[];
  usage?: { completion_tokens: number; prompt_tokens_details?: { cached_tokens: number } | null };
  error?: { message: string };
}

async function complete(url: string, prompt: string, maxTokens: number): Promise<{ status: number; body: Completion }> {
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  return { status: r.status, body: (await r.json()) as Completion };
}

let prefills: Worker[];
let decodeWorker: Worker;
let aggUrl: string;
let disUrl: string;
let migratingUrl: string;

t.before(async () => {
  [etcd, nats] = await Promise.all([startEtcd(), startNats()]);
  const delayed = { DYN_SGL_STREAM_DELAY_MS: '1500' };
  const started = await Promise.all([
    startWorker('dis', 'prefill', delayed),
    startWorker('dis', 'prefill', delayed),
    startWorker('dis', 'prefill', delayed),
    startWorker('dis', 'decode'),
    startWorker('agg', 'aggregated'),
  ]);
  prefills = started.slice(0, 3);
  decodeWorker = started[3];
  [aggUrl, disUrl, migratingUrl] = await Promise.all([startFrontend('agg'), startFrontend('dis'), startFrontend('dis', ['--migration-limit', '3'])]);
});

t.teardown(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await nats?.stop();
  await etcd?.stop();
});

const openers = ['Once upon a time', 'The little dog', 'Lily and Ben', 'One day, a big', 'Tom had a red', 'The sun was', 'Mom said', 'A bird flew'];

t.test('32 concurrent completions: prefill + decode processes equal the aggregated worker', async (t) => {
  const prompts = Array.from({ length: 32 }, (_, i) => `${openers[i % openers.length]}${' and the cat'.repeat(i % 5)} ${i}`);
  const expected = await Promise.all(prompts.map((p) => complete(aggUrl, p, 16)));
  const got = await Promise.all(prompts.map((p) => complete(disUrl, p, 16)));
  for (let i = 0; i < prompts.length; i++) {
    t.equal(got[i].status, 200, JSON.stringify(got[i].body.error));
    t.equal(got[i].body.choices?.[0].text, expected[i].body.choices?.[0].text, `"${prompts[i]}"`);
  }
  // the decode worker took each prompt's whole KV (with its first token) from a prefill worker: one transfer each
  const transfers = () => (decodeWorker.proc.stdout() + decodeWorker.proc.stderr()).match(/kv transfer tcp room \d+: [1-9]\d* tokens/g)?.length ?? 0;
  t.equal(transfers(), 32, 'each of the 32 decode requests started from transferred KV');
});

t.test('the prefill process killed while decode waits for its pages: a clear error at once', async (t) => {
  const t0 = Date.now();
  const pending = complete(disUrl, 'Once upon a time there was a girl', 8);
  await killServingPrefill();
  const { status, body } = await pending;
  t.not(status, 200);
  t.match(body.error?.message, /prefill worker at [^ ]+ closed the connection before the KV pages of bootstrap room \d+/);
  t.ok(Date.now() - t0 < 10_000, `failed in ${Date.now() - t0} ms, not after the 60 s transfer timeout`);
});

t.test('with --migration-limit the request is routed again through a live prefill worker', async (t) => {
  const prompt = 'Lily saw a big red ball';
  const expected = await complete(aggUrl, prompt, 12);
  const pending = complete(migratingUrl, prompt, 12);
  await killServingPrefill();
  const { status, body } = await pending;
  t.equal(status, 200, JSON.stringify(body.error));
  t.equal(body.choices?.[0].text, expected.body.choices?.[0].text, 'the same greedy text');
  t.equal(prefills.length, 1, 'one prefill worker left');
});
