// The engine's sampler (native/include/sampling.h) on synthetic logits: greedy, seeds, top-k/top-p/min-p
// frequencies against the renormalised distribution the documented algorithm defines, logprobs.

import t from 'tap';
import { loadAddon, type NativeSamplingParams } from '../src/engine/addon.js';

const addon = loadAddon();
const plain: NativeSamplingParams = { temperature: 1, topP: 1, topK: 0, minP: 0, logprobs: -1 };

function logSoftmax(z: readonly number[]): number[] {
  const m = Math.max(...z);
  const lse = m + Math.log(z.reduce((a, x) => a + Math.exp(x - m), 0));
  return z.map((x) => x - lse);
}

/** The distribution sampling.h defines: softmax(z/T), then top-k, top-p (on the renormalised mass), min-p. */
function expected(z: readonly number[], p: NativeSamplingParams): number[] {
  const order = z.map((_, i) => i).sort((a, b) => z[b] - z[a] || a - b);
  const m = Math.max(...z);
  const prob = z.map((x) => Math.exp((x - m) / p.temperature));
  let kept = p.topK > 0 ? order.slice(0, p.topK) : order.slice();
  if (p.topP < 1) {
    const mass = kept.reduce((a, i) => a + prob[i], 0);
    let cum = 0;
    let n = 0;
    while (n < kept.length) {
      cum += prob[kept[n++]];
      if (cum >= p.topP * mass) break;
    }
    kept = kept.slice(0, n);
  }
  if (p.minP > 0) kept = kept.filter((i) => prob[i] >= p.minP * prob[kept[0]]);
  const total = kept.reduce((a, i) => a + prob[i], 0);
  const out = new Array<number>(z.length).fill(0);
  for (const i of kept) out[i] = prob[i] / total;
  return out;
}

function empirical(z: Float32Array, p: NativeSamplingParams, draws: number, seed: number): number[] {
  const counts = new Array<number>(z.length).fill(0);
  for (let i = 0; i < draws; i++) counts[addon.sampleFromLogits(z, p, seed, 0, i).token]++;
  return counts.map((c) => c / draws);
}

const tv = (a: number[], b: number[]): number => a.reduce((s, x, i) => s + Math.abs(x - b[i]), 0) / 2;

const logits = [1.2, 0.3, -0.5, 2.0, 0.9, -1.5, 0.0, 1.6, -0.2, 0.6];
const z = Float32Array.from(logits);
const zRounded = Array.from(z);
const DRAWS = 20000;
const TV_BOUND = 0.02; // expected sampling noise at 20k draws over 10 tokens is about 0.007

t.test('temperature 0 is argmax, ties to the lowest id', async (t) => {
  t.equal(addon.sampleFromLogits(z, { ...plain, temperature: 0 }, 1, 0, 0).token, 3);
  const tie = Float32Array.from([0, 5, 1, 5, 5]);
  for (let i = 0; i < 20; i++) t.equal(addon.sampleFromLogits(tie, { ...plain, temperature: 0 }, i, 0, i).token, 1);
  t.equal(addon.sampleFromLogits(z, { ...plain, topK: 1 }, 1, 0, 0).token, 3, 'topK 1 is greedy too');
});

t.test('a fixed seed replays; seeds and output indices give different streams', async (t) => {
  const a = Array.from({ length: 200 }, (_, i) => addon.sampleFromLogits(z, plain, 42, 0, i).token);
  const b = Array.from({ length: 200 }, (_, i) => addon.sampleFromLogits(z, plain, 42, 0, i).token);
  const c = Array.from({ length: 200 }, (_, i) => addon.sampleFromLogits(z, plain, 43, 0, i).token);
  const d = Array.from({ length: 200 }, (_, i) => addon.sampleFromLogits(z, plain, 42, 1, i).token);
  t.same(a, b);
  t.not(a.join(), c.join());
  t.not(a.join(), d.join(), 'the high seed word matters');
});

t.test('Philox4x32-10 stream: known answer for key 0, counter 0', async (t) => {
  // Random123's known-answer vector: philox4x32_10(ctr 0, key 0) word 0 = 0x6627e8d5; uniform logits over 256
  // tokens pick floor(u * 256) = word0 >> 24 = 0x66.
  const flat = new Float32Array(256);
  t.equal(addon.sampleFromLogits(flat, plain, 0, 0, 0).token, 0x66);
});

const cases: [string, NativeSamplingParams][] = [
  ['temperature 1', plain],
  ['temperature 0.7', { ...plain, temperature: 0.7 }],
  ['temperature 1.5, top-k 4', { ...plain, temperature: 1.5, topK: 4 }],
  ['top-p 0.8', { ...plain, topP: 0.8 }],
  ['top-k 5 then top-p 0.7', { ...plain, topK: 5, topP: 0.7 }],
  ['min-p 0.3', { ...plain, minP: 0.3 }],
  ['temperature 2, top-p 0.9, min-p 0.1', { ...plain, temperature: 2, topP: 0.9, minP: 0.1 }],
];
for (const [name, p] of cases) {
  t.test(`frequencies match the renormalised distribution: ${name}`, async (t) => {
    const want = expected(zRounded, p);
    const got = empirical(z, p, DRAWS, 1000 + name.length);
    const d = tv(got, want);
    t.ok(d < TV_BOUND, `total variation ${d.toFixed(4)} < ${TV_BOUND}`);
    for (let i = 0; i < want.length; i++) if (want[i] === 0) t.equal(got[i], 0, `filtered token ${i} never drawn`);
  });
}

t.test('top-p / min-p over a long flat tail keep exactly the expected support', async (t) => {
  // 4096 slowly decaying logits: the sampler's candidate prefilter runs several threshold passes here.
  const V = 4096;
  const flat = Float32Array.from({ length: V }, (_, i) => -i * 0.003 + 0.05 * Math.sin(i * 1.7));
  for (const p of [{ ...plain, topP: 0.5 }, { ...plain, topP: 0.95, minP: 0.2 }, { ...plain, temperature: 0.6, topP: 0.3 }]) {
    const want = expected(Array.from(flat), p);
    const support = new Set(want.flatMap((x, i) => (x > 0 ? [i] : [])));
    const edge = [...support].sort((a, b) => flat[a] - flat[b]).slice(0, Math.ceil(support.size / 10));
    let outside = 0;
    let atEdge = 0;
    for (let i = 0; i < 4000; i++) {
      const tok = addon.sampleFromLogits(flat, p, 77, 0, i).token;
      if (!support.has(tok)) outside++;
      if (edge.includes(tok)) atEdge++;
    }
    t.equal(outside, 0, `topP ${p.topP} minP ${p.minP}: no draw outside the ${support.size}-token support`);
    t.ok(atEdge > 0, `topP ${p.topP} minP ${p.minP}: the lowest-probability tenth of the support is drawn (${atEdge})`);
  }
});

t.test('logprobs are the log-softmax of the raw logits (before temperature); top-n ordered', async (t) => {
  const ls = logSoftmax(zRounded);
  for (const temperature of [0, 0.5, 1.3]) {
    const r = addon.sampleFromLogits(z, { ...plain, temperature, logprobs: 4 }, 5, 0, 3);
    t.ok(Math.abs(r.logprob - ls[r.token]) < 1e-5, `T=${temperature}: chosen logprob ${r.logprob} = ${ls[r.token]}`);
    t.same(Array.from(r.topIds), [3, 7, 0, 4]);
    for (let i = 0; i < 4; i++) t.ok(Math.abs(r.topLogprobs[i] - ls[r.topIds[i]]) < 1e-5);
  }
  const none = addon.sampleFromLogits(z, { ...plain, logprobs: -1 }, 5, 0, 3);
  t.ok(Number.isNaN(none.logprob), 'no logprob asked: NaN');
  const big = new Float32Array(151936).map((_, i) => Math.sin(i * 0.37) * 4);
  const r = addon.sampleFromLogits(big, { ...plain, temperature: 0, logprobs: 2 }, 0, 0, 0);
  let m = -Infinity;
  for (const x of big) m = Math.max(m, x);
  let s = 0;
  for (const x of big) s += Math.exp(x - m);
  t.ok(Math.abs(r.logprob - (big[r.token] - m - Math.log(s))) < 1e-4, 'full-vocabulary logprob');
});
