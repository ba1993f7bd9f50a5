// Structured logging for every process and actor thread: pino underneath, one logger per target (a module path
// such as `frontend`, `worker.migration`, `runtime.discovery`), levels filtered per target with the reference's
// DYN_LOG syntax (`info`, `warn,worker=debug,runtime.discovery=trace`, Rust-style `::` accepted for `.`).
// Output is one human line per record (`2026-12-08T02:30:00.123Z  INFO frontend: message key=value`) on stderr,
// or JSON lines (`DYN_LOGGING_JSONL=1`: {"time","level","target","message",...fields}) for log collectors.
// Worker threads inherit the environment, so actors log with the same settings without any message passing.

import { pino, type Logger as PinoLogger, type DestinationStream } from 'pino';
import { LlmError } from '../errors.js';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'off'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A parsed DYN_LOG value: the default level and per-target overrides (the longest matching prefix wins). */
export interface LogSpec {
  readonly level: LogLevel;
  readonly targets: Readonly<Record<string, LogLevel>>;
}

export type LogFields = Record<string, unknown>;

/** What modules log through; `child` narrows the target (`frontend` -> `frontend.router`). */
export interface Logger {
  readonly target: string;
  trace(message: string, fields?: LogFields): void;
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  isEnabled(level: Exclude<LogLevel, 'off'>): boolean;
  child(name: string): Logger;
}

export interface LoggingOptions {
  /** DYN_LOG syntax; default: the DYN_LOG environment variable, else `info`. */
  readonly spec?: string;
  /** JSON lines instead of human lines; default: DYN_LOGGING_JSONL is 1/true. */
  readonly jsonl?: boolean;
  /** Where records go; default stderr. */
  readonly destination?: { write(line: string): unknown };
  /** Which setting the spec came from, named in errors (`--log-level`, `DYN_LOG`). */
  readonly source?: string;
}

function isLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

/** Parses DYN_LOG syntax; a bad level or directive is a usage error naming the setting and the directive. */
export function parseLogSpec(spec: string, source = 'DYN_LOG'): LogSpec {
  let level: LogLevel = 'info';
  const targets: Record<string, LogLevel> = {};
  for (const raw of spec.split(',')) {
    const directive = raw.trim();
    if (directive === '') continue;
    const eq = directive.indexOf('=');
    const name = eq < 0 ? '' : directive.slice(0, eq).trim().replaceAll('::', '.');
    const value = (eq < 0 ? directive : directive.slice(eq + 1)).trim().toLowerCase();
    // SGLang's level names (--log-level warning / critical) mean warn and error
    const normalised = value === 'warning' ? 'warn' : value === 'critical' ? 'error' : value;
    if (!isLevel(normalised)) {
      throw new LlmError(
        'LLM_ERR_USAGE',
        `${source}: "${directive}" has level "${value}"; levels are ${LOG_LEVELS.join(', ')}`,
      );
    }
    if (eq >= 0 && name === '') throw new LlmError('LLM_ERR_USAGE', `${source}: "${directive}" names no target`);
    if (eq < 0) level = normalised;
    else targets[name] = normalised;
  }
  return { level, targets };
}

/** The level that applies to `target`: the override of the longest prefix (by dotted segment), else the default. */
export function levelFor(spec: LogSpec, target: string): LogLevel {
  let best: LogLevel = spec.level;
  let bestLength = -1;
  for (const [name, level] of Object.entries(spec.targets)) {
    // Reference targets (dynamo_runtime, dynamo_llm) name the runtime as a whole; they match our `runtime` tree.
    const alias = name.startsWith('dynamo_') ? name.slice('dynamo_'.length) : name;
    for (const candidate of [name, alias]) {
      const matches = target === candidate || target.startsWith(`${candidate}.`);
      if (matches && candidate.length > bestLength) {
        best = level;
        bestLength = candidate.length;
      }
    }
  }
  return best;
}

const LEVEL_NAMES: Readonly<Record<number, string>> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR' };

function formatValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value) ?? String(value);
}

/** pino writes JSON; this turns each record into the JSONL shape or a human line before it reaches the sink. */
function recordStream(sink: { write(line: string): unknown }, jsonl: boolean): DestinationStream {
  return {
    write(chunk: string): void {
      const record = JSON.parse(chunk) as Record<string, unknown>;
      const { time, level, target, msg, ...fields } = record;
      const levelName = LEVEL_NAMES[Number(level)] ?? String(level);
      if (jsonl) {
        sink.write(`${JSON.stringify({ time, level: levelName, target, message: msg, ...fields })}\n`);
        return;
      }
      const extra = Object.entries(fields).map(([k, v]) => ` ${k}=${formatValue(v)}`).join('');
      sink.write(`${String(time)} ${levelName.padStart(5)} ${String(target)}: ${String(msg)}${extra}\n`);
    },
  };
}

interface LoggingState {
  spec: LogSpec;
  root: PinoLogger;
}

function envJsonl(): boolean {
  const value = (process.env['DYN_LOGGING_JSONL'] ?? '').toLowerCase();
  return value === '1' || value === 'true';
}

function buildState(options: LoggingOptions): LoggingState {
  const specText = options.spec ?? process.env['DYN_LOG'] ?? 'info';
  const spec = parseLogSpec(specText, options.source ?? (options.spec === undefined ? 'DYN_LOG' : 'log level'));
  const sink = options.destination ?? process.stderr;
  const root = pino(
    { level: 'trace', base: undefined, timestamp: pino.stdTimeFunctions.isoTime },
    recordStream(sink, options.jsonl ?? envJsonl()),
  );
  return { spec, root };
}

let state: LoggingState | undefined;

function current(): LoggingState {
  state ??= buildState({});
  return state;
}

/**
 * Sets the process's logging (the CLI calls this once with --log-level; an embedding program may pass its own
 * destination). Loggers made before the call follow the new settings: they look the state up on each record.
 */
export function configureLogging(options: LoggingOptions = {}): void {
  state = buildState(options);
}

const RANK: Readonly<Record<Exclude<LogLevel, 'off'>, number>> = { trace: 10, debug: 20, info: 30, warn: 40, error: 50 };

function enabled(target: string, level: Exclude<LogLevel, 'off'>): boolean {
  const threshold = levelFor(current().spec, target);
  return threshold !== 'off' && RANK[level] >= RANK[threshold];
}

class TargetLogger implements Logger {
  constructor(readonly target: string) {}

  private emit(level: Exclude<LogLevel, 'off'>, message: string, fields?: LogFields): void {
    if (!enabled(this.target, level)) return;
    current().root[level]({ target: this.target, ...fields }, message);
  }

  trace(message: string, fields?: LogFields): void { this.emit('trace', message, fields); }
  debug(message: string, fields?: LogFields): void { this.emit('debug', message, fields); }
  info(message: string, fields?: LogFields): void { this.emit('info', message, fields); }
  warn(message: string, fields?: LogFields): void { this.emit('warn', message, fields); }
  error(message: string, fields?: LogFields): void { this.emit('error', message, fields); }
  isEnabled(level: Exclude<LogLevel, 'off'>): boolean { return enabled(this.target, level); }
  child(name: string): Logger { return new TargetLogger(`${this.target}.${name}`); }
}

/** The logger of one target (a dotted module path). Cheap: make one per module at load time. */
export function logger(target: string): Logger {
  return new TargetLogger(target);
}

/** Where records can go besides stderr: anything with write(line) (a stream, a collecting array's wrapper). */
export interface LogDestination {
  write(line: string): unknown;
}

/** A logger with settings of its own, independent of the process's (an embedding program's destination). */
class StandaloneLogger implements Logger {
  constructor(readonly target: string, private readonly own: LoggingState) {}

  private emit(level: Exclude<LogLevel, 'off'>, message: string, fields?: LogFields): void {
    if (!this.isEnabled(level)) return;
    this.own.root[level]({ target: this.target, ...fields }, message);
  }

  trace(message: string, fields?: LogFields): void { this.emit('trace', message, fields); }
  debug(message: string, fields?: LogFields): void { this.emit('debug', message, fields); }
  info(message: string, fields?: LogFields): void { this.emit('info', message, fields); }
  warn(message: string, fields?: LogFields): void { this.emit('warn', message, fields); }
  error(message: string, fields?: LogFields): void { this.emit('error', message, fields); }
  isEnabled(level: Exclude<LogLevel, 'off'>): boolean {
    const threshold = levelFor(this.own.spec, this.target);
    return threshold !== 'off' && RANK[level] >= RANK[threshold];
  }
  child(name: string): Logger { return new StandaloneLogger(`${this.target}.${name}`, this.own); }
}

/** A logger of `target` with its own settings (spec, format, destination; unset ones as configureLogging's). */
export function createLogger(target: string, options: LoggingOptions): Logger {
  return new StandaloneLogger(target, buildState(options));
}

/** A logger from what an API caller passed: a Logger as is, a destination (records as human lines, or JSON lines
 * under DYN_LOGGING_JSONL), or nothing (the process's logger of `target`). */
export function loggerFrom(given: Logger | LogDestination | undefined, target: string): Logger {
  if (given === undefined) return logger(target);
  if (isLogger(given)) return given;
  return createLogger(target, { destination: given });
}

function isLogger(value: Logger | LogDestination): value is Logger {
  return typeof (value as Partial<Logger>).child === 'function' && typeof (value as Partial<Logger>).info === 'function';
}

