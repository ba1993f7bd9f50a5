// The README's programmatic-API example runs as written (the package import pointed at the sources).
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const root = fileURLToPath(new URL('..', import.meta.url));

t.test('README Supervisor example', async (t) => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Programmatic API'));
  const code = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  if (!code) throw new Error('README has no ts example under "## Programmatic API"');
  const dir = mkdtempSync(join(tmpdir(), 'readme-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'example.mts');
  writeFileSync(file, code.replace(`from 'dynamo-sglang'`, `from ${JSON.stringify(join(root, 'src/index.ts'))}`));
  const { stdout } = await promisify(execFile)(process.execPath, ['--import=tsx', file], { cwd: root, timeout: 60_000 });
  t.equal(stdout.split('\n').filter((l) => l.startsWith('[')).length, 16, 'one chunk per generated token');
  t.match(stdout, /\] length \{/);
  t.match(stdout, /completion_tokens: 16/);
});
