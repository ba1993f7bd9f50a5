// `dynamo-sglang run` serves this machine only unless told otherwise: every socket it listens on (OpenAI HTTP,
// the worker's request plane, the response server) is bound to 127.0.0.1. With API keys, requests without one get
// a 401 in OpenAI's error shape; keys come from --api-key (several) and --api-key-file.
import t from 'tap';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCli } from './helpers/cli-process.js';

/** host:port of every TCP socket the process listens on (Linux /proc). */
function listening(pid: number): string[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1] as string);
    } catch {
      // closed meanwhile
    }
  }
  const out: string[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9] as string)) continue; // 0A = LISTEN
      const [hex, port] = (f[1] as string).split(':') as [string, string];
      const host = hex.length === 8 ? hex.match(/../g)!.reverse().map((b) => parseInt(b, 16)).join('.') : `[${hex}]`;
      out.push(`${host}:${parseInt(port, 16)}`);
    }
  }
  return out;
}

t.test('run binds loopback by default and takes API keys', { skip: process.platform !== 'linux' && 'reads /proc' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'run-bind-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const keyFile = join(dir, 'keys');
  writeFileSync(keyFile, '# team keys\nkey-from-file\n\n');
  const p = startCli(['run', '--http-port', '0', '--device', 'cpu', '--api-key', 'key-one,key-two', '--api-key-file', keyFile], { DYN_HTTP_HOST: '', DYN_TCP_RPC_HOST: '', DYN_SYSTEM_HOST: '' });
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/);
  t.match(url, /^http:\/\/127\.0\.0\.1:/);

  const sockets = listening(p.child.pid!);
  t.ok(sockets.length >= 3, `HTTP, request plane and response server listen: ${sockets.join(' ')}`);
  t.same(sockets.filter((s) => !s.startsWith('127.0.0.1:')), [], 'all on 127.0.0.1');

  const models = (key?: string) => fetch(`${url}/v1/models`, key === undefined ? {} : { headers: { authorization: `Bearer ${key}` } });
  const none = await models();
  t.equal(none.status, 401);
  t.same(await none.json(), { error: { message: "You didn't provide an API key. Provide it in the Authorization header (Authorization: Bearer YOUR_KEY).", type: 'invalid_request_error', param: null, code: null } });
  const wrong = await models('key-three');
  t.equal(wrong.status, 401);
  t.match(await wrong.json(), { error: { type: 'invalid_request_error', code: 'invalid_api_key' } });
  for (const key of ['key-one', 'key-two', 'key-from-file']) t.equal((await models(key)).status, 200, `${key} is accepted`);
  t.equal((await fetch(`${url}/health`)).status, 200, 'health needs no key');
  const completion = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stories260K', prompt: 'Hi', max_tokens: 2 }) });
  t.equal(completion.status, 401, 'completions need a key');

  p.kill('SIGTERM');
  t.equal((await p.exited).code, 0);
});
