// The event-plane payloads of the 0.8 wire profile (wire-profile.ts). Dynamo 0.8 publishes each event as the bare
// JSON of its struct on the subject (no envelope, no msgpack), and its structs are older than main's:
//   RouterEvent   {worker_id, event: {event_id, data, dp_rank}}               (no storage_tier)
//   stored data   {parent_hash, blocks: [{block_hash, tokens_hash, mm_extra_info}]}   (no start_position)
//   ActiveLoad    {worker_id, dp_rank, active_decode_blocks, active_prefill_tokens}   (no kv_used_blocks: the
//                 worker's used KV blocks go in active_decode_blocks)
//   the local indexer's answer: {"Events": [RouterEvent]} | {"TreeDump": [RouterEvent]} | {"TooNew": {...}} |
//                 {"InvalidRange": {...}}   (main wraps the lists as {events, last_event_id} and adds Error; a 0.8
//                 worker has no error answer: a query it cannot read gets no reply)
// Field order follows the reference's struct order, so the JSON text is the reference's byte for byte. In memory the
// worker and the router keep main's shapes (protocol/events.ts, kv-query.ts); these functions convert at the wire.
import { Type, type StaticDecode } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import { Nullable, Opt, U32, U64 } from './common.js';
import type { ActiveLoad, KvCacheEventData, RouterEvent } from './events.js';
import { parseJsonExact, stringifyJsonExact } from './json.js';
import type { WorkerKvQueryResponse } from './kv-query.js';
import { parseWire } from './validate.js';

/** `namespace.{ns}.component.{comp}.worker_kv_indexer_query.{worker_id}` (worker id in decimal): the subject a 0.8
 * worker answers local-indexer queries on, by NATS request/reply. */
export function workerKvIndexerQuerySubject08(ns: string, component: string, workerId: bigint): string {
  return `namespace.${ns}.component.${component}.worker_kv_indexer_query.${workerId.toString(10)}`;
}

const StoredBlock08Schema = Type.Object({
  block_hash: U64(),
  tokens_hash: U64(),
  mm_extra_info: Opt(Type.Unknown()),
});

const KvCacheEventData08Schema = Type.Union([
  Type.Object({ stored: Type.Object({ parent_hash: Nullable(U64()), blocks: Type.Array(StoredBlock08Schema) }) }, { additionalProperties: false }),
  Type.Object({ removed: Type.Object({ block_hashes: Type.Array(U64()) }) }, { additionalProperties: false }),
  Type.Literal('cleared'),
]);

export const RouterEvent08Schema = Type.Object(
  {
    worker_id: U64(),
    event: Type.Object({ event_id: U64(), data: KvCacheEventData08Schema, dp_rank: Type.Optional(U32()) }),
  },
  { $id: 'RouterEvent08', title: 'RouterEvent (Dynamo 0.8)', description: 'JSON on namespace.{ns}.component.{c}.kv-events' },
);
type RouterEvent08 = StaticDecode<typeof RouterEvent08Schema>;

export const ActiveLoad08Schema = Type.Object(
  {
    worker_id: U64(),
    dp_rank: Type.Optional(U32()),
    active_decode_blocks: Opt(Type.Integer({ minimum: 0 })),
    active_prefill_tokens: Opt(Type.Integer({ minimum: 0 })),
  },
  { $id: 'ActiveLoad08', title: 'ActiveLoad (Dynamo 0.8)', description: 'JSON on namespace.{ns}.kv_metrics' },
);

const WorkerKvQueryResponse08Schema = Type.Union([
  Type.Object({ Events: Type.Array(RouterEvent08Schema) }, { additionalProperties: false }),
  Type.Object({ TreeDump: Type.Array(RouterEvent08Schema) }, { additionalProperties: false }),
  Type.Object(
    { TooNew: Type.Object({ requested_start: Nullable(U64()), requested_end: Nullable(U64()), newest_available: U64() }) },
    { additionalProperties: false },
  ),
  Type.Object({ InvalidRange: Type.Object({ start_id: U64(), end_id: U64() }) }, { additionalProperties: false }),
]);

// ---------------------------------------------------------------------------------------------------------------
// main shapes → 0.8 JSON values (keys in the reference's struct order)

function data08(data: KvCacheEventData): unknown {
  if (data === 'cleared') return 'cleared';
  if ('removed' in data) return { removed: { block_hashes: data.removed.block_hashes } };
  return {
    stored: {
      parent_hash: data.stored.parent_hash,
      blocks: data.stored.blocks.map((b) => ({ block_hash: b.block_hash, tokens_hash: b.tokens_hash, mm_extra_info: b.mm_extra_info ?? null })),
    },
  };
}

function routerEvent08(e: RouterEvent): unknown {
  return { worker_id: e.worker_id, event: { event_id: e.event.event_id, data: data08(e.event.data), dp_rank: e.event.dp_rank } };
}

const jsonBytes = (value: unknown): Uint8Array => Buffer.from(stringifyJsonExact(value), 'utf8');

export function encodeRouterEvent08(e: RouterEvent): Uint8Array {
  return jsonBytes(routerEvent08(e));
}

/** The worker's used KV blocks are 0.8's `active_decode_blocks`. */
export function encodeActiveLoad08(load: ActiveLoad): Uint8Array {
  return jsonBytes({
    worker_id: load.worker_id,
    dp_rank: load.dp_rank,
    active_decode_blocks: load.kv_used_blocks ?? load.active_decode_blocks,
    active_prefill_tokens: load.active_prefill_tokens,
  });
}

/** An answer in 0.8's form. 0.8 has no Error answer: passing one is a caller's bug, refused with the message it
 * carried. */
export function encodeWorkerKvQueryResponse08(response: WorkerKvQueryResponse): Uint8Array {
  if ('Events' in response) return jsonBytes({ Events: response.Events.events.map(routerEvent08) });
  if ('TreeDump' in response) return jsonBytes({ TreeDump: response.TreeDump.events.map(routerEvent08) });
  if ('Error' in response) throw new LlmError('LLM_ERR_PROTOCOL', `worker kv indexer answer: Dynamo 0.8 has no error answer (${response.Error})`);
  return jsonBytes(response);
}

/** Our indexer's answer narrowed to 0.8's range rule (get_events_in_id_range): Events stop at end_event_id (at the
 * newest event when absent), and TooNew names that effective end rather than null. */
export function rangeAnswer08(answer: WorkerKvQueryResponse, endEventId: bigint | null): WorkerKvQueryResponse {
  if ('Events' in answer && endEventId !== null) {
    return { Events: { ...answer.Events, events: answer.Events.events.filter((e) => e.event.event_id <= endEventId) } };
  }
  if ('TooNew' in answer) return { TooNew: { ...answer.TooNew, requested_end: endEventId ?? answer.TooNew.newest_available } };
  return answer;
}

// ---------------------------------------------------------------------------------------------------------------
// 0.8 JSON → main shapes

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return parseJsonExact(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new LlmError('LLM_ERR_PROTOCOL', `${what}: not valid JSON (${(err as Error).message})`);
  }
}

function fromRouterEvent08(e: RouterEvent08): RouterEvent {
  const d = e.event.data;
  const data: KvCacheEventData =
    d === 'cleared'
      ? 'cleared'
      : 'removed' in d
        ? { removed: { block_hashes: d.removed.block_hashes } }
        : { stored: { parent_hash: d.stored.parent_hash, blocks: d.stored.blocks.map((b) => ({ block_hash: b.block_hash, tokens_hash: b.tokens_hash })) } };
  // 0.8 has no storage tiers: every block it reports is in device memory
  return { worker_id: e.worker_id, storage_tier: 'device', event: { event_id: e.event.event_id, data, dp_rank: e.event.dp_rank ?? 0 } };
}

export function decodeRouterEvent08(bytes: Uint8Array, what = 'kv event'): RouterEvent {
  return fromRouterEvent08(parseWire(RouterEvent08Schema, parseJson(bytes, what), what, 'LLM_ERR_PROTOCOL'));
}

export function decodeActiveLoad08(bytes: Uint8Array, what = 'load metrics'): ActiveLoad {
  const load = parseWire(ActiveLoad08Schema, parseJson(bytes, what), what, 'LLM_ERR_PROTOCOL');
  return {
    worker_id: load.worker_id,
    dp_rank: load.dp_rank ?? 0,
    active_decode_blocks: load.active_decode_blocks ?? null,
    active_prefill_tokens: load.active_prefill_tokens ?? null,
    kv_used_blocks: load.active_decode_blocks ?? null,
  };
}

/** A 0.8 answer as main's shape. `last_event_id`: for Events the newest id in the batch; for a TreeDump, whose ids are
 * synthetic, 0 ("not said": the router then takes the next live event as it comes). */
export function decodeWorkerKvQueryResponse08(bytes: Uint8Array, what = 'worker kv indexer answer'): WorkerKvQueryResponse {
  const r = parseWire(WorkerKvQueryResponse08Schema, parseJson(bytes, what), what, 'LLM_ERR_PROTOCOL');
  if ('Events' in r) {
    const events = r.Events.map(fromRouterEvent08);
    return { Events: { events, last_event_id: events.length === 0 ? 0n : events[events.length - 1].event.event_id } };
  }
  if ('TreeDump' in r) return { TreeDump: { events: r.TreeDump.map(fromRouterEvent08), last_event_id: 0n } };
  return r;
}
