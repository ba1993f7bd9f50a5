// The product end to end as it is deployed: real etcd and nats-server, `dynamo-sglang start` workers serving the
// bundled stories260K over the TCP request plane and publishing KV events and load on NATS, and `frontend`
// processes in front of them. One set of processes serves every subtest, in order:
//   chat streaming and the golden text → KV-aware routing (cached_tokens) → SIGKILL mid-stream with migration →
//   SIGKILL mid-stream without migration (clear error) → SIGTERM drain (request finishes, exit 0, instance gone).
// DYN_SGL_STREAM_DELAY_MS paces the workers' streams (10 ms a token) so a stream is still running when a worker is
// stopped; stories260K alone would finish a 200-token answer before the signal lands.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { frontendReady, startCli, type CliProcess } from './helpers/cli-process.js';
import { freePort, startEtcd, startNats, type EtcdService, type NatsService } from './helpers/services.js';
import { Discovery } from '../src/runtime/discovery/index.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const GOLDEN =
  ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it,';
const STREAM_DELAY_MS = 10;

interface Worker {
  proc: CliProcess;
  instanceId: string;
  systemUrl: string;
}

let etcd: EtcdService;
let nats: NatsService;
const procs: CliProcess[] = [];

function workerArgs(): string[] {
  return [
    'start', '--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1',
    '--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcd.endpoint}`, '--nats-server', nats.url,
    '--request-plane', 'tcp', '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1',
    '--graceful-shutdown-grace-period', '5',
  ];
}

async function startWorker(): Promise<Worker> {
  const proc = startCli(workerArgs(), { DYN_SGL_STREAM_DELAY_MS: String(STREAM_DELAY_MS) });
  procs.push(proc);
  const [, systemUrl] = await proc.waitFor(/system server on (http:\/\/[0-9.:]+)\//, 90_000);
  const [, instanceId] = await proc.waitFor(/serving dynamo\.backend\.generate as instance ([0-9a-f]+)/, 90_000);
  return { proc, instanceId, systemUrl };
}

async function startFrontend(extra: string[]): Promise<string> {
  const proc = startCli([
    'frontend', '--http-port', '0', '--http-host', '127.0.0.1', '--discovery-backend', 'etcd',
    '--etcd-endpoints', `http://${etcd.endpoint}`, '--nats-server', nats.url, ...extra,
  ]);
  procs.push(proc);
  return frontendReady(proc, 'stories260K');
}

/** Requests being served by the worker now (its dynamo_component_inflight_requests gauge). */
async function inflight(w: Worker): Promise<number> {
  const text = await (await fetch(`${w.systemUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('dynamo_component_inflight_requests{'));
  return line ? Number(line.split(' ').at(-1)) : 0;
}

function post(url: string, path: string, body: unknown): Promise<Response> {
  return fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
}

/** Reads an SSE response event by event; `onEvent` sees each parsed `data:` payload as it arrives. */
async function readSse(res: Response, onEvent: (data: unknown, index: number) => void | Promise<void>): Promise<unknown[]> {
  const events: unknown[] = [];
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut: number;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith('data: ')) continue;
      const payload = event.slice(6);
      const data: unknown = payload === '[DONE]' ? '[DONE]' : JSON.parse(payload);
      events.push(data);
      await onEvent(data, events.length - 1);
    }
  }
  return events;
}

interface CompletionChunk {
  choices: { text: string; finish_reason: string | null }[];
  usage?: { completion_tokens: number } | null;
  error?: { message: string };
}

let workers: Worker[];
let kvFrontend: string;
let plainFrontend: string;

t.before(async () => {
  [etcd, nats] = await Promise.all([startEtcd(), startNats()]);
  workers = await Promise.all([startWorker(), startWorker()]);
  [kvFrontend, plainFrontend] = await Promise.all([
    startFrontend(['--router-mode', 'kv', '--migration-limit', '3']),
    startFrontend(['--router-mode', 'round-robin', '--migration-limit', '0']),
  ]);
});

t.teardown(async () => {
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.exited));
  await nats?.stop();
  await etcd?.stop();
});

t.test('a streamed chat completion and the golden text through two workers', async (t) => {
  const s = await post(kvFrontend, '/v1/chat/completions', {
    model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0, stream: true,
  });
  t.equal(s.status, 200);
  const events = await readSse(s, () => undefined);
  t.equal(events.at(-1), '[DONE]');
  const chunks = events.slice(0, -1) as { choices: { delta?: { content?: string }; finish_reason: string | null }[] }[];
  const content = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  t.ok(content.length > 10, `streamed content: ${content}`);
  t.equal(chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean).at(-1), 'length');

  for (const url of [kvFrontend, plainFrontend]) {
    const r = await post(url, '/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 64, temperature: 0 });
    t.equal(r.status, 200);
    const body = (await r.json()) as { choices: { text: string; finish_reason: string }[]; usage: { completion_tokens: number } };
    t.ok(body.choices[0].text.startsWith(GOLDEN), `golden text, got: ${body.choices[0].text}`);
    t.equal(body.usage.completion_tokens, 64);
    t.equal(body.choices[0].finish_reason, 'length');
  }
});

t.test('etcd restarted mid-run: the workers stay registered and keep serving', async (t) => {
  await etcd.restart();
  const discovery = await Discovery.open({ backend: 'etcd', endpoints: [`http://${etcd.endpoint}`] });
  t.teardown(() => discovery.close());
  let listed = 0;
  for (const deadline = Date.now() + 15_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 200))) {
    listed = (await discovery.listInstances('dynamo', 'backend', 'generate').catch(() => [])).length;
    if (listed === 2) break;
  }
  t.equal(listed, 2, 'both workers are in etcd after its restart');
  for (const url of [kvFrontend, plainFrontend]) {
    const r = await post(url, '/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 64, temperature: 0 });
    t.equal(r.status, 200);
    const body = (await r.json()) as { choices: { text: string }[] };
    t.ok(body.choices[0].text.startsWith(GOLDEN), `golden text after the restart, got: ${body.choices[0].text}`);
  }
});

t.test('KV-aware routing sends a repeated long prompt to the worker that cached it', async (t) => {
  const story =
    'the little dog ran to the park with his friend the cat. They played with a big red ball all day long. ' +
    'When the sun went down, they went home and ate a big dinner. Then they went to sleep in a warm bed.';
  // distinct first words: no two prompts share a first KV block, so only the worker that served a prompt has it
  const openers = ['One day', 'Tom said', 'Sue had', 'Max saw', 'Ben and'];
  for (const opener of openers) {
    const prompt = `${opener} ${story}`;
    const first = (await (await post(kvFrontend, '/v1/completions', { model: 'stories260K', prompt, max_tokens: 1, temperature: 0 })).json()) as {
      usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } | null };
    };
    t.notOk(first.usage.prompt_tokens_details?.cached_tokens, `"${opener}": nothing cached at first`);
    t.ok(first.usage.prompt_tokens > 48, `a long prompt (${first.usage.prompt_tokens} tokens)`);
    // the stored event travels worker → NATS → router
    await new Promise((r) => setTimeout(r, 500));
    const again = (await (await post(kvFrontend, '/v1/completions', { model: 'stories260K', prompt, max_tokens: 1, temperature: 0 })).json()) as {
      usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens: number } | null };
    };
    const cached = again.usage.prompt_tokens_details?.cached_tokens ?? 0;
    t.ok(cached >= 48, `"${opener}": the repeat found ${cached} of ${again.usage.prompt_tokens} prompt tokens cached`);
  }
});

t.test('a worker SIGKILLed mid-stream: the request migrates and completes (--migration-limit 3)', async (t) => {
  const res = await post(kvFrontend, '/v1/completions', {
    model: 'stories260K', prompt: 'Once upon a time', max_tokens: 200, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  t.equal(res.status, 200);
  let killed: Worker | undefined;
  const events = await readSse(res, async (_data, i) => {
    if (i !== 20 || killed) return;
    const loads = await Promise.all(workers.map(inflight));
    killed = workers[loads.findIndex((n) => n > 0)];
    killed?.proc.kill('SIGKILL');
  });
  t.ok(killed, 'one worker was serving the stream and was killed');
  const chunks = events.filter((e): e is CompletionChunk => e !== '[DONE]');
  t.notOk(chunks.some((c) => c.error), 'no error reached the client');
  const text = chunks.map((c) => c.choices[0]?.text ?? '').join('');
  t.ok(text.startsWith(GOLDEN.slice(0, 40)), `the text continues the story: ${text.slice(0, 80)}`);
  t.equal(chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean).at(-1), 'length');
  t.equal(chunks.find((c) => c.usage)?.usage?.completion_tokens, 200, 'all 200 tokens, before and after the migration');
  await killed?.proc.exited;
  workers = workers.filter((w) => w !== killed);
});

t.test('a worker SIGKILLed mid-stream without migration: a clear error (--migration-limit 0)', async (t) => {
  workers.push(await startWorker());
  // round-robin over the survivors (and the killed one, still leased in etcd: refused at connect, skipped)
  const res = await post(plainFrontend, '/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 200, temperature: 0, stream: true });
  t.equal(res.status, 200);
  let killed: Worker | undefined;
  const events = await readSse(res, async (_data, i) => {
    if (i !== 10 || killed) return;
    const loads = await Promise.all(workers.map(inflight));
    killed = workers[loads.findIndex((n) => n > 0)];
    killed?.proc.kill('SIGKILL');
  });
  t.ok(killed, 'one worker was serving the stream and was killed');
  const error = (events.find((e) => typeof e === 'object' && e !== null && 'error' in e) as CompletionChunk | undefined)?.error;
  t.ok(error, 'the stream ends with an error event');
  t.match(error?.message ?? '', /disconnect|closed|instance/i, `names what happened: ${error?.message}`);
  await killed?.proc.exited;
  workers = workers.filter((w) => w !== killed);
});

t.test('SIGTERM drains: the in-flight request finishes, the worker leaves discovery and exits 0', async (t) => {
  t.equal(workers.length, 1);
  const [w] = workers;
  const res = await post(kvFrontend, '/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 100, temperature: 0, stream: true });
  let signalled = false;
  const events = await readSse(res, (_data, i) => {
    if (i === 5 && !signalled) {
      signalled = true;
      w.proc.kill('SIGTERM');
    }
  });
  t.ok(signalled);
  const chunks = events.filter((e): e is CompletionChunk => e !== '[DONE]');
  t.notOk(chunks.some((c) => c.error), 'no error');
  t.equal(chunks.map((c) => c.choices[0]?.finish_reason).filter(Boolean).at(-1), 'length', 'finished within the grace period');
  const exit = await w.proc.exited;
  t.equal(exit.code, 0, `exit code 0 (stderr: ${w.proc.stderr().slice(-500)})`);
  const discovery = await Discovery.open({ backend: 'etcd', endpoints: [`http://${etcd.endpoint}`] });
  t.teardown(() => discovery.close());
  const left = await discovery.listInstances('dynamo', 'backend', 'generate');
  t.notOk(left.some((r) => r.instance_id.toString(16) === w.instanceId), 'the drained instance left discovery');
});

t.test('run --router-mode kv publishes and follows KV events over NATS; an unreachable NATS is named', async (t) => {
  const run = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--device', 'cpu', '--cpu-threads', '1', '--router-mode', 'kv', '--nats-server', nats.url]);
  procs.push(run);
  const [, url] = await run.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/, 90_000);
  t.match(run.stderr(), /publishing KV events and load on NATS/);
  const prompt = 'Lily and Tom went to the park to play with the big red ball. They ran and ran until the sun went down.';
  let cached = 0;
  for (let i = 0; i < 2; i++) {
    const body = (await (await post(url, '/v1/completions', { model: 'stories260K', prompt, max_tokens: 1 })).json()) as {
      usage: { prompt_tokens_details?: { cached_tokens: number } | null };
    };
    cached = body.usage.prompt_tokens_details?.cached_tokens ?? 0;
  }
  t.ok(cached > 0, `the repeat was served from cache (${cached} tokens)`);
  run.kill('SIGTERM');
  t.equal((await run.exited).code, 0);

  const dead = `nats://127.0.0.1:${await freePort()}`;
  const fe = startCli(['frontend', '--http-port', '0', '--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcd.endpoint}`, '--router-mode', 'kv', '--nats-server', dead]);
  procs.push(fe);
  const exit = await fe.exited;
  t.not(exit.code, 0);
  t.match(fe.stderr(), `cannot connect to NATS server ${dead}`);
});
