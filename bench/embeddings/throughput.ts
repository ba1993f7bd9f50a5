// Our side of the embedding throughput benchmark: N inputs of 128-512 tokens through the programmatic API
// (sup.embed: the batcher fills engine passes), embeddings per second over the whole set after a warm-up pass.
// Usage: npx tsx bench/embeddings/throughput.ts MODEL_DIR [N=1000] [--device cuda|cpu] [--inputs-out FILE]
// Prints one JSON line: {side: "dynamo-sglang", device, inputs, tokens, seconds, emb_per_s, tok_per_s}.
import { writeFileSync } from 'node:fs';
import { Supervisor } from '../../src/supervisor.js';
import { loadModelSpec } from '../../src/engine/model.js';
import { benchInputs } from './inputs.js';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args.splice(i, 2)[1] : undefined;
};
const device = (flag('--device') ?? 'cuda') as 'cuda' | 'cpu';
const inputsOut = flag('--inputs-out');
const [modelPath, nArg] = args;
if (!modelPath) {
  process.stderr.write('usage: throughput.ts MODEL_DIR [N] [--device cuda|cpu] [--inputs-out FILE]\n');
  process.exit(2);
}
const n = Number(nArg ?? 1000);
const spec = await loadModelSpec(modelPath);
const inputs = benchInputs(n, 128, 512, spec.vocabSize);
if (inputsOut) writeFileSync(inputsOut, JSON.stringify(inputs));
const sup = await Supervisor.start({ modelPath, device, maxRunningRequests: 256, maxPrefillTokens: 16384, chunkedPrefillSize: 16384 });
try {
  await sup.embed(inputs.slice(0, 64)); // warm-up
  const t0 = performance.now();
  const vectors = await sup.embed(inputs);
  const seconds = (performance.now() - t0) / 1000;
  const tokens = inputs.reduce((a, x) => a + x.length, 0);
  if (vectors.length !== n) throw new Error(`got ${vectors.length} vectors for ${n} inputs`);
  process.stdout.write(`${JSON.stringify({ side: 'dynamo-sglang', device, inputs: n, tokens, seconds: +seconds.toFixed(3), emb_per_s: +(n / seconds).toFixed(1), tok_per_s: Math.round(tokens / seconds) })}\n`);
} finally {
  await sup.stop();
}
