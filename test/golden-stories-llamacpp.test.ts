// stories260K greedy continuations: our tokenizer and CPU engine against llama.cpp (node-llama-cpp 3.21.1),
// whose outputs bench/reference/stories-llamacpp.mjs wrote to test/fixtures/stories260K-llamacpp.json.
import t from 'tap';
import { existsSync, readFileSync } from 'node:fs';
import { addonPath } from '../src/engine/addon.js';
import { loadModelSpec } from '../src/engine/model.js';
import { generateTokens, openEngineFor } from '../src/cli/commands/generate.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const STORIES = new URL('../models/stories260K.gguf', import.meta.url).pathname;
const FIXTURE = new URL('./fixtures/stories260K-llamacpp.json', import.meta.url).pathname;

interface Fixture {
  max_tokens: number;
  cases: { prompt: string; prompt_token_ids: number[]; output_token_ids: number[]; text: string }[];
}

const fixture = JSON.parse(readFileSync(FIXTURE, 'utf8')) as Fixture;
const tok = loadTokenizer(STORIES);

t.test('tokenizer matches llama.cpp on the prompts', async (t) => {
  for (const c of fixture.cases) t.same(tok.encode(c.prompt), c.prompt_token_ids, JSON.stringify(c.prompt));
});

const built = existsSync(addonPath());
t.test('greedy continuations match llama.cpp', { skip: built ? false : `native addon not built (${addonPath()})` }, async (t) => {
  const spec = await loadModelSpec(STORIES);
  const engine = openEngineFor(spec, 'cpu', 64 + fixture.max_tokens, 64);
  try {
    for (const c of fixture.cases) {
      const r = generateTokens(engine, c.prompt_token_ids, {
        maxTokens: c.output_token_ids.length,
        sampling: { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 },
        stopTokenIds: spec.eosTokenIds,
      });
      t.same(r.outputTokenIds, c.output_token_ids, `tokens for ${JSON.stringify(c.prompt)}`);
      // llama.cpp's detokenize drops the SentencePiece leading space as our whole-sequence decode does.
      t.equal(tok.decode(r.outputTokenIds), c.text, `text for ${JSON.stringify(c.prompt)}`);
    }
  } finally {
    engine.close();
  }
});
