// Builds the engine addon (native/) with cmake-js: run by `npm ci` (the package's install script) and `npm run build`.
// Output: native/build/Release/dynamo_sglang.node. The full CMake/compiler log goes to native/build/build.log;
// the console gets one line on success, and a clear reason plus the log's tail on failure.
// Env: DYNAMO_SGLANG_CPU_ONLY=1 builds the CPU backend only, even where CUDA with cuBLAS is present.
import { spawnSync, spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
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
mkdirSync(buildDir, { recursive: true });
const log = createWriteStream(logPath);

function runCmakeJs(command, extra) {
  const args = [cmakeJs, command, '-d', nativeDir, '-O', buildDir, '-p', '2', '-l', 'warn', ...extra];
  log.write(`$ node ${args.join(' ')}\n`);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    child.on('error', (e) => {
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
console.log(`dynamo-sglang: native addon built (backends: ${backends}) -> ${addonPath}`);
