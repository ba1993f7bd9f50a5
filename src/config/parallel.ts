// Tensor-parallel settings checked against the machine and the model before anything starts, so that a bad
// --tp-size is refused with the numbers instead of failing inside a rank. The sharding rules are those of
// native/include/tensor_parallel.h (which checks them again at load).
import { LlmError } from '../errors.js';

/** The model dimensions the sharding splits. */
export interface TensorParallelShape {
  numHeads: number;
  numKvHeads: number;
  /** FFN (gate/up) width. */
  intermediateSize: number;
  vocabSize: number;
}

/**
 * Throws LLM_ERR_CONFIG naming the numbers when tpSize ranks from baseGpuId cannot run the model:
 * more ranks than CUDA devices present from baseGpuId on (devicesPresent null: the CPU backend, no devices),
 * query heads or FFN width not divisible by tpSize, KV heads neither split evenly (divisible by tpSize) nor
 * replicated evenly (dividing tpSize), or a vocabulary too small to give every rank rows of the vocab-parallel
 * embedding and LM head (each holds ceil(V / tpSize), the last the rest). A group across nodes needs only its
 * ranksPerNode devices on each node.
 */
export function checkTensorParallel(tpSize: number, baseGpuId: number, model: TensorParallelShape, devicesPresent: number | null, ranksPerNode = tpSize): void {
  const tp = `--tp-size ${tpSize}`;
  const refuse = (message: string): never => {
    throw new LlmError('LLM_ERR_CONFIG', message);
  };
  if (!Number.isInteger(tpSize) || tpSize < 1) refuse(`${tp}: expected an integer >= 1`);
  if (!Number.isInteger(baseGpuId) || baseGpuId < 0) refuse(`--base-gpu-id ${baseGpuId}: expected an integer >= 0`);
  if (devicesPresent !== null && baseGpuId + ranksPerNode > devicesPresent) {
    const last = baseGpuId + ranksPerNode - 1;
    const needs = ranksPerNode === 1 ? `CUDA device ${baseGpuId}` : `CUDA devices ${baseGpuId}..${last}`;
    const here = ranksPerNode === tpSize ? '' : ` (${ranksPerNode} of its ranks on this node)`;
    refuse(`${tp}${here} with --base-gpu-id ${baseGpuId} needs ${needs}; ${devicesPresent} present`);
  }
  const { numHeads, numKvHeads, intermediateSize, vocabSize } = model;
  if (numHeads % tpSize !== 0) refuse(`${tp} does not divide the model's ${numHeads} attention heads`);
  if (numKvHeads % tpSize !== 0 && tpSize % numKvHeads !== 0) {
    refuse(`${tp}: the model's ${numKvHeads} KV heads can be neither split across ${tpSize} ranks (${numKvHeads} is not a multiple of ${tpSize}) nor replicated on them (${tpSize} is not a multiple of ${numKvHeads})`);
  }
  if (intermediateSize % tpSize !== 0) refuse(`${tp} does not divide the model's FFN size ${intermediateSize}`);
  const rowsPerRank = Math.ceil(vocabSize / tpSize);
  if (rowsPerRank * (tpSize - 1) >= vocabSize) {
    refuse(`${tp}: the model's vocabulary of ${vocabSize} tokens leaves no rows for the last rank (${rowsPerRank} per rank)`);
  }
}
