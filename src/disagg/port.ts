// What disaggregated serving asks of the worker's core (scheduler + ranks): a typed port the topology passes in, so
// that src/disagg knows no actor. The supervisor satisfies it structurally.
import type { EngineSummary } from '../engine/summary.js';
import type { PreprocessedRequest } from '../protocol/request.js';
import type { LlmResponseChunk } from '../protocol/response.js';
import type { DisaggKvOp, DisaggKvReply, PrefixPages } from '../scheduler/kv-transfer.js';
import type { HandOver } from '../scheduler/request.js';

export interface KvPortGenerateOptions {
  signal?: AbortSignal;
  requestId?: string;
  /** Prefill side: park the prompt's KV under this key when the request stops at its first token. */
  parkKvAs?: string;
  /** Decode side: the request arrives prefilled, its KV parked under handOver.kvKey. */
  handOver?: HandOver;
}

export interface KvPort {
  /** The engine now in service (a new object after a restart: a new pool). Throws while the core restarts. */
  readonly engine: EngineSummary;
  /** Streams one request's response chunks; a failure throws its coded LlmError. */
  generate(request: PreprocessedRequest, options: KvPortGenerateOptions): AsyncIterable<LlmResponseChunk>;
  /** Prefill, host path: the KV parked under key (the prompt tokenIds' pages) copied to the host, then released. */
  exportParked(key: string, tokenIds: number[]): Promise<PrefixPages>;
  /** Decode, host path: transferred KV imported as a cached prefix, or (parkAs) parked for the request handed over
   * with that key. Returns the pages written. */
  importPrefix(prefix: PrefixPages, parkAs: string | null): Promise<number>;
  /** The GPU path's KV ops (holds, pulls, pool export/open/close) and releases of parked KV. */
  disaggKv(op: DisaggKvOp): Promise<DisaggKvReply>;
}
