// --model-path org/name resolves from a local Hugging Face cache laid out as huggingface_hub writes it
// (models--org--name/refs/main -> snapshots/<commit>/), under HF_HUB_CACHE or HF_HOME/hub; a repo id that is not
// cached is refused at load saying what works; the repo id stays the default served model name.
import t, { type Test } from 'tap';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { resolveConfig } from '../src/config/resolve.js';
import { startCli } from './helpers/cli-process.js';

const fixture = fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url));

function fakeHubCache(t: Test): { home: string; snapshot: string } {
  const home = mkdtempSync(join(tmpdir(), 'hf-home-'));
  t.teardown(() => rmSync(home, { recursive: true, force: true }));
  const repo = join(home, 'hub', 'models--tiny-org--qwen3-tiny');
  const commit = '0123456789abcdef0123456789abcdef01234567';
  const snapshot = join(repo, 'snapshots', commit);
  mkdirSync(join(repo, 'refs'), { recursive: true });
  // an older snapshot too: refs/main, not the directory listing, picks the revision
  mkdirSync(join(repo, 'snapshots', 'ffffffffffffffffffffffffffffffffffffffff'), { recursive: true });
  cpSync(fixture, snapshot, { recursive: true });
  writeFileSync(join(repo, 'refs', 'main'), commit);
  return { home, snapshot };
}

t.test('a cached repo id resolves to its snapshot (HF_HOME and HF_HUB_CACHE)', async (t) => {
  const { home, snapshot } = fakeHubCache(t);
  const viaHome = resolveConfig(['--model-path', 'tiny-org/qwen3-tiny'], { HF_HOME: home });
  t.equal(viaHome.modelPath, snapshot);
  t.equal(viaHome.tokenizerPath, snapshot);
  t.equal(viaHome.servedModelName, 'tiny-org/qwen3-tiny');
  const viaHub = resolveConfig(['--model-path', 'tiny-org/qwen3-tiny'], { HF_HUB_CACHE: join(home, 'hub'), HF_HOME: '/nowhere' });
  t.equal(viaHub.modelPath, snapshot);
  t.equal(resolveConfig(['--model-path', 'tiny-org/qwen3-tiny', '--served-model-name', 'x'], { HF_HOME: home }).servedModelName, 'x');
});

t.test('a repo id not in the cache is refused at load, saying what works', async (t) => {
  const { home } = fakeHubCache(t);
  const config = resolveConfig(['--model-path', 'other-org/absent'], { HF_HOME: home });
  t.equal(config.modelPath, 'other-org/absent', 'stays as given (a --dump-config-to needs no model)');
  const p = startCli(['start', '--model-path', 'other-org/absent', '--discovery-backend', 'mem', '--device', 'cpu'], { HF_HOME: home });
  t.teardown(() => p.kill('SIGKILL'));
  const exit = await p.exited;
  t.not(exit.code, 0);
  t.match(p.stderr(), /--model-path other-org\/absent: no such file or directory, and not in the local Hugging Face cache .*nothing is downloaded/);
});

t.test('local paths pass through', async (t) => {
  t.equal(resolveConfig(['--model-path', fixture], {}).modelPath, fixture);
  t.equal(resolveConfig(['--model-path', 'models/m.gguf'], {}).modelPath, 'models/m.gguf', 'a .gguf path is never a repo id');
});

t.test('start serves a model from the cache by its repo id', async (t) => {
  const { home } = fakeHubCache(t);
  const p = startCli(['run', '--model-path', 'tiny-org/qwen3-tiny', '--http-port', '0', '--device', 'cpu'], { HF_HOME: home });
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "tiny-org\/qwen3-tiny" at (http:\/\/[0-9.:]+)\/v1/);
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  t.same(models.data.map((m) => m.id), ['tiny-org/qwen3-tiny']);
  p.kill('SIGTERM');
  await p.exited;
});
