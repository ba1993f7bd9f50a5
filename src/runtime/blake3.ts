// BLAKE3 (default hash mode, 32-byte output), for the `blake3:<hex>` checksums a model card puts on the files it
// names (reference §4.1). Node's crypto has no BLAKE3, and a card hashes a few files once at registration, so a
// plain implementation of the specification is enough: 1 KiB chunks of 16 compressions each, chunk chaining values
// merged pairwise into a binary tree (a stack of subtree roots, merged as chunk counts carry), ROOT flag on the
// last compression.

const IV = Uint32Array.from([
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
]);
const MSG_PERMUTATION = [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8];
const CHUNK_START = 1;
const CHUNK_END = 2;
const PARENT = 4;
const ROOT = 8;
const BLOCK_LEN = 64;
const CHUNK_LEN = 1024;

const rotr = (x: number, n: number): number => ((x >>> n) | (x << (32 - n))) >>> 0;

function g(s: Uint32Array, a: number, b: number, c: number, d: number, mx: number, my: number): void {
  s[a] = (s[a] + s[b] + mx) >>> 0;
  s[d] = rotr(s[d] ^ s[a], 16);
  s[c] = (s[c] + s[d]) >>> 0;
  s[b] = rotr(s[b] ^ s[c], 12);
  s[a] = (s[a] + s[b] + my) >>> 0;
  s[d] = rotr(s[d] ^ s[a], 8);
  s[c] = (s[c] + s[d]) >>> 0;
  s[b] = rotr(s[b] ^ s[c], 7);
}

/** The compression function; returns the first 8 words of the output (a chaining value or the root hash). */
function compress(cv: Uint32Array, block: Uint32Array, counter: number, blockLen: number, flags: number): Uint32Array {
  const s = new Uint32Array(16);
  s.set(cv, 0);
  s.set(IV.subarray(0, 4), 8);
  s[12] = counter >>> 0;
  s[13] = Math.floor(counter / 0x1_0000_0000) >>> 0;
  s[14] = blockLen;
  s[15] = flags;
  let m = Uint32Array.from(block);
  for (let round = 0; round < 7; round++) {
    g(s, 0, 4, 8, 12, m[0], m[1]);
    g(s, 1, 5, 9, 13, m[2], m[3]);
    g(s, 2, 6, 10, 14, m[4], m[5]);
    g(s, 3, 7, 11, 15, m[6], m[7]);
    g(s, 0, 5, 10, 15, m[8], m[9]);
    g(s, 1, 6, 11, 12, m[10], m[11]);
    g(s, 2, 7, 8, 13, m[12], m[13]);
    g(s, 3, 4, 9, 14, m[14], m[15]);
    if (round < 6) m = Uint32Array.from(MSG_PERMUTATION, (i) => m[i]);
  }
  const out = new Uint32Array(8);
  for (let i = 0; i < 8; i++) out[i] = (s[i] ^ s[i + 8]) >>> 0;
  return out;
}

/** 64 bytes (zero-padded) as 16 little-endian words. */
function blockWords(bytes: Uint8Array, at: number, len: number): Uint32Array {
  const padded = new Uint8Array(BLOCK_LEN);
  padded.set(bytes.subarray(at, at + len));
  const view = new DataView(padded.buffer);
  return Uint32Array.from({ length: 16 }, (_, i) => view.getUint32(i * 4, true));
}

/** What the last compression of a node needs, kept so the root can be finished with the ROOT flag. */
interface PendingOutput {
  cv: Uint32Array;
  block: Uint32Array;
  counter: number;
  blockLen: number;
  flags: number;
}

function chunkOutput(input: Uint8Array, start: number, end: number, chunkIndex: number): PendingOutput {
  let cv: Uint32Array = IV;
  const blocks = Math.max(1, Math.ceil((end - start) / BLOCK_LEN));
  for (let b = 0; b < blocks - 1; b++) {
    const flags = b === 0 ? CHUNK_START : 0;
    cv = compress(cv, blockWords(input, start + b * BLOCK_LEN, BLOCK_LEN), chunkIndex, BLOCK_LEN, flags);
  }
  const lastAt = start + (blocks - 1) * BLOCK_LEN;
  const lastLen = end - lastAt;
  return {
    cv,
    block: blockWords(input, lastAt, lastLen),
    counter: chunkIndex,
    blockLen: lastLen,
    flags: (blocks === 1 ? CHUNK_START : 0) | CHUNK_END,
  };
}

const finish = (o: PendingOutput, extraFlags = 0): Uint32Array => compress(o.cv, o.block, o.counter, o.blockLen, o.flags | extraFlags);

function parentOutput(left: Uint32Array, right: Uint32Array): PendingOutput {
  const block = new Uint32Array(16);
  block.set(left, 0);
  block.set(right, 8);
  return { cv: IV, block, counter: 0, blockLen: BLOCK_LEN, flags: PARENT };
}

/** BLAKE3 of `input` as 64 lowercase hex digits. */
export function blake3Hex(input: Uint8Array): string {
  const chunks = Math.max(1, Math.ceil(input.length / CHUNK_LEN));
  const stack: Uint32Array[] = [];
  let output: PendingOutput | undefined;
  for (let c = 0; c < chunks; c++) {
    const chunk = chunkOutput(input, c * CHUNK_LEN, Math.min(input.length, (c + 1) * CHUNK_LEN), c);
    if (c === chunks - 1) {
      output = chunk;
      break;
    }
    // merge completed subtrees: one merge per trailing zero bit of the new total chunk count
    let cv = finish(chunk);
    let total = c + 1;
    while ((total & 1) === 0) {
      cv = finish(parentOutput(stack.pop()!, cv));
      total >>= 1;
    }
    stack.push(cv);
  }
  let root = output!;
  while (stack.length > 0) root = parentOutput(stack.pop()!, finish(root));
  const words = finish(root, ROOT);
  const out = Buffer.alloc(32);
  for (let i = 0; i < 8; i++) out.writeUInt32LE(words[i], i * 4);
  return out.toString('hex');
}
