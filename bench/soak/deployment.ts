// A real distributed deployment on the CPU backend for the fault soak: etcd and nats-server, `start` workers on the
// bundled stories260K over the TCP request plane (publishing KV events on NATS), and one `frontend` in front of them,
// each a separate process on free loopback ports. Faults are done to it from outside, as an operator would suffer
// them: SIGKILL of a worker and a fresh one started, etcd and NATS stopped and started again on the same port.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { frontendReady, startCli, type CliProcess } from '../../test/helpers/cli-process.js';
import { startEtcd, startNats, type EtcdService, type NatsService } from '../../test/helpers/services.js';

export const SOAK_MODEL = 'stories260K';
const MODEL_PATH = fileURLToPath(new URL('../../models/stories260K.gguf', import.meta.url));

export interface DeploymentOptions {
  /** Aggregated workers to start. */
  workers: number;
  /** The frontend's --migration-limit. */
  migrationLimit: number;
  /** The frontend's --router-mode. */
  routerMode: 'kv' | 'round-robin';
  /** DYN_SGL_STREAM_DELAY_MS for the workers: paces every answer so faults land mid-stream. */
  streamDelayMs: number;
}

export interface SoakWorker {
  proc: CliProcess;
  instanceId: string;
  metricsUrl: string;
}

/** What a process's Prometheus text says for `name`, summed over its label sets (0 when absent). */
export function metricSum(text: string, name: string): number {
  let total = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})? (\S+)$/.exec(line);
    if (m && m[1] === name) total += Number(m[2]);
  }
  return total;
}

/** Resident set size of a live process in bytes (Linux /proc), or null when it is gone. */
export function rssBytes(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export class SoakDeployment {
  workers: SoakWorker[] = [];
  frontendUrl = '';
  frontend: CliProcess | undefined;
  private readonly procs: CliProcess[] = [];
  private readonly killAll = () => {
    for (const p of this.procs) p.kill('SIGKILL');
  };

  private constructor(
    readonly options: DeploymentOptions,
    readonly etcd: EtcdService,
    readonly nats: NatsService,
  ) {}

  static async start(options: DeploymentOptions): Promise<SoakDeployment> {
    const [etcd, nats] = await Promise.all([startEtcd(), startNats()]);
    const d = new SoakDeployment(options, etcd, nats);
    // a driver that dies (a test timeout, Ctrl-C in the bench) must not leave workers behind
    process.on('exit', d.killAll);
    try {
      d.workers = await Promise.all(Array.from({ length: options.workers }, () => d.startWorker()));
      await d.startFrontend();
    } catch (e) {
      await d.stop();
      throw e;
    }
    return d;
  }

  /** Starts one more worker and waits until it serves (registered in etcd, metrics up). */
  async startWorker(): Promise<SoakWorker> {
    const proc = startCli(
      [
        'start', '--model-path', MODEL_PATH, '--served-model-name', SOAK_MODEL, '--device', 'cpu', '--cpu-threads', '1',
        '--discovery-backend', 'etcd', '--etcd-endpoints', `http://${this.etcd.endpoint}`, '--nats-server', this.nats.url,
        '--request-plane', 'tcp', '--tcp-rpc-host', '127.0.0.1', '--system-port', '0', '--system-host', '127.0.0.1',
        '--enable-metrics', '--graceful-shutdown-grace-period', '5',
      ],
      { DYN_SGL_STREAM_DELAY_MS: String(this.options.streamDelayMs) },
    );
    this.procs.push(proc);
    const [, systemUrl] = await proc.waitFor(/system server on (http:\/\/[0-9.:]+)\//, 120_000);
    const [, instanceId] = await proc.waitFor(/serving dynamo\.backend\.generate as instance ([0-9a-f]+)/, 120_000);
    return { proc, instanceId, metricsUrl: `${systemUrl}/metrics` };
  }

  private async startFrontend(): Promise<void> {
    const proc = startCli([
      'frontend', '--http-port', '0', '--http-host', '127.0.0.1', '--discovery-backend', 'etcd',
      '--etcd-endpoints', `http://${this.etcd.endpoint}`, '--nats-server', this.nats.url,
      '--router-mode', this.options.routerMode, '--migration-limit', String(this.options.migrationLimit),
    ]);
    this.procs.push(proc);
    this.frontend = proc;
    this.frontendUrl = await frontendReady(proc, SOAK_MODEL);
  }

  /** SIGKILLs `worker` (no drain, no deregistration: its etcd lease lingers until it expires). */
  async killWorker(worker: SoakWorker): Promise<void> {
    worker.proc.kill('SIGKILL');
    await worker.proc.exited;
    this.workers = this.workers.filter((w) => w !== worker);
  }

  async metrics(worker: SoakWorker): Promise<string> {
    return (await fetch(worker.metricsUrl, { signal: AbortSignal.timeout(5_000) })).text();
  }

  /** Every process's output tail, for a failure message. */
  logs(): string {
    return this.procs.map((p, i) => `--- process ${i} (${p.child.spawnargs.slice(3, 4).join(' ')})\n${(p.stdout() + p.stderr()).slice(-1500)}`).join('\n');
  }

  async stop(): Promise<void> {
    this.killAll();
    process.off('exit', this.killAll);
    await Promise.all(this.procs.map((p) => p.exited));
    await this.nats.stop();
    await this.etcd.stop();
  }
}
