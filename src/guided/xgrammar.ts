// Loads @mlc-ai/web-xgrammar (xgrammar compiled to WASM) under Node. The package ships one UMD bundle with the wasm
// inlined; imported as an ES module it reaches for `require` and `__filename`, which ES modules lack, so it is
// evaluated here as the CommonJS module it also is. Each load is a fresh WASM instance: a grammar xgrammar refuses
// aborts its instance (the C++ check prints "[FATAL] ..." and the instance is unusable afterwards), so callers
// drop an instance after a failed compile and load another. The bundle's console is this module's: its FATAL lines
// become the error message instead of stderr noise.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type * as Xg from '@mlc-ai/web-xgrammar';
import { logger } from '../runtime/log.js';

export type XgrammarModule = typeof Xg;

const log = logger('guided.xgrammar');
const require = createRequire(import.meta.url);
let source: { file: string; text: string } | null = null;

/** One xgrammar instance and the last FATAL/abort line it printed (the reason of its latest failure). */
export interface XgrammarInstance {
  readonly xg: XgrammarModule;
  /** Takes the messages printed since the last call (xgrammar's reason for a refusal). */
  takeMessages(): string;
}

export function loadXgrammar(): XgrammarInstance {
  if (!source) {
    const file = require.resolve('@mlc-ai/web-xgrammar');
    source = { file, text: readFileSync(file, 'utf8') };
  }
  const messages: string[] = [];
  const capture = (...args: unknown[]) => messages.push(args.map(String).join(' '));
  const console = { log: (...args: unknown[]) => log.debug(args.map(String).join(' ')), error: capture, warn: capture };
  const module = { exports: {} as XgrammarModule };
  // The bundle's own code, run with the CommonJS bindings it expects (see the header).
  const run = new Function('exports', 'module', 'require', '__filename', '__dirname', 'console', source.text) as (...a: unknown[]) => void;
  run(module.exports, module, require, source.file, dirname(source.file), console);
  return {
    xg: module.exports,
    takeMessages: () => {
      const text = messages
        .filter((m) => !m.startsWith('Aborted('))
        .map((m) => m.replace(/^\[FATAL\] \S+: /, ''))
        .join('; ');
      messages.length = 0;
      return text;
    },
  };
}
