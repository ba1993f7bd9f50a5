// Tensor parallelism across processes on the CPU backend (native/src/tp_tcp.cpp): two real processes, each one rank
// of a TP 2 group, meet at a dist-init-addr on a free 127.0.0.1 port and reduce over TCP. Their greedy tokens equal a
// one-process TP 1 engine's and their logits equal it within 1e-5 relative per row (both ranks report the same
// bits). Start order does not matter; a rank whose peer never comes fails at the timeout naming the missing rank;
// kill -9 of either process makes the other's next step fail with LLM_ERR_TP_ABORTED naming the dead rank.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { openEngine } from '../src/engine/engine.js';
import type { EngineOptions, ModelSpec } from '../src/engine/types.js';
import { relError, TINY_SHAPES, writeTinyModel } from './helpers/engine-tiny-model.js';
import { decodeRun } from './helpers/tp-tcp-decode.js';
import type { TcpRankReply } from './helpers/tp-tcp-rank.js';
import { codeOf } from './helpers/thrown.js';

const options: EngineOptions = {
  backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 40, memFractionStatic: 0.5, maxBatchTokens: 32, maxSeqsPerStep: 4, threads: 1,
};
const dir = mkdtempSync(join(tmpdir(), 'tp-tcp-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const spec: ModelSpec = writeTinyModel(dir, TINY_SHAPES.llama, 11).spec;
const VOCAB = TINY_SHAPES.llama.vocabSize;

const bytesOf = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A rank process and its replies in arrival order. */
class RankProcess {
  readonly child: ChildProcess;
  private readonly replies: TcpRankReply[] = [];
  private waiting: ((r: TcpRankReply) => void) | undefined;

  constructor(rank: number, addr: string, timeoutMs: number) {
    const tp = { rank, size: 2, group: `tp-tcp-${rank}`, timeoutMs, distInitAddr: addr };
    this.child = fork(fileURLToPath(new URL('./helpers/tp-tcp-rank.ts', import.meta.url)), [JSON.stringify({ spec, options: { ...options, tp } })], {
      execArgv: ['--import=tsx'], serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (m: TcpRankReply) => {
      if (this.waiting) {
        const w = this.waiting;
        this.waiting = undefined;
        w(m);
      } else this.replies.push(m);
    });
    t.teardown(() => void this.child.kill('SIGKILL'));
  }

  next(): Promise<TcpRankReply> {
    const r = this.replies.shift();
    return r ? Promise.resolve(r) : new Promise((resolve) => (this.waiting = resolve));
  }

  go(): void {
    this.child.send('go');
  }

  async killed(): Promise<void> {
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGKILL');
    await exited;
  }
}

t.test('two processes of one TP 2 group decode as one process does', async (t) => {
  const reference = decodeRun(openEngine(spec, options), options.pageSize);
  const addr = `127.0.0.1:${await freePort()}`;
  // Rank 1 first: it retries until rank 0 listens.
  const rank1 = new RankProcess(1, addr, 60_000);
  await new Promise((resolve) => setTimeout(resolve, 300));
  const rank0 = new RankProcess(0, addr, 60_000);
  t.same(await Promise.all([rank0.next(), rank1.next()]), [{ what: 'opened' }, { what: 'opened' }], 'both ranks joined');
  rank0.go();
  rank1.go();
  const [a, b] = await Promise.all([rank0.next(), rank1.next()]);
  if (a.what !== 'done' || b.what !== 'done') return t.fail(`a rank failed: ${JSON.stringify([a, b])}`);
  t.same(a.run.tokens, reference.tokens, 'greedy tokens equal one process');
  t.same(b.run.tokens, a.run.tokens, 'rank 1 reports the same tokens');
  t.ok(a.run.logits.every((l, s) => bytesOf(l).equals(bytesOf(b.run.logits[s]))), 'both ranks report bitwise the same logits');
  let worst = 0;
  for (let s = 0; s < reference.logits.length; s++)
    for (let row = 0; row < reference.logits[s].length / VOCAB; row++) {
      const at = (x: Float32Array): Float32Array => x.subarray(row * VOCAB, (row + 1) * VOCAB);
      worst = Math.max(worst, relError(at(reference.logits[s]), at(a.run.logits[s])));
    }
  t.ok(worst < 1e-5, `logits equal one process within 1e-5 relative per row (worst ${worst})`);
});

t.test('a rank whose peer never comes fails at the timeout naming the missing rank', async (t) => {
  const rank0 = new RankProcess(0, `127.0.0.1:${await freePort()}`, 1500);
  const r = await rank0.next();
  t.equal(r.what, 'failed');
  if (r.what === 'failed') {
    t.equal(r.error.code, 'LLM_ERR_TP_ABORTED');
    t.match(r.error.message, /waited 1\.5 s at 127\.0\.0\.1:\d+ for rank\(s\) 1/);
  }
  const rank1 = new RankProcess(1, `127.0.0.1:${await freePort()}`, 1500);
  const r1 = await rank1.next();
  t.match(r1, { what: 'failed', error: { code: 'LLM_ERR_TP_ABORTED', message: /waited 1\.5 s for rank 0 \(the group's leader\) at 127\.0\.0\.1:\d+/ } });
});

for (const dead of [1, 0]) {
  t.test(`kill -9 of rank ${dead}'s process fails the other's next step naming rank ${dead}`, async (t) => {
    const addr = `127.0.0.1:${await freePort()}`;
    const ranks = [new RankProcess(0, addr, 60_000), new RankProcess(1, addr, 60_000)];
    t.same(await Promise.all(ranks.map((r) => r.next())), [{ what: 'opened' }, { what: 'opened' }]);
    await ranks[dead].killed();
    const alive = ranks[1 - dead];
    alive.go();
    const r = await alive.next();
    const who = dead === 0 ? /rank 0 \(the group's leader at 127\.0\.0\.1:\d+\) closed its connection/ : /rank 1 closed its connection/;
    t.match(r, { what: 'failed', error: { code: 'LLM_ERR_TP_ABORTED', message: who } });
  });
}

t.test('bad multi-node options are refused at the boundary', async (t) => {
  const tp = { rank: 0, size: 2, group: 'tp-tcp-bad' };
  t.match(codeOf(() => openEngine(spec, { ...options, tp: { ...tp, distInitAddr: 'nohost' } })), { code: 'LLM_ERR_CONFIG', message: /must be HOST:PORT/ });
  t.match(codeOf(() => openEngine(spec, { ...options, tp: { ...tp, distInitAddr: '127.0.0.1:99999' } })), { code: 'LLM_ERR_CONFIG', message: /port out of range/ });
});
