// --log-level on every command: the value (a level or DYN_LOG directives) sets the process's logging before the
// command runs, and becomes DYN_LOG for the threads and child processes it starts, so actor threads log with the
// same settings. `start` and `run` also take it from their config (flag > DYN_LOG > YAML) and apply the result.

import { configureLogging } from '../runtime/log.js';
import { Type } from '@sinclair/typebox';
import { usageError, type FlagSpec } from './args.js';

/** --log-level as the help of the commands without it in their own flag table shows it (takeLogLevel reads it). */
export const LOG_LEVEL_HELP: FlagSpec = {
  name: 'log-level', kind: 'string', schema: Type.String({ minLength: 1 }), env: 'DYN_LOG', valueName: 'SPEC', default: 'info', defaultText: 'info', group: 'Logging',
  help: 'A level (trace, debug, info, warn, error, off) or DYN_LOG directives such as info,frontend=debug,dynamo_runtime=trace; DYN_LOGGING_JSONL=1 writes JSON lines.',
};

/** The commands whose own flag table has --log-level (the worker flags); the others have it removed from argv here. */
const OWN_FLAG = new Set(['start', 'run']);

/** Finds --log-level VALUE / --log-level=VALUE (the last one wins) and returns argv for the command. */
export function takeLogLevel(command: string, argv: readonly string[]): { argv: string[]; spec: string | undefined } {
  const keep = OWN_FLAG.has(command);
  const out: string[] = [];
  let spec: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      out.push(...argv.slice(i));
      break;
    }
    if (arg === '--log-level' || arg.startsWith('--log-level=')) {
      const inline = arg.startsWith('--log-level=');
      const value = inline ? arg.slice('--log-level='.length) : argv[i + 1];
      if (value === undefined || value === '' || (!inline && value.startsWith('--'))) throw usageError('--log-level needs a value (a level, or DYN_LOG directives such as info,worker=debug)');
      spec = value;
      if (keep) out.push(...(inline ? [arg] : [arg, value]));
      if (!inline) i++;
      continue;
    }
    out.push(arg);
  }
  return { argv: out, spec };
}

/** Applies a log spec to this process and to the threads and processes it starts from now on. */
export function applyLogLevel(spec: string, source: string): void {
  configureLogging({ spec, source });
  process.env['DYN_LOG'] = spec;
}
