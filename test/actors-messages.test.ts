// The per-step wire form between the scheduler and a rank: a whole step in two flat buffers.
import t from 'tap';
import { packSteps, unpackSteps } from '../actors/messages.js';
import type { SeqStep } from '../src/engine/types.js';

t.test('packSteps/unpackSteps round-trips every field', async (t) => {
  const seqs: SeqStep[] = [
    { tokenIds: [5, 6, 7], startPos: 0, pages: [3], sample: false, outputIndex: 0, sampling: { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 } },
    { tokenIds: Int32Array.of(9), startPos: 40, pages: Int32Array.of(1, 2, 8), sample: true, outputIndex: 17, sampling: { temperature: 0.7, topP: 0.9, topK: 40, minP: 0.05, seed: 2 ** 40 + 3, logprobs: 5 } },
    { tokenIds: [1], startPos: 0, pages: [0], sample: true, outputIndex: 0, sampling: { temperature: 1, topP: 1, topK: 0, minP: 0, seed: 0, logprobs: 0 } },
  ];
  const pack = packSteps(seqs);
  const back = unpackSteps(structuredClone(pack, { transfer: [pack.ints.buffer, pack.floats.buffer] }));
  t.equal(back.length, 3);
  back.forEach((b, i) => {
    const s = seqs[i];
    t.same(Array.from(b.tokenIds), Array.from(s.tokenIds));
    t.same(Array.from(b.pages), Array.from(s.pages));
    t.same({ ...b, tokenIds: null, pages: null }, { ...s, tokenIds: null, pages: null });
  });
  t.equal(pack.ints.byteLength, 0, 'the buffers were transferred, not copied');
});
