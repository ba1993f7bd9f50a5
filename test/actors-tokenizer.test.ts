// The tokenizer actor: a piscina pool encoding and decoding off the main thread, with coded errors.
import t from 'tap';
import { TokenizerPool } from '../actors/tokenizer.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const MODEL = '/work/shared/models/stories260K.gguf';

t.test('encode/decode in the pool match the tokenizer in this thread', async (t) => {
  const pool = new TokenizerPool({ modelPath: MODEL }, { threads: 2 });
  t.teardown(() => pool.destroy());
  const local = loadTokenizer(MODEL);
  const texts = ['Once upon a time', 'The dog ran to the park.', 'Lily and Tom'];
  const ids = await Promise.all(texts.map((s) => pool.encode(s)));
  t.same(ids, texts.map((s) => local.encode(s, { addSpecialTokens: true })));
  t.same(ids[0], [1, 403, 407, 261, 378]);
  t.equal(await pool.decode(ids[1]), local.decode(ids[1]));
  t.same(await pool.encode('Once', false), local.encode('Once', { addSpecialTokens: false }));
});

t.test('errors come back coded', async (t) => {
  const pool = new TokenizerPool({ modelPath: '/nonexistent/model.gguf' }, { threads: 1 });
  t.teardown(() => pool.destroy());
  const err = await pool.encode('x').catch((e: unknown) => e);
  t.match(err, { name: 'LlmError' });
  t.match((err as { code: string }).code, /^LLM_ERR_(MODEL_NOT_FOUND|TOKENIZER)$/);
  t.match((err as Error).message, /nonexistent/);
});
