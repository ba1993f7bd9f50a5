// Tensor parallelism across processes on CUDA (issue 17's GPU part), on the GPU machine: the same TP 2 group run as
// two "nodes" (this process is node 0 through the Supervisor, node 1 is `dynamo-sglang start --node-rank 1` in its own
// process) must decode exactly what the in-process TP 2 group decodes (greedy, several concurrent prompts). Modes:
//   custom     the engine's peer-mapped kernels, the peer buffer mapped over CUDA IPC (same machine), NCCL for large
//              prefill messages where the ranks have their own devices;
//   nccl-only  --disable-custom-all-reduce: every collective through NCCL, in the decode graphs too (what ranks on
//              other machines use); needs two devices (NCCL refuses one device twice).
// Node r uses device r when the machine has two GPUs (--base-gpu-id 1 for node 1), else both share device 0 (custom
// mode only: proves the cross-process mapping).
// --backend cpu runs the same on the CPU backend (a control of the harness).
// Usage: node --import tsx bench/tp/multiprocess-check.ts MODEL_DIR [--gpus N] [--backend cpu]    Exit 1 when outputs differ.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { Supervisor } from '../../actors/supervisor.js';
import type { SupervisorConfig } from '../../src/config/supervisor.js';
import type { PreprocessedRequest } from '../../src/protocol/request.js';

const args = process.argv.slice(2);
const modelDir = args[0];
if (!modelDir) throw new Error('usage: multiprocess-check.ts MODEL_DIR [--gpus N]');
const gi = args.indexOf('--gpus');
const gpus = gi >= 0 ? Number(args[gi + 1]) : 1;
const bi = args.indexOf('--backend');
const device = bi >= 0 && args[bi + 1] === 'cpu' ? 'cpu' : 'cuda';
const PROMPTS = [[97, 11, 187, 374, 264], [78, 397, 138, 388, 342, 91, 279, 156, 56, 13], [16, 17, 18]];
const NEW_TOKENS = 24;

const base: SupervisorConfig = { modelPath: modelDir, device, tpSize: 2, pageSize: 16, maxRunningRequests: 8, maxRestarts: 0, startTimeoutMs: 300_000 };

async function greedy(sup: Supervisor): Promise<number[][]> {
  return Promise.all(PROMPTS.map(async (tokens) => {
    const req: PreprocessedRequest = { token_ids: tokens, stop_conditions: { max_tokens: NEW_TOKENS, ignore_eos: true }, sampling_options: { temperature: 0 }, eos_token_ids: [] };
    const out: number[] = [];
    for await (const chunk of sup.generate(req)) out.push(...chunk.token_ids);
    return out;
  }));
}

async function freePortPair(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer().once('error', () => resolve(false)).listen(port + 1, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
}

async function twoProcesses(disableCustomAllReduce: boolean): Promise<number[][] | string> {
  const addr = `127.0.0.1:${await freePortPair()}`;
  const entry = fileURLToPath(new URL('../../test/helpers/cli-entry.ts', import.meta.url));
  const follower = spawn(process.execPath, [
    '--import', 'tsx', entry, 'start', '--model-path', modelDir, '--device', device, '--tp-size', '2', '--page-size', '16',
    '--max-running-requests', '8', '--nnodes', '2', '--node-rank', '1', '--dist-init-addr', addr, '--base-gpu-id', gpus > 1 ? '1' : '0',
    ...(disableCustomAllReduce ? ['--disable-custom-all-reduce'] : []),
  ], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, DYN_SYSTEM_PORT: '-1', DYN_DISCOVERY_BACKEND: 'mem' } });
  try {
    const leader = await Supervisor.start({ ...base, nnodes: 2, nodeRank: 0, distInitAddr: addr, disableCustomAllReduce });
    try {
      return await greedy(leader);
    } finally {
      await leader.stop();
    }
  } catch (err) {
    return (err as Error).message;
  } finally {
    follower.kill('SIGKILL');
  }
}

const one = await Supervisor.start(base);
const expected = await greedy(one).finally(() => one.stop());
const lines = ['| mode | devices | greedy tokens equal to one process\'s TP 2 |', '|---|---|---|'];
let ok = true;
for (const mode of gpus > 1 && device === 'cuda' ? ['custom', 'nccl-only'] : ['custom']) {
  const got = await twoProcesses(mode === 'nccl-only');
  const equal = typeof got !== 'string' && JSON.stringify(got) === JSON.stringify(expected);
  ok &&= equal;
  lines.push(`| ${mode} | ${gpus > 1 ? 'node 0: device 0, node 1: device 1' : 'both on device 0'} | ${typeof got === 'string' ? `FAILED: ${got}` : equal ? 'yes' : 'NO'} |`);
}
console.log(`TP 2 across two processes, ${modelDir}, ${PROMPTS.length} prompts x ${NEW_TOKENS} tokens`);
console.log(lines.join('\n'));
process.exitCode = ok ? 0 : 1;
