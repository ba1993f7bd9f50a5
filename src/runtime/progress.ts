// Progress of long work (writing a checkpoint, loading weights) for people watching: on a terminal, one line
// redrawn in place (at most 10 times a second); otherwise, for logs, an info record every few seconds and one at
// the end, through the structured logger. A model load runs in the rank threads, inside the native addon: it is
// followed from outside, by the weight files' pages this process has mapped (they count as the engine reads them).

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from './log.js';

/** A terminal to redraw on (process.stderr when it is one). */
export interface ProgressTerminal {
  readonly isTTY?: boolean;
  write(text: string): unknown;
}

export interface ProgressOptions {
  /** What is being done, e.g. "writing model.safetensors". */
  label: string;
  /** The amount when done (bytes, or a count with `unit`). */
  total: number;
  unit: 'bytes' | 'count';
  log: Logger;
  /** Where the live line goes when it is a terminal; default process.stderr. */
  terminal?: ProgressTerminal;
  /** Seconds between log records when not on a terminal (default 5). */
  intervalSeconds?: number;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

export class ProgressReport {
  private readonly started = performance.now();
  private lastShown = -Infinity;
  private done = 0;
  private ended = false;
  private readonly terminal: ProgressTerminal | null;

  constructor(private readonly options: ProgressOptions) {
    const terminal = options.terminal ?? process.stderr;
    this.terminal = terminal.isTTY ? terminal : null;
  }

  /** The amount done so far (monotonic). */
  update(done: number): void {
    this.done = done;
    const now = performance.now();
    const every = this.terminal ? 100 : (this.options.intervalSeconds ?? 5) * 1000;
    if (now - this.lastShown < every) return;
    this.lastShown = now;
    this.show(false);
  }

  /** The work is over: the final amount, on its own line. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.show(true);
  }

  private show(final: boolean): void {
    const { label, total, unit } = this.options;
    const amount = (n: number) => (unit === 'bytes' ? formatBytes(n) : String(n));
    const percent = total > 0 ? Math.floor((100 * this.done) / total) : 100;
    const seconds = Number(((performance.now() - this.started) / 1000).toFixed(1));
    const text = `${label}: ${amount(this.done)} of ${amount(total)} (${percent}%, ${seconds} s)`;
    if (this.terminal) {
      this.terminal.write(`\r\x1b[2K${text}${final ? '\n' : ''}`);
      return;
    }
    this.options.log.info(final ? `${label}: done` : label, { done: this.done, total, unit, percent, seconds });
  }
}

/** Bytes of file-backed pages mapped into this process (Linux /proc/self/status RssFile), or null elsewhere. Mapped
 * weights count here as the engine reads them, whichever thread reads them. */
export function residentFileBytes(): number | null {
  try {
    const m = /^RssFile:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

/** The bytes of a model's weight files: a GGUF file's size, or the *.safetensors files of a checkpoint directory. */
export function weightFileBytes(modelPath: string): number | null {
  try {
    const st = statSync(modelPath);
    if (st.isFile()) return st.size;
    return readdirSync(modelPath).filter((f) => f.endsWith('.safetensors')).reduce((sum, f) => sum + statSync(join(modelPath, f)).size, 0);
  } catch {
    return null;
  }
}

/** Reports a model load in progress from another thread's work: the weight files' pages mapped so far (on Linux),
 * polled every 250 ms, until `done` is called (with false after a failed load: no final line). */
export function watchModelLoad(modelPath: string, log: Logger, terminal?: ProgressTerminal): { done(loaded: boolean): void } {
  const total = weightFileBytes(modelPath);
  const base = residentFileBytes();
  if (total === null || total === 0 || base === null) return { done() {} };
  const report = new ProgressReport({ label: `loading weights of ${modelPath}`, total, unit: 'bytes', log, ...(terminal ? { terminal } : {}) });
  const timer = setInterval(() => {
    const now = residentFileBytes();
    if (now !== null) report.update(Math.min(total, Math.max(0, now - base)));
  }, 250);
  timer.unref();
  return {
    done(loaded) {
      clearInterval(timer);
      if (!loaded) return;
      report.update(total);
      report.end();
    },
  };
}
