// The incremental detokenizer hands out each token's exact contribution to the text: the pieces join to the whole
// decode (SentencePiece spaces, byte-fallback tokens splitting a character, Qwen's byte-level BPE), a character's
// bytes wait for the token that completes it, and peek() says what a token would add without adding it.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { IncrementalDetokenizer, loadTokenizer, type Tokenizer } from '../src/tokenizer/index.js';

const stories = loadTokenizer(fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url)));
const qwen = loadTokenizer(fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url)));
const TEXTS = [', there was a little girl', ' a café ☃ naïve 日本 🙂!', 'tabs\tand\nnew lines  two spaces', '🙂🙂 ǅ ﷽'];

function pieces(tok: Tokenizer, ids: readonly number[]): string[] {
  const d = new IncrementalDetokenizer(tok, { skipSpecialTokens: false });
  const out = ids.map((id) => {
    const peeked = d.peek(id);
    const pushed = d.push(id);
    if (peeked !== pushed) throw new Error(`peek ${JSON.stringify(peeked)} != push ${JSON.stringify(pushed)}`);
    return pushed;
  });
  out.push(d.flush());
  return out;
}

t.test('pieces join to the bytes of the tokens', async (t) => {
  for (const [name, tok] of [['stories260K', stories], ['qwen3', qwen]] as const) {
    for (const text of TEXTS) {
      const ids = tok.encode(text, { addSpecialTokens: false, parseSpecialTokens: false });
      const whole = Buffer.concat(ids.map((id) => tok.tokenBytes(id))).toString('utf8');
      t.equal(pieces(tok, ids).join(''), whole, `${name}: ${JSON.stringify(text)}`);
    }
  }
});

t.test('a character split over byte-fallback tokens belongs to the token that completes it', async (t) => {
  const ids = stories.encode('☃', { addSpecialTokens: false });
  const bytes = ids.map((id) => stories.tokenBytes(id).length);
  t.ok(bytes.filter((n) => n === 1).length >= 3, `☃ is written as byte tokens (${stories.tokenText(ids.at(-1)!)})`);
  const p = pieces(stories, ids);
  t.equal(p.at(-2), '☃', 'the last byte token carries the character');
  t.ok(p.slice(0, -2).every((s) => s === ' ' || s === ''), 'the earlier ones carry nothing of it');
});

t.test('SentencePiece keeps the leading space a token stands for', async (t) => {
  const ids = stories.encode(', there was', { addSpecialTokens: false }).filter((id) => stories.tokenText(id) !== '▁');
  t.same(pieces(stories, ids).slice(0, -1), [',', ' there', ' was']);
});

t.test('an unfinished character at the end, invalid bytes', async (t) => {
  const d = new IncrementalDetokenizer(stories);
  // Llama-style vocabularies put the 256 byte tokens right after <unk>, <s>, </s>
  const byte = (b: number) => (stories.tokenText(3 + b) === `<0x${b.toString(16).toUpperCase().padStart(2, '0')}>` ? 3 + b : -1);
  const e2 = byte(0xe2);
  t.not(e2, -1, 'byte tokens are ids 3..258');
  t.equal(d.push(e2), '');
  t.equal(d.push(byte(0x41)), '\uFFFDA', 'a lead byte followed by ASCII is a replacement character');
  t.equal(d.push(e2), '');
  t.equal(d.flush(), '\uFFFD', 'an unfinished character comes out as U+FFFD at the end');
  t.equal(d.output, '\uFFFDA\uFFFD');
});
