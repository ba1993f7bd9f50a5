// Multi-node tensor parallelism (--nnodes M --node-rank R --dist-init-addr HOST:PORT): one TP group whose ranks live
// in M processes. Node R runs ranks [R * k, (R + 1) * k), k = tpSize / M. Two TCP endpoints come from dist-init-addr:
//   - HOST:PORT, the step relay: node 0 (the leader) listens; every follower node connects (retrying until its start
//     timeout, so start order does not matter) and says hello; a hello that does not fit the leader's group (other
//     --nnodes or --tp-size, a node rank taken) is answered with the reason and closed. For each start of the core
//     the leader tells its followers to start their ranks under the new group name, then forwards every step
//     descriptor (the same bytes its own ranks get) to each follower, which posts them to its ranks. Followers send
//     back failures only.
//   - HOST:PORT+1, the TP group's own rendezvous: the ranks' engines join there (EngineOptions.tp.distInitAddr,
//     native/src/tp_tcp.cpp: rank 0 listens, the other ranks connect) and all-reduce over TCP.
// On the leader a follower node is one more port of the scheduler's RankGroup (after the local ranks): its relay
// reports a step finished once sent (the follower's ranks cannot get ahead of rank 0: they meet it in every
// collective), and a follower's step failure, or its connection closing, reaches the RankGroup as that port's
// step error, which fails the group like any rank's. The follower exits non-zero when the leader's connection
// closes, naming the leader.
// With --dp-size D every data-parallel group is such a group spanning the same nodes (each node runs tp/M ranks of
// every group), with its own pair of ports: group d's relay at PORT + 2d, its ranks' rendezvous at PORT + 2d + 1
// (groupAddr); the leader schedules every group, a follower runs its ranks of every group.
// Frames on the relay: u32 length of the rest, u8 type, body. Type 1: JSON (RelayControl); type 2: a step, u32 step
// number then the descriptor's Int32 words (the machines share a byte order, as the TP group's hello checks).
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { RankActor, type RankInbox, type RankOutbox } from '../../actors/rank.js';
import { LlmError, toErrorPayload, type ErrorPayload } from '../errors.js';
import type { CoreGraph, RankNode } from './topology.js';

/** The graph's multi-node settings: this process is node `nodeRank` of `nnodes`. */
export interface MultiNodeNode {
  nnodes: number;
  nodeRank: number;
  distInitAddr: string;
}

type RelayControl =
  | { kind: 'hello'; nodeRank: number; nnodes: number; tpSize: number }
  | { kind: 'refused'; reason: string }
  | { kind: 'start'; group: string }
  | { kind: 'started' }
  | { kind: 'startFailed'; error: ErrorPayload }
  | { kind: 'stepError'; stepNo: number; error: ErrorPayload };

const CONTROL = 1;
const STEP = 2;

function splitAddr(addr: string, portsUsed = 2): { host: string; port: number } {
  const m = /^(.+):(\d+)$/.exec(addr);
  const port = m ? Number(m[2]) : NaN;
  const last = 65536 - portsUsed;
  if (!m || !(port >= 1 && port <= last)) {
    throw new LlmError('LLM_ERR_CONFIG', `--dist-init-addr "${addr}" must be HOST:PORT with PORT in [1, ${last}] (the ${portsUsed} ports from PORT on are the groups' relays and rendezvous)`);
  }
  return { host: m[1], port };
}

/** Data-parallel group `dpRank`'s own dist-init address (its relay; the port after it is its ranks' rendezvous),
 * checked to leave room for all `dpSize` groups' ports. */
export function groupAddr(distInitAddr: string, dpRank: number, dpSize: number): string {
  const { host, port } = splitAddr(distInitAddr, 2 * dpSize);
  return `${host}:${port + 2 * dpRank}`;
}

/** Where the TP group's ranks meet (native): the port after the step relay's. */
export function tpGroupAddr(distInitAddr: string): string {
  const { host, port } = splitAddr(distInitAddr);
  return `${host}:${port + 1}`;
}

/** The global ranks node `nodeRank` runs. */
export function nodeRanks<T extends { rank: number }>(ranks: readonly T[], mn: MultiNodeNode): T[] {
  const k = ranks.length / mn.nnodes;
  return ranks.slice(mn.nodeRank * k, (mn.nodeRank + 1) * k);
}

function encodeControl(m: RelayControl): Buffer {
  const body = Buffer.from(JSON.stringify(m));
  const head = Buffer.alloc(5);
  head.writeUInt32LE(body.length + 1, 0);
  head.writeUInt8(CONTROL, 4);
  return Buffer.concat([head, body]);
}

function encodeStep(stepNo: number, step: Int32Array): Buffer {
  const head = Buffer.alloc(9);
  head.writeUInt32LE(step.byteLength + 5, 0);
  head.writeUInt8(STEP, 4);
  head.writeUInt32LE(stepNo, 5);
  return Buffer.concat([head, Buffer.from(step.buffer, step.byteOffset, step.byteLength)]);
}

/** Splits a socket's bytes into frames. */
function onFrames(socket: Socket, handle: (type: number, body: Buffer) => void): void {
  let pending: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= 4) {
      const len = pending.readUInt32LE(0);
      if (pending.length < 4 + len) break;
      const frame = pending.subarray(4, 4 + len);
      pending = pending.subarray(4 + len);
      handle(frame.readUInt8(0), frame.subarray(1));
    }
  });
}

// ---- leader (node 0) ----

interface FollowerConn {
  nodeRank: number;
  socket: Socket;
  /** The relay of the current group: its port to the RankGroup, and what a control frame from the follower does. */
  onControl: ((m: RelayControl) => void) | null;
  onClose: (() => void) | null;
}

/** The leader's end of the step relay: listens at dist-init-addr for the lifetime of the process's core. */
export class LeaderRelay {
  private readonly followers = new Map<number, FollowerConn>();
  private readonly arrivals: (() => void)[] = [];

  private constructor(
    private readonly server: Server,
    private readonly mn: MultiNodeNode,
    private readonly tpSize: number,
  ) {
    server.on('connection', (socket) => this.accept(socket));
  }

  static async listen(mn: MultiNodeNode, tpSize: number): Promise<LeaderRelay> {
    const { host, port } = splitAddr(mn.distInitAddr);
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new LlmError('LLM_ERR_CONFIG', `the leader cannot listen at --dist-init-addr ${mn.distInitAddr}: ${err.message}`)));
      server.listen(port, host, () => resolve());
    });
    server.unref(); // the core's stop closes it; a core that failed for good must not keep the process alive

    return new LeaderRelay(server, mn, tpSize);
  }

  close(): void {
    this.server.close();
    for (const f of this.followers.values()) f.socket.destroy();
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    socket.unref();
    let conn: FollowerConn | null = null;
    onFrames(socket, (type, body) => {
      if (type !== CONTROL) return socket.destroy();
      const m = JSON.parse(body.toString()) as RelayControl;
      if (!conn) {
        const reason = this.refusal(m);
        if (reason !== null || m.kind !== 'hello') {
          socket.end(encodeControl({ kind: 'refused', reason: reason ?? 'not a hello' }));
          return;
        }
        conn = { nodeRank: m.nodeRank, socket, onControl: null, onClose: null };
        this.followers.set(m.nodeRank, conn);
        for (const wake of this.arrivals.splice(0)) wake();
        return;
      }
      conn.onControl?.(m);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      if (!conn) return;
      this.followers.delete(conn.nodeRank);
      conn.onClose?.();
    });
  }

  /** Why a follower's hello does not fit this group, or null. */
  private refusal(m: RelayControl): string | null {
    if (m.kind !== 'hello') return 'not a hello';
    if (m.nnodes !== this.mn.nnodes || m.tpSize !== this.tpSize) {
      return `the follower has --nnodes ${m.nnodes} --tp-size ${m.tpSize}, the leader --nnodes ${this.mn.nnodes} --tp-size ${this.tpSize}`;
    }
    if (m.nodeRank < 1 || m.nodeRank >= this.mn.nnodes) return `--node-rank ${m.nodeRank} is not a follower's (1..${this.mn.nnodes - 1})`;
    return this.followers.has(m.nodeRank) ? `node ${m.nodeRank} is already connected` : null;
  }

  /** Waits until every follower node is connected, or rejects after timeoutMs naming the missing nodes. */
  private async whole(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.followers.size < this.mn.nnodes - 1) {
      const left = deadline - Date.now();
      const missing = Array.from({ length: this.mn.nnodes - 1 }, (_, i) => i + 1).filter((n) => !this.followers.has(n));
      if (left <= 0) {
        throw new LlmError('LLM_ERR_TIMEOUT', `node(s) ${missing.join(', ')} did not join the leader at --dist-init-addr ${this.mn.distInitAddr} within ${timeoutMs} ms`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.arrivals.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /**
   * Starts the follower nodes' ranks under `group` and opens a relay to each: `ports` (by node 1..M-1) go to the
   * scheduler's RankGroup after the local ranks' ports, and progress slot `progressBase + i` is follower i's.
   * `started` settles once every follower's ranks opened (or one failed, or a follower is gone).
   */
  async openGroup(group: string, progress: SharedArrayBuffer, progressBase: number, timeoutMs: number): Promise<{ ports: MessagePort[]; started: Promise<void> }> {
    await this.whole(timeoutMs);
    const done = new Int32Array(progress);
    const ports: MessagePort[] = [];
    const starts: Promise<void>[] = [];
    const k = this.tpSize / this.mn.nnodes;
    for (let node = 1; node < this.mn.nnodes; node++) {
      const conn = this.followers.get(node)!;
      const slot = progressBase + node - 1;
      const who = `node ${node} (ranks ${node * k}..${(node + 1) * k - 1})`;
      const channel = new MessageChannel();
      ports.push(channel.port1);
      const relay = channel.port2;
      let lastStep = 0;
      let starting: { resolve: () => void; reject: (e: LlmError) => void } | null = null;
      starts.push(new Promise<void>((resolve, reject) => (starting = { resolve, reject })));
      const failStep = (error: ErrorPayload): void => relay.postMessage({ kind: 'stepError', stepNo: lastStep, error } satisfies RankOutbox);
      conn.onControl = (m) => {
        if (m.kind === 'started') starting?.resolve();
        else if (m.kind === 'startFailed') starting?.reject(LlmError.fromPayload(m.error));
        else if (m.kind === 'stepError') failStep(m.error);
        if (m.kind !== 'stepError') starting = null;
      };
      conn.onClose = () => {
        const error = new LlmError('LLM_ERR_ACTOR_CRASHED', `${who} closed its connection to the leader`, { rank: node * k });
        starting?.reject(error);
        starting = null;
        failStep(error.toPayload());
        relay.close();
      };
      relay.on('message', (m: RankInbox) => {
        if (m.kind !== 'step') return; // page operations go to rank 0 only
        lastStep = m.stepNo;
        conn.socket.write(encodeStep(m.stepNo, m.step));
        Atomics.store(done, slot, m.stepNo);
      });
      conn.socket.write(encodeControl({ kind: 'start', group }));
    }
    return { ports, started: Promise.all(starts).then(() => undefined) };
  }
}

// ---- follower (node > 0) ----

/**
 * Runs node `mn.nodeRank`'s ranks for the leader at dist-init-addr until the leader goes: resolves never; rejects
 * with a coded error naming the leader when its connection closes (the caller exits non-zero), or when it cannot be
 * reached within the core's start timeout. onReady(true) once its ranks joined a group, false while they are not.
 * Aborting `signal` ends it the same way (its ranks stopped).
 */
export async function runFollower(
  core: CoreGraph, mn: MultiNodeNode, log: (line: string) => void, onReady: (ready: boolean) => void = () => undefined, signal?: AbortSignal,
): Promise<never> {
  const { host, port } = splitAddr(mn.distInitAddr);
  const mine = nodeRanks(core.ranks, mn);
  const leader = `the leader (node 0) at --dist-init-addr ${mn.distInitAddr}`;
  const timeoutMs = core.ranks[0].startTimeoutMs;
  const socket = await connectWithRetry(host, port, timeoutMs, leader);
  socket.setNoDelay(true);
  socket.write(encodeControl({ kind: 'hello', nodeRank: mn.nodeRank, nnodes: mn.nnodes, tpSize: core.ranks.length }));
  log(`node ${mn.nodeRank}: joined ${leader}; ranks ${mine[0].rank}..${mine[mine.length - 1].rank}`);
  let ranks: { actors: RankActor[]; ports: MessagePort[] } | null = null;
  const stopRanks = async (): Promise<void> => {
    onReady(false);
    const old = ranks;
    ranks = null;
    if (!old) return;
    for (const p of old.ports) p.close();
    await Promise.all(old.actors.map((a) => a.terminate()));
  };
  const send = (m: RelayControl): void => void socket.write(encodeControl(m));
  const start = async (group: string): Promise<void> => {
    await stopRanks();
    const progress = new SharedArrayBuffer(4 * core.ranks.length);
    const channels = mine.map(() => new MessageChannel());
    const spawned = await Promise.allSettled(mine.map((node: RankNode, i) => RankActor.spawn({
      rank: node.rank,
      placement: { deviceId: node.deviceId, tp: { rank: node.rank, size: core.ranks.length, ...node.tp, group, distInitAddr: tpGroupAddr(mn.distInitAddr) } },
      engineModule: node.engineModule, engineInit: node.engineInit, startTimeoutMs: node.startTimeoutMs, steps: channels[i].port2, progress,
    })));
    const actors = spawned.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    ranks = { actors, ports: channels.map((c) => c.port1) };
    const failed = spawned.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      await stopRanks();
      return send({ kind: 'startFailed', error: toErrorPayload(failed.reason) });
    }
    for (const c of channels) {
      c.port1.on('message', (m: RankOutbox) => {
        if (m.kind === 'stepError') send({ kind: 'stepError', stepNo: m.stepNo, error: m.error });
      });
    }
    for (const a of actors) {
      a.onFailure((error) => {
        onReady(false);
        send({ kind: 'stepError', stepNo: 0, error: error.toPayload() });
      });
    }
    for (const c of channels) c.port1.on('message', (m: RankOutbox) => m.kind === 'stepError' && onReady(false));
    send({ kind: 'started' });
    onReady(true);
  };
  let starting = Promise.resolve();
  let refusal: string | null = null;
  onFrames(socket, (type, body) => {
    if (type === CONTROL) {
      const m = JSON.parse(body.toString()) as RelayControl;
      if (m.kind === 'refused') refusal = m.reason;
      if (m.kind === 'start') starting = starting.then(() => start(m.group)).catch((err: unknown) => send({ kind: 'startFailed', error: toErrorPayload(err) }));
      return;
    }
    const stepNo = body.readUInt32LE(0);
    const words = new Int32Array(body.length / 4 - 1);
    Buffer.from(words.buffer).set(body.subarray(4));
    for (const p of ranks?.ports ?? []) p.postMessage({ kind: 'step', stepNo, step: words } satisfies RankInbox);
  });
  socket.on('error', () => undefined);
  // the node ends (another group's leader went): close this group's connection, which stops its ranks below
  signal?.addEventListener('abort', () => socket.destroy(), { once: true });
  if (signal?.aborted) socket.destroy();
  return new Promise<never>((_, reject) => {
    socket.on('close', () => {
      void stopRanks().finally(() => reject(refusal !== null
        ? new LlmError('LLM_ERR_CONFIG', `${leader} refused node ${mn.nodeRank}: ${refusal}`)
        : new LlmError('LLM_ERR_TRANSPORT', `${leader} closed the connection: the leader is gone`)));
    });
  });
}

async function connectWithRetry(host: string, port: number, timeoutMs: number, leader: string): Promise<Socket> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = createConnection({ host, port }, () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      last = (err as Error).message;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new LlmError('LLM_ERR_TIMEOUT', `could not reach ${leader} within ${timeoutMs} ms (${last})`);
}

/** The leader's relay by dist-init-addr: opened by the core's first start, kept across its restarts (followers stay
 * connected), closed when the core stops. */
const relays = new Map<string, Promise<LeaderRelay>>();

export function leaderRelay(mn: MultiNodeNode, tpSize: number): Promise<LeaderRelay> {
  let relay = relays.get(mn.distInitAddr);
  if (!relay) {
    relay = LeaderRelay.listen(mn, tpSize);
    relays.set(mn.distInitAddr, relay);
    relay.catch(() => relays.delete(mn.distInitAddr));
  }
  return relay;
}

export function closeLeaderRelay(mn: MultiNodeNode): void {
  const relay = relays.get(mn.distInitAddr);
  relays.delete(mn.distInitAddr);
  void relay?.then((r) => r.close(), () => undefined);
}
