// stories260K (the package copy in models/) must reproduce its known greedy continuation of "Once upon a time",
// through our tokenizer and the CPU engine (see models/README.md for the reference).
import t from 'tap';
import { existsSync } from 'node:fs';
import { addonPath } from '../src/engine/addon.js';
import { loadModelSpec } from '../src/engine/model.js';
import { generateTokens, openEngineFor } from '../src/cli/commands/generate.js';
import { IncrementalDetokenizer, loadTokenizer } from '../src/tokenizer/index.js';

const STORIES = new URL('../models/stories260K.gguf', import.meta.url).pathname;
const GOLDEN =
  ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it,';

const built = existsSync(addonPath());

t.test('stories260K greedy continuation of "Once upon a time"', { skip: built ? false : `native addon not built (${addonPath()})` }, async (t) => {
  const spec = await loadModelSpec(STORIES);
  const tok = loadTokenizer(STORIES);
  const prompt = tok.encode('Once upon a time');
  t.same(prompt, [1, 403, 407, 261, 378]);
  for (const pageSize of [1, 16]) {
    const engine = openEngineFor(spec, 'cpu', prompt.length + 64, prompt.length, pageSize);
    try {
      const detok = new IncrementalDetokenizer(tok);
      let text = '';
      generateTokens(engine, prompt, { maxTokens: 64, sampling: { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 }, stopTokenIds: [] }, (id) => {
        text += detok.push(id);
      });
      t.equal(text.slice(0, GOLDEN.length), GOLDEN, `page size ${pageSize}`);
    } finally {
      engine.close();
    }
  }
});
