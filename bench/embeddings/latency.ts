// p50 latency of one 32-token input through the frontend: `dynamo-sglang run --embedding` on the model, then
// sequential POST /v1/embeddings requests (a token array of 32 ids), after a warm-up. Prints one JSON line:
// {requests, p50_ms, p90_ms, p99_ms}. Usage: npx tsx bench/embeddings/latency.ts MODEL_DIR [REQUESTS=500] [--device cuda|cpu]
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
const di = args.indexOf('--device');
const device = di >= 0 ? args.splice(di, 2)[1]! : 'cuda';
const [modelPath, nArg] = args;
if (!modelPath) {
  process.stderr.write('usage: latency.ts MODEL_DIR [REQUESTS] [--device cuda|cpu]\n');
  process.exit(2);
}
const requests = Number(nArg ?? 500);
// the CLI from the sources, as the tests run it
const cli = fileURLToPath(new URL('../../test/helpers/cli-entry.ts', import.meta.url));
const child = spawn(process.execPath, ['--import', 'tsx', cli, 'run', '--embedding', '--model-path', modelPath, '--served-model-name', 'emb', '--http-port', '0', '--device', device], { stdio: ['ignore', 'pipe', 'inherit'] });
try {
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving "emb" at (http:\/\/[0-9.:]+)\/v1/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on('exit', (code) => reject(new Error(`run exited with ${code} before serving`)));
  });
  const body = JSON.stringify({ model: 'emb', input: Array.from({ length: 32 }, (_, i) => 100 + i * 7) });
  const once = async (): Promise<number> => {
    const t0 = performance.now();
    const r = await fetch(`${url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
    if (r.status !== 200) throw new Error(`status ${r.status}: ${await r.text()}`);
    await r.arrayBuffer();
    return performance.now() - t0;
  };
  for (let i = 0; i < 20; i++) await once();
  const ms: number[] = [];
  for (let i = 0; i < requests; i++) ms.push(await once());
  ms.sort((a, b) => a - b);
  const q = (p: number): number => +ms[Math.min(ms.length - 1, Math.floor(p * ms.length))]!.toFixed(3);
  process.stdout.write(`${JSON.stringify({ requests, p50_ms: q(0.5), p90_ms: q(0.9), p99_ms: q(0.99) })}\n`);
} finally {
  child.kill('SIGTERM');
}
