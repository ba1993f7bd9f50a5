// The worker's system HTTP server (reference §5.3, §6): `/metrics` (Prometheus text), and `/health` and `/live`, which
// (as in the reference runtime) both answer the readiness body `{endpoints, status, uptime}` with 200 when ready and
// 503 when not. Port 0 binds an ephemeral port; -1 turns the server off.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { LlmError } from '../errors.js';
import type { HealthRegistry } from './health.js';
import type { WorkerMetrics } from './metrics.js';

export interface SystemServerOptions {
  /** DYN_SYSTEM_PORT: 0 = ephemeral, -1 = no server. */
  port: number;
  /** DYN_SYSTEM_HOST, default 0.0.0.0. */
  host?: string;
  health: HealthRegistry;
  metrics?: WorkerMetrics;
  /** More exposition text appended to /metrics (e.g. engine metrics gathered from other threads). */
  extraMetrics?: () => Promise<string> | string;
  /** DYN_SYSTEM_HEALTH_PATH, default /health. */
  healthPath?: string;
  /** DYN_SYSTEM_LIVE_PATH, default /live. */
  livePath?: string;
}

export class SystemServer {
  private constructor(
    private readonly server: Server,
    readonly host: string,
    readonly port: number,
  ) {}

  /** Starts the server, or returns null when `port` is -1. Rejects with LLM_ERR_TRANSPORT naming host:port. */
  static async start(opts: SystemServerOptions): Promise<SystemServer | null> {
    if (opts.port === -1) return null;
    if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
      throw new LlmError('LLM_ERR_CONFIG', `system port ${opts.port}: expected -1 (off), 0 (ephemeral) or 1..65535`);
    }
    const host = opts.host ?? '0.0.0.0';
    const server = createServer((req, res) => {
      handle(opts, req, res).catch((err: unknown) => {
        if (!res.headersSent) sendJson(res, 500, { error: err instanceof Error ? err.message : String(err) });
        else res.destroy();
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new LlmError('LLM_ERR_TRANSPORT', `--system-port ${opts.port}: the system server cannot listen on ${host}:${opts.port}: ${err.message}`)),
      );
      server.listen(opts.port, host, () => resolve());
    });
    return new SystemServer(server, host, (server.address() as AddressInfo).port);
  }

  /** URL of `path` on this server, reachable from this host. */
  url(path = '/'): string {
    const host = this.host === '0.0.0.0' || this.host === '::' ? '127.0.0.1' : this.host.includes(':') ? `[${this.host}]` : this.host;
    return `http://${host}:${this.port}${path}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}

async function handle(opts: SystemServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    sendJson(res, 405, { error: `method ${req.method} not allowed on ${path}` });
    return;
  }
  if (path === (opts.healthPath ?? '/health') || path === (opts.livePath ?? '/live')) {
    const snap = opts.health.snapshot();
    sendJson(res, snap.status === 'ready' ? 200 : 503, snap);
  } else if (path === '/metrics') {
    let text = opts.metrics !== undefined ? await opts.metrics.text() : '';
    if (opts.extraMetrics !== undefined) text += await opts.extraMetrics();
    res.writeHead(200, { 'content-type': opts.metrics?.contentType ?? 'text/plain; version=0.0.4; charset=utf-8' });
    res.end(req.method === 'HEAD' ? undefined : text);
  } else {
    sendJson(res, 404, { error: `no route ${path}` });
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
