// Step fan-out to the ranks of a TP group: how long from the scheduler handing a step descriptor to N rank threads
// until rank 0's reply is back (every rank has the step by then or soon after), for two ways of delivering it:
//  - copy: one postMessage per rank over its own MessagePort; rank 0 gets the buffer transferred, the others a
//    structured-clone copy (what actors/rank.ts does);
//  - ring: the descriptor written once into a SharedArrayBuffer slot, an Atomics doorbell (Atomics.notify) that each
//    rank awaits with Atomics.waitAsync (a rank must keep its event loop for control calls, so no blocking wait), and
//    rank 0 replying by postMessage as in the copy variant.
// Each rank reads every word of the step (standing in for handing it to the addon). Run: npx tsx bench/actors/fanout.ts
//
// 2026-12-07, the 2-core CI-class machine (shared with other jobs, so noisy), Node 20, 1000 steps per case,
// median / p90 us:
//   ranks words   copy        ring
//   1     50      21 / 29     16 / 30
//   1     5000    26 / 35     26 / 32
//   1     70000   57 / 70     85 / 114
//   2     50      31 / 39     29 / 38
//   2     5000    32 / 53     39 / 54
//   2     70000   107 / 229   121 / 226
//   4     50      50 / 80     62 / 100
//   4     5000    128 / 173   78 / 171
//   4     70000   173 / 569   182 / 320
// Neither wins clearly (the ring saves the copies but pays the write into the slot and the waitAsync wake-up), so the
// ranks take the copy per rank: no slot ownership to manage, and each rank may patch its own copy (placeholders).
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';

const RANK_CODE = `
const { workerData } = require('node:worker_threads');
const { port, rank, mode, ring } = workerData;
const touch = (a) => { let s = 0; for (let i = 0; i < a.length; i++) s = (s + a[i]) | 0; return s; };
if (mode === 'copy') {
  port.on('message', (m) => {
    const sum = touch(m.step);
    if (rank === 0) port.postMessage({ stepNo: m.stepNo, sum });
  });
} else {
  const bell = new Int32Array(ring, 0, 2); // [sequence, length]
  const data = new Int32Array(ring, 8);
  let seen = 0;
  port.on('message', () => {}); // a rank listens for control messages; a pending waitAsync alone lets the thread exit
  const wait = () => {
    const r = Atomics.waitAsync(bell, 0, seen);
    const go = () => {
      seen = Atomics.load(bell, 0);
      if (seen < 0) return;
      const n = Atomics.load(bell, 1);
      const sum = touch(data.subarray(0, n));
      if (rank === 0) port.postMessage({ stepNo: seen, sum });
      wait();
    };
    if (r.async) r.value.then(go); else go();
  };
  wait();
}`;

interface Case { ranks: number; words: number }

async function run(mode: 'copy' | 'ring', c: Case, steps: number): Promise<number[]> {
  const ring = new SharedArrayBuffer(8 + c.words * 4);
  const ports: MessagePort[] = [];
  const workers = [];
  for (let r = 0; r < c.ranks; r++) {
    const ch = new MessageChannel();
    const w = new Worker(RANK_CODE, { eval: true, workerData: { port: ch.port2, rank: r, mode, ring }, transferList: [ch.port2] });
    w.on('error', (e) => { console.error(`rank ${r}:`, e); process.exit(1); });
    workers.push(w);
    ports.push(ch.port1);
  }
  await new Promise((r) => setTimeout(r, 300)); // let the workers start
  const bell = new Int32Array(ring, 0, 2);
  const data = new Int32Array(ring, 8);
  const times: number[] = [];
  for (let k = 1; k <= steps; k++) {
    const step = new Int32Array(c.words).fill(k);
    const t0 = performance.now();
    const answered = new Promise((resolve) => { ports[0].once("message", resolve); ports[0].start(); });
    if (mode === 'copy') {
      for (let r = 1; r < c.ranks; r++) ports[r].postMessage({ stepNo: k, step });
      ports[0].postMessage({ stepNo: k, step }, [step.buffer]);
    } else {
      data.set(step);
      Atomics.store(bell, 1, c.words);
      Atomics.store(bell, 0, k);
      Atomics.notify(bell, 0);
    }
    await answered;
    times.push(performance.now() - t0);
  }
  Atomics.store(bell, 0, -1);
  Atomics.notify(bell, 0);
  for (const p of ports) p.close();
  await Promise.all(workers.map((w) => w.terminate()));
  return times;
}

const median = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const p90 = (xs: number[]) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length * 0.9)];

const STEPS = Number(process.env.FANOUT_STEPS ?? 2000);
// Descriptor sizes: batch-1 decode (~50 words), batch-64 decode at 1k context and 16-token pages (~5k words),
// batch-256 decode at 4k context (~70k words).
const SIZES = [50, 5_000, 70_000];
const keepAlive = setInterval(() => {}, 1000); // pending port replies alone do not keep the process alive
console.log(`step fan-out, ${STEPS} steps per case, round trip to rank 0's reply (us, median / p90)`);
console.log('ranks\twords\tcopy\t\tring');
for (const ranks of [1, 2, 4]) {
  for (const words of SIZES) {
    const c = { ranks, words };
    await run('copy', c, 200); // warm-up
    const copy = await run('copy', c, STEPS);
    const ring = await run('ring', c, STEPS);
    const f = (xs: number[]) => `${(median(xs) * 1000).toFixed(0)} / ${(p90(xs) * 1000).toFixed(0)}`;
    console.log(`${ranks}\t${words}\t${f(copy)}\t${f(ring)}`);
  }
}
clearInterval(keepAlive);
