// `dynamo-sglang start`: resolve the worker configuration, then either dump it (--dump-config-to, no model is
// loaded) or hand it to the worker runtime.

import { writeFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
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
  // loaded only now, so --help, --version and --dump-config-to never pull in the engine
  const { runWorker } = await import('../../worker/worker.js');
  return runWorker(config);
}
