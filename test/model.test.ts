import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModelSpec, ggufToHfName } from '../src/engine/model.js';
import { readGguf } from '../src/engine/gguf.js';
import { LlmError } from '../src/errors.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const STORIES = new URL('../models/stories260K.gguf', import.meta.url).pathname;

function code(err: unknown): string | undefined {
  return err instanceof LlmError ? err.code : undefined;
}

t.test('stories260K GGUF maps to a llama ModelSpec', async (t) => {
  const spec = await loadModelSpec(STORIES);
  t.match(spec, {
    architecture: 'llama', vocabSize: 512, hiddenSize: 64, intermediateSize: 172, numLayers: 5, numHeads: 8,
    numKvHeads: 4, headDim: 8, ropeTheta: 10000, ropeLayout: 'interleaved', tieWordEmbeddings: false,
    qkvBias: false, qkNorm: false, bosTokenId: 1, eosTokenIds: [2], maxPositionEmbeddings: 2048,
  });
  t.ok(Math.abs(spec.rmsNormEps - 1e-5) < 1e-9);
  t.equal(spec.tensors.length, 1 + 5 * 9 + 2);
  const q = spec.tensors.find((x) => x.name === 'model.layers.0.self_attn.k_proj.weight');
  t.same(q?.shape, [32, 64]);
  t.equal(q?.dtype, 'f32');
  const g = readGguf(STORIES);
  t.equal(g.version, 3);
  for (const ref of spec.tensors) t.ok(ref.offset >= g.dataOffset && ref.offset % 32 === 0, ref.name);
});

t.test('GGUF names map to HF names', async (t) => {
  t.equal(ggufToHfName('blk.3.ffn_down.weight'), 'model.layers.3.mlp.down_proj.weight');
  t.equal(ggufToHfName('output.weight'), 'lm_head.weight');
  t.equal(ggufToHfName('rope_freqs.weight'), undefined);
});

t.test('bad GGUF files give coded errors naming the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'model-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bytes = readFileSync(STORIES);
  const g = readGguf(STORIES);

  await t.rejects(loadModelSpec(join(dir, 'nope.gguf')), { code: 'LLM_ERR_MODEL_NOT_FOUND' });

  // Truncations at many points of the header and data: always a format error, never a RangeError.
  for (const cut of [0, 3, 7, 20, 100, 5000, g.dataOffset - 1, g.dataOffset + 100, bytes.length - 1]) {
    const f = join(dir, `cut${cut}.gguf`);
    writeFileSync(f, bytes.subarray(0, cut));
    const err = await loadModelSpec(f).then(() => null, (e: unknown) => e);
    t.equal(code(err), 'LLM_ERR_MODEL_FORMAT', `cut at ${cut}`);
    t.match((err as Error).message, f);
  }

  const badMagic = Buffer.from(bytes);
  badMagic.write('GGXF', 0, 'latin1');
  writeFileSync(join(dir, 'magic.gguf'), badMagic);
  await t.rejects(loadModelSpec(join(dir, 'magic.gguf')), { code: 'LLM_ERR_MODEL_FORMAT', message: /not a GGUF file/ });

  // GGUF v2 has the same layout for little-endian files: it loads.
  const v2 = Buffer.from(bytes);
  v2.writeUInt32LE(2, 4);
  writeFileSync(join(dir, 'v2.gguf'), v2);
  t.equal((await loadModelSpec(join(dir, 'v2.gguf'))).numLayers, 5);

  const badVersion = Buffer.from(bytes);
  badVersion.writeUInt32LE(9, 4);
  writeFileSync(join(dir, 'version.gguf'), badVersion);
  await t.rejects(loadModelSpec(join(dir, 'version.gguf')), { code: 'LLM_ERR_MODEL_FORMAT', message: /version 9/ });

  // A huge tensor count must fail before allocating.
  const hugeCount = Buffer.from(bytes);
  hugeCount.writeBigUInt64LE(1n << 60n, 8);
  writeFileSync(join(dir, 'count.gguf'), hugeCount);
  await t.rejects(loadModelSpec(join(dir, 'count.gguf')), { code: 'LLM_ERR_MODEL_FORMAT', message: /tensor count/ });

  // Change the architecture string "llama" to "lxama": unsupported architecture.
  const arch = Buffer.from(bytes);
  const at = arch.indexOf('general.architecture');
  const valueAt = at + 'general.architecture'.length + 4 + 8;
  t.equal(arch.toString('latin1', valueAt, valueAt + 5), 'llama');
  arch.write('x', valueAt + 1, 'latin1');
  writeFileSync(join(dir, 'arch.gguf'), arch);
  await t.rejects(loadModelSpec(join(dir, 'arch.gguf')), { code: 'LLM_ERR_UNSUPPORTED_ARCH', message: /lxama.*supported: llama, qwen2, qwen3/ });

  // Mark token_embd.weight as Q8_0: a quantized type is refused, naming the tensor.
  const quant = Buffer.from(bytes);
  const name = quant.indexOf('token_embd.weight');
  const typeAt = name + 'token_embd.weight'.length + 4 + 2 * 8;
  t.equal(quant.readUInt32LE(typeAt), 0);
  quant.writeUInt32LE(8, typeAt);
  writeFileSync(join(dir, 'quant.gguf'), quant);
  await t.rejects(loadModelSpec(join(dir, 'quant.gguf')), { code: 'LLM_ERR_UNSUPPORTED_DTYPE', message: /token_embd\.weight.*Q8_0/ });

  // Rename a tensor: the missing canonical tensor is named.
  const missing = Buffer.from(bytes);
  const ffn = missing.indexOf('blk.2.ffn_up.weight');
  missing.write('blk.2.ffn_uX.weight', ffn, 'latin1');
  writeFileSync(join(dir, 'missing.gguf'), missing);
  await t.rejects(loadModelSpec(join(dir, 'missing.gguf')), { code: 'LLM_ERR_SHAPE_MISMATCH', message: /model\.layers\.2\.mlp\.up_proj\.weight is missing/ });

  // Claim 16 heads: q_proj shape no longer matches.
  const heads = Buffer.from(bytes);
  const hk = heads.indexOf('llama.embedding_length');
  const hv = hk + 'llama.embedding_length'.length + 4;
  t.equal(heads.readUInt32LE(hv), 64);
  heads.writeUInt32LE(128, hv);
  writeFileSync(join(dir, 'shape.gguf'), heads);
  await t.rejects(loadModelSpec(join(dir, 'shape.gguf')), { code: 'LLM_ERR_SHAPE_MISMATCH', message: /token_embd\.weight in .*shape\.gguf has shape \[512, 64\]/ });
});

t.test('corrupted GGUF headers fail with coded errors in the model and tokenizer loaders, never a crash', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'model-fuzz-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bytes = readFileSync(STORIES);
  const headerEnd = readGguf(STORIES).dataOffset;
  let x = 12345;
  const rand = (n: number) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x % n;
  };
  const f = join(dir, 'fuzz.gguf');
  let coded = 0;
  for (let i = 0; i < 300; i++) {
    const b = Buffer.from(bytes);
    for (let k = 0; k < 1 + rand(4); k++) b[rand(headerEnd)] = rand(256);
    writeFileSync(f, b);
    try {
      await loadModelSpec(f);
      loadTokenizer(f).encode('Once upon a time');
    } catch (err) {
      if (!(err instanceof LlmError)) {
        t.fail(`mutation ${i}: ${String(err)}`);
        continue;
      }
      coded++;
    }
  }
  t.ok(coded > 0, `${coded} of 300 corrupted headers were refused with coded errors; the rest still loaded`);
});
