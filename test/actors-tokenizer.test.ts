// The tokenizer actor: a piscina pool encoding, decoding and rendering chat templates off the main thread, for any
// number of tokenizers (each call names its source), with coded errors.
import t from 'tap';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chatPromptIds, TokenizerPool } from '../actors/tokenizer.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const STORIES = { modelPath: '/work/shared/models/stories260K.gguf' };
const QWEN3_DIR = fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url));

const pool = new TokenizerPool({ threads: 2 });
t.teardown(() => pool.destroy());

t.test('encode/decode in the pool match the tokenizer in this thread', async (t) => {
  const local = loadTokenizer(STORIES.modelPath);
  const texts = ['Once upon a time', 'The dog ran to the park.', 'Lily and Tom'];
  const ids = await Promise.all(texts.map((s) => pool.encode(STORIES, s)));
  t.same(ids, texts.map((s) => local.encode(s, { addSpecialTokens: true })));
  t.same(ids[0], [1, 403, 407, 261, 378]);
  t.equal(await pool.decode(STORIES, ids[1]), local.decode(ids[1]));
  t.same(await pool.encode(STORIES, 'Once', false), local.encode('Once', { addSpecialTokens: false }));
});

t.test('chat prompts: the template where the model has one, else the text after BOS; two tokenizers in one pool', async (t) => {
  await pool.load({ modelPath: QWEN3_DIR });
  const qwen = loadTokenizer(QWEN3_DIR);
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
  const ids = await pool.encodeChat({ modelPath: QWEN3_DIR }, messages, { addGenerationPrompt: true });
  t.same(ids, qwen.encode(qwen.applyChatTemplate(messages), { addSpecialTokens: false }));
  t.same(ids, chatPromptIds(qwen, messages, { addGenerationPrompt: true }));
  const stories = loadTokenizer(STORIES.modelPath);
  t.same(await pool.encodeChat(STORIES, messages), stories.encode('Be brief.\nHi', { addSpecialTokens: true }));
});

t.test('errors come back coded', async (t) => {
  const err = await pool.encode({ modelPath: '/nonexistent/model.gguf' }, 'x').catch((e: unknown) => e);
  t.match(err, { name: 'LlmError' });
  t.match((err as { code: string }).code, /^LLM_ERR_(MODEL_NOT_FOUND|TOKENIZER)$/);
  t.match((err as Error).message, /nonexistent/);

  const dir = mkdtempSync(join(tmpdir(), 'tok-bad-template-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  copyFileSync(join(QWEN3_DIR, 'tokenizer.json'), join(dir, 'tokenizer.json'));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ chat_template: "{{ raise_exception('only user turns') }}" }));
  await t.rejects(pool.encodeChat({ modelPath: dir }, [{ role: 'user', content: 'Hi' }]), { code: 'LLM_ERR_BAD_REQUEST', message: /chat template failed/ });
});
