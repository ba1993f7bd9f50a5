// The table of bench/disagg/gpu2.sh: output equality, the GPU path's KV transfer rate (bytes / time inside the
// pull, from the decode worker's log lines) against the measured peer-to-peer copy rate, and TTFT / ITL of the
// disaggregated pair against the aggregated worker at each concurrency.
//   node --import tsx bench/disagg/summary.ts --compare F --decode-log F --p2p F --agg-bench F --dis-bench F
import { existsSync, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { BenchResults } from '../../src/bench/results.js';

const { values } = parseArgs({
  options: {
    compare: { type: 'string' },
    'decode-log': { type: 'string' },
    'prefill-log': { type: 'string' },
    p2p: { type: 'string' },
    'agg-bench': { type: 'string' },
    'dis-bench': { type: 'string' },
    'ipc-check': { type: 'string' },
  },
});

function readJson<T>(path: string | undefined): T | null {
  if (!path || !existsSync(path)) return null;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return null;
  }
}

const fmt = (x: number | null | undefined, digits = 1) => (x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits));

// ---- KV transfer, from the decode worker's lines:
// kv transfer cuda-ipc room R: T tokens, B bytes in D ms on the device (H ms on the host), G GB/s
const log = values['decode-log'] && existsSync(values['decode-log']) ? readFileSync(values['decode-log'], 'utf8') : '';
const pulls = [...log.matchAll(/kv transfer cuda-ipc room \d+: (\d+) tokens, (\d+) bytes in ([\d.]+) ms on the device \(([\d.]+) ms on the host\)/g)].map((m) => ({
  tokens: Number(m[1]),
  bytes: Number(m[2]),
  deviceMs: Number(m[3]),
  hostMs: Number(m[4]),
}));
const fallbacks = (log.match(/cuda-ipc failed, falling back to tcp/g) ?? []).length;
const tcpTransfers = (log.match(/kv transfer tcp room/g) ?? []).length;
const bytes = pulls.reduce((s, p) => s + p.bytes, 0);
const deviceMs = pulls.reduce((s, p) => s + p.deviceMs, 0);
const hostMs = pulls.reduce((s, p) => s + p.hostMs, 0);
const big = pulls.filter((p) => p.bytes >= 16 << 20);
const bigRate = big.length ? big.reduce((s, p) => s + p.bytes, 0) / big.reduce((s, p) => s + p.deviceMs, 0) / 1e6 : null;
const deviceRate = pulls.length ? bytes / deviceMs / 1e6 : null;
const hostRate = pulls.length ? bytes / hostMs / 1e6 : null;
const p2p = readJson<{ gbs: number; gpus: string[] }>(values.p2p);
const cmp = readJson<{ total: number; equal: number; maxTokens: number }>(values.compare);

console.log('| Check | Value |');
console.log('|---|---|');
const ipcCheck = values['ipc-check'] && existsSync(values['ipc-check']) ? readFileSync(values['ipc-check'], 'utf8').trim() : null;
if (ipcCheck !== null) console.log(`| Two-process CUDA IPC pull check (native/cuda/tests/kv_ipc_check.cu) | ${ipcCheck || 'no output'} |`);
console.log(`| Greedy outputs equal to the aggregated worker | ${cmp ? `${cmp.equal}/${cmp.total} (${cmp.maxTokens} tokens each)` : 'n/a (compare failed)'} |`);
console.log(`| Transfers: GPU path (cuda-ipc) / tcp / cuda-ipc fallbacks to tcp | ${pulls.length} / ${tcpTransfers} / ${fallbacks} |`);
console.log(`| KV moved by the GPU path | ${fmt(bytes / 2 ** 20, 1)} MiB in ${fmt(deviceMs, 2)} ms on the device, ${fmt(hostMs, 2)} ms on the host |`);
console.log(`| KV transfer rate, device time (all pulls / pulls >= 16 MiB) | ${fmt(deviceRate)} / ${fmt(bigRate)} GB/s |`);
console.log(`| KV transfer rate, host time (launch to synchronised) | ${fmt(hostRate)} GB/s |`);
console.log(`| Peer-to-peer copy, GPU 0 -> GPU 1 (torch, 1 GiB cudaMemcpyPeer) | ${p2p ? `${fmt(p2p.gbs)} GB/s` : 'n/a'} |`);
if (p2p && (bigRate ?? deviceRate)) console.log(`| GPU path / peer-to-peer | ${fmt((100 * (bigRate ?? deviceRate)!) / p2p.gbs, 0)} % |`);

const agg = readJson<BenchResults>(values['agg-bench']);
const dis = readJson<BenchResults>(values['dis-bench']);
console.log();
console.log('| Concurrency | TTFT mean agg / disagg (ms) | TTFT p50 agg / disagg (ms) | ITL mean agg / disagg (ms) | ITL p50 agg / disagg (ms) | output tok/s agg / disagg | failed agg / disagg |');
console.log('|---|---|---|---|---|---|---|');
for (const [i, run] of (agg?.runs ?? dis?.runs ?? []).entries()) {
  const a = agg?.runs[i]?.summary;
  const d = dis?.runs[i]?.summary;
  console.log(
    `| ${run.load.concurrency ?? 'all'} | ${fmt(a?.ttftMs?.mean)} / ${fmt(d?.ttftMs?.mean)} | ${fmt(a?.ttftMs?.p50)} / ${fmt(d?.ttftMs?.p50)} | ` +
      `${fmt(a?.itlMs?.mean, 2)} / ${fmt(d?.itlMs?.mean, 2)} | ${fmt(a?.itlMs?.p50, 2)} / ${fmt(d?.itlMs?.p50, 2)} | ` +
      `${fmt(a?.outputThroughput, 0)} / ${fmt(d?.outputThroughput, 0)} | ${a?.failed ?? 'n/a'} / ${d?.failed ?? 'n/a'} |`,
  );
}
