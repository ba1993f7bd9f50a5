// The router's block hashes (reference §5.1): a block's `tokens_hash` is XXH3-64 with seed 1337 over its token ids
// as little-endian u32 bytes; a sequence hash chains them, seq[0] = h0, seq[i] = xxh3_1337(le64(seq[i-1]) ‖ le64(h_i)).
// Workers compute the first for their KV events, the frontend's KV router both, and they must agree bit for bit.
import { LlmError } from '../errors.js';
import { xxh3_64 } from './xxh3.js';

export const KV_HASH_SEED = 1337n;

let scratch = new Uint8Array(256);
let scratchView = new DataView(scratch.buffer);

/** xxh3 of tokenIds[start, end) as little-endian u32 bytes, staged in a reused buffer. */
function hashTokenRange(tokenIds: ArrayLike<number>, start: number, end: number, seed: bigint): bigint {
  const bytes = (end - start) * 4;
  if (bytes > scratch.length) {
    scratch = new Uint8Array(Math.max(bytes, scratch.length * 2));
    scratchView = new DataView(scratch.buffer);
  }
  for (let i = start; i < end; i++) scratchView.setUint32((i - start) * 4, tokenIds[i], true);
  return xxh3_64(scratch.subarray(0, bytes), seed);
}

/** XXH3-64 of the token ids as little-endian u32 bytes. */
export function tokensHash(tokenIds: ArrayLike<number>, seed: bigint = KV_HASH_SEED): bigint {
  return hashTokenRange(tokenIds, 0, tokenIds.length, seed);
}

/** `tokens_hash` of every full block of `blockSize` tokens (a trailing partial block has no hash). */
export function blockTokensHashes(tokenIds: ArrayLike<number>, blockSize: number, seed: bigint = KV_HASH_SEED): bigint[] {
  if (!Number.isInteger(blockSize) || blockSize < 1) {
    throw new LlmError('LLM_ERR_INTERNAL', `kv block size must be a positive integer, got ${blockSize}`);
  }
  const full = Math.floor(tokenIds.length / blockSize);
  const hashes = new Array<bigint>(full);
  for (let b = 0; b < full; b++) hashes[b] = hashTokenRange(tokenIds, b * blockSize, (b + 1) * blockSize, seed);
  return hashes;
}

/** Chained sequence hashes of consecutive block hashes. */
export function sequenceHashes(blockHashes: readonly bigint[]): bigint[] {
  const out: bigint[] = [];
  const pair = new Uint8Array(16);
  const view = new DataView(pair.buffer);
  for (let i = 0; i < blockHashes.length; i++) {
    if (i === 0) {
      out.push(blockHashes[0]);
      continue;
    }
    view.setBigUint64(0, out[i - 1], true);
    view.setBigUint64(8, blockHashes[i], true);
    out.push(xxh3_64(pair, KV_HASH_SEED));
  }
  return out;
}
