// The KV layout both sides of a disaggregated transfer must agree on. A page exported by one engine is imported
// byte for byte by the other, so page size, element type and the per-page shape (layers, KV heads, head dim) must
// be equal; a mismatch is refused before any byte moves, naming both sides.
import { Type, type Static } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import type { EngineSummary } from '../../actors/messages.js';

export const KvLayoutSchema = Type.Object(
  {
    backend: Type.String(),
    dtype: Type.String(),
    pageSize: Type.Integer({ minimum: 1 }),
    numLayers: Type.Integer({ minimum: 1 }),
    numKvHeads: Type.Integer({ minimum: 1 }),
    headDim: Type.Integer({ minimum: 1 }),
    /** TP ranks the KV heads are split over (1 in this build). */
    tpSize: Type.Integer({ minimum: 1 }),
    bytesPerPage: Type.Integer({ minimum: 1 }),
  },
  { title: 'KvLayout' },
);
export type KvLayout = Static<typeof KvLayoutSchema>;

const DTYPE_BY_BYTES: Record<number, string> = { 4: 'f32', 2: 'bf16', 1: 'fp8' };

/** The layout of an engine's KV pool: pages hold K and V of every layer, `pageSize × numKvHeads × headDim` each. */
export function kvLayoutOf(engine: EngineSummary, tpSize = 1): KvLayout {
  const elements = 2 * engine.numLayers * engine.kv.pageSize * engine.numKvHeads * engine.headDim;
  const elementBytes = engine.kv.bytesPerPage / elements;
  return {
    backend: engine.backend,
    dtype: DTYPE_BY_BYTES[elementBytes] ?? `${elementBytes}-byte`,
    pageSize: engine.kv.pageSize,
    numLayers: engine.numLayers,
    numKvHeads: engine.numKvHeads,
    headDim: engine.headDim,
    tpSize,
    bytesPerPage: engine.kv.bytesPerPage,
  };
}

export function describeLayout(l: KvLayout): string {
  return `page size ${l.pageSize}, dtype ${l.dtype}, ${l.numLayers} layers x ${l.numKvHeads} KV heads x head dim ${l.headDim}, TP ${l.tpSize} (${l.backend})`;
}

/** Throws LLM_ERR_KV_TRANSFER naming what differs and both sides' layouts. */
export function checkLayouts(prefill: KvLayout, decode: KvLayout, where: string): void {
  const fields = ['pageSize', 'dtype', 'numLayers', 'numKvHeads', 'headDim', 'tpSize', 'bytesPerPage'] as const;
  const differ = fields.filter((f) => prefill[f] !== decode[f]);
  if (!differ.length) return;
  throw new LlmError(
    'LLM_ERR_KV_TRANSFER',
    `${where}: KV layouts differ in ${differ.join(', ')}: prefill side has ${describeLayout(prefill)}; ` +
      `decode side has ${describeLayout(decode)}. Run both workers with the same model, --page-size and --tp-size`,
  );
}
