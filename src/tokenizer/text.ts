// What both tokenizer kinds share when turning ids back into text.
import type { Tokenizer } from './types.js';

/** The UTF-8 text of the tokens' bytes in order, leaving out special tokens when asked and ids past the tokenizer's
 * vocabulary (a model's padded vocabulary can be larger). */
export function tokensText(tokenizer: Pick<Tokenizer, 'specialTokenIds' | 'vocabSize' | 'tokenBytes'>, ids: ArrayLike<number>, skipSpecialTokens: boolean): string {
  const parts: Uint8Array[] = [];
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i] as number;
    if ((skipSpecialTokens && tokenizer.specialTokenIds.has(id)) || id >= tokenizer.vocabSize) continue;
    parts.push(tokenizer.tokenBytes(id));
  }
  return Buffer.concat(parts).toString('utf8');
}
