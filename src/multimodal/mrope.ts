// Image placeholders and multimodal rotary positions (M-RoPE) of the Qwen2-VL / Qwen2.5-VL language model.
// The chat template leaves one image token (<|image_pad|>) per image; the prompt carries as many as the image has
// merged patches (grid_t * grid_h * grid_w / merge^2), which the vision tower's embeddings then replace one for one.
// Positions have three sections (time, height, width): a text token's three are equal and count on from the previous
// token's largest plus one; an image's tokens start where the text before it ends and take (t, row, column) of their
// merged patch, each plus that start. Decoding continues at (token index + delta) in every section, delta = the
// largest prompt position + 1 - prompt length (negative after an image: its tokens share positions).
import { LlmError } from '../errors.js';

/** One image's patch grid (as the processor gives it) in the prompt. */
export type GridThw = readonly [number, number, number];

/** Tokens an image takes in the prompt. */
export function imageTokenCount(grid: GridThw, mergeSize: number): number {
  const [t, h, w] = grid;
  if (h % mergeSize !== 0 || w % mergeSize !== 0) throw new LlmError('LLM_ERR_INTERNAL', `image grid ${t}x${h}x${w} is not a multiple of the merge size ${mergeSize}`);
  return (t * h * w) / (mergeSize * mergeSize);
}

/** Replaces the i-th image token with the i-th image's count of them; the prompt must hold one per image. */
export function expandImagePlaceholders(tokens: readonly number[], imageTokenId: number, grids: readonly GridThw[], mergeSize: number): number[] {
  const found = tokens.reduce((n, id) => n + (id === imageTokenId ? 1 : 0), 0);
  if (found !== grids.length) {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `the prompt has ${found} image placeholder(s) for ${grids.length} image(s): each image needs one where it goes (the chat template puts them for image_url content parts)`);
  }
  const out: number[] = [];
  let image = 0;
  for (const id of tokens) {
    if (id !== imageTokenId) {
      out.push(id);
      continue;
    }
    const n = imageTokenCount(grids[image++], mergeSize);
    for (let k = 0; k < n; k++) out.push(imageTokenId);
  }
  return out;
}

/** The M-RoPE positions of an expanded prompt: sections [time | height | width], each `tokens.length` long, and
 * the delta decoding adds to the token index. */
export function multimodalPositions(tokens: readonly number[], imageTokenId: number, grids: readonly GridThw[], mergeSize: number): { positions: Int32Array; delta: number } {
  const n = tokens.length;
  const positions = new Int32Array(3 * n);
  const put = (i: number, t: number, h: number, w: number): void => {
    positions[i] = t;
    positions[n + i] = h;
    positions[2 * n + i] = w;
  };
  let next = 0; // the position the next text token takes
  let i = 0;
  let image = 0;
  while (i < n) {
    if (tokens[i] !== imageTokenId) {
      put(i, next, next, next);
      next++;
      i++;
      continue;
    }
    if (image >= grids.length) throw new LlmError('LLM_ERR_BAD_REQUEST', `the prompt has more image tokens than its ${grids.length} image(s) take`);
    const [gt, gh, gw] = grids[image++];
    const h = gh / mergeSize;
    const w = gw / mergeSize;
    const count = gt * h * w;
    if (i + count > n) throw new LlmError('LLM_ERR_BAD_REQUEST', `image ${image - 1} needs ${count} placeholder tokens; the prompt has ${n - i} left`);
    let largest = next;
    for (let k = 0; k < count; k++) {
      if (tokens[i + k] !== imageTokenId) throw new LlmError('LLM_ERR_BAD_REQUEST', `image ${image - 1} needs ${count} consecutive placeholder tokens; token ${i + k} is not one`);
      // a still image's frames are all at time 0 (the time index counts seconds, which a picture does not have)
      const row = Math.floor((k % (h * w)) / w);
      const col = k % w;
      put(i + k, next, next + row, next + col);
      largest = Math.max(largest, next + row, next + col);
    }
    i += count;
    next = largest + 1;
  }
  if (image !== grids.length) throw new LlmError('LLM_ERR_BAD_REQUEST', `the prompt has image tokens for ${image} of ${grids.length} image(s)`);
  return { positions, delta: next - n };
}
