// The vocabulary every actor shares: engine summaries, the per-step wire forms, and the transfer lists that move
// step buffers between threads without copying. Each actor's own inbox union lives beside the actor.
import type { BackendKind, KvPoolInfo, SeqStep } from '../src/engine/types.js';
export type { ErrorPayload } from '../src/errors.js';

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

/** A SeqStep whose arrays are Int32Arrays that the sender gives up (transferred, not copied). */
export interface SeqStepWire extends SeqStep {
  tokenIds: Int32Array;
  pages: Int32Array;
}

export function toSeqStepWire(s: SeqStep): SeqStepWire {
  return {
    tokenIds: s.tokenIds instanceof Int32Array ? s.tokenIds : Int32Array.from(s.tokenIds),
    startPos: s.startPos,
    pages: s.pages instanceof Int32Array ? s.pages : Int32Array.from(s.pages),
    sample: s.sample,
    sampling: s.sampling,
    outputIndex: s.outputIndex,
  };
}

/** Buffers of a step that move to the receiving thread. A buffer shared by two views is listed once. */
export function stepTransferList(seqs: readonly SeqStepWire[]): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  for (const s of seqs) {
    for (const a of [s.tokenIds, s.pages]) if (a.buffer instanceof ArrayBuffer) out.add(a.buffer);
  }
  return [...out];
}

/** Compile-time exhaustiveness for message switches. */
export function unreachable(x: never): never {
  throw new Error(`unhandled message ${JSON.stringify(x)}`);
}
