// The step descriptor round trip: what packStep writes, decodeStep (the fakes' reader) reads back, also after the
// buffer crossed a thread by transfer.
import t from 'tap';
import { decodeStep, packStep, stepShape } from '../src/engine/step.js';
import type { SeqStep } from '../src/engine/types.js';

t.test('packStep/decodeStep round-trips every field', async (t) => {
  const seqs: SeqStep[] = [
    { tokenIds: [5, 6, 7], startPos: 0, pages: [3], sample: false, outputIndex: 0, sampling: { temperature: 0, topP: 1, topK: -1, minP: 0, seed: 0, logprobs: -1 } },
    { tokenIds: Int32Array.of(9), startPos: 40, pages: Int32Array.of(1, 2, 8), sample: true, outputIndex: 17, bannedTokenIds: [4, 2], sampling: { temperature: 0.7, topP: 0.9, topK: 40, minP: 0.05, seed: 2 ** 40 + 3, logprobs: 5 } },
    { tokenIds: [1], startPos: 0, pages: [0], sample: true, outputIndex: 0, sampling: { temperature: 1, topP: 1, topK: 0, minP: 0, seed: 0, logprobs: 0 } },
  ];
  const desc = packStep(seqs, 16, { returnLogits: true });
  const moved = structuredClone(desc, { transfer: [desc.buffer as ArrayBuffer] });
  t.equal(desc.byteLength, 0, 'the buffer was transferred, not copied');
  const back = decodeStep(moved);
  t.equal(back.pageSize, 16);
  t.equal(back.returnLogits, true);
  t.same(stepShape(moved), { numSeqs: 3, numTokens: 5, kvTokens: 3 + 41 + 1 });
  t.equal(back.seqs.length, 3);
  back.seqs.forEach((b, i) => {
    const s = seqs[i];
    t.same(Array.from(b.tokenIds), Array.from(s.tokenIds));
    t.same(Array.from(b.pages), Array.from(s.pages));
    // Sampling floats travel as f32.
    const sampling = { ...s.sampling, temperature: Math.fround(s.sampling.temperature), topP: Math.fround(s.sampling.topP), minP: Math.fround(s.sampling.minP) };
    t.same({ ...b, tokenIds: null, pages: null }, { ...s, sampling, tokenIds: null, pages: null });
  });
});

t.test('decodeStep refuses a buffer that is not a descriptor', async (t) => {
  const desc = packStep([{ tokenIds: [1, 2], startPos: 0, pages: [0], sample: true, outputIndex: 0, sampling: { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 } }], 4);
  t.throws(() => decodeStep(desc.subarray(0, 8)), { code: 'LLM_ERR_STEP_INVALID' }, 'short');
  t.throws(() => decodeStep(desc.slice(0, desc.length - 1)), { code: 'LLM_ERR_STEP_INVALID', message: /words/ }, 'truncated');
  const bad = desc.slice();
  bad[0] = 7;
  t.throws(() => decodeStep(bad), { code: 'LLM_ERR_STEP_INVALID', message: /magic/ }, 'magic');
});
