// A small typed argument parser shared by every subcommand. Each flag is described once (name, aliases, value
// kind, a typebox schema for its value, env var, help); the same description drives argv parsing, env and YAML
// value conversion, the error messages and the help text. Every usage error is an LlmError('LLM_ERR_USAGE').

import { readFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { Kind, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { LlmError } from '../errors.js';

/** How a textual value (argv, env, a YAML string) is turned into a typed one before the schema check. */
export type ValueKind = 'string' | 'int' | 'number' | 'bool' | 'list' | 'json';

export type FlagValue = string | number | boolean | readonly string[] | { readonly [k: string]: unknown } | null;

export interface FlagSpec {
  /** Long name without dashes, kebab-case; also the YAML key. */
  name: string;
  /** Other accepted spellings of the same flag (without dashes). */
  aliases?: readonly string[];
  kind: ValueKind;
  /** Typebox schema the converted value must satisfy (for 'list': the whole array). */
  schema: TSchema;
  /** Overrides the "expected ..." text derived from the schema. */
  expected?: string;
  /** A 'list' flag also takes several values after it (`--flag a b c`, as argparse's nargs), up to the next --flag. */
  multiValue?: boolean;
  /** A 'bool' flag that also takes an explicit true/false as the next argument (`--flag false`). */
  explicitValue?: boolean;
  /** A 'json' flag may also be given as `@path/to/file.json`. */
  allowFileRef?: boolean;
  /** Environment variable that supplies the value when the flag is absent. */
  env?: string;
  /** Placeholder for the value in help, e.g. N, PATH. */
  valueName?: string;
  /** Value when neither the flag nor its env var is given (see flagValues). */
  default?: FlagValue;
  /** Default as shown in help. */
  defaultText?: string;
  help: string;
  /** Help section title. */
  group?: string;
}

/** Where a value came from, as named in error messages: `--page-size`, `DYN_SYSTEM_PORT`, `w.yaml: key "x"`. */
export interface ValueSource {
  layer: 'cli' | 'env' | 'yaml';
  label: string;
}

export interface ParsedFlag {
  spec: FlagSpec;
  value: FlagValue;
  source: ValueSource;
}

export interface ParsedArgs {
  /** One entry per flag spec given on the command line; the last occurrence of a repeated flag wins. */
  flags: Map<FlagSpec, ParsedFlag>;
  positionals: string[];
  help: boolean;
}

export interface ParseOptions {
  /** How many positional arguments are accepted (default 0). */
  maxPositionals?: number;
  /** Base directory for `@file` references (default process.cwd()). */
  cwd?: string;
}

export function usageError(message: string): LlmError {
  return new LlmError('LLM_ERR_USAGE', message);
}

const TRUE_WORDS = ['true', '1', 'yes', 'on'];
const FALSE_WORDS = ['false', '0', 'no', 'off'];

/** Human text for what a flag accepts, derived from its schema unless the spec overrides it. */
export function describeExpected(spec: FlagSpec): string {
  if (spec.expected !== undefined) return spec.expected;
  if (spec.kind === 'bool') return `${TRUE_WORDS.join('/')} or ${FALSE_WORDS.join('/')}`;
  if (spec.kind === 'list') {
    const items = (spec.schema as { items?: TSchema }).items;
    if (!items) return 'a comma-separated list';
    const each = describeSchema(items);
    return `a comma-separated list of ${each.startsWith('one of') ? `items, each ${each}` : each.replace(/^an? (.*)$/, '$1s')}`;
  }
  return describeSchema(spec.schema);
}

function describeSchema(schema: TSchema): string {
  const s = schema as TSchema & {
    minimum?: number; maximum?: number; exclusiveMinimum?: number; exclusiveMaximum?: number;
    minLength?: number; const?: unknown; anyOf?: TSchema[]; properties?: Record<string, TSchema>;
  };
  switch (s[Kind]) {
    case 'Literal':
      return JSON.stringify(s.const);
    case 'Union': {
      const parts = (s.anyOf ?? []).map(describeSchema);
      return (s.anyOf ?? []).every((x) => x[Kind] === 'Literal')
        ? `one of ${parts.join(', ')}`
        : parts.join(' or ');
    }
    case 'Integer':
    case 'Number': {
      const noun = s[Kind] === 'Integer' ? 'an integer' : 'a number';
      const bounds: string[] = [];
      if (s.minimum !== undefined) bounds.push(`>= ${s.minimum}`);
      if (s.exclusiveMinimum !== undefined) bounds.push(`> ${s.exclusiveMinimum}`);
      if (s.maximum !== undefined) bounds.push(`<= ${s.maximum}`);
      if (s.exclusiveMaximum !== undefined) bounds.push(`< ${s.exclusiveMaximum}`);
      return bounds.length ? `${noun} ${bounds.join(' and ')}` : noun;
    }
    case 'Boolean':
      return 'true or false';
    case 'String':
      return s.minLength ? 'a non-empty string' : 'a string';
    case 'Object':
      return `a JSON object${s.properties ? ` with keys ${Object.keys(s.properties).join(', ')}` : ''}`;
    default:
      return s.description ?? 'a valid value';
  }
}

function show(value: unknown): string {
  return typeof value === 'string' ? JSON.stringify(value) : JSON.stringify(value) ?? String(value);
}

/** First typebox error as "path: message", for structured values (JSON objects, lists). */
function firstSchemaError(schema: TSchema, value: unknown): string | undefined {
  const first = Value.Errors(schema, value).First();
  if (!first) return undefined;
  const what = first.message === 'Unexpected property'
    ? 'unknown key'
    : `expected ${describeSchema(first.schema)}, got ${show(first.value)}`;
  return first.path ? `key "${first.path.slice(1).replaceAll('/', '.')}": ${what}` : what;
}

function badValue(spec: FlagSpec, where: string, got: unknown, detail?: string): LlmError {
  // A structured value (JSON object, list) is named by the part that is wrong rather than echoed whole.
  return usageError(detail ? `${where}: ${detail}` : `${where}: expected ${describeExpected(spec)}, got ${show(got)}`);
}

/** Converts a textual value (argv, env var, YAML string) to the flag's type and checks it against its schema. */
export function convertText(spec: FlagSpec, raw: string, where: string, cwd: string = process.cwd()): FlagValue {
  let value: unknown;
  switch (spec.kind) {
    case 'string':
      value = raw;
      break;
    case 'int':
      if (!/^[+-]?\d+$/.test(raw.trim())) throw badValue(spec, where, raw);
      value = Number(raw.trim());
      break;
    case 'number': {
      const n = raw.trim() === '' ? NaN : Number(raw.trim());
      if (!Number.isFinite(n)) throw badValue(spec, where, raw);
      value = n;
      break;
    }
    case 'bool': {
      const w = raw.trim().toLowerCase();
      if (TRUE_WORDS.includes(w)) value = true;
      else if (FALSE_WORDS.includes(w)) value = false;
      else throw badValue(spec, where, raw);
      break;
    }
    case 'list':
      value = raw.split(/[\s,]+/).filter((x) => x !== '');
      break;
    case 'json': {
      let text = raw;
      if (spec.allowFileRef && raw.startsWith('@')) {
        const file = resolvePath(cwd, raw.slice(1));
        try {
          text = readFileSync(file, 'utf8');
        } catch (err) {
          throw usageError(`${where}: cannot read ${file}: ${(err as Error).message}`);
        }
      }
      try {
        value = JSON.parse(text);
      } catch (err) {
        throw usageError(`${where}: expected ${describeExpected(spec)}, got invalid JSON ${show(raw)}: ${(err as Error).message}`);
      }
      break;
    }
  }
  return checkValue(spec, value, where, raw);
}

/** Checks an already-typed value (e.g. from YAML) against the flag's schema; strings go through convertText. */
export function convertTyped(spec: FlagSpec, value: unknown, where: string, cwd?: string): FlagValue {
  if (typeof value === 'string') return convertText(spec, value, where, cwd);
  if (spec.kind === 'list' && Array.isArray(value) && !value.every((x) => typeof x === 'string')) {
    throw badValue(spec, where, value);
  }
  return checkValue(spec, value, where, value);
}

function checkValue(spec: FlagSpec, value: unknown, where: string, shown: unknown): FlagValue {
  if (Value.Check(spec.schema, value)) return value as FlagValue;
  const structured = spec.kind === 'json';
  throw badValue(spec, where, shown, structured ? firstSchemaError(spec.schema, value) : undefined);
}

/** Levenshtein distance, for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

/** The closest of `candidates` to `word`, or undefined when nothing is reasonably close. */
export function closest(word: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const c of candidates) {
    // A typed prefix counts as close; among prefixes the shortest completion wins.
    const d = c.startsWith(word) && word.length >= 3 ? 0.5 + (c.length - word.length) / 1000 : editDistance(word, c);
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  // about one edit per three typed characters: "--modle-path" finds --model-path, "--foo" finds nothing
  return bestDistance <= Math.max(1, Math.floor(word.length / 3)) ? best : undefined;
}

/** Index of every accepted spelling (name, alias, `no-` form of booleans) to its spec. */
export class FlagIndex {
  private readonly bySpelling = new Map<string, { spec: FlagSpec; negated: boolean }>();

  constructor(readonly specs: readonly FlagSpec[]) {
    for (const spec of specs) {
      for (const n of [spec.name, ...(spec.aliases ?? [])]) {
        this.add(n, spec, false);
        if (spec.kind === 'bool') this.add(`no-${n}`, spec, true);
      }
    }
  }

  private add(spelling: string, spec: FlagSpec, negated: boolean): void {
    if (this.bySpelling.has(spelling)) throw new Error(`flag spelling --${spelling} defined twice`);
    this.bySpelling.set(spelling, { spec, negated });
  }

  lookup(spelling: string): { spec: FlagSpec; negated: boolean } | undefined {
    return this.bySpelling.get(spelling);
  }

  spellings(): IterableIterator<string> {
    return this.bySpelling.keys();
  }

  /** `unknown flag --foo; did you mean --bar?` */
  unknown(spelling: string, kind = 'flag'): LlmError {
    const near = closest(spelling, this.spellings());
    const hint = near ? `; did you mean --${near}?` : '; see --help for the list';
    return usageError(`unknown ${kind} --${spelling}${hint}`);
  }
}

/**
 * Parses argv against the given flags: `--name value`, `--name=value`, `--bool`, `--no-bool`, `-h`/`--help`,
 * `--` ends the flags. Values are converted and checked here, so every error names the flag as typed.
 */
export function parseArgs(argv: readonly string[], specs: readonly FlagSpec[] | FlagIndex, options: ParseOptions = {}): ParsedArgs {
  const index = specs instanceof FlagIndex ? specs : new FlagIndex(specs);
  const flags = new Map<FlagSpec, ParsedFlag>();
  const positionals: string[] = [];
  let help = false;
  const cwd = options.cwd ?? process.cwd();

  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (arg === '-h' || arg === '--help') {
      help = true;
      continue;
    }
    if (!arg.startsWith('--') || arg.length === 2) {
      if (arg.startsWith('-') && arg.length > 1) throw usageError(`unknown option ${arg}; flags are spelled --name (see --help)`);
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const spelling = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const inline = eq < 0 ? undefined : arg.slice(eq + 1);
    const hit = index.lookup(spelling);
    if (!hit) throw index.unknown(spelling);
    const { spec, negated } = hit;
    const where = `--${spelling}`;
    let value: FlagValue;
    if (spec.kind === 'bool') {
      const next = argv[i + 1];
      const explicit = inline === undefined && !negated && spec.explicitValue === true && next !== undefined
        && [...TRUE_WORDS, ...FALSE_WORDS].includes(next.trim().toLowerCase());
      if (explicit) {
        value = convertText(spec, next, where, cwd);
        i++;
      } else if (inline === undefined) value = !negated;
      else if (negated) throw usageError(`${where} takes no value (got ${show(inline)})`);
      else value = convertText(spec, inline, where, cwd);
    } else {
      let raw = inline;
      if (raw === undefined) {
        const next = argv[i + 1];
        if (next === undefined || (next.startsWith('--') && next.length > 2)) {
          throw usageError(`${where}: missing value; expected ${describeExpected(spec)}`);
        }
        raw = next;
        i++;
        // nargs-style lists: every following argument up to the next --flag is one more value
        while (spec.multiValue && argv[i + 1] !== undefined && argv[i + 1] !== '-h' && !(argv[i + 1].startsWith('--') && argv[i + 1].length > 2)) {
          raw = `${raw} ${argv[i + 1]}`;
          i++;
        }
      }
      value = convertText(spec, raw, where, cwd);
    }
    flags.set(spec, { spec, value, source: { layer: 'cli', label: where } });
  }

  const max = options.maxPositionals ?? 0;
  if (!help && positionals.length > max) {
    const extra = positionals[max];
    throw usageError(max === 0 ? `unexpected argument ${show(extra)} (this command takes only --flags)` : `unexpected extra argument ${show(extra)}`);
  }
  return { flags, positionals, help };
}

/** Reads the env var of each flag that has one; errors name the variable. */
export function readEnv(specs: readonly FlagSpec[], env: NodeJS.ProcessEnv, cwd?: string): Map<FlagSpec, ParsedFlag> {
  const out = new Map<FlagSpec, ParsedFlag>();
  for (const spec of specs) {
    if (!spec.env) continue;
    const raw = env[spec.env];
    if (raw === undefined || raw === '') continue;
    out.set(spec, { spec, value: convertText(spec, raw, spec.env, cwd), source: { layer: 'env', label: spec.env } });
  }
  return out;
}

export interface CommandLine {
  /** By flag name: the flag's value, else its env var's, else its default; undefined when none applies. */
  values: Record<string, FlagValue | undefined>;
  positionals: string[];
  help: boolean;
}

/** parseArgs + env + defaults in one call, keyed by flag name: the usual entry for a subcommand. */
export function parseCommandLine(
  argv: readonly string[],
  specs: readonly FlagSpec[],
  options: ParseOptions & { env?: NodeJS.ProcessEnv } = {},
): CommandLine {
  const parsed = parseArgs(argv, specs, options);
  const fromEnv = parsed.help ? new Map<FlagSpec, ParsedFlag>() : readEnv(specs, options.env ?? process.env, options.cwd);
  const values: Record<string, FlagValue | undefined> = {};
  for (const spec of specs) values[spec.name] = (parsed.flags.get(spec) ?? fromEnv.get(spec))?.value ?? spec.default;
  return { values, positionals: parsed.positionals, help: parsed.help };
}

export interface HelpSection {
  title: string;
  flags: readonly FlagSpec[];
}

const WRAP = 100;

function wrap(text: string, indent: string): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && indent.length + line.length + 1 + word.length > WRAP) {
      lines.push(indent + line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(indent + line);
  return lines;
}

/** Renders usage text: every flag with its spellings, value, env var, default and help. */
export function renderHelp(usage: string, description: string, sections: readonly HelpSection[]): string {
  const out: string[] = [`Usage: ${usage}`, '', ...wrap(description, ''), ''];
  for (const section of sections) {
    out.push(`${section.title}:`);
    for (const spec of section.flags) {
      const value = spec.kind === 'bool' ? '' : ` ${spec.valueName ?? 'VALUE'}`;
      const names = [spec.name, ...(spec.aliases ?? [])].map((n) => `--${n}`);
      if (spec.kind === 'bool') names.push(`--no-${spec.name}`);
      out.push(`  ${names.join(', ')}${value}`);
      const facts: string[] = [];
      const plainString = spec.kind === 'string' && spec.schema[Kind] === 'String' && spec.expected === undefined;
      if (spec.kind !== 'bool' && !plainString) facts.push(`expects ${describeExpected(spec)}`);
      if (spec.env) facts.push(`env ${spec.env}`);
      if (spec.defaultText !== undefined) facts.push(`default ${spec.defaultText}`);
      const tail = facts.length ? ` [${facts.join('; ')}]` : '';
      out.push(...wrap(spec.help + tail, '      '));
    }
    out.push('');
  }
  return out.join('\n');
}
