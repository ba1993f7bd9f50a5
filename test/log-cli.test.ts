// Logging as a user sets it: DYN_LOG's per-target syntax through a real `start` (records from the main thread and
// from the rank actor threads, as JSON lines under DYN_LOGGING_JSONL=1), --log-level on a command that has no worker
// flags, levels filtering, a bad level refused naming the setting, and Supervisor.start's logger option.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { Supervisor } from '../src/supervisor.js';
import type { Logger, LogFields } from '../src/runtime/log.js';
import { startCli } from './helpers/cli-process.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

function records(stderr: string): Record<string, unknown>[] {
  return stderr.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>);
}

t.test('DYN_LOG=info,dynamo_runtime=trace starts a worker; every record is a JSON line; actor threads follow', async (t) => {
  const p = startCli(['start', '--model-path', MODEL, '--device', 'cpu', '--discovery-backend', 'mem', '--system-port', '-1'], {
    DYN_LOG: 'info,dynamo_runtime=trace,worker.rank=debug',
    DYN_LOGGING_JSONL: '1',
  });
  t.teardown(() => p.kill('SIGKILL'));
  await p.waitFor(/serving dynamo\.backend\.generate/, 90_000);
  p.kill('SIGTERM');
  const exit = await p.exited;
  t.equal(exit.code, 0, `exit code (stderr: ${p.stderr()})`);
  const recs = records(p.stderr());
  t.ok(recs.length > 2);
  for (const r of recs) t.match(r, { time: /^\d{4}-\d\d-\d\dT/, level: /^(TRACE|DEBUG|INFO|WARN|ERROR)$/, target: String, message: String });
  t.ok(recs.some((r) => r['target'] === 'worker' && /^serving /.test(String(r['message']))), 'the worker logs its endpoint');
  t.ok(recs.some((r) => r['target'] === 'worker.rank' && r['message'] === 'engine opened' && r['level'] === 'DEBUG'), 'a rank thread logs at the level DYN_LOG gives its target');
  t.notOk(recs.some((r) => r['level'] === 'DEBUG' && !String(r['target']).startsWith('worker.rank') && !String(r['target']).startsWith('runtime')), 'other targets stay at info');
});

t.test('--log-level filters by level, on start and on a command without worker flags', async (t) => {
  // start: a flag it accepts and does not use logs a warning; the missing model ends it
  const warn = startCli(['start', '--model-path', '/no/such/model', '--trust-remote-code', '--log-level', 'warn'], { DYN_LOGGING_JSONL: '1' });
  await warn.exited;
  t.ok(records(warn.stderr().split('\n').filter((l) => l.startsWith('{')).join('\n')).some((r) => r['level'] === 'WARN' && /accepted and not used/.test(String(r['message']))));
  const error = startCli(['start', '--model-path', '/no/such/model', '--trust-remote-code', '--log-level=error']);
  await error.exited;
  t.notMatch(error.stderr(), /accepted and not used/, 'a warning is below --log-level error');

  const generate = startCli(['generate', '--model-path', MODEL, '--prompt', 'Once upon a time', '--max-tokens', '2', '--log-level', 'debug']);
  const exit = await generate.exited;
  t.equal(exit.code, 0, `generate takes --log-level (stderr: ${generate.stderr()})`);
});

t.test('a bad level is a usage error naming the setting', async (t) => {
  const flag = startCli(['generate', '--model-path', MODEL, '--prompt', 'x', '--log-level', 'loud']);
  t.equal((await flag.exited).code, 2);
  t.match(flag.stderr(), /--log-level: "loud" has level "loud"/);
  const env = startCli(['start', '--model-path', MODEL, '--dump-config-to', '-'], { DYN_LOG: 'info,worker=chatty' });
  t.equal((await env.exited).code, 2);
  t.match(env.stderr(), /DYN_LOG: "worker=chatty" has level "chatty"/);
});

t.test('Supervisor.start logs to the logger or destination it is given', async (t) => {
  const lines: string[] = [];
  const sup = await Supervisor.start({ modelPath: MODEL, device: 'cpu', numPages: 64 }, { logger: { write: (line: string) => lines.push(line) } });
  await sup.stop();
  t.match(lines.join(''), /INFO worker\.supervisor: group started .*ranks=1/);

  const seen: { level: string; message: string; fields?: LogFields }[] = [];
  const collect = (level: string) => (message: string, fields?: LogFields) => void seen.push({ level, message, fields });
  const own: Logger = {
    target: 'mine', trace: collect('trace'), debug: collect('debug'), info: collect('info'), warn: collect('warn'), error: collect('error'),
    isEnabled: () => true, child: () => own,
  };
  const sup2 = await Supervisor.start({ modelPath: MODEL, device: 'cpu', numPages: 64 }, { logger: own });
  await sup2.stop();
  t.match(seen.find((r) => r.message === 'group started'), { level: 'info', fields: { ranks: 1 } });
});

t.test('frontend --help lists --log-level', async (t) => {
  const p = startCli(['frontend', '--help']);
  const { code } = await p.exited;
  t.equal(code, 0);
  t.match(p.stdout(), /Logging:\n  --log-level SPEC\n/);
});
