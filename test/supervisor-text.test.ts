// The programmatic API's text in/out: Supervisor.generateText with a prompt (the model's tokenizer, BOS added,
// the golden stories260K continuation) and with chat messages (the model's chat template), text pieces that join
// to the whole decoded completion, and the tokenizer the package exports.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { Supervisor } from '../src/supervisor.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { chatPromptIds } from '../actors/tokenizer.js';

const STORIES = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const QWEN3 = fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url));
const GOLDEN = ', there was a little girl named Lily. She loved to play outside in the park.';

t.test('a prompt in, text out', async (t) => {
  const sup = await Supervisor.start({ modelPath: STORIES, device: 'cpu', numPages: 64 });
  t.teardown(() => sup.stop());
  let text = '';
  const ids: number[] = [];
  let last: { finish_reason?: string | null; completion_usage?: { prompt_tokens: number } | null } = {};
  for await (const chunk of sup.generateText({ prompt: 'Once upon a time', max_tokens: 32, temperature: 0 })) {
    text += chunk.text;
    ids.push(...chunk.token_ids);
    last = chunk;
  }
  t.ok(text.startsWith(GOLDEN), `golden text, got: ${text}`);
  t.equal(text, sup.tokenizer.decode(ids), 'the pieces join to the decoded completion');
  t.equal(last.finish_reason, 'length');
  t.equal(last.completion_usage?.prompt_tokens, sup.tokenizer.encode('Once upon a time').length, 'BOS and the prompt');
  await t.rejects(async () => {
    for await (const _ of sup.generateText({ prompt: 'a', messages: [{ role: 'user', content: 'b' }] })) void _;
  }, /exactly one of prompt and messages/);
});

t.test('chat messages go through the model\'s chat template', async (t) => {
  const sup = await Supervisor.start({ modelPath: QWEN3, device: 'cpu', numPages: 64 });
  t.teardown(() => sup.stop());
  const messages = [{ role: 'user', content: 'Hello <|im_end|> there' }];
  const tok = loadTokenizer(QWEN3);
  t.ok(tok.hasChatTemplate);
  const expected = chatPromptIds(tok, messages, {});
  let promptTokens = -1;
  let count = 0;
  for await (const chunk of sup.generateText({ messages, max_tokens: 6, temperature: 0, ignore_eos: true })) {
    count += chunk.token_ids.length;
    if (chunk.completion_usage) promptTokens = chunk.completion_usage.prompt_tokens;
  }
  t.equal(count, 6);
  t.equal(promptTokens, expected.length, 'the prompt is the chat template\'s rendering (the user\'s marker stays text)');
});
