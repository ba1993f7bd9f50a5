// llama.cpp's tokenization (node-llama-cpp 3.21.1, special tokens parsed, no BOS) of edge-case strings for the
// stories260K SentencePiece vocabulary and the byte-level BPE vocabulary of a make-model qwen3-tiny GGUF,
// written to test/fixtures/tokenizer-llamacpp.json for test/tokenizer-llamacpp.test.ts.
// Setup: cd bench/reference && npm i -E node-llama-cpp@3.21.1
// Run from the project root: node --import tsx bench/reference/tokenizer-llamacpp.mjs
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';
import { makeModel } from '../../src/engine/make-model.ts';

const outPath = new URL('../../test/fixtures/tokenizer-llamacpp.json', import.meta.url).pathname;
const TEXTS = [
  '', ' ', '  ', 'a', ' a', 'a ', 'Hello world', 'Hello  world', ' leading', 'trailing ', '\n', 'line1\nline2\n\n',
  '\ttab', "don't I'll we're", '12345 678', 'héllo wörld', '日本語のテキスト', '😀🦙 emoji', 'a</s>b', '<s>x',
  'UPPER lower MiXeD', 'foo.bar,baz;qux!', '   three spaces', 'end.   ', 'Once upon a time, in a land far away...',
  'x'.repeat(50), '$$$ %%% ^^^', 'café ñ ß', '\r\nwindows', 'tab\tand\tspaces  \n', '<|im_start|>user\nhi<|im_end|>',
];

const dir = mkdtempSync(join(tmpdir(), 'tokenizer-llamacpp-'));
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const vocabularies = [];
try {
  const qwen = makeModel({ shape: 'qwen3-tiny', seed: 1, outDir: join(dir, 'qwen3-tiny'), dtype: 'f32', gguf: true });
  for (const [name, path] of [
    ['stories260K', new URL('../../models/stories260K.gguf', import.meta.url).pathname],
    ['make-model qwen3-tiny GGUF', join(qwen.dir, 'model-f16.gguf')],
  ]) {
    const model = await llama.loadModel({ modelPath: path });
    vocabularies.push({ name, cases: TEXTS.map((text) => ({ text, token_ids: [...model.tokenize(text, true)] })) });
    await model.dispose();
  }
} finally {
  await llama.dispose();
  rmSync(dir, { recursive: true, force: true });
}
writeFileSync(outPath, JSON.stringify({
  generator: 'bench/reference/tokenizer-llamacpp.mjs',
  engine: 'llama.cpp via node-llama-cpp 3.21.1: model.tokenize(text, specialTokens=true), no BOS',
  vocabularies,
}, null, 1) + '\n');
