// Builds the engine addon (native/) with cmake-js: run by `npm ci` (the package's install script) and `npm run build`.
// Output: native/build/Release/dynamo_sglang.node. The full CMake/compiler log goes to native/build/build.log;
// the console gets one line on success, and a clear reason plus the log's tail on failure.
// Env: DYNAMO_SGLANG_CPU_ONLY=1 builds the CPU backend only, even where CUDA with cuBLAS is present.
// A build is skipped when the addon exists and native/build/source.sha256 matches a hash of the native sources and
// the build settings (a reinstall of an unchanged package, `npx` in a fresh clone); while it builds, the console
// gets a progress line every few compile steps and every 15 s.
import { spawnSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, mkdirSync, readFileSync, readdirSync, existsSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const nativeDir = join(root, 'native');
const buildDir = join(nativeDir, 'build');
const logPath = join(buildDir, 'build.log');
const addonPath = join(buildDir, 'Release', 'dynamo_sglang.node');

function fail(line) {
  console.error(`dynamo-sglang: native build failed: ${line}`);
  process.exit(1);
}

/** Hash of every file under native/ but the build directory, with the settings that change the build. */
function sourceHash(settings) {
  const hash = createHash('sha256');
  hash.update(JSON.stringify(settings));
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const path = join(dir, entry.name);
      if (path === buildDir) continue;
      if (entry.isDirectory()) walk(path);
      else if (entry.isFile()) hash.update(`${relative(nativeDir, path)}\0`).update(readFileSync(path)).update('\0');
    }
  };
  walk(nativeDir);
  return hash.digest('hex');
}

function hasProgram(name) {
  return spawnSync(name, ['--version'], { stdio: 'ignore' }).status === 0;
}

if (!hasProgram('cmake')) fail('cmake not found on PATH (install cmake >= 3.18, e.g. `apt-get install cmake`)');
const cxx = process.env.CXX || (hasProgram('c++') ? 'c++' : hasProgram('g++') ? 'g++' : null);
if (!cxx || !hasProgram(cxx)) fail('no C++17 compiler found (install g++ or clang, or set CXX)');

let cmakeJs;
try {
  cmakeJs = createRequire(join(root, 'package.json')).resolve('cmake-js/bin/cmake-js');
} catch {
  fail('the cmake-js package is not installed (run npm ci)');
}

const cpuOnly = process.env.DYNAMO_SGLANG_CPU_ONLY === '1' || process.env.DYNAMO_SGLANG_CPU_ONLY === 'true';
const stampPath = join(buildDir, 'source.sha256');
const stamp = sourceHash({ cpuOnly, cxx: process.env.CXX ?? '', node: process.versions.napi, platform: process.platform, arch: process.arch });
if (existsSync(addonPath) && existsSync(stampPath) && readFileSync(stampPath, 'utf8').trim() === stamp) {
  console.log(`dynamo-sglang: native addon up to date (sources unchanged) -> ${addonPath}`);
  process.exit(0);
}
mkdirSync(buildDir, { recursive: true });
const log = createWriteStream(logPath);
const started = Date.now();
const elapsed = () => `${Math.round((Date.now() - started) / 1000)} s`;
console.log(`dynamo-sglang: building the native addon (${cpuOnly ? 'CPU only' : 'CPU, and CUDA where found'}); log in ${logPath}`);

/** Progress from the build tool's step lines, ninja's `[3/11] Building CXX object ...` (one console line each: a CUDA
 * file takes a while) or make's `[ 42%] Building ...` (one line per new tenth). */
function progressWatcher() {
  let shownTenth = -1;
  let pending = '';
  return (chunk) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) {
      const m = /^\[\s*(?:(\d+)\/(\d+)|(\d+)%)\]\s+(Building|Linking)\s.*?(\S+)$/.exec(line.trim());
      if (!m) continue;
      const percent = m[3] !== undefined ? Number(m[3]) : Math.round((100 * Number(m[1])) / Number(m[2]));
      if (m[3] !== undefined) {
        if (Math.floor(percent / 10) <= shownTenth) continue;
        shownTenth = Math.floor(percent / 10);
      }
      const step = m[1] !== undefined ? ` step ${m[1]}/${m[2]}` : '';
      console.log(`dynamo-sglang: native build ${percent}%${step} (${elapsed()}): ${m[4].toLowerCase()} ${m[5].split('/').at(-1)}`);
    }
  };
}

function runCmakeJs(command, extra) {
  const args = [cmakeJs, command, '-d', nativeDir, '-O', buildDir, '-p', '2', '-l', 'warn', ...extra];
  log.write(`$ node ${args.join(' ')}\n`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    const watch = progressWatcher();
    const heartbeat = setInterval(() => console.log(`dynamo-sglang: native build still running (${command}, ${elapsed()})`), 15_000);
    child.on('close', () => clearInterval(heartbeat));
    child.stdout.on('data', watch);
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    child.on('error', (e) => {
      clearInterval(heartbeat);
      log.write(String(e) + '\n');
      resolve(1);
    });
    child.on('close', (code) => resolve(code ?? 1));
  });
}

const configureArgs = [`--CDDYNAMO_SGLANG_CPU_ONLY=${cpuOnly ? 'ON' : 'OFF'}`];
if (process.env.CXX) configureArgs.push('--cxx', process.env.CXX);
const configured = await runCmakeJs('configure', configureArgs);
const built = configured === 0 ? await runCmakeJs('build', []) : configured;
await new Promise((r) => log.end(r));

const text = readFileSync(logPath, 'utf8');
if (built !== 0 || !existsSync(addonPath)) {
  const tail = text.split('\n').filter((l) => l.trim() !== '').slice(-30).join('\n');
  console.error(tail);
  fail(`${configured !== 0 ? 'CMake configure' : 'compile'} step failed; full log in ${logPath}`);
}
const backends = /dynamo-sglang: backends ([a-z, ]+)/.exec(text)?.[1] ?? 'cpu';
writeFileSync(stampPath, `${stamp}\n`);
console.log(`dynamo-sglang: native addon built in ${elapsed()} (backends: ${backends}) -> ${addonPath}`);
