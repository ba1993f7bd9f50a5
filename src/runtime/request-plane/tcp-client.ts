// The caller side of the TCP request plane: pooled persistent connections to each worker address; request frames are
// pipelined, and since the worker answers every frame with exactly one response frame in order, each connection
// matches ACKs to requests with a FIFO. No ACK within the timeout (5 s) fails that request and closes the connection
// (the FIFO would be out of step), failing the requests still waiting on it.
import { connect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { LlmError } from '../../errors.js';
import { tcpProfileOfPath } from '../../protocol/discovery.js';
import { RequestHeader } from '../../protocol/transport.js';
import { parseHostPort, parseTcpTransportAddress } from './address.js';
import { prepareRequest, refusal, type RequestOptions } from './egress.js';
import { requestPlaneSecretFromEnv, tcpPlaneTlsFromEnv, type TcpPlaneTls } from './trust.js';
import { encodeRequestFrame, maxMessageSizeFromEnv, ResponseFrameDecoder, type ResponseFrame } from './framing.js';
import type { ResponseServer } from './response-server.js';
import type { ResponseStream } from './response-stream.js';

export interface TcpRequestClientOptions {
  /** Connections kept per worker address (default 4); a new one opens only when all are busy. */
  poolSize?: number;
  ackTimeoutMs?: number;
  connectTimeoutMs?: number;
  maxMessageSize?: number;
  /** Request-plane secret that signs every request (default: DYN_REQUEST_PLANE_SECRET[_FILE]; null = none). */
  secret?: Buffer | null;
  /** Mutual TLS to the workers (default DYN_TCP_RPC_TLS_*; null = plaintext). */
  tls?: TcpPlaneTls | null;
}

interface AckWaiter {
  resolve: (frame: ResponseFrame) => void;
  reject: (err: LlmError) => void;
  timer: NodeJS.Timeout;
}

class PooledConnection {
  readonly waiters: AckWaiter[] = [];
  closed = false;
  private readonly decoder: ResponseFrameDecoder;

  constructor(
    private readonly socket: Socket,
    private readonly hostPort: string,
    maxMessageSize: number,
    private readonly onClosed: (c: PooledConnection) => void,
  ) {
    this.decoder = new ResponseFrameDecoder(maxMessageSize);
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = this.decoder.push(chunk);
      } catch (err) {
        this.destroy(err as LlmError);
        return;
      }
      for (const frame of frames) {
        const waiter = this.waiters.shift();
        if (waiter === undefined) {
          this.destroy(new LlmError('LLM_ERR_PROTOCOL', `worker ${hostPort} sent a response frame with no request waiting for it`));
          return;
        }
        clearTimeout(waiter.timer);
        waiter.resolve(frame);
      }
    });
    socket.on('error', (err) => this.destroy(new LlmError('LLM_ERR_TRANSPORT', `connection to worker ${hostPort} failed: ${err.message}`)));
    socket.on('close', () => this.destroy(new LlmError('LLM_ERR_TRANSPORT', `connection to worker ${hostPort} closed before the request was acknowledged`)));
  }

  send(frame: Buffer, ackTimeoutMs: number): Promise<ResponseFrame> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.destroy(new LlmError('LLM_ERR_TIMEOUT', `worker ${this.hostPort} did not acknowledge the request within ${ackTimeoutMs} ms`));
      }, ackTimeoutMs);
      this.waiters.push({ resolve, reject, timer });
      this.socket.write(frame);
    });
  }

  destroy(reason: LlmError): void {
    if (!this.closed) {
      this.closed = true;
      this.socket.destroy();
      this.onClosed(this);
    }
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(reason);
    }
  }
}

export class TcpRequestClient {
  private readonly pools = new Map<string, PooledConnection[]>();
  private readonly connecting = new Map<string, Promise<PooledConnection>>();
  private readonly poolSize: number;
  private readonly ackTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly maxMessageSize: number;
  private readonly secret: Buffer | null;
  private readonly tls: TcpPlaneTls | null;

  constructor(
    private readonly responses: ResponseServer,
    options: TcpRequestClientOptions = {},
  ) {
    this.poolSize = options.poolSize ?? 4;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 3000;
    this.maxMessageSize = options.maxMessageSize ?? maxMessageSizeFromEnv();
    this.secret = options.secret === undefined ? requestPlaneSecretFromEnv() : options.secret;
    this.tls = options.tls === undefined ? tcpPlaneTlsFromEnv() : options.tls;
  }

  /**
   * Sends `body` to the endpoint at `address` (`host:port/{endpoint}` or `host:port/{instance_id:x}/{endpoint}`, from discovery) and resolves
   * once the worker acknowledged it; the stream then yields the responses.
   */
  async request(address: string, body: unknown, options: RequestOptions = {}): Promise<ResponseStream> {
    const { hostPort, path } = parseTcpTransportAddress(address);
    const { stream, payload, headers } = prepareRequest(this.responses, address, body, options, this.maxMessageSize, this.secret);
    headers[RequestHeader.endpointPath] = path;
    try {
      // the address says which release's frame the worker reads (a 0.8 frame has no headers block)
      const frame = encodeRequestFrame({ path, headers, payload }, tcpProfileOfPath(path));
      const connection = await this.connection(hostPort);
      const answer = await connection.send(frame, this.ackTimeoutMs);
      if (!answer.ack) throw refusal(address, answer.error);
    } catch (err) {
      stream.fail(err as LlmError);
      throw err;
    }
    return stream;
  }

  close(): void {
    for (const pool of this.pools.values()) {
      for (const c of [...pool]) c.destroy(new LlmError('LLM_ERR_SHUTDOWN', 'TCP request client closed'));
    }
    this.pools.clear();
  }

  private async connection(hostPort: string): Promise<PooledConnection> {
    const pool = this.pools.get(hostPort) ?? [];
    const idle = pool.find((c) => c.waiters.length === 0);
    if (idle !== undefined) return idle;
    if (pool.length >= this.poolSize) return pool.reduce((a, b) => (b.waiters.length < a.waiters.length ? b : a));
    // one connect at a time per address, so a burst does not open a connection per request
    let opening = this.connecting.get(hostPort);
    if (opening === undefined) {
      opening = this.open(hostPort).finally(() => this.connecting.delete(hostPort));
      this.connecting.set(hostPort, opening);
    }
    return opening;
  }

  private open(hostPort: string): Promise<PooledConnection> {
    const { host, port } = parseHostPort(hostPort, 'worker address');
    return new Promise((resolve, reject) => {
      const tls = this.tls;
      const socket: Socket =
        tls === null
          ? connect({ host, port, noDelay: true })
          : tlsConnect({ host, port, cert: tls.cert, key: tls.key, ca: tls.ca, ...(isIP(host) === 0 ? { servername: host } : {}) }).setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new LlmError('LLM_ERR_TRANSPORT', `cannot connect to worker ${hostPort}: no answer within ${this.connectTimeoutMs} ms`));
      }, this.connectTimeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new LlmError('LLM_ERR_TRANSPORT', `cannot connect to worker ${hostPort}: ${err.message}`));
      });
      socket.once(tls === null ? 'connect' : 'secureConnect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        const connection = new PooledConnection(socket, hostPort, this.maxMessageSize, (c) => {
          const list = this.pools.get(hostPort);
          const at = list?.indexOf(c) ?? -1;
          if (list !== undefined && at >= 0) list.splice(at, 1);
          if (list?.length === 0) this.pools.delete(hostPort);
        });
        const list = this.pools.get(hostPort) ?? [];
        list.push(connection);
        this.pools.set(hostPort, list);
        resolve(connection);
      });
    });
  }
}
