// The vocabulary every actor shares: engine summaries and coded error payloads. Each actor's own inbox union lives
// beside the actor; a step crosses threads as its packed descriptor (src/engine/step.ts).
import type { BackendKind, KvPoolInfo } from '../src/engine/types.js';
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

/** Compile-time exhaustiveness for message switches. */
export function unreachable(x: never): never {
  throw new Error(`unhandled message ${JSON.stringify(x)}`);
}
