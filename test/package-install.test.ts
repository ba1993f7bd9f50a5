// The packed package as a user gets it: `npm pack` ships the native sources but no build directory, and a LICENSE;
// the tarball installs into a fresh project (its install script builds the addon), its bin answers a completion with
// `dynamo-sglang run`, and its programmatic API starts from a host run with `node --input-type=module` (actor threads
// must not inherit that flag). A second install-script run with unchanged sources does not rebuild; a changed source
// rebuilds with progress lines. The tokenizer is importable as `dynamo-sglang/tokenizer`.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const exec = promisify(execFile);
const repo = fileURLToPath(new URL('..', import.meta.url));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
// CPU only keeps the build short where a CUDA toolkit is installed
const buildEnv = { ...process.env, DYNAMO_SGLANG_CPU_ONLY: '1' };

t.setTimeout(290_000);

t.test('a packed tarball installs and runs in a fresh project', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { stdout: packed } = await exec(npm, ['pack', '--pack-destination', dir, '--silent'], { cwd: repo, maxBuffer: 1 << 24 });
  const tarball = join(dir, packed.trim().split('\n').at(-1)!);
  const { stdout: listing } = await exec('tar', ['-tzf', tarball]);
  const files = listing.split('\n').filter(Boolean);
  t.ok(files.includes('package/LICENSE'), 'ships LICENSE');
  t.ok(files.includes('package/native/CMakeLists.txt') && files.includes('package/native/src/addon.cpp'), 'ships the native sources');
  t.same(files.filter((f) => f.startsWith('package/native/build')), [], 'ships no native build directory');
  t.ok(files.includes('package/dist/src/index.js'), 'ships the compiled JavaScript');

  const project = join(dir, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'fresh-project', version: '1.0.0', private: true }));
  const pkgDir = join(project, 'node_modules', 'dynamo-sglang');
  const install = await exec(npm, ['install', '--offline', '--no-audit', '--no-fund', '--foreground-scripts', tarball], { cwd: project, env: buildEnv, maxBuffer: 1 << 24 })
    .then((r) => ({ ok: true as const, out: r.stdout + r.stderr }))
    .catch((e: { stdout?: string; stderr?: string }) => ({ ok: false as const, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }));
  if (install.ok) {
    t.match(install.out, /dynamo-sglang: native addon built/, 'the install script built the addon');
  } else {
    // The npm cache of this machine lacks the dependencies (installed elsewhere), and there is no network: lay the
    // project out as npm would (the package unpacked, its dependencies beside it, the bin linked) and run the
    // package's install script the way npm does. Anything else is a failed install.
    t.match(install.out, /ENOTCACHED/, `npm install failed for another reason than an empty offline cache:\n${install.out}`);
    t.comment('offline npm install impossible (dependencies not in the npm cache): unpacking the tarball instead');
    mkdirSync(pkgDir, { recursive: true });
    await exec('tar', ['-xzf', tarball, '-C', pkgDir, '--strip-components=1']);
    for (const name of readdirSync(join(repo, 'node_modules'))) {
      if (name === 'dynamo-sglang' || name.startsWith('.')) continue;
      symlinkSync(join(repo, 'node_modules', name), join(project, 'node_modules', name));
    }
    mkdirSync(join(project, 'node_modules', '.bin'));
    symlinkSync(join(pkgDir, 'bin', 'dynamo-sglang.js'), join(project, 'node_modules', '.bin', 'dynamo-sglang'));
    const { stdout } = await exec(process.execPath, ['scripts/build-native.mjs'], { cwd: pkgDir, env: buildEnv });
    t.match(stdout, /dynamo-sglang: building the native addon/);
    t.match(stdout, /dynamo-sglang: native addon built/);
  }
  const addon = join(pkgDir, 'native', 'build', 'Release', 'dynamo_sglang.node');
  t.ok(existsSync(addon), 'the addon was built from the shipped sources');

  // the bin answers a completion
  const server = spawn(join(project, 'node_modules', '.bin', 'dynamo-sglang'), ['run', '--http-port', '0', '--device', 'cpu'], { cwd: project, stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer) => {
      output += d.toString();
      const m = /serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/.exec(output);
      if (m) resolve(m[1]);
    };
    server.stdout.on('data', onData);
    server.stderr.on('data', onData);
    server.on('exit', () => reject(new Error(`run exited before serving:\n${output}`)));
  });
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }),
  });
  t.equal(r.status, 200);
  const body = (await r.json()) as { choices: { text: string }[]; usage: { completion_tokens: number } };
  t.equal(body.usage.completion_tokens, 8);
  t.ok(body.choices[0].text.startsWith(', there was'), `completion text: ${body.choices[0].text}`);
  server.kill('SIGTERM');
  await new Promise((resolve) => server.once('exit', resolve));

  // the programmatic API from a host started with --input-type=module
  const script = `
    import { Supervisor } from 'dynamo-sglang';
    import { loadTokenizer } from 'dynamo-sglang/tokenizer';
    const model = 'node_modules/dynamo-sglang/models/stories260K.gguf';
    const sup = await Supervisor.start({ modelPath: model, device: 'cpu', numPages: 64 });
    let tokens = 0;
    for await (const c of sup.generate({ token_ids: [1, 403, 407, 261, 378], stop_conditions: { max_tokens: 4 }, sampling_options: { temperature: 0 }, eos_token_ids: [2] })) tokens += c.token_ids.length;
    let text = '';
    for await (const c of sup.generateText({ prompt: 'Once upon a time', max_tokens: 4, temperature: 0 })) text += c.text;
    await sup.stop();
    console.log('generated', tokens, 'text', JSON.stringify(text), 'ids', loadTokenizer(model).encode('Once upon a time').join(','));`;
  const api = await exec(process.execPath, ['--input-type=module', '-e', script], { cwd: project, timeout: 60_000 });
  t.match(api.stdout, /generated 4 /, 'Supervisor works under --input-type=module');
  t.match(api.stdout, /text ", there was/, 'text in and out through the installed package');
  t.match(api.stdout, /ids 1,403,407,261,378/, 'the tokenizer is exported as dynamo-sglang/tokenizer');

  // the install script again: sources unchanged, no rebuild; one source changed, a rebuild with progress lines
  const mtime = statSync(addon).mtimeMs;
  const again = await exec(process.execPath, ['scripts/build-native.mjs'], { cwd: pkgDir, env: buildEnv });
  t.match(again.stdout, /native addon up to date \(sources unchanged\)/);
  t.equal(statSync(addon).mtimeMs, mtime, 'the addon was not rebuilt');
  appendFileSync(join(pkgDir, 'native', 'src', 'step_check.cpp'), '\n// changed\n');
  const rebuilt = await exec(process.execPath, ['scripts/build-native.mjs'], { cwd: pkgDir, env: buildEnv });
  t.match(rebuilt.stdout, /dynamo-sglang: building the native addon/);
  t.match(rebuilt.stdout, /dynamo-sglang: native build \d+% /, 'progress lines while it builds');
  t.match(rebuilt.stdout, /native addon built/);
});
