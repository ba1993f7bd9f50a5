// Tiny random llama / qwen2 / qwen3 models written by hand into one raw weight file, plus a plain float64
// reference forward pass (no paging, no batching, no SIMD): the independent check of the native CPU backend.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Architecture, DType, ModelSpec, RopeScaling, TensorRef } from '../../src/engine/types.js';

export interface TinyShape {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeLayout: 'half' | 'interleaved';
  ropeScaling: RopeScaling | null;
  tieWordEmbeddings: boolean;
  dtype: DType;
}

/**
 * The tiny shapes every engine test uses (CPU and CUDA): each exercises one family's quirks, and the llama's
 * intermediate size (not a multiple of 8) and vocabulary (not a multiple of 4) reach the kernels' k and row tails.
 */
export const TINY_SHAPES: Readonly<Record<'llama' | 'qwen2' | 'qwen3', TinyShape>> = {
  // GGUF-style llama: interleaved RoPE, Llama-3 rope scaling, untied head.
  llama: {
    architecture: 'llama', vocabSize: 99, hiddenSize: 64, intermediateSize: 100, numLayers: 2, numHeads: 4, numKvHeads: 2,
    headDim: 16, ropeLayout: 'interleaved', ropeScaling: { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
    tieWordEmbeddings: false, dtype: 'f32',
  },
  // qwen2: QKV bias, GQA 4:1, tied embeddings, bf16 weights.
  qwen2: {
    architecture: 'qwen2', vocabSize: 96, hiddenSize: 64, intermediateSize: 96, numLayers: 2, numHeads: 4, numKvHeads: 1,
    headDim: 16, ropeLayout: 'half', ropeScaling: null, tieWordEmbeddings: true, dtype: 'bf16',
  },
  // qwen3: q/k RMSNorm, head_dim * heads != hidden, f16 weights.
  qwen3: {
    architecture: 'qwen3', vocabSize: 96, hiddenSize: 64, intermediateSize: 128, numLayers: 2, numHeads: 4, numKvHeads: 2,
    headDim: 32, ropeLayout: 'half', ropeScaling: null, tieWordEmbeddings: true, dtype: 'f16',
  },
};

export interface TinyModel {
  spec: ModelSpec;
  /** Every tensor's values as the engine sees them (already rounded to the file dtype). */
  weights: Map<string, Float64Array>;
}

/** Deterministic uniform generator (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

function toBf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff; // round to nearest even
}
function fromBf16Bits(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}
function toF16Bits(x: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -24) return sign;
  let e = Math.floor(Math.log2(a));
  if (e < -14) return sign | Math.round(a / 2 ** -24); // subnormal
  let m = Math.round((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e += 1;
  }
  return sign | ((e + 15) << 10) | m;
}
function fromF16Bits(h: number): number {
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const v = e === 0 ? m * 2 ** -24 : (1 + m / 1024) * 2 ** (e - 15);
  return h & 0x8000 ? -v : v;
}

function tensorList(s: TinyShape): { name: string; shape: number[]; kind: 'norm' | 'weight' | 'bias' }[] {
  const H = s.hiddenSize;
  const q = s.numHeads * s.headDim;
  const kv = s.numKvHeads * s.headDim;
  const out: { name: string; shape: number[]; kind: 'norm' | 'weight' | 'bias' }[] = [
    { name: 'model.embed_tokens.weight', shape: [s.vocabSize, H], kind: 'weight' },
  ];
  for (let l = 0; l < s.numLayers; l++) {
    const b = `model.layers.${l}`;
    out.push({ name: `${b}.input_layernorm.weight`, shape: [H], kind: 'norm' });
    out.push({ name: `${b}.self_attn.q_proj.weight`, shape: [q, H], kind: 'weight' });
    out.push({ name: `${b}.self_attn.k_proj.weight`, shape: [kv, H], kind: 'weight' });
    out.push({ name: `${b}.self_attn.v_proj.weight`, shape: [kv, H], kind: 'weight' });
    if (s.architecture === 'qwen2') {
      out.push({ name: `${b}.self_attn.q_proj.bias`, shape: [q], kind: 'bias' });
      out.push({ name: `${b}.self_attn.k_proj.bias`, shape: [kv], kind: 'bias' });
      out.push({ name: `${b}.self_attn.v_proj.bias`, shape: [kv], kind: 'bias' });
    }
    if (s.architecture === 'qwen3') {
      out.push({ name: `${b}.self_attn.q_norm.weight`, shape: [s.headDim], kind: 'norm' });
      out.push({ name: `${b}.self_attn.k_norm.weight`, shape: [s.headDim], kind: 'norm' });
    }
    out.push({ name: `${b}.self_attn.o_proj.weight`, shape: [H, q], kind: 'weight' });
    out.push({ name: `${b}.post_attention_layernorm.weight`, shape: [H], kind: 'norm' });
    out.push({ name: `${b}.mlp.gate_proj.weight`, shape: [s.intermediateSize, H], kind: 'weight' });
    out.push({ name: `${b}.mlp.up_proj.weight`, shape: [s.intermediateSize, H], kind: 'weight' });
    out.push({ name: `${b}.mlp.down_proj.weight`, shape: [H, s.intermediateSize], kind: 'weight' });
  }
  out.push({ name: 'model.norm.weight', shape: [H], kind: 'norm' });
  if (!s.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [s.vocabSize, H], kind: 'weight' });
  return out;
}

/** Writes the model's tensors back to back into `dir/weights.bin` (64-byte aligned) and returns its spec. */
export function writeTinyModel(dir: string, shape: TinyShape, seed: number): TinyModel {
  const rand = rng(seed);
  const normal = (): number => {
    const u = Math.max(rand(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
  };
  const es = shape.dtype === 'f32' ? 4 : 2;
  const list = tensorList(shape);
  const file = join(dir, 'weights.bin');
  const tensors: TensorRef[] = [];
  const weights = new Map<string, Float64Array>();
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const t of list) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const fanIn = t.shape.length === 2 ? t.shape[1] : 1;
    const values = new Float64Array(n);
    const bytes = Buffer.alloc(Math.ceil((n * es) / 64) * 64);
    for (let i = 0; i < n; i++) {
      let x: number;
      if (t.kind === 'norm') x = 1 + 0.2 * normal();
      else if (t.kind === 'bias') x = 0.1 * normal();
      else x = normal() / Math.sqrt(fanIn);
      if (shape.dtype === 'f32') {
        bytes.writeFloatLE(x, i * 4);
        values[i] = bytes.readFloatLE(i * 4);
      } else if (shape.dtype === 'bf16') {
        const h = toBf16Bits(x);
        bytes.writeUInt16LE(h, i * 2);
        values[i] = fromBf16Bits(h);
      } else {
        const h = toF16Bits(x);
        bytes.writeUInt16LE(h, i * 2);
        values[i] = fromF16Bits(h);
      }
    }
    tensors.push({ name: t.name, file, offset, dtype: shape.dtype, shape: t.shape });
    weights.set(t.name, values);
    chunks.push(bytes);
    offset += bytes.length;
  }
  writeFileSync(file, Buffer.concat(chunks));
  const spec: ModelSpec = {
    architecture: shape.architecture,
    vocabSize: shape.vocabSize,
    hiddenSize: shape.hiddenSize,
    intermediateSize: shape.intermediateSize,
    numLayers: shape.numLayers,
    numHeads: shape.numHeads,
    numKvHeads: shape.numKvHeads,
    headDim: shape.headDim,
    rmsNormEps: 1e-6,
    ropeTheta: shape.ropeScaling ? 500000 : 10000,
    ropeScaling: shape.ropeScaling,
    ropeLayout: shape.ropeLayout,
    maxPositionEmbeddings: 4096,
    tieWordEmbeddings: shape.tieWordEmbeddings,
    qkvBias: shape.architecture === 'qwen2',
    qkNorm: shape.architecture === 'qwen3',
    bosTokenId: 1,
    eosTokenIds: [2],
    tensors,
  };
  return { spec, weights };
}

function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]);
}

/** y = W x (+ b) for W [out, in]. */
function linear(W: Float64Array, x: Float64Array, out: number, b?: Float64Array): Float64Array {
  const inn = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let acc = b ? b[o] : 0;
    for (let i = 0; i < inn; i++) acc += W[o * inn + i] * x[i];
    y[o] = acc;
  }
  return y;
}

function invFrequencies(spec: ModelSpec): Float64Array {
  const half = spec.headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    let f = 1 / spec.ropeTheta ** ((2 * i) / spec.headDim);
    const rs = spec.ropeScaling;
    if (rs) {
      const lowWave = rs.originalMaxPositionEmbeddings / rs.lowFreqFactor;
      const highWave = rs.originalMaxPositionEmbeddings / rs.highFreqFactor;
      const wave = (2 * Math.PI) / f;
      if (wave > lowWave) f /= rs.factor;
      else if (wave >= highWave) {
        const smooth = (rs.originalMaxPositionEmbeddings / wave - rs.lowFreqFactor) / (rs.highFreqFactor - rs.lowFreqFactor);
        f = ((1 - smooth) * f) / rs.factor + smooth * f;
      }
    }
    inv[i] = f;
  }
  return inv;
}

function rope(v: Float64Array, off: number, pos: number, inv: Float64Array, layout: 'half' | 'interleaved'): void {
  const half = inv.length;
  for (let i = 0; i < half; i++) {
    const a = pos * inv[i];
    const c = Math.cos(a);
    const s = Math.sin(a);
    const i0 = layout === 'half' ? off + i : off + 2 * i;
    const i1 = layout === 'half' ? off + i + half : off + 2 * i + 1;
    const x0 = v[i0];
    const x1 = v[i1];
    v[i0] = x0 * c - x1 * s;
    v[i1] = x1 * c + x0 * s;
  }
}

/** Logits of every position of one sequence, float64, straight from the definitions. */
export function referenceLogits(model: TinyModel, tokens: readonly number[]): Float64Array[] {
  const { spec, weights } = model;
  const head = weights.get(spec.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight') as Float64Array;
  return referenceFinalHidden(model, tokens).map((x) => linear(head, x, spec.vocabSize));
}

/** The embedding contract: mean over positions of the final-normed hidden states, L2-normalised. */
export function referenceEmbedding(model: TinyModel, tokens: readonly number[]): Float64Array {
  const hs = referenceFinalHidden(model, tokens);
  const mean = new Float64Array(model.spec.hiddenSize);
  for (const h of hs) for (let i = 0; i < mean.length; i++) mean[i] += h[i] / hs.length;
  const norm = Math.hypot(...mean);
  return mean.map((x) => x / norm);
}

/** Final hidden states (after the final RMSNorm) of every position of one sequence. */
function referenceFinalHidden(model: TinyModel, tokens: readonly number[]): Float64Array[] {
  const { spec, weights } = model;
  const w = (n: string): Float64Array => {
    const t = weights.get(n);
    if (!t) throw new Error(`reference: no tensor ${n}`);
    return t;
  };
  const H = spec.hiddenSize;
  const D = spec.headDim;
  const nH = spec.numHeads;
  const nKV = spec.numKvHeads;
  const group = nH / nKV;
  const inv = invFrequencies(spec);
  const T = tokens.length;
  const emb = w('model.embed_tokens.weight');
  let h: Float64Array[] = tokens.map((t) => emb.slice(t * H, (t + 1) * H));
  for (let l = 0; l < spec.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const qs: Float64Array[] = [];
    const ks: Float64Array[] = [];
    const vs: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const xn = rmsNorm(h[t], w(p + 'input_layernorm.weight'), spec.rmsNormEps);
      const bias = (n: string): Float64Array | undefined => (spec.qkvBias ? w(p + `self_attn.${n}_proj.bias`) : undefined);
      const q = linear(w(p + 'self_attn.q_proj.weight'), xn, nH * D, bias('q'));
      const k = linear(w(p + 'self_attn.k_proj.weight'), xn, nKV * D, bias('k'));
      const v = linear(w(p + 'self_attn.v_proj.weight'), xn, nKV * D, bias('v'));
      for (let hh = 0; hh < nH; hh++) {
        if (spec.qkNorm) q.set(rmsNorm(q.slice(hh * D, (hh + 1) * D), w(p + 'self_attn.q_norm.weight'), spec.rmsNormEps), hh * D);
        rope(q, hh * D, t, inv, spec.ropeLayout);
      }
      for (let hh = 0; hh < nKV; hh++) {
        if (spec.qkNorm) k.set(rmsNorm(k.slice(hh * D, (hh + 1) * D), w(p + 'self_attn.k_norm.weight'), spec.rmsNormEps), hh * D);
        rope(k, hh * D, t, inv, spec.ropeLayout);
      }
      qs.push(q);
      ks.push(k);
      vs.push(v);
    }
    const next: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const attn = new Float64Array(nH * D);
      for (let hh = 0; hh < nH; hh++) {
        const kvh = Math.floor(hh / group);
        const scores = new Float64Array(t + 1);
        let m = -Infinity;
        for (let j = 0; j <= t; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += qs[t][hh * D + d] * ks[j][kvh * D + d];
          scores[j] = s / Math.sqrt(D);
          m = Math.max(m, scores[j]);
        }
        let z = 0;
        for (let j = 0; j <= t; j++) {
          scores[j] = Math.exp(scores[j] - m);
          z += scores[j];
        }
        for (let j = 0; j <= t; j++)
          for (let d = 0; d < D; d++) attn[hh * D + d] += (scores[j] / z) * vs[j][kvh * D + d];
      }
      const o = linear(w(p + 'self_attn.o_proj.weight'), attn, H);
      const r1 = h[t].map((x, i) => x + o[i]);
      const xn = rmsNorm(r1, w(p + 'post_attention_layernorm.weight'), spec.rmsNormEps);
      const g = linear(w(p + 'mlp.gate_proj.weight'), xn, spec.intermediateSize);
      const u = linear(w(p + 'mlp.up_proj.weight'), xn, spec.intermediateSize);
      const act = g.map((x, i) => (x / (1 + Math.exp(-x))) * u[i]);
      const d = linear(w(p + 'mlp.down_proj.weight'), act, H);
      next.push(r1.map((x, i) => x + d[i]));
    }
    h = next;
  }
  return h.map((x) => rmsNorm(x, w('model.norm.weight'), spec.rmsNormEps));
}

/** max |a - b| / max |b|: the relative error of a logits row. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}
