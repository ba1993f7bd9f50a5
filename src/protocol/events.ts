// Event plane payloads and subjects (reference §5.1, §5.2, §10.2). Wire format: msgpack with named fields (maps);
// u64 values are msgpack integers, decoded here as bigint (`useBigInt64`); `payload` is msgpack bin.
import { Type, type StaticDecode } from '@sinclair/typebox';
import { decode as msgpackDecode, encode as msgpackEncode } from '@msgpack/msgpack';
import { LlmError } from '../errors.js';
import { Nullable, Opt, U32, U64 } from './common.js';
import { parseWire } from './validate.js';

export const KV_EVENTS_TOPIC = 'kv-events';
export const KV_METRICS_TOPIC = 'kv_metrics';
export const PREFILL_EVENTS_TOPIC = 'prefill_events';
export const ACTIVE_SEQUENCES_EVENTS_TOPIC = 'active_sequences_events';

/** `namespace.{ns}` or `namespace.{ns}.component.{comp}`: the scope an event channel record advertises. */
export function eventSubjectPrefix(ns: string, component?: string): string {
  return component === undefined ? `namespace.${ns}` : `namespace.${ns}.component.${component}`;
}

/** `namespace.{ns}[.component.{comp}].{topic}` */
export function eventSubject(ns: string, topic: string, component?: string): string {
  return `${eventSubjectPrefix(ns, component)}.${topic}`;
}

/** `namespace.{ns}.component.{comp}.kv-events` */
export function kvEventsSubject(ns: string, component: string): string {
  return eventSubject(ns, KV_EVENTS_TOPIC, component);
}

/** `namespace.{ns}.kv_metrics` */
export function kvMetricsSubject(ns: string): string {
  return eventSubject(ns, KV_METRICS_TOPIC);
}

export const EventEnvelopeSchema = Type.Object(
  {
    publisher_id: U64(),
    sequence: U64(),
    // u64 like the others: a millisecond timestamp needs 41 bits, and msgpack must carry it as uint64, not float64
    published_at: U64({ description: 'milliseconds since the Unix epoch' }),
    topic: Type.String(),
    payload: Type.Uint8Array({ description: 'msgpack of the topic payload (RouterEvent, ActiveLoad, ...)' }),
  },
  { $id: 'EventEnvelope', title: 'EventEnvelope' },
);
export type EventEnvelope = StaticDecode<typeof EventEnvelopeSchema>;

export const StorageTierSchema = Type.Union(
  [Type.Literal('device'), Type.Literal('host_pinned'), Type.Literal('disk'), Type.Literal('external')],
  { title: 'StorageTier' },
);
export type StorageTier = StaticDecode<typeof StorageTierSchema>;

export const StoredBlockSchema = Type.Object(
  {
    block_hash: U64({ description: 'engine block hash: opaque id used for parent links and removals' }),
    tokens_hash: U64({ description: 'xxh3-64 (seed 1337) of the block token ids as little-endian u32' }),
    mm_extra_info: Opt(Type.Unknown()),
  },
  { title: 'StoredBlock' },
);

export const KvCacheStoreDataSchema = Type.Object(
  {
    parent_hash: Nullable(U64()),
    start_position: Opt(U32()),
    blocks: Type.Array(StoredBlockSchema),
  },
  { title: 'KvCacheStoreData' },
);

export const KvCacheRemoveDataSchema = Type.Object(
  { block_hashes: Type.Array(U64()) },
  { title: 'KvCacheRemoveData' },
);

/** Rust enum, externally tagged: `{"stored": {...}}`, `{"removed": {...}}` or the bare string `"cleared"`. */
export const KvCacheEventDataSchema = Type.Union(
  [
    Type.Object({ stored: KvCacheStoreDataSchema }, { additionalProperties: false }),
    Type.Object({ removed: KvCacheRemoveDataSchema }, { additionalProperties: false }),
    Type.Literal('cleared'),
  ],
  { title: 'KvCacheEventData' },
);
export type KvCacheEventData = StaticDecode<typeof KvCacheEventDataSchema>;

export const KvCacheEventSchema = Type.Object(
  { event_id: U64(), data: KvCacheEventDataSchema, dp_rank: U32() },
  { title: 'KvCacheEvent' },
);

export const RouterEventSchema = Type.Object(
  { worker_id: U64(), storage_tier: StorageTierSchema, event: KvCacheEventSchema },
  { $id: 'RouterEvent', title: 'RouterEvent', description: 'payload of kv-events envelopes' },
);
export type RouterEvent = StaticDecode<typeof RouterEventSchema>;

export const ActiveLoadSchema = Type.Object(
  {
    worker_id: U64(),
    dp_rank: U32(),
    active_decode_blocks: Nullable(Type.Integer({ minimum: 0 })),
    active_prefill_tokens: Nullable(Type.Integer({ minimum: 0 })),
    kv_used_blocks: Nullable(Type.Integer({ minimum: 0 })),
  },
  { $id: 'ActiveLoad', title: 'ActiveLoad', description: 'payload of kv_metrics envelopes' },
);
export type ActiveLoad = StaticDecode<typeof ActiveLoadSchema>;

/** Legacy (removed Jan 2026) load report, kept so old publishers can still be read. */
export const ForwardPassMetricsSchema = Type.Object(
  {
    worker_stats: Type.Object({
      data_parallel_rank: Opt(U32()),
      request_active_slots: Type.Integer({ minimum: 0 }),
      request_total_slots: Type.Integer({ minimum: 0 }),
      num_requests_waiting: Type.Integer({ minimum: 0 }),
    }),
    kv_stats: Type.Object({
      kv_active_blocks: Type.Integer({ minimum: 0 }),
      kv_total_blocks: Type.Integer({ minimum: 0 }),
      gpu_cache_usage_perc: Type.Number({ minimum: 0, maximum: 1 }),
      gpu_prefix_cache_hit_rate: Type.Number({ minimum: 0, maximum: 1 }),
    }),
    spec_decode_stats: Opt(
      Type.Object({
        num_spec_tokens: Opt(Type.Integer({ minimum: 0 })),
        num_drafts: Type.Integer({ minimum: 0 }),
        num_draft_tokens: Type.Integer({ minimum: 0 }),
        num_accepted_tokens: Type.Integer({ minimum: 0 }),
        num_accepted_tokens_per_pos: Type.Array(Type.Integer({ minimum: 0 })),
      }),
    ),
  },
  { $id: 'ForwardPassMetrics', title: 'ForwardPassMetrics' },
);
export type ForwardPassMetrics = StaticDecode<typeof ForwardPassMetricsSchema>;

// ---------------------------------------------------------------------------------------------------------------
// msgpack codecs

const MSGPACK_OPTIONS = { useBigInt64: true } as const;

/** Any payload object → msgpack bytes (bigint → uint64/int64, maps keep named fields). */
export function encodeMsgpack(value: unknown): Uint8Array {
  return msgpackEncode(value, MSGPACK_OPTIONS);
}

function decodeMsgpack(bytes: Uint8Array, what: string): unknown {
  try {
    return msgpackDecode(bytes, MSGPACK_OPTIONS);
  } catch (err) {
    throw new LlmError('LLM_ERR_PROTOCOL', `${what}: not valid msgpack (${(err as Error).message})`);
  }
}

export function encodeEventEnvelope(envelope: EventEnvelope): Uint8Array {
  return encodeMsgpack(envelope);
}

export function decodeEventEnvelope(bytes: Uint8Array, what = 'event envelope'): EventEnvelope {
  const raw = decodeMsgpack(bytes, what);
  // A serde `Vec<u8>` without serde_bytes arrives as an array of small ints rather than bin: accept both.
  if (typeof raw === 'object' && raw !== null && Array.isArray((raw as { payload?: unknown }).payload)) {
    const arr = (raw as { payload: unknown[] }).payload;
    if (arr.every((b) => typeof b === 'number' && Number.isInteger(b) && b >= 0 && b <= 255)) {
      (raw as { payload: unknown }).payload = Uint8Array.from(arr as number[]);
    }
  }
  return parseWire(EventEnvelopeSchema, raw, what, 'LLM_ERR_PROTOCOL');
}

export function encodeRouterEvent(event: RouterEvent): Uint8Array {
  return encodeMsgpack(event);
}

export function decodeRouterEvent(bytes: Uint8Array, what = 'kv event'): RouterEvent {
  return parseWire(RouterEventSchema, decodeMsgpack(bytes, what), what, 'LLM_ERR_PROTOCOL');
}

export function encodeActiveLoad(load: ActiveLoad): Uint8Array {
  return encodeMsgpack(load);
}

export function decodeActiveLoad(bytes: Uint8Array, what = 'load metrics'): ActiveLoad {
  return parseWire(ActiveLoadSchema, decodeMsgpack(bytes, what), what, 'LLM_ERR_PROTOCOL');
}
