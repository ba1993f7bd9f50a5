// One entry point for checking a value that came off a wire: `parseWire(schema, value, what)` returns the decoded,
// typed value or throws an LlmError whose message names the field path, what was expected and what came.
import { Kind, TransformKind, type StaticDecode, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors';
import { LlmError, type ErrorCode } from '../errors.js';

interface Compiled {
  check: TypeCheck<TSchema>;
  /** Where u64 values sit; null when the schema has none. */
  plan: DecodePlan | null;
}

const compiledSchemas = new WeakMap<TSchema, Compiled>();

function compiled(schema: TSchema): Compiled {
  let c = compiledSchemas.get(schema);
  if (c === undefined) {
    c = { check: TypeCompiler.Compile(schema), plan: planFor(schema) };
    compiledSchemas.set(schema, c);
  }
  return c;
}

/** True when `value` matches `schema` (compiled once, cached). No decoding. */
export function checkWire(schema: TSchema, value: unknown): boolean {
  return compiled(schema).check.Check(value);
}

/**
 * Checks `value` against `schema` and returns it decoded (u64 fields become bigint). Throws
 * `LlmError(code, "<what>.<path>: expected <type>, got <value>")` on the first mismatch. `code` is
 * LLM_ERR_BAD_REQUEST for request bodies from clients; transport code passes LLM_ERR_PROTOCOL for frames and records.
 */
export function parseWire<T extends TSchema>(
  schema: T,
  value: unknown,
  what: string,
  code: Extract<ErrorCode, 'LLM_ERR_BAD_REQUEST' | 'LLM_ERR_PROTOCOL'> = 'LLM_ERR_BAD_REQUEST',
): StaticDecode<T> {
  const c = compiled(schema);
  if (!c.check.Check(value)) {
    const first = c.check.Errors(value).First();
    throw new LlmError(code, first === undefined ? `${what}: invalid value` : describeError(first, what));
  }
  return (c.plan === null ? value : decodeWith(c.plan, value)) as StaticDecode<T>;
}

// Decoding = turning u64 numbers into bigint. typebox's generic TransformDecode walks every value (2.7 ms for an
// 8k-token request); a plan built once per schema visits only the paths that can hold a u64 and copies an object
// or array only when something in it changes, so the caller's value is never mutated.
type DecodePlan =
  | { kind: 'u64' }
  | { kind: 'object'; props: [string, DecodePlan][]; rest: DecodePlan | null }
  | { kind: 'array'; items: DecodePlan }
  | { kind: 'union'; branches: { check: TypeCheck<TSchema>; plan: DecodePlan | null }[] };

function planFor(schema: TSchema): DecodePlan | null {
  if (TransformKind in schema) {
    if (schema['format'] !== 'uint64') throw new Error(`wire schema ${schema['title'] ?? schema[Kind]}: only U64 transforms are supported`);
    return { kind: 'u64' };
  }
  switch (schema[Kind]) {
    case 'Object': {
      const props: [string, DecodePlan][] = [];
      for (const [k, sub] of Object.entries((schema['properties'] ?? {}) as Record<string, TSchema>)) {
        const p = planFor(sub);
        if (p !== null) props.push([k, p]);
      }
      const extra = schema['additionalProperties'];
      const rest = typeof extra === 'object' && extra !== null ? planFor(extra as TSchema) : null;
      return props.length === 0 && rest === null ? null : { kind: 'object', props, rest };
    }
    case 'Record': {
      const values = Object.values((schema['patternProperties'] ?? {}) as Record<string, TSchema>);
      const rest = values.length === 1 ? planFor(values[0]!) : null;
      return rest === null ? null : { kind: 'object', props: [], rest };
    }
    case 'Array': {
      const items = planFor(schema['items'] as TSchema);
      return items === null ? null : { kind: 'array', items };
    }
    case 'Union': {
      const anyOf = schema['anyOf'] as TSchema[];
      const plans = anyOf.map(planFor);
      if (plans.every((p) => p === null)) return null;
      return { kind: 'union', branches: anyOf.map((b, i) => ({ check: TypeCompiler.Compile(b), plan: plans[i]! })) };
    }
    default:
      return null;
  }
}

function decodeWith(plan: DecodePlan, value: unknown): unknown {
  switch (plan.kind) {
    case 'u64':
      return typeof value === 'number' ? BigInt(value) : value;
    case 'array': {
      if (!Array.isArray(value)) return value;
      let out: unknown[] | undefined;
      for (let i = 0; i < value.length; i++) {
        const d = decodeWith(plan.items, value[i]);
        if (d !== value[i]) (out ??= value.slice())[i] = d;
      }
      return out ?? value;
    }
    case 'object': {
      if (typeof value !== 'object' || value === null) return value;
      const src = value as Record<string, unknown>;
      let out: Record<string, unknown> | undefined;
      const set = (k: string, p: DecodePlan) => {
        const v = src[k];
        if (v === undefined) return;
        const d = decodeWith(p, v);
        if (d !== v) (out ??= { ...src })[k] = d;
      };
      for (const [k, p] of plan.props) set(k, p);
      if (plan.rest !== null) {
        const rest = plan.rest;
        const known = new Set(plan.props.map(([k]) => k));
        for (const k of Object.keys(src)) if (!known.has(k)) set(k, rest);
      }
      return out ?? value;
    }
    case 'union':
      for (const b of plan.branches) if (b.check.Check(value)) return b.plan === null ? value : decodeWith(b.plan, value);
      return value;
  }
}

/** Formats one typebox error as `what.path: expected X, got Y`, descending into the closest union branch. */
export function describeError(error: ValueError, what: string): string {
  const deepest = deepestBranchError(error);
  if (deepest !== undefined) return describeError(deepest, what);
  const where = fieldPath(what, error.path);
  switch (error.type) {
    case ValueErrorType.ObjectRequiredProperty:
      return `${where}: required field is missing`;
    case ValueErrorType.ObjectAdditionalProperties:
      return `${where}: unknown field`;
    default:
      if (error.value === undefined) return `${where}: required field is missing (expected ${expected(error.schema)})`;
      return `${where}: expected ${expected(error.schema)}, got ${shown(error.value)}`;
  }
}

/** For a union mismatch on an object, the branch that got furthest explains the problem best. */
function deepestBranchError(error: ValueError): ValueError | undefined {
  if (error.type !== ValueErrorType.Union || error.errors.length === 0) return undefined;
  let best: ValueError | undefined;
  let tied = false;
  for (const branch of error.errors) {
    const e = branch.First();
    if (e === undefined || depth(e) <= depth(error)) continue;
    if (best === undefined || depth(e) > depth(best)) {
      best = e;
      tied = false;
    } else if (depth(e) === depth(best)) tied = true;
  }
  // Several branches failing equally deep means the value matched none of them in shape: report the union itself.
  return tied ? undefined : best;
}

const depth = (e: ValueError) => (e.path === '' ? 0 : e.path.split('/').length - 1);

function fieldPath(what: string, pointer: string): string {
  let out = what;
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    out += /^\d+$/.test(seg) ? `[${seg}]` : /^[A-Za-z_$][\w$]*$/.test(seg) ? `.${seg}` : `[${JSON.stringify(seg)}]`;
  }
  return out;
}

function bounds(schema: TSchema, noun: string): string {
  const lo = schema['minimum'] ?? schema['exclusiveMinimum'];
  const hi = schema['maximum'] ?? schema['exclusiveMaximum'];
  const loOp = schema['minimum'] !== undefined ? '>=' : '>';
  const hiOp = schema['maximum'] !== undefined ? '<=' : '<';
  if (lo === 0 && hi === 0xffff_ffff && loOp === '>=' && hiOp === '<=') return `${noun} >= 0 (u32)`;
  if (lo !== undefined && hi !== undefined) return `${noun} ${loOp} ${lo} and ${hiOp} ${hi}`;
  if (lo !== undefined) return `${noun} ${loOp} ${lo}`;
  if (hi !== undefined) return `${noun} ${hiOp} ${hi}`;
  return noun;
}

function expected(schema: TSchema): string {
  if (schema['format'] === 'uint64') return 'unsigned 64-bit integer';
  switch (schema[Kind]) {
    case 'Integer':
      return bounds(schema, 'integer');
    case 'Number':
      return bounds(schema, 'number');
    case 'BigInt':
      return bounds(schema, 'integer');
    case 'String': {
      const parts = ['string'];
      if (schema['minLength'] !== undefined) parts.push(`of at least ${schema['minLength']} characters`);
      if (schema['pattern'] !== undefined) parts.push(`matching /${schema['pattern']}/`);
      return parts.join(' ');
    }
    case 'Boolean':
      return 'boolean';
    case 'Null':
      return 'null';
    case 'Literal':
      return JSON.stringify(schema['const']);
    case 'Array': {
      const item = expected(schema['items'] as TSchema);
      const min = schema['minItems'] !== undefined ? ` with at least ${schema['minItems']} items` : '';
      const max = schema['maxItems'] !== undefined ? ` with at most ${schema['maxItems']} items` : '';
      return `array of ${item}${min}${max}`;
    }
    case 'Tuple':
      return `array of ${schema['minItems']} items`;
    case 'Object': {
      const required = (schema['required'] as string[] | undefined) ?? [];
      return required.length > 0 && required.length <= 4 ? `object {${required.join(', ')}}` : 'object';
    }
    case 'Record':
      return 'object';
    case 'Uint8Array':
      return 'bytes';
    case 'Union':
      return [...new Set((schema['anyOf'] as TSchema[]).map(expected))].join(' or ');
    default:
      return String(schema[Kind] ?? 'value').toLowerCase();
  }
}

function shown(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  let s: string;
  try {
    s = JSON.stringify(value) ?? String(value);
  } catch {
    s = String(value);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
