// The embedding benchmark's workload, shared by our side and the transformers peer (written to a JSON file the peer
// reads): N inputs of random token ids with lengths uniform in [minLen, maxLen], from a seeded PRNG.
export function benchInputs(n: number, minLen: number, maxLen: number, vocab: number, seed = 1): number[][] {
  let s = seed >>> 0;
  const next = (): number => {
    s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return s / 4294967296;
  };
  return Array.from({ length: n }, () => Array.from({ length: minLen + Math.floor(next() * (maxLen - minLen + 1)) }, () => 1 + Math.floor(next() * (vocab - 2))));
}
