// Greedy continuations of stories260K by llama.cpp (node-llama-cpp 3.21.1, CPU), written to
// test/fixtures/stories260K-llamacpp.json for test/golden-stories-llamacpp.test.ts.
// Setup (bench-only, never in the root package.json): cd bench/reference && npm i -E node-llama-cpp@3.21.1
// Run: node bench/reference/stories-llamacpp.mjs
import { writeFileSync } from 'node:fs';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

const modelPath = new URL('../../models/stories260K.gguf', import.meta.url).pathname;
const outPath = new URL('../../test/fixtures/stories260K-llamacpp.json', import.meta.url).pathname;
const MAX_TOKENS = 48;
const PROMPTS = [
  'Once upon a time',
  'Lily and Ben',
  'The little dog',
  'One day, a boy named Tim',
  'The sun was shining and',
  'Sue had a red ball.\nShe',
];

const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 512, threads: 2 });
const sequence = context.getSequence();
const bos = model.tokens.bos;
const eos = model.tokens.eos;
const cases = [];
for (const prompt of PROMPTS) {
  await sequence.clearHistory();
  const promptTokens = [bos, ...model.tokenize(prompt)];
  const output = [];
  for await (const token of sequence.evaluate(promptTokens, { temperature: 0 })) {
    output.push(token);
    if (token === eos || output.length >= MAX_TOKENS) break;
  }
  cases.push({ prompt, prompt_token_ids: promptTokens, output_token_ids: output, text: model.detokenize(output) });
  console.log(JSON.stringify(prompt), '->', JSON.stringify(model.detokenize(output)));
}
writeFileSync(outPath, JSON.stringify({
  model: 'models/stories260K.gguf',
  generator: 'bench/reference/stories-llamacpp.mjs',
  engine: 'llama.cpp via node-llama-cpp 3.21.1, CPU, greedy (temperature 0), BOS added',
  max_tokens: MAX_TOKENS,
  cases,
}, null, 2) + '\n');
await context.dispose();
await model.dispose();
await llama.dispose();
