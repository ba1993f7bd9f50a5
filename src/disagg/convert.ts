// Host-side conversion of host-staged KV pages (the tcp transfer) between two engines whose pools differ in page
// size or element type. The export unit of both backends is page-major: for each page, for each layer, K then V,
// each a block of pageSize token rows of numKvHeads × headDim elements. A token row is the same on both sides (the
// per-token shape is checked first, ./layout.ts), so conversion moves whole rows into the other page size and
// widens or rounds each element: bf16 → f32 is exact, f32 → bf16 rounds to nearest even (as the CUDA backend's
// own __float2bfloat16 does when it writes KV).
import { LlmError } from '../errors.js';
import type { KvLayout } from './layout.js';

/** The element types a pool may hold, with their byte widths. */
const ELEMENT_BYTES: Record<string, number> = { f32: 4, bf16: 2 };

export function isConvertibleDtype(dtype: string): boolean {
  return dtype in ELEMENT_BYTES;
}

/** f32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN. */
export function f32ToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const x = bits[i];
    if ((x & 0x7f800000) === 0x7f800000 && x & 0x007fffff) dst[i] = (x >>> 16) | 0x0040;
    else dst[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return dst;
}

/** bf16 bits → f32, exact. */
export function bf16ToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const bits = new Uint32Array(dst.buffer, dst.byteOffset, dst.length);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return dst;
}

export interface ConvertedPages {
  data: Uint8Array;
  /** Pages of the target page size: whole ones only (the tokens beyond the last whole one are left for the decode
   * side), or with `tokens` given, ceil(tokens / page size) (the last one partial). */
  pageCount: number;
  tokenCount: number;
}

/**
 * Repacks `pageCount` pages exported under `from` into the page size and dtype of `to` (same per-token shape).
 * Without `tokens`, the whole target pages the source pages fill; with it, the KV of token positions [0, tokens)
 * (a hand-over, its last page partial on either side). Returns the data unchanged when nothing differs.
 */
export function convertPages(data: Uint8Array, pageCount: number, from: KvLayout, to: KvLayout, tokens?: number): ConvertedPages {
  const rows = tokens ?? pageCount * from.pageSize;
  if (rows > pageCount * from.pageSize) throw new LlmError('LLM_ERR_KV_TRANSFER', `KV of ${rows} tokens cannot be in ${pageCount} pages of ${from.pageSize}`);
  if (from.pageSize === to.pageSize && from.dtype === to.dtype) return { data, pageCount, tokenCount: rows };
  const inBytes = ELEMENT_BYTES[from.dtype];
  const outBytes = ELEMENT_BYTES[to.dtype];
  if (!inBytes || !outBytes) {
    throw new LlmError('LLM_ERR_KV_TRANSFER', `KV pages in dtype ${from.dtype} cannot be converted to ${to.dtype} (convertible: ${Object.keys(ELEMENT_BYTES).join(', ')})`);
  }
  const rowElems = from.numKvHeads * from.headDim;
  const tensors = 2 * from.numLayers;
  if (data.length !== pageCount * tensors * from.pageSize * rowElems * inBytes) {
    throw new LlmError('LLM_ERR_KV_TRANSFER', `KV page data has ${data.length} bytes, expected ${pageCount} pages of ${tensors * from.pageSize * rowElems * inBytes}`);
  }
  const outPages = tokens === undefined ? Math.floor(rows / to.pageSize) : Math.ceil(rows / to.pageSize);
  const outRows = tokens === undefined ? outPages * to.pageSize : rows;
  const out = new Uint8Array(outPages * tensors * to.pageSize * rowElems * outBytes);
  const rowIn = rowElems * inBytes;
  const rowOut = rowElems * outBytes;
  // Rows are copied (same dtype) or converted (other dtype) one at a time through these views.
  const aligned = data.byteOffset % 4 === 0 ? data : new Uint8Array(data);
  const f32In = inBytes === 4 ? new Float32Array(aligned.buffer, aligned.byteOffset, aligned.length / 4) : null;
  const bf16In = inBytes === 2 ? new Uint16Array(aligned.buffer, aligned.byteOffset, aligned.length / 2) : null;
  for (let t = 0; t < outRows; t++) {
    const sp = Math.floor(t / from.pageSize);
    const sr = t % from.pageSize;
    const dp = Math.floor(t / to.pageSize);
    const dr = t % to.pageSize;
    for (let k = 0; k < tensors; k++) {
      const src = ((sp * tensors + k) * from.pageSize + sr) * rowIn;
      const dst = ((dp * tensors + k) * to.pageSize + dr) * rowOut;
      if (inBytes === outBytes) {
        out.set(aligned.subarray(src, src + rowIn), dst);
      } else if (f32In) {
        f32ToBf16(f32In.subarray(src / 4, src / 4 + rowElems), new Uint16Array(out.buffer, dst, rowElems));
      } else {
        bf16ToF32(bf16In!.subarray(src / 2, src / 2 + rowElems), new Float32Array(out.buffer, dst, rowElems));
      }
    }
  }
  return { data: out, pageCount: outPages, tokenCount: outRows };
}

