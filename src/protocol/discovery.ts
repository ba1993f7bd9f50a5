// Discovery records and keys (reference §4.2). The same JSON goes into etcd, the file store and the memory store.
//
// Instance id = the process's primary lease id, a u64: `bigint` in memory, lowercase hex without prefix or padding
// in keys and addresses (`{instance_id:x}`), and a bare JSON integer in record bodies (written and read exactly by
// encodeDiscoveryRecord / decodeDiscoveryRecord).
import { Type, type StaticDecode } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import { Opt, U64, U64_MAX } from './common.js';
import { parseJsonExact, stringifyJsonExact } from './json.js';
import { WireModelCardSchema } from './mdc.js';
import { parseWire } from './validate.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from './wire-profile.js';

export const DISCOVERY_ROOT = 'v1';
export const INSTANCES_PREFIX = 'v1/instances/';
export const MDC_PREFIX = 'v1/mdc/';
export const EVENT_CHANNELS_PREFIX = 'v1/event_channels/';

// ---------------------------------------------------------------------------------------------------------------
// instance ids

/** 123n → "7b" (lowercase hex, no prefix, no padding). */
export function formatInstanceId(id: bigint): string {
  if (id < 0n || id > U64_MAX) throw new LlmError('LLM_ERR_PROTOCOL', `instance id ${id} is outside u64`);
  return id.toString(16);
}

/** "7b" → 123n. Accepts 1–16 hex digits (either case); anything else is refused with the text at fault. */
export function parseInstanceId(hex: string): bigint {
  if (!/^[0-9a-fA-F]{1,16}$/.test(hex)) {
    throw new LlmError('LLM_ERR_PROTOCOL', `instance id "${hex}": expected 1 to 16 hex digits`);
  }
  return BigInt(`0x${hex}`);
}

/** An etcd lease id as the etcd3 package reports it (decimal string, possibly negative int64) → u64 instance id. */
export function instanceIdFromLeaseId(leaseId: string | number | bigint): bigint {
  const v = BigInt(leaseId);
  return v < 0n ? v + (1n << 64n) : v;
}

// ---------------------------------------------------------------------------------------------------------------
// keys

function checkSegment(what: string, value: string): string {
  if (value.length === 0 || value.includes('/')) {
    throw new LlmError('LLM_ERR_DISCOVERY', `${what} "${value}": must be non-empty and contain no "/"`);
  }
  return value;
}

/** `v1/instances/{ns}/{component}/{endpoint}/{instance_id:x}` */
export function instanceKey(ns: string, component: string, endpoint: string, instanceId: bigint): string {
  return `${instancesPrefix(ns, component, endpoint)}${formatInstanceId(instanceId)}`;
}

/** Watch prefix for instances: all, of a namespace, of a component or of one endpoint (always ends with "/"). */
export function instancesPrefix(ns?: string, component?: string, endpoint?: string): string {
  return scopedPrefix(INSTANCES_PREFIX, [
    ['namespace', ns],
    ['component', component],
    ['endpoint', endpoint],
  ]);
}

/** `v1/mdc/{ns}/{component}/{endpoint}/{instance_id:x}[/{lora_slug}]` */
export function mdcKey(ns: string, component: string, endpoint: string, instanceId: bigint, loraSlug?: string): string {
  const base = `${mdcPrefix(ns, component, endpoint)}${formatInstanceId(instanceId)}`;
  return loraSlug === undefined ? base : `${base}/${checkSegment('lora slug', loraSlug)}`;
}

export function mdcPrefix(ns?: string, component?: string, endpoint?: string): string {
  return scopedPrefix(MDC_PREFIX, [
    ['namespace', ns],
    ['component', component],
    ['endpoint', endpoint],
  ]);
}

/** `v1/event_channels/{ns}/{component}/{topic}/{instance_id:x}` */
export function eventChannelKey(ns: string, component: string, topic: string, instanceId: bigint): string {
  return `${eventChannelsPrefix(ns, component, topic)}${formatInstanceId(instanceId)}`;
}

export function eventChannelsPrefix(ns?: string, component?: string, topic?: string): string {
  return scopedPrefix(EVENT_CHANNELS_PREFIX, [
    ['namespace', ns],
    ['component', component],
    ['topic', topic],
  ]);
}

function scopedPrefix(root: string, parts: [string, string | undefined][]): string {
  let out = root;
  let ended = false;
  for (const [what, value] of parts) {
    if (value === undefined) {
      ended = true;
      continue;
    }
    if (ended) throw new LlmError('LLM_ERR_DISCOVERY', `discovery prefix: ${what} given without the levels above it`);
    out += `${checkSegment(what, value)}/`;
  }
  return out;
}

export type DiscoveryKeyKind = 'instance' | 'mdc' | 'event_channel';

export interface ParsedDiscoveryKey {
  kind: DiscoveryKeyKind;
  namespace: string;
  component: string;
  /** Endpoint name for instance and mdc keys, topic for event channel keys. */
  name: string;
  instanceId: bigint;
  /** Only for mdc keys of a LoRA adapter. */
  loraSlug?: string;
}

/** Splits a discovery key back into its parts; throws LLM_ERR_PROTOCOL naming the key when it is not one of ours. */
export function parseDiscoveryKey(key: string): ParsedDiscoveryKey {
  const parts = key.split('/');
  const kinds: Record<string, DiscoveryKeyKind> = { instances: 'instance', mdc: 'mdc', event_channels: 'event_channel' };
  const kind = parts[0] === DISCOVERY_ROOT ? kinds[parts[1] ?? ''] : undefined;
  const maxParts = kind === 'mdc' ? 7 : 6;
  if (kind === undefined || parts.length < 6 || parts.length > maxParts || parts.slice(2).some((p) => p === '')) {
    throw new LlmError('LLM_ERR_PROTOCOL', `discovery key "${key}": not a v1 instance, mdc or event channel key`);
  }
  const parsed: ParsedDiscoveryKey = {
    kind,
    namespace: parts[2]!,
    component: parts[3]!,
    name: parts[4]!,
    instanceId: parseInstanceId(parts[5]!),
  };
  if (parts.length === 7) parsed.loraSlug = parts[6]!;
  return parsed;
}

// ---------------------------------------------------------------------------------------------------------------
// transport addresses

/** TCP plane address advertised for an endpoint: `host:port/{request path}` (see tcpRequestPath). */
export function tcpTransportAddress(hostPort: string, instanceId: bigint, endpoint: string, profile: WireProfile = DEFAULT_WIRE_PROFILE): string {
  return `${hostPort}/${tcpRequestPath(instanceId, endpoint, profile)}`;
}

/** The request path inside a TCP request frame: `{endpoint}` in 0.8, `{instance_id:x}/{endpoint}` in main (where one
 * process's server can carry several instances of one endpoint). */
export function tcpRequestPath(instanceId: bigint, endpoint: string, profile: WireProfile = DEFAULT_WIRE_PROFILE): string {
  checkSegment('endpoint', endpoint);
  return profile === '0.8' ? endpoint : `${formatInstanceId(instanceId)}/${endpoint}`;
}

/** Which profile's request frame a TCP transport address asks for: a path of one segment is 0.8's `{endpoint}`, two
 * segments are main's `{instance_id:x}/{endpoint}` (endpoint names hold no "/"). Lets a caller talk to workers of
 * either release. */
export function tcpProfileOfPath(path: string): WireProfile {
  return path.includes('/') ? 'main' : '0.8';
}

/** HTTP plane URL: `http://host:port/v1/rpc/{endpoint}`. */
export function httpTransportAddress(hostPort: string, endpoint: string): string {
  return `http://${hostPort}/v1/rpc/${endpoint}`;
}

/** NATS plane subject: `{ns}_{component}.{endpoint}-{instance_id:x}`. */
export function natsRequestSubject(ns: string, component: string, endpoint: string, instanceId: bigint): string {
  return `${ns}_${component}.${endpoint}-${formatInstanceId(instanceId)}`;
}

// ---------------------------------------------------------------------------------------------------------------
// records

/** How to reach an endpoint instance; serialised like a Rust enum, one key. */
export const TransportSchema = Type.Union(
  [
    Type.Object({ tcp: Type.String() }, { additionalProperties: false }),
    Type.Object({ http: Type.String() }, { additionalProperties: false }),
    Type.Object({ nats_tcp: Type.String() }, { additionalProperties: false }),
  ],
  { $id: 'Transport', title: 'Transport' },
);
export type Transport = StaticDecode<typeof TransportSchema>;

export const InstanceRecordSchema = Type.Object(
  {
    type: Type.Literal('Endpoint'),
    namespace: Type.String(),
    component: Type.String(),
    endpoint: Type.String(),
    instance_id: U64(),
    transport: TransportSchema,
    device_type: Opt(Type.String()),
  },
  { $id: 'InstanceRecord', title: 'InstanceRecord', description: 'value under v1/instances/{ns}/{component}/{endpoint}/{instance_id:x}' },
);
export type InstanceRecord = StaticDecode<typeof InstanceRecordSchema>;

export const ModelRecordSchema = Type.Object(
  {
    type: Type.Literal('Model'),
    namespace: Type.String(),
    component: Type.String(),
    endpoint: Type.String(),
    instance_id: U64(),
    card_json: WireModelCardSchema,
    model_suffix: Opt(Type.String()),
  },
  { $id: 'ModelRecord', title: 'ModelRecord', description: 'value under v1/mdc/{ns}/{component}/{endpoint}/{instance_id:x}[/{lora_slug}]' },
);
export type ModelRecord = StaticDecode<typeof ModelRecordSchema>;

export const EventChannelTransportSchema = Type.Union(
  [
    Type.Object({ kind: Type.Literal('Nats'), config: Type.Object({ subject_prefix: Type.String() }) }),
    Type.Object({ kind: Type.Literal('Zmq'), config: Type.Object({ endpoint: Type.String() }) }),
  ],
  { title: 'EventChannelTransport' },
);

export const EventChannelRecordSchema = Type.Object(
  {
    type: Type.Literal('EventChannel'),
    namespace: Type.String(),
    component: Type.String(),
    topic: Type.String(),
    instance_id: U64(),
    transport: EventChannelTransportSchema,
  },
  { $id: 'EventChannelRecord', title: 'EventChannelRecord', description: 'value under v1/event_channels/{ns}/{component}/{topic}/{instance_id:x}' },
);
export type EventChannelRecord = StaticDecode<typeof EventChannelRecordSchema>;

export const DiscoveryRecordSchema = Type.Union([InstanceRecordSchema, ModelRecordSchema, EventChannelRecordSchema], {
  $id: 'DiscoveryRecord',
  title: 'DiscoveryRecord',
});
export type DiscoveryRecord = StaticDecode<typeof DiscoveryRecordSchema>;

/** Record → JSON text for the store (u64 ids as exact integer literals). */
export function encodeDiscoveryRecord(record: DiscoveryRecord): string {
  return stringifyJsonExact(record);
}

/** Store value (text or bytes) → checked record. `key` names the culprit in errors. */
export function decodeDiscoveryRecord(value: string | Uint8Array, key: string): DiscoveryRecord {
  const text = typeof value === 'string' ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('utf8');
  let json: unknown;
  try {
    json = parseJsonExact(text);
  } catch (err) {
    throw new LlmError('LLM_ERR_PROTOCOL', `discovery record at "${key}": not valid JSON (${(err as Error).message})`);
  }
  return parseWire(recordSchemaFor(json), json, `discovery record at "${key}"`, 'LLM_ERR_PROTOCOL');
}

// Pick the schema by the "type" tag so errors point inside the right record kind instead of at the union.
function recordSchemaFor(json: unknown) {
  const tag = typeof json === 'object' && json !== null ? (json as { type?: unknown }).type : undefined;
  if (tag === 'Endpoint') return InstanceRecordSchema;
  if (tag === 'Model') return ModelRecordSchema;
  if (tag === 'EventChannel') return EventChannelRecordSchema;
  return DiscoveryRecordSchema;
}
