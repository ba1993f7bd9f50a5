// The router's block hashes (reference §5.1): a block's `tokens_hash` is XXH3-64 with seed 1337 over its token ids
// as little-endian u32 bytes; a sequence hash chains them, seq[0] = h0, seq[i] = xxh3_1337(le64(seq[i-1]) ‖ le64(h_i)).
// Workers compute the first for their KV events, the frontend's KV router both, and they must agree bit for bit.
import { xxh3_64 } from './xxh3.js';

export const KV_HASH_SEED = 1337n;

/** XXH3-64 of the token ids as little-endian u32 bytes. */
export function tokensHash(tokenIds: ArrayLike<number>, seed: bigint = KV_HASH_SEED): bigint {
  const bytes = new Uint8Array(tokenIds.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < tokenIds.length; i++) view.setUint32(i * 4, tokenIds[i], true);
  return xxh3_64(bytes, seed);
}

/** `tokens_hash` of every full block of `blockSize` tokens (a trailing partial block has no hash). */
export function blockTokensHashes(tokenIds: ArrayLike<number>, blockSize: number, seed: bigint = KV_HASH_SEED): bigint[] {
  const hashes: bigint[] = [];
  const full = Math.floor(tokenIds.length / blockSize);
  const ids = Array.from(tokenIds);
  for (let b = 0; b < full; b++) hashes.push(tokensHash(ids.slice(b * blockSize, (b + 1) * blockSize), seed));
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
