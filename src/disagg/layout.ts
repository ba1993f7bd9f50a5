// The KV layout of both sides of a disaggregated transfer. The per-token shape (layers, KV heads, head dim) and the
// TP split must be equal; page size and element type may differ and are converted on the way (./convert.ts). A
// mismatch that cannot be converted is refused before any byte moves, naming both sides.
import { Type, type Static } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import type { EngineSummary } from '../engine/summary.js';
import { isConvertibleDtype } from './convert.js';

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

/** Throws LLM_ERR_KV_TRANSFER when the two layouts cannot be matched, naming what differs and both sides' values.
 * Page size and dtype (f32, bf16) may differ: the transfer converts them (./convert.ts). The per-token shape and
 * the TP split of the KV heads must be equal. */
export function checkLayouts(prefill: KvLayout, decode: KvLayout, where: string): void {
  if (prefill.tpSize !== decode.tpSize) {
    throw new LlmError(
      'LLM_ERR_KV_TRANSFER',
      `${where}: KV TP layouts differ: the prefill side splits its KV heads over --tp-size ${prefill.tpSize}, the decode side over --tp-size ${decode.tpSize}; ` +
        `run both workers with the same --tp-size (prefill side: ${describeLayout(prefill)}; decode side: ${describeLayout(decode)})`,
    );
  }
  const differ: string[] = (['numLayers', 'numKvHeads', 'headDim'] as const).filter((f) => prefill[f] !== decode[f]);
  const convertible = isConvertibleDtype(prefill.dtype) && isConvertibleDtype(decode.dtype);
  if (prefill.dtype !== decode.dtype && !convertible) differ.push('dtype');
  if (!differ.length) return;
  throw new LlmError(
    'LLM_ERR_KV_TRANSFER',
    `${where}: KV layouts differ in ${differ.join(', ')}: prefill side has ${describeLayout(prefill)}; ` +
      `decode side has ${describeLayout(decode)}. Run both workers with the same model`,
  );
}
