// Multi-node tensor parallelism on the CPU backend (src/topology/multinode.ts): a TP 2 group over two real processes
// on 127.0.0.1. The leader is a Supervisor with --nnodes 2 --node-rank 0; the follower is the CLI's
// `start --nnodes 2 --node-rank 1 --dist-init-addr` in its own process (started first: order does not matter). Greedy
// output of concurrent requests equals one process's TP 1; kill -9 of the follower fails the leader's in-flight
// request with a coded error naming the follower's node; the leader going makes the follower exit non-zero with a
// message naming the leader; the follower registers nothing and answers /health and /metrics; after a follower
// died, the leader's restarted group waits for that node to join again.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { Supervisor } from '../actors/supervisor.js';
import type { SupervisorConfig } from '../src/config/supervisor.js';
import { LlmError } from '../src/errors.js';
import { PROMPTS, tinyGroup, tokensOf } from './helpers/tiny-group.js';
import { freePort, freePortRun } from './helpers/services.js';

const { modelPath, base: groupBase } = tinyGroup('multinode-', (fn) => t.teardown(fn));
const base: SupervisorConfig = { ...groupBase, maxRestarts: 0 };

/** The follower node: the real CLI in its own process; its stderr and exit code. */
function follower(addr: string, tpSize = 2, systemPort = -1): { child: ChildProcess; stderr: () => string; exited: Promise<number | null> } {
  const entry = fileURLToPath(new URL('./helpers/cli-entry.ts', import.meta.url));
  const child = spawn(process.execPath, [
    '--import=tsx', entry, 'start', '--model-path', modelPath, '--device', 'cpu', '--tp-size', String(tpSize), '--page-size', '4', '--cpu-threads', '1',
    '--max-running-requests', '8', '--max-prefill-tokens', '64', '--chunked-prefill-size', '16', '--max-total-tokens', '384',
    '--nnodes', '2', '--node-rank', '1', '--dist-init-addr', addr,
  ], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, DYN_DISCOVERY_BACKEND: 'file', DYN_SYSTEM_PORT: String(systemPort) } });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => void child.kill('SIGKILL'));
  return { child, stderr: () => err, exited };
}

const leaderConfig = (addr: string): SupervisorConfig => ({ ...base, tpSize: 2, nnodes: 2, nodeRank: 0, distInitAddr: addr });

t.test('a TP 2 group over two processes decodes as one process does; the leader going ends the follower', async (t) => {
  const one = await Supervisor.start({ ...base, tpSize: 1 });
  const expected = await Promise.all(PROMPTS.map((p) => tokensOf(one, p, 12))).finally(() => one.stop());
  const addr = `127.0.0.1:${await freePortRun()}`;
  const systemPort = await freePort();
  const node1 = follower(addr, 2, systemPort);
  const leader = await Supervisor.start(leaderConfig(addr));
  t.same(await Promise.all(PROMPTS.map((p) => tokensOf(leader, p, 12))), expected, 'greedy output equals one process');
  const health = await fetch(`http://127.0.0.1:${systemPort}/health`);
  t.equal(health.status, 200, 'the follower answers /health: ready');
  t.match(await health.json(), { status: 'ready' });
  t.equal((await fetch(`http://127.0.0.1:${systemPort}/metrics`)).status, 200, 'and /metrics');
  await leader.stop();
  t.equal(await node1.exited, 1, 'the follower exits non-zero');
  t.match(node1.stderr(), /the leader \(node 0\) at --dist-init-addr 127\.0\.0\.1:\d+ closed the connection/, 'naming the leader');
});

t.test('kill -9 of the follower fails the leader\'s in-flight request with a coded error naming its node', async (t) => {
  const addr = `127.0.0.1:${await freePortRun()}`;
  const node1 = follower(addr);
  const leader = await Supervisor.start(leaderConfig(addr));
  t.teardown(() => leader.stop());
  t.equal((await tokensOf(leader, PROMPTS[0], 4)).length, 4, 'served before the kill');
  const stream = tokensOf(leader, PROMPTS[2], 2000);
  await new Promise((resolve) => setTimeout(resolve, 200));
  node1.child.kill('SIGKILL');
  const err = await stream.then(() => null, (e: unknown) => e);
  t.ok(err instanceof LlmError, 'a coded error');
  t.match(err, { code: 'LLM_ERR_ACTOR_CRASHED', message: /node 1 \(ranks 1\.\.1\) closed its connection to the leader/ });
});

t.test('after a follower died, the leader restarts the group once a follower of that node joins again', async (t) => {
  const addr = `127.0.0.1:${await freePortRun()}`;
  const first = follower(addr);
  const leader = await Supervisor.start({ ...leaderConfig(addr), maxRestarts: 1 });
  t.teardown(() => leader.stop());
  const expected = await tokensOf(leader, PROMPTS[1], 8);
  const stream = tokensOf(leader, PROMPTS[2], 2000);
  await new Promise((resolve) => setTimeout(resolve, 200));
  first.child.kill('SIGKILL');
  const err = await stream.then(() => null, (e: unknown) => e);
  t.match(err, { code: 'LLM_ERR_ACTOR_CRASHED', message: /node 1/ }, 'the in-flight request fails naming the node');
  follower(addr);
  let served: number[] | null = null;
  for (let attempt = 0; attempt < 100 && !served; attempt++) {
    served = await tokensOf(leader, PROMPTS[1], 8).catch(async () => {
      await new Promise((resolve) => setTimeout(resolve, 200));
      return null;
    });
  }
  t.same(served, expected, 'the whole group serves the same output again');
});

t.test('a follower that disagrees with the leader on the group is refused, saying why, and exits non-zero', async (t) => {
  const addr = `127.0.0.1:${await freePortRun()}`;
  const leader = Supervisor.start(leaderConfig(addr)).catch((e: unknown) => e);
  const wrong = follower(addr, 4);
  t.equal(await wrong.exited, 1);
  t.match(wrong.stderr(), /LLM_ERR_CONFIG: the leader \(node 0\) at --dist-init-addr 127\.0\.0\.1:\d+ refused node 1: the follower has --nnodes 2 --tp-size 4, the leader --nnodes 2 --tp-size 2/);
  follower(addr); // the right one: the leader's start completes
  const sup = await leader;
  t.ok(sup instanceof Supervisor, 'the leader starts once the right follower joined');
  if (sup instanceof Supervisor) await sup.stop();
});
