import t from 'tap';
import { createRequire } from 'node:module';
import { xxh3_64 } from '../src/runtime/xxh3.js';
import { blockTokensHashes, sequenceHashes, tokensHash } from '../src/runtime/kv-hash.js';

// An independent implementation (xxHash's Rust port, prebuilt) is the oracle.
const require = createRequire(import.meta.url);
const oracle = (require('@node-rs/xxhash') as { xxh3: { xxh64(input: Uint8Array, seed?: bigint): bigint } }).xxh3;

/** Deterministic bytes (xorshift32) so a failure reproduces. */
function bytes(len: number, state: { s: number }): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) {
    let s = state.s;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    state.s = s >>> 0;
    out[i] = s & 0xff;
  }
  return out;
}

t.test('published constants: empty input', async (t) => {
  t.equal(xxh3_64(new Uint8Array(0)), 0x2d06800538d394c2n);
  t.equal(xxh3_64(new Uint8Array(0), 1337n), oracle.xxh64(new Uint8Array(0), 1337n));
});

t.test('every length 0..2000 with seeds 0 and 1337 matches the oracle', async (t) => {
  const state = { s: 0x12345678 };
  let mismatches = 0;
  for (const seed of [0n, 1337n]) {
    for (let len = 0; len <= 2000; len++) {
      const input = bytes(len, state);
      const got = xxh3_64(input, seed);
      const want = oracle.xxh64(input, seed);
      if (got !== want) {
        mismatches++;
        if (mismatches < 5) t.fail(`len ${len} seed ${seed}: ${got.toString(16)} != ${want.toString(16)}`);
      }
    }
  }
  t.equal(mismatches, 0);
});

t.test('large and odd seeds, long inputs across several 1 KiB blocks', async (t) => {
  const state = { s: 99 };
  for (const seed of [1n, 0xffffffffffffffffn, 0x8000000000000000n, 0x123456789abcdef0n, -1n]) {
    for (const len of [1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1023, 1024, 1025, 4096, 10_000]) {
      const input = bytes(len, state);
      t.equal(xxh3_64(input, seed), oracle.xxh64(input, BigInt.asUintN(64, seed)), `len ${len} seed ${seed}`);
    }
  }
});

t.test('tokens_hash is xxh3(seed 1337) over little-endian u32 token ids', async (t) => {
  const tokens = [1, 2, 3, 0xffffffff, 151643, 0];
  const le = Buffer.alloc(tokens.length * 4);
  tokens.forEach((v, i) => le.writeUInt32LE(v, i * 4));
  t.equal(tokensHash(tokens), oracle.xxh64(le, 1337n));
  t.equal(tokensHash(Uint32Array.from(tokens)), tokensHash(tokens));
  t.equal(tokensHash([]), oracle.xxh64(new Uint8Array(0), 1337n));
});

t.test('block hashes and chained sequence hashes', async (t) => {
  const tokens = Array.from({ length: 70 }, (_, i) => i * 7919);
  const blocks = blockTokensHashes(tokens, 16);
  t.equal(blocks.length, 4, 'the trailing partial block has no hash');
  t.equal(blocks[2], tokensHash(tokens.slice(32, 48)));
  const seq = sequenceHashes(blocks);
  t.equal(seq[0], blocks[0]);
  for (let i = 1; i < seq.length; i++) {
    const pair = Buffer.alloc(16);
    pair.writeBigUInt64LE(seq[i - 1], 0);
    pair.writeBigUInt64LE(blocks[i], 8);
    t.equal(seq[i], oracle.xxh64(pair, 1337n), `seq[${i}]`);
  }
  t.same(sequenceHashes([]), []);
});
