// Bad input from a user's side, CLI processes: a busy port makes `run`/`frontend`/`start` exit promptly naming
// the flag (instead of hanging on what was already started: the worker, the discovery lease).
import t, { type Test } from 'tap';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCli } from './helpers/cli-process.js';

const modelPath = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

async function busyPort(t: Test): Promise<number> {
  const blocker: Server = createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '0.0.0.0', resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  return (blocker.address() as { port: number }).port;
}

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'bad-input-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs the CLI and expects it to exit by itself within `withinMs`; kills it (and fails) otherwise. */
async function exitsPromptly(t: Test, args: string[], withinMs: number) {
  const proc = startCli(args);
  const timer = setTimeout(() => proc.kill('SIGKILL'), withinMs);
  const { code, signal } = await proc.exited;
  clearTimeout(timer);
  t.equal(signal, null, `exited by itself within ${withinMs} ms (stderr: ${proc.stderr()})`);
  return { code, stderr: proc.stderr() };
}

t.test('run: --http-port in use exits (the started worker is shut down) naming the flag', async (t) => {
  const port = await busyPort(t);
  const { code, stderr } = await exitsPromptly(t, ['run', '--device', 'cpu', '--http-port', String(port)], 30_000);
  t.equal(code, 2);
  t.match(stderr, new RegExp(`--http-port ${port}: cannot listen on 127\\.0\\.0\\.1:${port}: .*EADDRINUSE`));
});

t.test('frontend: --http-port in use exits (the discovery lease is released) naming the flag', async (t) => {
  const port = await busyPort(t);
  const root = tempDir(t);
  const { code, stderr } = await exitsPromptly(t, ['frontend', '--discovery-backend', 'file', '--file-kv-root', root, '--http-port', String(port)], 20_000);
  t.equal(code, 2);
  t.match(stderr, `--http-port ${port}: cannot listen`);
});

t.test('start: --system-port in use names the flag', async (t) => {
  const port = await busyPort(t);
  const root = tempDir(t);
  const args = ['start', '--model-path', modelPath, '--device', 'cpu', '--discovery-backend', 'file', '--file-kv-root', root, '--system-port', String(port)];
  const { code, stderr } = await exitsPromptly(t, args, 30_000);
  t.equal(code, 1);
  t.match(stderr, new RegExp(`--system-port ${port}: the system server cannot listen on 0\\.0\\.0\\.0:${port}: .*EADDRINUSE`));
});

t.test('make-model: an --out that cannot be a directory names the flag', async (t) => {
  const { code, stderr } = await exitsPromptly(t, ['make-model', '--shape', 'llama-tiny', '--seed', '1', '--out', join(modelPath, 'sub')], 20_000);
  t.equal(code, 2);
  t.match(stderr, `--out ${join(modelPath, 'sub')}: cannot create the output directory: ENOTDIR`);
});

t.test('start: an unreachable etcd fails fast naming the endpoint, before the model is loaded', async (t) => {
  // a port nothing listens on: taken from the OS, then released
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const free = (probe.address() as { port: number }).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const args = ['start', '--model-path', modelPath, '--device', 'cpu', '--discovery-backend', 'etcd', '--etcd-endpoints', `http://127.0.0.1:${free}`];
  const { code, stderr } = await exitsPromptly(t, args, 20_000);
  t.equal(code, 1);
  t.match(stderr, `etcd at 127.0.0.1:${free} unreachable`);
  t.notMatch(stderr, 'loading model', 'fails before the (possibly minutes long) model load');
});

t.test('run: SIGINT with a request streaming ends it with a finish reason and [DONE], then exits 0', async (t) => {
  const p = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--device', 'cpu', '--graceful-shutdown-grace-period', '0']);
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/);
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 2000, ignore_eos: true, stream: true }),
  });
  const reader = r.body!.getReader();
  let text = new TextDecoder().decode((await reader.read()).value);
  p.kill('SIGINT');
  for (;;) {
    const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
    if (done) break;
    text += new TextDecoder().decode(value);
  }
  const events = text.split('\n\n').filter(Boolean);
  t.equal(events.at(-1), 'data: [DONE]', 'the stream is ended, not cut');
  t.match(events.at(-2), /"finish_reason":"\w+"|"error":/, 'its last chunk says why it ended');
  t.equal((await p.exited).code, 0, `exit code (stderr: ${p.stderr()})`);
});

t.test('bench: Ctrl-C while a hung server has not answered the model list quits at once', async (t) => {
  const held: Socket[] = [];
  const hung = createServer((socket) => held.push(socket)); // accepts, never answers
  const connected = new Promise<void>((resolve) => hung.once('connection', () => resolve()));
  await new Promise<void>((resolve) => hung.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const s of held) s.destroy();
    return new Promise<void>((resolve) => hung.close(() => resolve()));
  });
  const port = (hung.address() as { port: number }).port;
  const p = startCli(['bench', '--url', `http://127.0.0.1:${port}`, '--num-prompts', '2']);
  t.teardown(() => p.kill('SIGKILL'));
  await connected;
  const t0 = performance.now();
  p.kill('SIGINT');
  const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
  const exit = await p.exited;
  clearTimeout(timer);
  t.equal(exit.code, 130, `exit code 130 after Ctrl-C (stderr: ${p.stderr()})`);
  t.ok(performance.now() - t0 < 5_000, 'quits within seconds, not at the 300 s request timeout');
});
