// Progress of long work: make-model reports the bytes of each weight file written (log records when stderr is not a
// terminal, the last one with everything written), a model load the bytes of its weight files read; on a terminal
// the report is one line redrawn in place.
import t from 'tap';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProgressReport } from '../src/runtime/progress.js';
import { logger } from '../src/runtime/log.js';
import { fileURLToPath } from 'node:url';
import { Supervisor } from '../src/supervisor.js';
import { startCli } from './helpers/cli-process.js';

const QWEN3 = fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url));

t.test('make-model logs the bytes written of each weight file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'make-model-progress-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const p = startCli(['make-model', '--shape', 'qwen3-tiny', '--seed', '3', '--out', dir, '--gguf'], { DYN_LOGGING_JSONL: '1' });
  const exit = await p.exited;
  t.equal(exit.code, 0, p.stderr());
  const records = p.stderr().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  for (const file of ['model.safetensors', 'model-f16.gguf']) {
    const mine = records.filter((r) => r['target'] === 'make-model' && String(r['message']).startsWith(`writing ${file}`));
    t.ok(mine.length >= 1, `${file}: progress records`);
    const last = mine.at(-1)!;
    t.equal(last['message'], `writing ${file}: done`);
    t.equal(last['done'], last['total'], 'all of it written');
    t.ok((last['total'] as number) > 0.9 * statSync(join(dir, file)).size, 'the total is the tensor data of the file');
  }
});

t.test('on a terminal: one line redrawn, ended with a newline', async (t) => {
  let out = '';
  const report = new ProgressReport({ label: 'loading weights', total: 4 * 1024 * 1024, unit: 'bytes', log: logger('test'), terminal: { isTTY: true, write: (s: string) => (out += s) } });
  report.update(1024 * 1024);
  report.update(4 * 1024 * 1024); // within 100 ms of the last draw: not drawn
  report.end();
  const draws = out.split('\r').filter(Boolean);
  t.equal(draws.length, 2);
  t.match(draws[0], /loading weights: 1\.00 MiB of 4\.00 MiB \(25%/);
  t.match(draws[1], /loading weights: 4\.00 MiB of 4\.00 MiB \(100%.*\n$/);
  t.notMatch(draws[0], /\n/, 'the live line stays on its line');
});

t.test('a model load reports the bytes of its weight files', { skip: process.platform !== 'linux' && 'reads /proc/self/status' }, async (t) => {
  const lines: string[] = [];
  process.env['DYN_LOGGING_JSONL'] = '1';
  const sup = await Supervisor.start({ modelPath: QWEN3, device: 'cpu', numPages: 64 }, { logger: { write: (l: string) => lines.push(l) } });
  delete process.env['DYN_LOGGING_JSONL'];
  await sup.stop();
  const records = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const done = records.find((r) => r['message'] === `loading weights of ${QWEN3}: done`);
  t.ok(done, 'a final load record');
  t.equal(done?.['total'], statSync(join(QWEN3, 'model.safetensors')).size, 'the weight files\' size');
  t.equal(done?.['done'], done?.['total']);
  t.ok(records.findIndex((r) => r === done) < records.findIndex((r) => r['message'] === 'group started'), 'before the group is reported started');
});
