// The caller's call-home server: workers connect here to stream responses. The first message on each connection is
// the handshake `{"subject": <uuid>, "stream_type": "response"}`; the subject picks the waiting ResponseStream, and
// every later message on that connection belongs to it. An unknown subject or a bad handshake closes the connection
// (which the worker takes as cancellation).
import { randomUUID } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { LlmError } from '../../errors.js';
import { CallHomeHandshakeSchema, decodeWireJson } from '../../protocol/transport.js';
import { advertisedHost, formatHostPort, resolveRpcHost } from './address.js';
import { maxMessageSizeFromEnv, TwoPartDecoder } from './framing.js';
import { ResponseStream } from './response-stream.js';
import { tcpPlaneTlsFromEnv, type TcpPlaneTls } from './trust.js';

export interface ResponseServerOptions {
  /** Bind address; default `DYN_TCP_RPC_HOST` or this host's IPv4 address. */
  host?: string;
  port?: number;
  maxMessageSize?: number;
  /** How long an accepted request may take to call home before it counts as disconnected. */
  callHomeTimeoutMs?: number;
  /** Mutual TLS: only workers with a certificate from the CA may call home (default DYN_TCP_RPC_TLS_*; null =
   * plaintext), so answers travel encrypted and no one else can write into a stream. */
  tls?: TcpPlaneTls | null;
}

export interface ExpectOptions {
  requestId?: string;
  signal?: AbortSignal;
}

/**
 * Every request's worker connects back here at once, so a burst of N requests is N simultaneous connects: with
 * Node's default listen backlog (511) the kernel drops the excess SYNs, their retries come 1 s and 3 s later, and
 * the worker gives up on the call-home (the request is lost, the worker marked down). The kernel clamps this to
 * net.core.somaxconn.
 */
const CALL_HOME_BACKLOG = 65_535;

export class ResponseServer {
  private readonly waiting = new Map<string, ResponseStream>();
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    /** `ip:port` that goes into `connection_info.address`. */
    readonly address: string,
    private readonly maxMessageSize: number,
    private readonly callHomeTimeoutMs: number,
  ) {}

  static async start(options: ResponseServerOptions = {}): Promise<ResponseServer> {
    const host = options.host ?? resolveRpcHost();
    const tls = options.tls === undefined ? tcpPlaneTlsFromEnv() : options.tls;
    const server: Server = tls === null
      ? createServer({ noDelay: true })
      : createTlsServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: true, rejectUnauthorized: true, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new LlmError('LLM_ERR_TRANSPORT', `response server cannot listen on ${formatHostPort(host, options.port ?? 0)}: ${err.message}`)));
      server.listen(options.port ?? 0, host, CALL_HOME_BACKLOG, () => resolve());
    });
    const bound = server.address();
    const port = typeof bound === 'object' && bound !== null ? bound.port : 0;
    const self = new ResponseServer(
      server,
      formatHostPort(advertisedHost(host), port),
      options.maxMessageSize ?? maxMessageSizeFromEnv(),
      options.callHomeTimeoutMs ?? 30_000,
    );
    // with TLS a call-home is served only once the worker's certificate verified
    server.on(tls === null ? 'connection' : 'secureConnection', (socket: Socket) => self.serve(socket));
    if (tls !== null) server.on('tlsClientError', () => undefined);
    return self;
  }

  /** A new stream waiting for its worker's call-home; `stream.subject` goes into the request's connection_info. */
  expect(worker: string, options: ExpectOptions = {}): ResponseStream {
    const subject = randomUUID();
    const stream = new ResponseStream(
      options.requestId ?? randomUUID(),
      subject,
      worker,
      (s) => {
        if (this.waiting.get(s.subject) === s) this.waiting.delete(s.subject);
      },
      this.callHomeTimeoutMs,
      options.signal,
    );
    if (!stream.settled) this.waiting.set(subject, stream);
    return stream;
  }

  /** Streams accepted or sent but not yet called home. */
  get pending(): number {
    return this.waiting.size;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  private serve(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('error', () => {});
    const decoder = new TwoPartDecoder(this.maxMessageSize);
    let stream: ResponseStream | undefined;
    socket.on('close', () => {
      this.sockets.delete(socket);
      stream?.onClose();
    });
    socket.on('data', (chunk: Buffer) => {
      let messages;
      try {
        messages = decoder.push(chunk);
      } catch (err) {
        stream?.fail(err as LlmError);
        socket.destroy();
        return;
      }
      for (const message of messages) {
        if (stream !== undefined) {
          stream.onMessage(message);
          continue;
        }
        let subject: string;
        try {
          subject = decodeWireJson(CallHomeHandshakeSchema, message.header, 'call-home handshake').subject;
        } catch {
          socket.destroy();
          return;
        }
        const waiting = this.waiting.get(subject);
        if (waiting === undefined) {
          socket.destroy();
          return;
        }
        this.waiting.delete(subject);
        stream = waiting;
        stream.attach(socket);
      }
    });
  }
}

let shared: Promise<ResponseServer> | undefined;

/** The process's one response server, started on first use. */
export function sharedResponseServer(): Promise<ResponseServer> {
  shared ??= ResponseServer.start().catch((err: unknown) => {
    shared = undefined;
    throw err;
  });
  return shared;
}
