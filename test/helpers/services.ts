// Real etcd and nats-server processes for tests: each on free loopback ports, in its own temp dir, killed when the
// test process exits even if a test forgets to stop it.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { get as httpGet } from 'node:http';

const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** A port that was free a moment ago on 127.0.0.1 (the OS picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** A free port whose `count - 1` successors are free too (a multi-node dist-init-addr: each data-parallel group's
 * step relay port and its TP group's). */
export async function freePortRun(count = 2): Promise<number> {
  for (;;) {
    const port = await freePort();
    const held: ReturnType<typeof createServer>[] = [];
    let ok = true;
    for (let next = port + 1; ok && next < port + count; next++) {
      const server = createServer();
      ok = await new Promise<boolean>((resolve) => {
        server.once('error', () => resolve(false));
        server.listen(next, '127.0.0.1', () => resolve(true));
      });
      if (ok) held.push(server);
    }
    await Promise.all(held.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    if (ok) return port;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function launch(cmd: string, args: string[]): { child: ChildProcess; log: () => string } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (b: Buffer) => {
    output = (output + b.toString()).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  live.add(child);
  child.on('exit', () => live.delete(child));
  return { child, log: () => output };
}

async function waitFor(what: string, ready: () => Promise<boolean>, child: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited early (${child.exitCode ?? child.signalCode}): ${log()}`);
    }
    if (await ready()) return;
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`${what} not ready within 15 s: ${log()}`);
}

async function terminate(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(timer);
}

function etcdHealthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = httpGet({ host: '127.0.0.1', port, path: '/health', timeout: 1000 }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve(res.statusCode === 200 && body.includes('"true"')));
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => {
      req.destroy();
      resolve(false);
    });
  });
}

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

export interface EtcdService {
  /** Client endpoint, `127.0.0.1:<port>` (what the etcd3 client and the worker's `--discovery-endpoint` take). */
  endpoint: string;
  /** Stops etcd (SIGTERM) and removes its data dir. */
  stop(): Promise<void>;
  /** Stops etcd and starts it again on the same port and data dir (keys and leases survive, as in production). */
  restart(): Promise<void>;
  /** SIGKILLs etcd, keeping its data dir; `start()` brings it back. */
  kill(): Promise<void>;
  /** Starts etcd again after `kill()` (no-op while running). */
  start(): Promise<void>;
}

export async function startEtcd(): Promise<EtcdService> {
  const dir = mkdtempSync(join(tmpdir(), 'etcd-test-'));
  const clientPort = await freePort();
  const peerPort = await freePort();
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const args = [
    '--name', 'default',
    '--data-dir', join(dir, 'data'),
    '--listen-client-urls', clientUrl,
    '--advertise-client-urls', clientUrl,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `default=${peerUrl}`,
    '--log-level', 'error',
  ];
  let current: ChildProcess | undefined;
  const start = async () => {
    if (current && current.exitCode === null && current.signalCode === null) return;
    const { child, log } = launch('etcd', args);
    current = child;
    await waitFor(`etcd on ${clientUrl}`, () => etcdHealthy(clientPort), child, log);
  };
  await start();
  return {
    endpoint: `127.0.0.1:${clientPort}`,
    start,
    async stop() {
      if (current) await terminate(current, 'SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
    async restart() {
      if (current) await terminate(current, 'SIGTERM');
      await start();
    },
    async kill() {
      if (current) await terminate(current, 'SIGKILL');
    },
  };
}

export interface NatsService {
  /** `nats://127.0.0.1:<port>` */
  url: string;
  port: number;
  stop(): Promise<void>;
  /** Stops nats-server (SIGTERM) and starts it again on the same port (clients reconnect on their own). */
  restart(): Promise<void>;
}

export interface NatsOptions {
  /** Enable JetStream (`-js`), storing in a fresh temporary directory removed on stop. */
  jetstream?: boolean;
}

export async function startNats(options: NatsOptions = {}): Promise<NatsService> {
  const port = await freePort();
  const storeDir = options.jetstream ? mkdtempSync(join(tmpdir(), 'nats-js-test-')) : undefined;
  const jsArgs = storeDir ? ['-js', '-sd', storeDir] : [];
  let current: ChildProcess | undefined;
  const start = async () => {
    const { child, log } = launch('nats-server', ['-a', '127.0.0.1', '-p', String(port), ...jsArgs]);
    current = child;
    await waitFor(`nats-server on 127.0.0.1:${port}`, () => portOpen(port), child, log);
  };
  await start();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    stop: async () => {
      if (current) await terminate(current, 'SIGTERM');
      if (storeDir) rmSync(storeDir, { recursive: true, force: true });
    },
    async restart() {
      if (current) await terminate(current, 'SIGTERM');
      await start();
    },
  };
}
