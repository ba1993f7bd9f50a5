// XXH3-64 (xxHash 0.8 family) with a 64-bit seed. It runs on every KV event and every routed prompt, so the
// 64-bit arithmetic works on pairs of 32-bit halves held in plain numbers: BigInt would allocate on every step.
// Helpers leave their 64-bit result in the module registers (rh, rl) instead of returning an object, for the
// same reason. Only the final result becomes a BigInt.

/** The default 192-byte secret of XXH3 (part of the algorithm's definition). */
const K_SECRET = Uint8Array.from([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
  0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
  0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
  0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
  0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
  0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
  0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
  0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
  0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
  0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
  0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
  0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
]);
const SECRET_SIZE = 192;

// Primes as (high, low) 32-bit halves.
const P32_1 = 0x9e3779b1;
const P32_2 = 0x85ebca77;
const P32_3 = 0xc2b2ae3d;
const P64_1H = 0x9e3779b1, P64_1L = 0x85ebca87;
const P64_2H = 0xc2b2ae3d, P64_2L = 0x27d4eb4f;
const P64_3H = 0x165667b1, P64_3L = 0x9e3779f9;
const P64_4H = 0x85ebca77, P64_4L = 0xc2b2ae63;
const P64_5H = 0x27d4eb2f, P64_5L = 0x165667c5;
const MX1H = 0x16566791, MX1L = 0x9e3779f9;
const MX2H = 0x9fb21c65, MX2L = 0x1e98df25;

const TWO32 = 4294967296;

/** Result registers of the 64-bit helpers: high and low halves. */
let rh = 0;
let rl = 0;

function le32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}

function bswap32(x: number): number {
  return ((x >>> 24) | ((x >>> 8) & 0xff00) | ((x & 0xff00) << 8) | (x << 24)) >>> 0;
}

/** (rh, rl) = a * b, full 64-bit product of two u32. */
function mul32(a: number, b: number): void {
  // schoolbook on 16-bit halves: every partial product and sum stays far below 2^53
  const a0 = a & 0xffff, a1 = a >>> 16;
  const b0 = b & 0xffff, b1 = b >>> 16;
  const lh = a0 * b1;
  const hl = a1 * b0;
  const mid = ((a0 * b0) >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  rl = Math.imul(a, b) >>> 0;
  rh = (a1 * b1 + (lh >>> 16) + (hl >>> 16) + (mid >>> 16)) >>> 0;
}

/** (rh, rl) = low 64 bits of a * b. */
function mul64(ah: number, al: number, bh: number, bl: number): void {
  mul32(al, bl);
  rh = (rh + Math.imul(ah, bl) + Math.imul(al, bh)) >>> 0;
}

/** (rh, rl) = low64 ^ high64 of the 128-bit product a * b. */
function mul128Fold64(ah: number, al: number, bh: number, bl: number): void {
  mul32(al, bl);
  const llh = rh, lll = rl;
  mul32(al, bh);
  const lhh = rh, lhl = rl;
  mul32(ah, bl);
  const hlh = rh, hll = rl;
  mul32(ah, bh);
  const hhh = rh, hhl = rl;
  const w1 = llh + lhl + hll; // < 2^34
  const w2 = lhh + hlh + hhl + Math.floor(w1 / TWO32);
  const w3 = hhh + Math.floor(w2 / TWO32);
  rh = ((w1 >>> 0) ^ (w3 >>> 0)) >>> 0;
  rl = (lll ^ (w2 >>> 0)) >>> 0;
}

/** XXH3's final mix: h ^= h >> 37; h *= MX1; h ^= h >> 32. */
function avalanche(h: number, l: number): void {
  l = (l ^ (h >>> 5)) >>> 0;
  mul64(h, l, MX1H, MX1L);
  rl = (rl ^ rh) >>> 0;
}

/** XXH64's final mix. */
function avalancheXxh64(h: number, l: number): void {
  l = (l ^ (h >>> 1)) >>> 0;
  mul64(h, l, P64_2H, P64_2L);
  h = rh;
  l = rl;
  const l29 = ((l >>> 29) | (h << 3)) >>> 0;
  l = (l ^ l29) >>> 0;
  h = (h ^ (h >>> 29)) >>> 0;
  mul64(h, l, P64_3H, P64_3L);
  rl = (rl ^ rh) >>> 0;
}

/** The 4..8-byte mix: h ^= rotl(h,49) ^ rotl(h,24); h *= MX2; h ^= (h >> 35) + len; h *= MX2; h ^= h >> 28. */
function rrmxmx(h: number, l: number, len: number): void {
  // rotl 49 = rotl 32 (swap halves) then rotl 17
  const r49h = ((l << 17) | (h >>> 15)) >>> 0;
  const r49l = ((h << 17) | (l >>> 15)) >>> 0;
  const r24h = ((h << 24) | (l >>> 8)) >>> 0;
  const r24l = ((l << 24) | (h >>> 8)) >>> 0;
  h = (h ^ r49h ^ r24h) >>> 0;
  l = (l ^ r49l ^ r24l) >>> 0;
  mul64(h, l, MX2H, MX2L);
  h = rh;
  l = (rl ^ ((h >>> 3) + len)) >>> 0;
  mul64(h, l, MX2H, MX2L);
  rl = (rl ^ ((rl >>> 28) | (rh << 4))) >>> 0;
  rh = (rh ^ (rh >>> 28)) >>> 0;
}

/** (rh, rl) = fold128((in[io..] ^ (sec[so..] + seed)), (in[io+8..] ^ (sec[so+8..] - seed))). */
function mix16B(input: Uint8Array, io: number, secret: Uint8Array, so: number, sh: number, sl: number): void {
  let kl = le32(secret, so) + sl;
  let kh = (le32(secret, so + 4) + sh + (kl >= TWO32 ? 1 : 0)) >>> 0;
  kl >>>= 0;
  const ah = (le32(input, io + 4) ^ kh) >>> 0;
  const al = (le32(input, io) ^ kl) >>> 0;
  kl = le32(secret, so + 8) - sl;
  kh = (le32(secret, so + 12) - sh - (kl < 0 ? 1 : 0)) >>> 0;
  kl >>>= 0;
  const bh = (le32(input, io + 12) ^ kh) >>> 0;
  const bl = (le32(input, io + 8) ^ kl) >>> 0;
  mul128Fold64(ah, al, bh, bl);
}

function hashUpTo16(input: Uint8Array, len: number, sh: number, sl: number): void {
  const s = K_SECRET;
  if (len > 8) {
    let b1l = ((le32(s, 24) ^ le32(s, 32)) >>> 0) + sl;
    const b1h = (((le32(s, 28) ^ le32(s, 36)) >>> 0) + sh + (b1l >= TWO32 ? 1 : 0)) >>> 0;
    b1l >>>= 0;
    let b2l = ((le32(s, 40) ^ le32(s, 48)) >>> 0) - sl;
    const b2h = (((le32(s, 44) ^ le32(s, 52)) >>> 0) - sh - (b2l < 0 ? 1 : 0)) >>> 0;
    b2l >>>= 0;
    const loH = (le32(input, 4) ^ b1h) >>> 0;
    const loL = (le32(input, 0) ^ b1l) >>> 0;
    const hiH = (le32(input, len - 4) ^ b2h) >>> 0;
    const hiL = (le32(input, len - 8) ^ b2l) >>> 0;
    mul128Fold64(loH, loL, hiH, hiL);
    // acc = len + swap64(lo) + hi + fold; sums of four u32 stay exact
    const accL = len + bswap32(loH) + hiL + rl;
    const accH = bswap32(loL) + hiH + rh + Math.floor(accL / TWO32);
    avalanche(accH >>> 0, accL >>> 0);
    return;
  }
  if (len >= 4) {
    const seedH = (sh ^ bswap32(sl)) >>> 0;
    let bl = ((le32(s, 8) ^ le32(s, 16)) >>> 0) - sl;
    const bh = (((le32(s, 12) ^ le32(s, 20)) >>> 0) - seedH - (bl < 0 ? 1 : 0)) >>> 0;
    bl >>>= 0;
    const in1 = le32(input, 0);
    const in2 = le32(input, len - 4);
    rrmxmx((in1 ^ bh) >>> 0, (in2 ^ bl) >>> 0, len);
    return;
  }
  if (len > 0) {
    const combined = ((input[0] << 16) | (input[len >> 1] << 24) | input[len - 1] | (len << 8)) >>> 0;
    const bl = ((le32(s, 0) ^ le32(s, 4)) >>> 0) + sl;
    const bh = (sh + (bl >= TWO32 ? 1 : 0)) >>> 0;
    avalancheXxh64(bh, ((bl >>> 0) ^ combined) >>> 0);
    return;
  }
  avalancheXxh64((sh ^ le32(s, 60) ^ le32(s, 68)) >>> 0, (sl ^ le32(s, 56) ^ le32(s, 64)) >>> 0);
}

function hash17To128(input: Uint8Array, len: number, sh: number, sl: number): void {
  mul64(0, len, P64_1H, P64_1L);
  let accH = rh, accL = rl;
  // pair i mixes 16 bytes from the front (offset 16i) and 16 from the back with the secret at 32i and 32i + 16;
  // the sum is order-free, so one loop covers the reference's nested length tests
  const pairs = ((len - 1) >>> 5) + 1;
  for (let i = 0; i < pairs; i++) {
    mix16B(input, 16 * i, K_SECRET, 32 * i, sh, sl);
    let l = accL + rl;
    accH = (accH + rh + (l >= TWO32 ? 1 : 0)) >>> 0;
    accL = l >>> 0;
    mix16B(input, len - 16 * (i + 1), K_SECRET, 32 * i + 16, sh, sl);
    l = accL + rl;
    accH = (accH + rh + (l >= TWO32 ? 1 : 0)) >>> 0;
    accL = l >>> 0;
  }
  avalanche(accH, accL);
}

function hash129To240(input: Uint8Array, len: number, sh: number, sl: number): void {
  mul64(0, len, P64_1H, P64_1L);
  let accH = rh, accL = rl;
  for (let i = 0; i < 8; i++) {
    mix16B(input, 16 * i, K_SECRET, 16 * i, sh, sl);
    const l = accL + rl;
    accH = (accH + rh + (l >= TWO32 ? 1 : 0)) >>> 0;
    accL = l >>> 0;
  }
  avalanche(accH, accL);
  accH = rh;
  accL = rl;
  // the tail: rounds 8.. read the secret from offset 3, the last 16 bytes from offset 136 - 17
  mix16B(input, len - 16, K_SECRET, 119, sh, sl);
  let endH = rh, endL = rl;
  const rounds = len >>> 4;
  for (let i = 8; i < rounds; i++) {
    mix16B(input, 16 * i, K_SECRET, 16 * (i - 8) + 3, sh, sl);
    const l = endL + rl;
    endH = (endH + rh + (l >= TWO32 ? 1 : 0)) >>> 0;
    endL = l >>> 0;
  }
  const l = accL + endL;
  avalanche((accH + endH + (l >= TWO32 ? 1 : 0)) >>> 0, l >>> 0);
}

// Long-input state: 8 u64 accumulators as high/low halves (typed arrays wrap mod 2^32 on store).
const accH = new Uint32Array(8);
const accL = new Uint32Array(8);

function accumulate512(input: Uint8Array, io: number, secret: Uint8Array, so: number): void {
  for (let i = 0; i < 8; i++) {
    const dl = le32(input, io + 8 * i);
    const dh = le32(input, io + 8 * i + 4);
    const kl = (dl ^ le32(secret, so + 8 * i)) >>> 0;
    const kh = (dh ^ le32(secret, so + 8 * i + 4)) >>> 0;
    const j = i ^ 1;
    let l = accL[j] + dl;
    accH[j] = accH[j] + dh + (l >= TWO32 ? 1 : 0);
    accL[j] = l;
    mul32(kl, kh);
    l = accL[i] + rl;
    accH[i] = accH[i] + rh + (l >= TWO32 ? 1 : 0);
    accL[i] = l;
  }
}

function scramble(secret: Uint8Array, so: number): void {
  for (let i = 0; i < 8; i++) {
    const h = accH[i];
    const l = (accL[i] ^ (h >>> 15) ^ le32(secret, so + 8 * i)) >>> 0;
    mul64((h ^ le32(secret, so + 8 * i + 4)) >>> 0, l, 0, P32_1);
    accH[i] = rh;
    accL[i] = rl;
  }
}

let derivedH = 0;
let derivedL = 0;
const derivedSecret = new Uint8Array(SECRET_SIZE);

/** The secret of a seeded long hash: each 16-byte lane of the default secret gets +seed on its first half, -seed on its second. */
function secretFor(sh: number, sl: number): Uint8Array {
  if (sh === 0 && sl === 0) return K_SECRET;
  if (derivedH === sh && derivedL === sl) return derivedSecret;
  const view = new DataView(derivedSecret.buffer);
  for (let i = 0; i < SECRET_SIZE; i += 16) {
    let l = le32(K_SECRET, i) + sl;
    view.setUint32(i + 4, le32(K_SECRET, i + 4) + sh + (l >= TWO32 ? 1 : 0), true);
    view.setUint32(i, l >>> 0, true);
    l = le32(K_SECRET, i + 8) - sl;
    view.setUint32(i + 12, (le32(K_SECRET, i + 12) - sh - (l < 0 ? 1 : 0)) >>> 0, true);
    view.setUint32(i + 8, l >>> 0, true);
  }
  derivedH = sh;
  derivedL = sl;
  return derivedSecret;
}

const STRIPE = 64;
const STRIPES_PER_BLOCK = (SECRET_SIZE - STRIPE) / 8;
const BLOCK = STRIPE * STRIPES_PER_BLOCK;

function hashLong(input: Uint8Array, len: number, secret: Uint8Array): void {
  accH.set([0, P64_1H, P64_2H, P64_3H, P64_4H, 0, P64_5H, 0]);
  accL.set([P32_3, P64_1L, P64_2L, P64_3L, P64_4L, P32_2, P64_5L, P32_1]);
  const blocks = Math.floor((len - 1) / BLOCK);
  for (let n = 0; n < blocks; n++) {
    for (let s = 0; s < STRIPES_PER_BLOCK; s++) accumulate512(input, n * BLOCK + s * STRIPE, secret, s * 8);
    scramble(secret, SECRET_SIZE - STRIPE);
  }
  const stripes = Math.floor((len - 1 - BLOCK * blocks) / STRIPE);
  for (let s = 0; s < stripes; s++) accumulate512(input, blocks * BLOCK + s * STRIPE, secret, s * 8);
  accumulate512(input, len - STRIPE, secret, SECRET_SIZE - STRIPE - 7);
  // merge the accumulators, starting from len * PRIME64_1, with the secret from offset 11
  mul64(0, len, P64_1H, P64_1L);
  let resH = rh, resL = rl;
  for (let i = 0; i < 4; i++) {
    const so = 11 + 16 * i;
    mul128Fold64(
      (accH[2 * i] ^ le32(secret, so + 4)) >>> 0,
      (accL[2 * i] ^ le32(secret, so)) >>> 0,
      (accH[2 * i + 1] ^ le32(secret, so + 12)) >>> 0,
      (accL[2 * i + 1] ^ le32(secret, so + 8)) >>> 0,
    );
    const l = resL + rl;
    resH = (resH + rh + (l >= TWO32 ? 1 : 0)) >>> 0;
    resL = l >>> 0;
  }
  avalanche(resH, resL);
}

// Splitting the seed and joining the result cost more than hashing a short input when done with BigInt
// arithmetic: the last seed's halves are cached, and the result goes through one 8-byte view.
let lastSeed = 0n;
let lastSeedH = 0;
let lastSeedL = 0;
const joinView = new DataView(new ArrayBuffer(8));

/** XXH3-64 of `input` with a 64-bit `seed` (taken mod 2^64). */
export function xxh3_64(input: Uint8Array, seed: bigint = 0n): bigint {
  if (seed !== lastSeed) {
    joinView.setBigUint64(0, BigInt.asUintN(64, seed), true);
    lastSeed = seed;
    lastSeedL = joinView.getUint32(0, true);
    lastSeedH = joinView.getUint32(4, true);
  }
  const sh = lastSeedH;
  const sl = lastSeedL;
  const len = input.length;
  if (len <= 16) hashUpTo16(input, len, sh, sl);
  else if (len <= 128) hash17To128(input, len, sh, sl);
  else if (len <= 240) hash129To240(input, len, sh, sl);
  else hashLong(input, len, secretFor(sh, sl));
  joinView.setUint32(0, rl, true);
  joinView.setUint32(4, rh, true);
  return joinView.getBigUint64(0, true);
}
