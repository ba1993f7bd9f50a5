// Our GGUF tokenizers against llama.cpp's on edge-case strings (test/fixtures/tokenizer-llamacpp.json, written by
// bench/reference/tokenizer-llamacpp.mjs): the stories260K SentencePiece vocabulary and the byte-level BPE
// vocabulary of a make-model qwen3-tiny GGUF.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeModel } from '../src/engine/make-model.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

interface Fixture {
  vocabularies: { name: string; cases: { text: string; token_ids: number[] }[] }[];
}

const fixture = JSON.parse(readFileSync(new URL('./fixtures/tokenizer-llamacpp.json', import.meta.url), 'utf8')) as Fixture;
const dir = mkdtempSync(join(tmpdir(), 'tokenizer-llamacpp-test-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

const paths: Record<string, () => string> = {
  stories260K: () => new URL('../models/stories260K.gguf', import.meta.url).pathname,
  'make-model qwen3-tiny GGUF': () => join(makeModel({ shape: 'qwen3-tiny', seed: 1, outDir: join(dir, 'q'), dtype: 'f32', gguf: true }).dir, 'model-f16.gguf'),
};

for (const v of fixture.vocabularies) {
  t.test(v.name, async (t) => {
    const tok = loadTokenizer((paths[v.name] as () => string)());
    for (const c of v.cases) {
      const ids = tok.encode(c.text, { addSpecialTokens: false });
      t.same(ids, c.token_ids, JSON.stringify(c.text));
      // Special tokens get a SentencePiece space after them, so only plain text must decode back exactly.
      if (!ids.some((id) => tok.specialTokenIds.has(id))) t.equal(tok.decode(ids), c.text, `decodes back ${JSON.stringify(c.text)}`);
    }
  });
}
