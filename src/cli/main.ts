// The `dynamo-sglang` command: dispatches to one subcommand module, loaded lazily so that `start --help` or
// `--version` never pulls in the engine. Usage errors (LLM_ERR_USAGE) print `dynamo-sglang: <message>` and
// exit 2; any other failure exits 1.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LlmError } from '../errors.js';
import { closest } from './args.js';
import { applyLogLevel, takeLogLevel } from './logging.js';

const COMMANDS: Readonly<Record<string, string>> = {
  start: 'run one worker process (aggregated, prefill, decode, embedding, multimodal, multi-node)',
  run: 'everything in one process on an embedded store (frontend + worker), for a laptop or a demo',
  frontend: 'OpenAI-compatible HTTP server that discovers workers and routes to them',
  generate: 'generate text from a prompt with a local model, no servers involved',
  'make-model': 'write a random-weight checkpoint of a real model shape',
  bench: 'serving load generator and engine benchmarks',
};

/** Version of the installed package (read from the package.json above this module, in src/ or dist/src/). */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'package.json');
    if (existsSync(candidate)) {
      const pkg = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'dynamo-sglang' && typeof pkg.version === 'string') return pkg.version;
    }
    const up = dirname(dir);
    if (up === dir) return 'unknown';
    dir = up;
  }
}

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  return [
    'Usage: dynamo-sglang <command> [flags]',
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, what]) => `  ${name.padEnd(width)}  ${what}`),
    '',
    'Run `dynamo-sglang <command> --help` for the flags of a command; `dynamo-sglang --version` prints the version.',
    'Every command takes --log-level LEVEL|SPEC (env DYN_LOG: info, or per target as info,worker=debug,dynamo_runtime=trace);',
    'DYN_LOGGING_JSONL=1 writes logs as JSON lines.',
    '',
  ].join('\n');
}

/** Prints an error the way every subcommand reports one and returns the exit code it implies. */
export function reportError(err: unknown): number {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`dynamo-sglang: ${message}\n`);
  return err instanceof LlmError && err.code === 'LLM_ERR_USAGE' ? 2 : 1;
}

type CommandMain = (argv: string[]) => Promise<number>;

/** Loads commands/<name>, or returns undefined when this build does not contain it. */
async function loadCommand(name: string): Promise<CommandMain | undefined> {
  const here = dirname(fileURLToPath(import.meta.url));
  // Compiled builds have .js files; running from source (tsx) has .ts files.
  if (!existsSync(join(here, 'commands', `${name}.js`)) && !existsSync(join(here, 'commands', `${name}.ts`))) return undefined;
  const specifier = `./commands/${name}.js`;
  const mod: unknown = await import(specifier);
  const entry = (mod as { main?: unknown }).main;
  if (typeof entry !== 'function') throw new LlmError('LLM_ERR_INTERNAL', `commands/${name} does not export main()`);
  return entry as CommandMain;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    process.stderr.write(usage());
    return 2;
  }
  if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(usage());
    return 0;
  }
  if (command === '--version' || command === '-V') {
    process.stdout.write(`dynamo-sglang ${packageVersion()}\n`);
    return 0;
  }
  try {
    if (!Object.hasOwn(COMMANDS, command)) {
      const near = closest(command, Object.keys(COMMANDS));
      throw new LlmError('LLM_ERR_USAGE', `unknown command "${command}"${near ? `; did you mean "${near}"?` : ''} (see --help)`);
    }
    const { argv: args, spec } = takeLogLevel(command, rest);
    const envSpec = process.env['DYN_LOG'];
    if (spec !== undefined || envSpec !== undefined) applyLogLevel(spec ?? envSpec!, spec !== undefined ? '--log-level' : 'DYN_LOG');
    const run = await loadCommand(command);
    if (!run) throw new LlmError('LLM_ERR_USAGE', `the "${command}" command is not available in this build`);
    return await run(args);
  } catch (err) {
    return reportError(err);
  }
}
