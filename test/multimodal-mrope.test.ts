// Image placeholders and M-RoPE positions (src/multimodal/mrope.ts), worked by hand from the Qwen2-VL rules.
import t from 'tap';
import { expandImagePlaceholders, imageTokenCount, multimodalPositions } from '../src/multimodal/mrope.js';

const V = 151655; // <|image_pad|>

t.test('placeholders expand to one token per merged patch, image by image', async (t) => {
  t.equal(imageTokenCount([1, 4, 6], 2), 6);
  t.same(expandImagePlaceholders([1, V, 2, V], V, [[1, 2, 2], [1, 4, 2]], 2), [1, V, 2, V, V]);
  t.throws(() => expandImagePlaceholders([1, V, 2], V, [[1, 2, 2], [1, 2, 2]], 2), { code: 'LLM_ERR_BAD_REQUEST', message: /1 image placeholder\(s\) for 2 image\(s\)/ });
});

t.test('positions: text counts on, an image takes (start, start + row, start + column), text resumes after its largest', async (t) => {
  const tokens = [1, 2, V, V, V, V, 3];
  const { positions, delta } = multimodalPositions(tokens, V, [[1, 4, 4]], 2);
  const n = tokens.length;
  const section = (s: number) => Array.from(positions.subarray(s * n, (s + 1) * n));
  t.same(section(0), [0, 1, 2, 2, 2, 2, 4], 'time');
  t.same(section(1), [0, 1, 2, 2, 3, 3, 4], 'height');
  t.same(section(2), [0, 1, 2, 3, 2, 3, 4], 'width');
  t.equal(delta, -2, 'decoding goes on at index + delta: 7 - 2 = 5, after the last position 4');
  const wide = multimodalPositions([V, V, V], V, [[1, 2, 6]], 2);
  t.same(Array.from(wide.positions), [0, 0, 0, 0, 0, 0, 0, 1, 2], 'an image first: rows 0, columns 0..2');
  t.equal(wide.delta, 0, 'largest position 2 + 1 - 3 tokens');
  t.same(multimodalPositions([5, 6], V, [], 2), { positions: Int32Array.from([0, 1, 0, 1, 0, 1]), delta: 0 }, 'text only: plain positions');
  t.throws(() => multimodalPositions([V, V, 1], V, [[1, 4, 4]], 2), { message: /image 0 needs 4 placeholder tokens; the prompt has 3 left/ });
});
