import t from 'tap';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addonPath } from '../src/engine/addon.js';
import { makeModel } from '../src/engine/make-model.js';
import { main } from '../src/cli/main.js';

const STORIES = new URL('../models/stories260K.gguf', import.meta.url).pathname;
const built = existsSync(addonPath());

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const o = process.stdout.write.bind(process.stdout);
  const e = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((s: string) => { out.push(String(s)); return true; }) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => { err.push(String(s)); return true; }) as typeof process.stderr.write;
  try {
    const code = await main(['generate', ...argv]);
    return { code, out: out.join(''), err: err.join('') };
  } finally {
    process.stdout.write = o;
    process.stderr.write = e;
  }
}

interface GenerateJson {
  prompt: string;
  prompt_token_ids: number[];
  output_token_ids: number[];
  text: string;
  finish_reason: string;
}

t.test('usage errors exit 2 and name the flag', async (t) => {
  let r = await run(['--prompt', 'x']);
  t.equal(r.code, 2);
  t.match(r.err, /--model-path is required/);
  r = await run(['--model-path', STORIES, '--prompt', 'x', '--max-tokens', '0']);
  t.equal(r.code, 2);
  t.match(r.err, /--max-tokens: expected an integer >= 1 and <= 1048576, got "0"/);
  r = await run(['--model-path', STORIES, '--prompt', 'x', '--max-tokens', '100000', '--device', 'cpu']);
  t.equal(r.code, 2, 'a --max-tokens past the context is refused at once, not generated for minutes');
  t.match(r.err, /--max-tokens 100000: with the prompt's 3 tokens this exceeds the model's context length of 2048 \(at most 2045\)/);
  r = await run(['--model-path', STORIES, '--prompt', 'x', '--device', 'tpu']);
  t.match(r.err, /--device: expected one of "cpu", "cuda", "auto"/);
  r = await run(['--model-path', '/no/such/model', '--prompt', 'x']);
  t.equal(r.code, 1);
  t.match(r.err, /model path \/no\/such\/model does not exist/);
});

t.test('generate on GGUF and HF checkpoints', { skip: built ? false : `native addon not built (${addonPath()})` }, async (t) => {
  const plain = await run(['--model-path', STORIES, '--prompt', 'Once upon a time', '--max-tokens', '12', '--device', 'cpu']);
  t.equal(plain.code, 0, plain.err);
  t.equal(plain.out, ', there was a little girl named Lily. She\n');
  const j = await run(['--model-path', STORIES, '--prompt', 'Once upon a time', '--max-tokens', '12', '--device', 'cpu', '--json']);
  const parsed = JSON.parse(j.out) as GenerateJson;
  t.same(parsed.prompt_token_ids, [1, 403, 407, 261, 378]);
  t.equal(parsed.output_token_ids.length, 12);
  t.equal(parsed.text + '\n', plain.out, 'streamed text equals the JSON text');
  t.equal(parsed.finish_reason, 'length');

  // Seeded sampling reproduces; another seed (almost surely) differs.
  const sample = (seed: string) => run(['--model-path', STORIES, '--prompt', 'Lily', '--max-tokens', '24', '--temperature', '1', '--top-p', '0.95', '--seed', seed, '--json', '--device', 'cpu']);
  const a = JSON.parse((await sample('5')).out) as GenerateJson;
  const b = JSON.parse((await sample('5')).out) as GenerateJson;
  const c = JSON.parse((await sample('6')).out) as GenerateJson;
  t.same(a.output_token_ids, b.output_token_ids);
  t.notSame(a.output_token_ids, c.output_token_ids);

  const dir = mkdtempSync(join(tmpdir(), 'generate-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  makeModel({ shape: 'llama-tiny', seed: 11, outDir: dir, dtype: 'f32', gguf: true, std: 0.2 });
  const hfRun = await run(['--model-path', dir, '--prompt', 'The cat', '--max-tokens', '8', '--json', '--device', 'cpu', '--ignore-eos']);
  t.equal(hfRun.code, 0, hfRun.err);
  const hf = JSON.parse(hfRun.out) as GenerateJson;
  const gg = JSON.parse((await run(['--model-path', join(dir, 'model-f16.gguf'), '--prompt', 'The cat', '--max-tokens', '8', '--json', '--device', 'cpu', '--ignore-eos'])).out) as GenerateJson;
  t.equal(hf.output_token_ids.length, 8);
  t.same(gg.prompt_token_ids, hf.prompt_token_ids, 'GGUF and HF tokenizers agree');
  // f32 HF weights vs f16 GGUF weights with permuted Q/K (interleaved RoPE): greedy tokens agree on this seed.
  t.same(gg.output_token_ids, hf.output_token_ids, 'GGUF (interleaved RoPE, f16) and HF (half RoPE, f32) agree');
  const chat = await run(['--model-path', dir, '--prompt', 'hi', '--chat', '--max-tokens', '2', '--json', '--device', 'cpu']);
  t.match(JSON.parse(chat.out), { prompt: '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n' });
});
