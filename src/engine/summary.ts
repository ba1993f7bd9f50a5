// What the engine's owner (the rank) reports and accepts across threads, in engine terms: the summary of an opened
// engine, and the GPU-to-GPU KV transfer ops. Actors and the disaggregation code both speak it; neither owns it.
import type { BackendKind, KvIpcPool, KvPoolInfo, KvPullStats } from './types.js';

/** What a rank reports once its engine is open: enough for the scheduler to size itself and check requests. */
export interface EngineSummary {
  backend: BackendKind;
  kv: KvPoolInfo;
  vocabSize: number;
  eosTokenIds: number[];
  maxPositionEmbeddings: number;
  /** KV layout beyond the pool info: what a disaggregated transfer checks on both sides. */
  numLayers: number;
  numKvHeads: number;
  headDim: number;
}

/** GPU-to-GPU KV transfer ops (Engine.kvIpc*), and what each answers. */
export type KvIpcOp =
  | { op: 'export' }
  | { op: 'open'; pool: KvIpcPool }
  | { op: 'pull'; remote: number; srcPages: Int32Array; srcToken0: number; dstPages: Int32Array; numTokens: number }
  | { op: 'close'; remote: number };
export type KvIpcReply<O extends KvIpcOp> = O extends { op: 'export' } ? KvIpcPool : O extends { op: 'open' } ? number : O extends { op: 'pull' } ? KvPullStats : null;
