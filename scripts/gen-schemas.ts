// Writes one JSON Schema file per exported wire schema (every typebox schema with a `$id` exported from
// src/protocol) plus the worker configuration schema into config/schemas/. `npm run schemas` regenerates them;
// test/protocol-schemas.test.ts fails when the files drift from the typebox source.
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Kind, type TSchema } from '@sinclair/typebox';
import * as protocol from '../src/protocol/index.js';

export const SCHEMA_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'config', 'schemas');
const CONFIG_SCHEMA_MODULE = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'config', 'schema.ts');
const JSON_SCHEMA_DIALECT = 'https://json-schema.org/draft/2020-12/schema';

// Keywords first in this order, any others alphabetically; `properties` keeps declaration order (deterministic).
const KEY_ORDER = [
  '$schema', '$id', 'title', 'description', 'type', 'format', 'const', 'enum', 'default',
  'minimum', 'exclusiveMinimum', 'maximum', 'exclusiveMaximum', 'minLength', 'pattern',
  'minItems', 'maxItems', 'items', 'minProperties', 'maxProperties', 'properties', 'required',
  'patternProperties', 'additionalProperties', 'anyOf',
];

function isSchema(value: unknown): value is TSchema {
  return typeof value === 'object' && value !== null && Kind in value;
}

/** `PreprocessedRequest` → `preprocessed-request.schema.json` */
export function schemaFileName(id: string): string {
  return `${id.replace(/OpenAi/g, 'Openai').replace(/([a-z0-9])([A-Z])/g, '$1-$2').replace(/([A-Z])([A-Z][a-z])/g, '$1-$2').toLowerCase()}.schema.json`;
}

function sortKeys(obj: Record<string, unknown>, keepOrder: boolean): Record<string, unknown> {
  const keys = Object.keys(obj);
  if (!keepOrder) {
    keys.sort((a, b) => {
      const ia = KEY_ORDER.indexOf(a);
      const ib = KEY_ORDER.indexOf(b);
      if (ia !== -1 || ib !== -1) return (ia === -1 ? KEY_ORDER.length : ia) - (ib === -1 ? KEY_ORDER.length : ib);
      return a < b ? -1 : a > b ? 1 : 0;
    });
  }
  const out: Record<string, unknown> = {};
  for (const k of keys) out[k] = obj[k];
  return out;
}

/** A typebox schema → plain JSON Schema: typebox-only kinds mapped to JSON types, nested `$id`s dropped. */
export function toJsonSchema(node: unknown, root = true, inProperties = false): unknown {
  if (Array.isArray(node)) return node.map((n) => toJsonSchema(n, false));
  if (typeof node === 'bigint') return Number(node);
  if (typeof node !== 'object' || node === null) return node;
  const src = node as Record<string | symbol, unknown>;
  if (inProperties) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(src)) out[k] = toJsonSchema(v, false);
    return out;
  }
  const kind = src[Kind];
  let obj: Record<string, unknown>;
  if (src['format'] === 'uint64') {
    obj = { type: 'integer', minimum: 0, format: 'uint64' };
    if (typeof src['description'] === 'string') obj['description'] = src['description'];
  } else if (kind === 'BigInt') {
    obj = { type: 'integer' };
  } else if (kind === 'Uint8Array') {
    obj = { type: 'string', contentEncoding: 'base64', description: 'raw bytes (msgpack bin on the wire)' };
    if (typeof src['description'] === 'string') obj['description'] = `${src['description']}; raw bytes (msgpack bin on the wire)`;
  } else {
    obj = {};
    for (const [k, v] of Object.entries(src)) {
      if (k === '$id' && !root) continue;
      obj[k] = toJsonSchema(v, false, k === 'properties' || k === 'patternProperties' || k === '$defs');
    }
  }
  return sortKeys(obj, false);
}

function fileText(schema: TSchema, fileName: string): string {
  const json = toJsonSchema(schema) as Record<string, unknown>;
  const withHeader = sortKeys({ ...json, $schema: JSON_SCHEMA_DIALECT, $id: fileName, title: json['title'] ?? schema.$id }, false);
  return `${JSON.stringify(withHeader, null, 2)}\n`;
}

/** File name → content of every schema file the generator writes. */
export async function generateSchemaFiles(): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  const add = (schema: TSchema, fileName: string) => {
    if (files.has(fileName)) throw new Error(`two schemas map to ${fileName}`);
    files.set(fileName, fileText(schema, fileName));
  };
  for (const value of Object.values(protocol)) {
    if (isSchema(value) && typeof value.$id === 'string') add(value, schemaFileName(value.$id));
  }
  // The config helper's module; optional so the protocol schemas can be generated before it exists.
  if (existsSync(CONFIG_SCHEMA_MODULE)) {
    const configModule: { WorkerConfigSchema?: unknown } = await import(pathToFileURL(CONFIG_SCHEMA_MODULE).href);
    if (isSchema(configModule.WorkerConfigSchema)) {
      add({ ...configModule.WorkerConfigSchema, title: configModule.WorkerConfigSchema.title ?? 'WorkerConfig' }, 'worker-config.schema.json');
    }
  }
  return new Map([...files.entries()].sort(([a], [b]) => (a < b ? -1 : 1)));
}

async function main(): Promise<void> {
  const files = await generateSchemaFiles();
  mkdirSync(SCHEMA_DIR, { recursive: true });
  for (const old of readdirSync(SCHEMA_DIR)) {
    if (old.endsWith('.schema.json') && !files.has(old)) rmSync(join(SCHEMA_DIR, old));
  }
  for (const [name, text] of files) writeFileSync(join(SCHEMA_DIR, name), text);
  console.log(`wrote ${files.size} schema files to ${SCHEMA_DIR}`);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main();
}
