// `dynamo-sglang run --embedding` as a user runs it, on make-model's Qwen3-Embedding-style checkpoint: /v1/embeddings
// with every input form, float and base64, `dimensions`, usage, the context limit and truncation, OpenAI's errors,
// the official OpenAI SDK as a client, and the vectors against the independent float64 numpy reference.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import t from 'tap';
import { makeModel } from '../src/engine/make-model.js';
import { startCli } from './helpers/cli-process.js';
import { cosine } from './helpers/vectors.js';

const dir = mkdtempSync(join(tmpdir(), 'embeddings-e2e-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const { dir: modelPath } = makeModel({ shape: 'qwen3-embedding-tiny', seed: 11, outDir: join(dir, 'model'), std: 0.1 });

interface Body {
  data: { object: string; index: number; embedding: number[] | string }[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
  error?: { message: string; type: string };
}

function reference(seqs: number[][]): number[][] {
  const out = execFileSync('python3', [join(import.meta.dirname, 'reference', 'embeddings.py')], { input: JSON.stringify({ model: modelPath, inputs: seqs }) });
  return (JSON.parse(out.toString()) as { embeddings: number[][] }).embeddings;
}

const norm = (v: readonly number[]): number => Math.hypot(...v);

t.test('run --embedding serves /v1/embeddings', async (t) => {
  const p = startCli(['run', '--embedding', '--model-path', modelPath, '--served-model-name', 'emb', '--http-port', '0', '--http-host', '127.0.0.1',
    '--device', 'cpu', '--context-length', '40', '--max-running-requests', '8', '--max-prefill-tokens', '128', '--page-size', '4']);
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "emb" at (http:\/\/[0-9.:]+)\/v1/, 60_000);
  t.match(p.stdout(), /curl http:\/\/127\.0\.0\.1:\d+\/v1\/embeddings/, 'prints an embeddings curl');
  t.match(p.stderr(), /embeddings: last pooling, L2-normalised .*64 dimensions \(fewer on request\), inputs up to 40 tokens/);
  const post = async (path: string, body: unknown): Promise<{ status: number; body: Body }> => {
    const r = await fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: r.status, body: (await r.json()) as Body };
  };
  const embed = (body: Record<string, unknown>) => post('/v1/embeddings', { model: 'emb', ...body });

  const one = await embed({ input: 'Once upon a time' });
  t.equal(one.status, 200);
  t.equal(one.body.data.length, 1);
  t.same([one.body.data[0]!.object, one.body.data[0]!.index, one.body.model], ['embedding', 0, 'emb']);
  const v0 = one.body.data[0]!.embedding as number[];
  t.equal(v0.length, 64);
  t.ok(Math.abs(norm(v0) - 1) < 1e-5, 'normalised');
  t.ok(one.body.usage.prompt_tokens > 0 && one.body.usage.total_tokens === one.body.usage.prompt_tokens, 'usage counts the prompt tokens');

  const list = await embed({ input: ['a little girl', 'Once upon a time', 'a little girl'] });
  t.equal(list.status, 200);
  t.same(list.body.data.map((d) => d.index), [0, 1, 2]);
  t.ok(cosine(list.body.data[1]!.embedding as number[], v0) > 0.9999999, 'the same text in a batch embeds the same');
  t.same(list.body.data[0]!.embedding, list.body.data[2]!.embedding, 'equal inputs, equal vectors');
  t.ok(list.body.usage.prompt_tokens > one.body.usage.prompt_tokens);

  const tokenLists = [[5, 17, 300, 42, 9], [1000, 77, 3], [12]];
  const ref = reference(tokenLists);
  const ids = await embed({ input: tokenLists });
  t.equal(ids.status, 200);
  t.equal(ids.body.usage.prompt_tokens, 9, 'usage: the tokens given');
  ids.body.data.forEach((d, i) => {
    const c = cosine(d.embedding as number[], ref[i]!);
    t.ok(c >= 0.99999, `token list ${i}: cosine to the float64 reference ${c.toFixed(7)}`);
  });
  const single = await embed({ input: tokenLists[0] });
  t.ok(cosine(single.body.data[0]!.embedding as number[], ids.body.data[0]!.embedding as number[]) > 0.9999999, 'one token array');

  const b64 = await embed({ input: tokenLists, encoding_format: 'base64' });
  t.equal(b64.status, 200);
  b64.body.data.forEach((d, i) => {
    const bytes = Buffer.from(d.embedding as string, 'base64');
    const f = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    t.same(Array.from(f), (ids.body.data[i]!.embedding as number[]).map((x) => Math.fround(x)), `base64 ${i}: the float32 bytes of the float vector`);
  });

  const dims = await embed({ input: tokenLists[0], dimensions: 16 });
  t.equal(dims.status, 200);
  const short = dims.body.data[0]!.embedding as number[];
  t.equal(short.length, 16);
  t.ok(Math.abs(norm(short) - 1) < 1e-5, 'dimensions: re-normalised');
  const full = (ids.body.data[0]!.embedding as number[]).slice(0, 16);
  t.ok(cosine(short, full) > 0.9999999, 'dimensions: the first n of the full vector');

  const long = Array.from({ length: 50 }, (_, i) => (i * 37) % 1000);
  const tooLong = await embed({ input: long });
  t.equal(tooLong.status, 400);
  t.match(tooLong.body.error, { type: 'invalid_request_error', message: /maximum context length is 40 tokens, however you requested 50 tokens/ });
  const cut = await embed({ input: long, truncate_prompt_tokens: -1 });
  t.equal(cut.status, 200);
  t.equal(cut.body.usage.prompt_tokens, 40);
  const last40 = await embed({ input: long.slice(10) });
  t.ok(cosine(cut.body.data[0]!.embedding as number[], last40.body.data[0]!.embedding as number[]) > 0.9999999, 'truncation keeps the last tokens');

  for (const [body, re] of [
    [{ input: 'x', encoding_format: 'hex' }, /Invalid value for 'encoding_format': 'hex'/],
    [{ input: [] }, /input must not be empty/],
    [{ input: ['a', ''] }, /input\[1\] is empty/],
    [{ input: [[1, 5000]] }, /token 5000 at index 1 is outside the vocabulary/],
    [{ input: 'x', dimensions: 65 }, /dimensions 65 is larger than the model's embedding size 64/],
    [{ input: 'x', dimensions: 0 }, /dimensions/],
  ] as const) {
    const r = await embed(body);
    t.equal(r.status, 400, JSON.stringify(body));
    t.match(r.body.error, { type: 'invalid_request_error', message: re });
  }
  const unknown = await post('/v1/embeddings', { model: 'nope', input: 'x' });
  t.equal(unknown.status, 404);
  const completion = await post('/v1/completions', { model: 'emb', prompt: 'x' });
  t.equal(completion.status, 400);
  t.match(completion.body.error, { message: /embedding model: use \/v1\/embeddings/ });

  // the official SDK asks for base64 and decodes it
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none' });
  const sdk = await client.embeddings.create({ model: 'emb', input: [tokenLists[1]!, tokenLists[2]!] });
  t.equal(sdk.data.length, 2);
  t.ok(cosine(sdk.data[0]!.embedding, ref[1]!) >= 0.99999, 'the OpenAI SDK gets the vectors');
  t.equal(sdk.usage.prompt_tokens, 4);

  p.kill('SIGTERM');
  const exit = await p.exited;
  t.equal(exit.code, 0, `exit code (stderr: ${p.stderr()})`);
});
