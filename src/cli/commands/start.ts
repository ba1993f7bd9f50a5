// `dynamo-sglang start`: resolve the worker configuration, then either dump it (--dump-config-to, no model is
// loaded) or hand it to the worker runtime.

import { writeFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { LlmError } from '../../errors.js';
import { renderHelp, usageError } from '../args.js';
import { flagGroups, type WorkerConfig } from '../../config/schema.js';
import { finalizeConfig, resolveConfig } from '../../config/resolve.js';
import { packageVersion } from '../main.js';

const DESCRIPTION =
  'Runs one worker: loads the model, registers with discovery and serves its endpoint. Every flag can also come ' +
  'from its env var or from the --config YAML file (keys spelled like the flags); precedence is flags, then env ' +
  'vars, then the YAML file, then defaults.';

export function startHelp(): string {
  return renderHelp('dynamo-sglang start [flags]', DESCRIPTION, flagGroups());
}

type RunWorker = (config: WorkerConfig) => Promise<number>;

async function loadWorker(): Promise<RunWorker | undefined> {
  // A variable specifier keeps this module buildable before the worker runtime exists.
  const specifier = '../../worker/main.js';
  let mod: unknown;
  try {
    mod = await import(specifier);
  } catch (err) {
    const e = err as { code?: unknown; message?: unknown };
    if (e.code === 'ERR_MODULE_NOT_FOUND' && String(e.message).includes('worker/main')) return undefined;
    throw err;
  }
  const run = (mod as { runWorker?: unknown }).runWorker;
  return typeof run === 'function' ? (run as RunWorker) : undefined;
}

function dumpConfig(config: WorkerConfig, target: string): void {
  const text = `${JSON.stringify(config, null, 2)}\n`;
  if (target === '-') {
    process.stdout.write(text);
    return;
  }
  const file = resolvePath(target);
  try {
    writeFileSync(file, text);
  } catch (err) {
    throw usageError(`--dump-config-to: cannot write ${file}: ${(err as Error).message}`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const flagsOnly = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  if (flagsOnly.includes('--help') || flagsOnly.includes('-h')) {
    process.stdout.write(startHelp());
    return 0;
  }
  if (flagsOnly.includes('--version')) {
    process.stdout.write(`dynamo-sglang ${packageVersion()}\n`);
    return 0;
  }
  const config = await finalizeConfig(resolveConfig(argv, process.env));
  if (config.dumpConfigTo !== null) {
    dumpConfig(config, config.dumpConfigTo);
    return 0;
  }
  const runWorker = await loadWorker();
  if (!runWorker) {
    throw new LlmError('LLM_ERR_INTERNAL', 'the worker runtime (src/worker/main.ts, runWorker) is not available in this build');
  }
  return runWorker(config);
}
