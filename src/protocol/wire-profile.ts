// Which Dynamo release's wire formats this process speaks. Dynamo changed several formats between its 0.8.0 release
// (the release this worker implements) and later main; a deployment runs one Dynamo version, so one setting picks
// one profile for every wire at once (the worker's `--dynamo-wire` / DYN_WIRE_PROFILE, the frontend's option):
//
//                         0.8 (default)                                   main
//   TCP request frame     u16 path_len|path|u32 len|payload               ... |u16 headers_len|headers|u32 len|payload
//   TCP address / path    host:port/{endpoint}                            host:port/{instance_id:x}/{endpoint}
//   HTTP request plane    HTTP/1.1 and h2c                                h2c (HTTP/1.1 accepted too)
//   KV events             JSON RouterEvent on ...component.{c}.kv-events  msgpack EventEnvelope{RouterEvent}
//   load                  JSON {worker_id, dp_rank, active_decode_blocks…} on namespace.{ns}.kv_metrics; main: msgpack
//   local-indexer query   NATS request/reply on                           endpoint worker_kv_indexer_query_dp{rank}
//                         ...component.{c}.worker_kv_indexer_query.{id}   on the request plane
//
// The model card is the same in both (the reference's field rules did not change: see mdc.ts).
import { Type, type Static } from '@sinclair/typebox';
import { LlmError } from '../errors.js';

export const WireProfileSchema = Type.Union([Type.Literal('0.8'), Type.Literal('main')], {
  $id: 'WireProfile',
  title: 'WireProfile',
  description: 'Dynamo wire formats: 0.8 (the 0.8.0 release) or main (later Dynamo main)',
});
export type WireProfile = Static<typeof WireProfileSchema>;

/** The release this worker implements. */
export const DEFAULT_WIRE_PROFILE: WireProfile = '0.8';

export const WIRE_PROFILES: readonly WireProfile[] = ['0.8', 'main'];

/** Reads a profile name given by a user or a test ("0.8", "main"); anything else is a clear config error. */
export function parseWireProfile(text: string, what = 'wire profile'): WireProfile {
  const value = text.trim();
  if (value === '0.8' || value === 'main') return value;
  throw new LlmError('LLM_ERR_CONFIG', `${what} "${text}": expected one of ${WIRE_PROFILES.join(', ')}`);
}
