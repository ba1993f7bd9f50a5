// SIGTERM ends `run`, and a distributed `frontend` and `start`, within its drain timeout even while hostile requests are being handled (a ~100 KB request of
// 20,000 prompts with n = 16, 64,000 choices, 5 MB prompts), and health is answered while they run. A real process.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { frontendReady, startCli } from './helpers/cli-process.js';
import { startEtcd } from './helpers/services.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

function hostileBodies(): string[] {
  const many = JSON.stringify({ model: 'stories260K', prompt: Array.from({ length: 20_000 }, () => 'a'), n: 16, max_tokens: 1 });
  const choices = JSON.stringify({ model: 'stories260K', prompt: Array.from({ length: 4_000 }, () => 'b'), n: 16, max_tokens: 1 });
  const huge = JSON.stringify({ model: 'stories260K', prompt: 'once upon a time '.repeat(300_000), max_tokens: 1 });
  return [many, choices, huge, huge, huge, huge];
}

t.test('SIGTERM ends run while the hostile set is in flight; health answers meanwhile', async (t) => {
  const p = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--device', 'cpu', '--graceful-shutdown-grace-period', '2']);
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/, 60_000);

  const hostile = hostileBodies().map((body) =>
    fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then(
      (r) => r.status,
      () => 'connection closed',
    ),
  );
  // health while the hostile set runs: answered, not starved
  const health = await fetch(`${url}/health`);
  t.equal(health.status, 200, 'health answered while the hostile set ran');
  const statuses = await Promise.all(hostile);
  for (const s of statuses) t.not(s, 200, `a hostile request is refused (${String(s)})`);
  t.ok(statuses.every((s) => s === 'connection closed' || (typeof s === 'number' && s >= 400 && s < 500)), `refusals are client errors: ${statuses.join(', ')}`);

  // again, with SIGTERM arriving while they are being handled
  const inFlight = hostileBodies().map((body) =>
    fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).catch(() => null),
  );
  await new Promise((r) => setTimeout(r, 50));
  p.kill('SIGTERM');
  const exit = await p.exited; // bounded by the test's timeout and the process's own drain bound
  await Promise.all(inFlight);
  t.equal(exit.code, 0, `a clean exit (stderr: ${p.stderr().slice(-2000)})`);
});

t.test('SIGTERM ends a distributed frontend and worker while the hostile set is in flight', async (t) => {
  const etcd = await startEtcd();
  t.teardown(() => etcd.stop());
  const discovery = ['--discovery-backend', 'etcd', '--etcd-endpoints', `http://${etcd.endpoint}`, '--namespace', 'hostile'];
  const worker = startCli(['start', '--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1', ...discovery,
    '--request-plane', 'tcp', '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1', '--graceful-shutdown-grace-period', '2']);
  t.teardown(() => worker.kill('SIGKILL'));
  const frontend = startCli(['frontend', '--http-port', '0', '--http-host', '127.0.0.1', ...discovery]);
  t.teardown(() => frontend.kill('SIGKILL'));
  const url = await frontendReady(frontend, 'stories260K');

  const inFlight = hostileBodies().map((body) =>
    fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).catch(() => null),
  );
  t.equal((await fetch(`${url}/health`)).status, 200, 'health answered while the hostile set ran');
  frontend.kill('SIGTERM');
  worker.kill('SIGTERM');
  const [fe, w] = await Promise.all([frontend.exited, worker.exited]);
  await Promise.all(inFlight);
  t.equal(fe.code, 0, `the frontend exits cleanly (stderr: ${frontend.stderr().slice(-2000)})`);
  t.equal(w.code, 0, `the worker exits cleanly (stderr: ${worker.stderr().slice(-2000)})`);
});
