// Golden end-to-end check on a real trained model: stories260K (GGUF, llama) through loadModelSpec, the GGUF
// tokenizer and the CPU engine reproduces the known greedy continuation of "Once upon a time" (BOS added), alone
// and inside a batch with other prompts at page sizes 1 and 16.

import t from 'tap';
import { packFor } from '../src/engine/step.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { SamplingParams, SeqStep } from '../src/engine/types.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const MODEL = '/work/shared/models/stories260K.gguf';
const GOLDEN =
  ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it,';
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, seed: null, logprobs: -1 };

const spec = await loadModelSpec(MODEL);
const tokenizer = loadTokenizer(MODEL);

/** Greedy-decodes several prompts together for `steps` tokens each. */
function generate(prompts: number[][], pageSize: number, steps: number): number[][] {
  const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize, numPages: 1024, memFractionStatic: 0.5, maxBatchTokens: 256, maxSeqsPerStep: 8, threads: 2 });
  try {
    let nextPage = 0;
    const pages = prompts.map(() => [] as number[]);
    const outputs = prompts.map(() => [] as number[]);
    const cached = prompts.map(() => 0);
    for (let step = 0; step < steps; step++) {
      const batch: SeqStep[] = prompts.map((p, s) => {
        const tokenIds = step === 0 ? p : [outputs[s][outputs[s].length - 1]];
        while (pages[s].length * pageSize < cached[s] + tokenIds.length) pages[s].push(nextPage++);
        return { tokenIds, startPos: cached[s], pages: pages[s].slice(), sample: true, sampling: greedy, outputIndex: step };
      });
      const r = engine.step(packFor(engine, batch));
      batch.forEach((b, s) => {
        cached[s] += b.tokenIds.length;
        outputs[s].push(r.tokens[s]);
      });
    }
    return outputs;
  } finally {
    engine.close();
  }
}

const once = tokenizer.encode('Once upon a time', { addSpecialTokens: true });
t.equal(once[0], 1, 'BOS first');
const others = ['The dog', 'Tom and Sue went to the', 'Lily'].map((p) => tokenizer.encode(p, { addSpecialTokens: true }));

for (const pageSize of [1, 16]) {
  t.test(`golden greedy text, page size ${pageSize}`, async (t) => {
    const [solo] = generate([once], pageSize, 48);
    const text = tokenizer.decode(solo);
    t.ok(text.startsWith(GOLDEN), `continuation starts with the golden text: ${JSON.stringify(text)}`);
    const batched = generate([others[0], once, others[1], others[2]], pageSize, 48);
    t.same(batched[1], solo, 'same tokens inside a mixed batch');
  });
}
