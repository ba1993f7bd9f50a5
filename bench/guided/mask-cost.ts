// Host cost of grammar masks (xgrammar WASM, one thread): compiling a JSON schema and the next-token bitmask after each
// token of a matching JSON text, for a tokenizer and a logits width (the engine's vocabulary, >= the tokenizer's).
// Three passes: the first pays the WASM load and the compiler's caches.
// Run: npx tsx bench/guided/mask-cost.ts TOKENIZER_PATH [VOCAB]
//   e.g. npx tsx bench/guided/mask-cost.ts test/fixtures/hf/qwen3-tiny 151936
import { loadTokenizer } from '../../src/tokenizer/index.js';
import { GrammarCompilers, grammarSpecOf } from '../../src/guided/guides.js';
const tok = loadTokenizer(process.argv[2]);
const V = Number(process.argv[3] ?? tok.vocabSize);
console.log('vocab', tok.vocabSize, 'V', V);
const gc = GrammarCompilers.create(tok, V);
const text = '{"name":"Alice Smith the third of her name","age":42}';
const ids = tok.encode(text, { addSpecialTokens: false });
// A fresh schema's compile, once the compiler exists (what a new request's schema costs the scheduler's thread).
{
  await gc.guide(grammarSpecOf({ choice: ['warm'] })!);
  for (const [name, schema] of [
    ['flat object', { type: 'object', properties: { a: { type: 'string' }, b: { type: 'integer' }, c: { type: 'boolean' } }, required: ['a', 'b'] }],
    ['nested + arrays + enum', { type: 'object', properties: { u: { type: 'object', properties: { id: { type: 'integer' }, tags: { type: 'array', items: { enum: ['x', 'y'] } } } }, list: { type: 'array', items: { type: 'number' } } }, required: ['u'] }],
  ] as const) {
    const t0 = performance.now();
    (await gc.guide(grammarSpecOf({ json: schema })!)).dispose();
    console.log(`compile ${name}: ${(performance.now() - t0).toFixed(1)} ms`);
  }
}
for (let pass = 0; pass < 3; pass++) {
  let t0 = performance.now();
  const g = await gc.guide(grammarSpecOf({ json: { type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer' } }, required: ['name', 'age'] } })!);
  const first = performance.now() - t0;
  const times: number[] = [];
  for (const id of ids) {
    t0 = performance.now();
    const v = await g.accept(id);
    if (v === 'rejected') throw new Error(`the grammar refused token ${id} (${JSON.stringify(tok.tokenText(id))}): this tokenizer encodes the text differently`);
    if (v === 'end') break;
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  console.log(`pass ${pass}: guide ${first.toFixed(1)} ms; ${times.length} masks, p50 ${times[times.length >> 1].toFixed(3)} ms, max ${times.at(-1)!.toFixed(3)} ms, sum ${times.reduce((s, x) => s + x, 0).toFixed(1)} ms`);
  g.dispose();
}
