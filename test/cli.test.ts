// The CLI as a real process: exit codes, stderr/stdout, and that a usage error writes nothing.
import t from 'tap';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WORKER_FLAGS } from '../src/config/schema.js';
import { startHelp } from '../src/cli/commands/start.js';

const repo = fileURLToPath(new URL('..', import.meta.url));
const version = (JSON.parse(readFileSync(join(repo, 'package.json'), 'utf8')) as { version: string }).version;
const dir = mkdtempSync(join(tmpdir(), 'dsg-cli-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node <args>` with a clean DYN_* environment plus `env`. */
function node(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Result> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DYN_') && !k.startsWith('TAP')));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd: repo, env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

// The CLI from source: the same main() that bin/dynamo-sglang.js calls, run through tsx.
const mainUrl = new URL('../src/cli/main.ts', import.meta.url).href;

/**
 * Runs many CLI invocations in ONE child process (process start-up through tsx costs seconds on a loaded
 * 2-core machine): each case gets its env, main()'s return value (what bin/dynamo-sglang.js turns into the
 * exit code) and everything main() wrote to stdout and stderr.
 */
const harness = `
import { readFileSync, writeFileSync } from 'node:fs';
import { main } from ${JSON.stringify(mainUrl)};
const [casesFile, resultsFile] = process.argv.slice(1);
const results = [];
for (const c of JSON.parse(readFileSync(casesFile, 'utf8'))) {
  const saved = { ...process.env };
  Object.assign(process.env, c.env ?? {});
  let stdout = '', stderr = '';
  const out = process.stdout.write, err = process.stderr.write;
  process.stdout.write = (chunk) => { stdout += String(chunk); return true; };
  process.stderr.write = (chunk) => { stderr += String(chunk); return true; };
  let code;
  try { code = await main(c.argv); } finally { process.stdout.write = out; process.stderr.write = err; }
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
  Object.assign(process.env, saved);
  results.push({ code, stdout, stderr });
}
writeFileSync(resultsFile, JSON.stringify(results));
`;

async function cliBatch(cases: { argv: string[]; env?: NodeJS.ProcessEnv }[]): Promise<Result[]> {
  const casesFile = join(dir, `cases-${process.hrtime.bigint()}.json`);
  const resultsFile = `${casesFile}.out`;
  writeFileSync(casesFile, JSON.stringify(cases));
  const r = await node(['--import', 'tsx', '--input-type=module', '-e', harness, '--', casesFile, resultsFile]);
  if (r.code !== 0) throw new Error(`harness failed: ${r.stderr}`);
  return JSON.parse(readFileSync(resultsFile, 'utf8')) as Result[];
}

/** Runs jobs with at most `n` at a time (the machine has 2 cores). */
async function limited<T>(jobs: (() => Promise<T>)[], n = 3): Promise<T[]> {
  const out: T[] = new Array(jobs.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < jobs.length) {
      const i = next++;
      out[i] = await jobs[i]();
    }
  }));
  return out;
}

const M = ['--model-path', 'm'];
const yamlBad = join(dir, 'worker.yaml');
writeFileSync(yamlBad, 'model-path: m\npage-size: "x"\n');
const yamlUnknown = join(dir, 'unknown.yaml');
writeFileSync(yamlUnknown, 'model-path: m\nnnode: 2\n');
const yamlBroken = join(dir, 'broken.yaml');
writeFileSync(yamlBroken, 'a: [\n');
const badCases: { argv: string[]; env?: NodeJS.ProcessEnv; says: string[] }[] = [
  { argv: [...M, '--pag-size', '4'], says: ['unknown flag --pag-size; did you mean --page-size?'] },
  { argv: [...M, '--page-size', 'x'], says: ['--page-size: expected an integer >= 1, got "x"'] },
  { argv: [...M, '--page-size', '0'], says: ['--page-size', 'got "0"'] },
  { argv: [...M, '--context-length'], says: ['--context-length: missing value'] },
  { argv: [...M, '--tp-size', '0'], says: ['--tp-size: expected an integer >= 1'] },
  { argv: [...M, '--dp-size', '0'], says: ['--dp-size: expected an integer >= 1'] },
  { argv: [...M, '--mem-fraction-static', '1.5'], says: ['--mem-fraction-static: expected a number in (0, 1], got "1.5"'] },
  { argv: [...M, '--request-plane', 'grpc'], says: ['--request-plane', '"grpc"', '"tcp", "http", "nats"'] },
  { argv: [...M, '--endpoint', 'dyn://a.b'], says: ['--endpoint', 'exactly 3'] },
  { argv: [...M, '--kv-events-config', '{"publisher":"kafka"}'], says: ['--kv-events-config: key "publisher"'] },
  { argv: [...M, '--embedding-worker', '--disagg-mode', 'decode'], says: ['--embedding-worker cannot be combined with --disagg-mode decode'] },
  { argv: [...M, '--embedding-worker', '--disaggregation-mode', 'prefill'], says: ['cannot be combined with --disaggregation-mode prefill'] },
  { argv: [...M, '--multimodal-encode-worker', '--embedding-worker'], says: ['exactly one role'] },
  { argv: [...M, '--disagg-mode', 'prefill', '--disaggregation-mode', 'decode'], says: ['contradicts'] },
  { argv: [...M, '--node-rank', '2', '--nnodes', '2', '--dist-init-addr', 'h:1'], says: ['--node-rank 2 must be less than --nnodes 2'] },
  { argv: [...M, '--nnodes', '2', '--tp', '2'], says: ['needs --dist-init-addr'] },
  { argv: [...M, '--custom-jinja-template', '$NOPE_DIR/x.jinja'], says: ['Custom Jinja template file not found: '] },
  { argv: [...M], env: { DYN_HEALTH_CHECK_ENABLED: 'maybe' }, says: ['DYN_HEALTH_CHECK_ENABLED', '"maybe"'] },
  { argv: [...M], env: { DYN_HEALTH_CHECK_PAYLOAD: '[1]' }, says: ['DYN_HEALTH_CHECK_PAYLOAD: expected a JSON object'] },
  { argv: ['--config', yamlBad], says: [`${yamlBad}: key "page-size": expected an integer >= 1, got "x"`] },
  { argv: ['--config', yamlUnknown], says: [`${yamlUnknown}: unknown key "nnode"; did you mean "nnodes"?`] },
  { argv: ['--config', yamlBroken], says: [`${yamlBroken}: invalid YAML`] },
  { argv: ['--config', join(dir, 'absent.yaml')], says: ['absent.yaml: cannot read'] },
  { argv: [], says: ['missing --model-path'] },
];
const absentCommand = ['bench', 'frontend', 'run', 'generate'].find((c) => !existsSync(join(repo, 'src', 'cli', 'commands', `${c}.ts`)));
const dumpFile = join(dir, 'dump.json');

// Everything that goes through main() from source runs in one child process.
const named = {
  version: { argv: ['--version'] },
  help: { argv: ['--help'] },
  startHelp: { argv: ['start', '--help'] },
  none: { argv: [] },
  startVersion: { argv: ['start', '--version'] },
  dumpFile: { argv: ['start', '--model-path', '/no/such/model', '--disagg-mode', 'prefill', '--dump-config-to', dumpFile], env: { DYN_SYSTEM_PORT: '9100' } },
  dumpStdout: { argv: ['start', ...M, '--embedding-worker', '--tp', '2', '--base-gpu-id', '1', '--nats-server', 'nats://alice:s3cr3t-pw@nats.example:4222'], env: { DYN_DUMP_CONFIG_TO: '-' } },
  unknownCommand: { argv: ['genrate'] },
  absentCommand: { argv: [absentCommand ?? 'bench'] },
  missingModel: { argv: ['start', ...M] },
};
// Cases that would really start something once other sessions land their modules are left out then.
const namedKeys = (Object.keys(named) as (keyof typeof named)[]).filter(
  (k) => !(k === 'absentCommand' && !absentCommand),
);
const allResults = await cliBatch([
  ...namedKeys.map((k) => named[k]),
  ...badCases.map((c, i) => ({ argv: ['start', ...c.argv, '--dump-config-to', join(dir, `bad-${i}.json`)], env: c.env })),
]);
const run = Object.fromEntries(namedKeys.map((k, i) => [k, allResults[i]])) as Record<keyof typeof named, Result>;
const badResults = allResults.slice(allResults.length - badCases.length);

t.test('--version and --help', async (t) => {
  const { version: v, help: h, startHelp: sh, none, startVersion } = run;
  t.same([v.code, v.stdout, v.stderr], [0, `dynamo-sglang ${version}\n`, '']);
  t.same([startVersion.code, startVersion.stdout], [0, `dynamo-sglang ${version}\n`]);
  t.equal(h.code, 0);
  for (const c of ['start', 'run', 'frontend', 'generate', 'make-model', 'bench']) t.match(h.stdout, `  ${c} `);
  t.equal(none.code, 2, 'no command is a usage error');
  t.match(none.stderr, 'Usage: dynamo-sglang <command>');
  t.equal(sh.code, 0);
  t.equal(sh.stdout, startHelp());
});

t.test('start --help documents every flag with its env var and default', async (t) => {
  const help = startHelp().replace(/\s+/g, ' ');
  for (const f of WORKER_FLAGS) {
    t.match(help, `--${f.name}`, `--${f.name}`);
    for (const a of f.aliases ?? []) t.match(help, `--${a}`, `alias --${a}`);
    if (f.kind === 'bool') t.match(help, `--no-${f.name}`);
    if (f.env) t.match(help, `env ${f.env}`, f.env);
    if (f.defaultText !== undefined) t.match(help, `default ${f.defaultText}`, `default of --${f.name}`);
  }
});

t.test('--dump-config-to FILE and - write the resolved config without loading a model', async (t) => {
  const { dumpFile: toFile, dumpStdout: toStdout } = run;
  t.same([toFile.code, toFile.stdout, toFile.stderr], [0, '', '']);
  const dumped = JSON.parse(readFileSync(dumpFile, 'utf8')) as Record<string, unknown>;
  t.equal(dumped.servingMode, 'prefill');
  t.same(dumped.endpoint, { namespace: 'dynamo', component: 'prefill', endpoint: 'generate' });
  t.equal(dumped.systemPort, 9100);
  t.equal(dumped.disaggregationBootstrapPort, null, 'a prefill worker keeps no port: its bootstrap server takes one from the OS at start');
  t.equal(toStdout.code, 0);
  const fromStdout = JSON.parse(toStdout.stdout) as Record<string, unknown>;
  t.equal(fromStdout.workerKind, 'embedding');
  t.equal(fromStdout.dumpConfigTo, '-');
  t.same([fromStdout.tpSize, fromStdout.baseGpuId], [2, 1], 'tensor parallel settings');
  t.equal(fromStdout.natsServer, 'nats://alice:***@nats.example:4222', 'credentials in URLs are never written out');
  t.notMatch(toStdout.stdout, /s3cr3t-pw/);
});

t.test('usage errors: exit 2, one line on stderr, nothing written', async (t) => {
  badResults.forEach((r, i) => {
    const c = badCases[i];
    const name = c.argv.join(' ') + (c.env ? ` ${JSON.stringify(c.env)}` : '');
    t.equal(r.code, 2, `exit 2: ${name}`);
    t.equal(r.stdout, '', `no stdout: ${name}`);
    t.match(r.stderr, /^dynamo-sglang: [^\n]+\n$/, `one error line: ${name}`);
    for (const s of c.says) t.match(r.stderr, s, `says ${s}`);
    t.notOk(existsSync(join(dir, `bad-${i}.json`)), `nothing written: ${name}`);
  });
});

t.test('unknown and unavailable commands', async (t) => {
  t.equal(run.unknownCommand.code, 2);
  t.match(run.unknownCommand.stderr, 'dynamo-sglang: unknown command "genrate"; did you mean "generate"?');
  if (absentCommand) {
    t.equal(run.absentCommand.code, 2);
    t.match(run.absentCommand.stderr, `dynamo-sglang: the "${absentCommand}" command is not available in this build`);
  }
});

t.test('start with a model path that does not exist fails at once, naming it', async (t) => {
  t.equal(run.missingModel.code, 1);
  t.match(run.missingModel.stderr, /--model-path m: no such file or directory/);
});

t.test('the real bin, compiled with tsc', async (t) => {
  // Compile the CLI's own modules into a scratch package laid out like the published one: bin/ + dist/.
  const pkg = join(dir, 'pkg');
  mkdirSync(join(pkg, 'bin'), { recursive: true });
  copyFileSync(join(repo, 'bin', 'dynamo-sglang.js'), join(pkg, 'bin', 'dynamo-sglang.js'));
  copyFileSync(join(repo, 'package.json'), join(pkg, 'package.json'));
  symlinkSync(join(repo, 'node_modules'), join(pkg, 'node_modules'));
  const tsc = await node([
    join(repo, 'node_modules', 'typescript', 'bin', 'tsc'),
    '--outDir', join(pkg, 'dist'), '--rootDir', repo,
    '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--target', 'ES2022', '--strict', '--skipLibCheck',
    '--types', 'node', '--resolveJsonModule',
    join(repo, 'src', 'cli', 'main.ts'), join(repo, 'src', 'cli', 'commands', 'start.ts'),
  ]);
  t.equal(tsc.code, 0, `tsc: ${tsc.stdout}${tsc.stderr}`);
  t.ok(readdirSync(join(pkg, 'dist', 'src', 'cli', 'commands')).includes('start.js'));
  const bin = join(pkg, 'bin', 'dynamo-sglang.js');
  const out = join(dir, 'bin-dump.json');
  const [v, bad, unknown, badEnv, dump] = await limited([
    () => node([bin, '--version']),
    () => node([bin, 'start', '--model-path', 'm', '--tp-size', '0', '--dump-config-to', out]),
    () => node([bin, 'start', '--model-path', 'm', '--pag-size', '4', '--dump-config-to', out]),
    () => node([bin, 'start', '--model-path', 'm', '--dump-config-to', out], { DYN_HEALTH_CHECK_ENABLED: 'maybe' }),
    () => node([bin, 'start', '--model-path', 'm', '--dump-config-to', '-']),
  ]);
  t.same([v.code, v.stdout], [0, `dynamo-sglang ${version}\n`]);
  t.same([bad.code, bad.stdout, bad.stderr], [2, '', 'dynamo-sglang: --tp-size: expected an integer >= 1, got "0"\n']);
  t.same([unknown.code, unknown.stdout, unknown.stderr], [2, '', 'dynamo-sglang: unknown flag --pag-size; did you mean --page-size?\n']);
  t.same([badEnv.code, badEnv.stdout], [2, '']);
  t.match(badEnv.stderr, 'dynamo-sglang: DYN_HEALTH_CHECK_ENABLED: expected true/1/yes/on or false/0/no/off, got "maybe"');
  t.notOk(existsSync(out));
  t.equal(dump.code, 0);
  t.equal((JSON.parse(dump.stdout) as { modelPath: string }).modelPath, 'm');
});
