// The HTTP request plane, as Dynamo's runtime speaks it: `POST http://host:port/v1/rpc/{endpoint}` over HTTP/1.1
// (Dynamo 0.8's client) or HTTP/2 without TLS (h2c, prior knowledge; later clients, and ours). The server takes both
// on one port: a connection that opens with the HTTP/2 preface goes to the h2 server, any other to the HTTP/1.1 one.
// The request whose body is the same TwoPartMessage as on the TCP and NATS planes
// (RequestControlMessage header + request JSON body). The worker answers `202 Accepted` with an empty body once the
// work is queued (the ACK), or an error status with text (404 no handler, 400 malformed, 413 too large, 503
// overloaded). Responses do not come back on the HTTP stream: they stream call-home over TCP to the caller's response
// server, exactly as on the TCP plane, so cancellation is the same too (stop / kill / closing the call-home socket).
import {
  connect as http2Connect,
  constants as h2,
  createServer as createHttp2Server,
  type ClientHttp2Session,
  type Http2Server,
  type Http2Session,
  type IncomingHttpHeaders,
  type ServerHttp2Stream,
} from 'node:http2';
import { createServer as createHttp1Server, type IncomingMessage, type Server as Http1Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { LlmError } from '../../errors.js';
import { formatInstanceId, httpTransportAddress } from '../../protocol/discovery.js';
import { advertisedHost, formatHostPort, resolveRpcHost } from './address.js';
import { prepareRequest, refusal, type RequestOptions } from './egress.js';
import { requestPlaneSecretFromEnv } from './trust.js';
import { maxMessageSizeFromEnv } from './framing.js';
import { Ingress, type HandlerRegistration, type IngressOptions } from './ingress.js';
import type { ResponseServer } from './response-server.js';
import type { ResponseStream } from './response-stream.js';

export const DEFAULT_RPC_ROOT_PATH = '/v1/rpc';

export interface HttpRequestServerOptions extends IngressOptions {
  /** Default `DYN_HTTP_RPC_HOST`, else this host's IPv4 address. */
  host?: string;
  /** Default `DYN_HTTP_RPC_PORT`, else OS-assigned. */
  port?: number;
  /** Default `DYN_HTTP_RPC_ROOT_PATH`, else `/v1/rpc`. */
  rootPath?: string;
}

function envPort(name: string, raw: string | undefined): number {
  if (raw === undefined || raw.trim() === '') return 0;
  const port = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || port > 65535) throw new LlmError('LLM_ERR_CONFIG', `${name} must be a port number 0..65535, got "${raw}"`);
  return port;
}

const HOP_BY_HOP = new Set(['content-type', 'content-length', 'host', 'connection', 'keep-alive', 'transfer-encoding', 'te', 'upgrade']);

/** The client's preface that opens every HTTP/2 connection (RFC 9113 §3.4). */
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

/** Transport headers of a request, without pseudo-headers and HTTP plumbing. */
function transportHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(headers)) {
    if (key.startsWith(':') || HOP_BY_HOP.has(key) || value === undefined) continue;
    out[key] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

/** One request, whichever HTTP version carried it. */
interface PlaneRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: Readable;
  /** The IP the request came from (the reply-address rule). */
  peer: string | undefined;
  reply(status: number, text: string): void;
  /** Stops reading a body that is already too large. */
  abort(): void;
}

export class HttpRequestServer {
  private readonly routes = new Map<string, HandlerRegistration>();
  private readonly sessions = new Set<Http2Session>();
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: NetServer,
    private readonly h2: Http2Server,
    private readonly h1: Http1Server,
    readonly ingress: Ingress,
    readonly hostPort: string,
    readonly rootPath: string,
  ) {}

  static async start(options: HttpRequestServerOptions = {}): Promise<HttpRequestServer> {
    const host = options.host ?? (process.env.DYN_HTTP_RPC_HOST?.trim() || resolveRpcHost());
    const port = options.port ?? envPort('DYN_HTTP_RPC_PORT', process.env.DYN_HTTP_RPC_PORT);
    const rootPath = (options.rootPath ?? (process.env.DYN_HTTP_RPC_ROOT_PATH || DEFAULT_RPC_ROOT_PATH)).replace(/\/+$/, '');
    const ingress = new Ingress({ ...options, maxMessageSize: options.maxMessageSize ?? maxMessageSizeFromEnv() });
    const server = createNetServer({ noDelay: true });
    const h2server = createHttp2Server();
    const h1server = createHttp1Server({ keepAlive: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new LlmError('LLM_ERR_TRANSPORT', `HTTP request server cannot listen on ${formatHostPort(host, port)}: ${err.message}`)));
      server.listen(port, host, () => resolve());
    });
    const bound = server.address();
    const boundPort = typeof bound === 'object' && bound !== null ? bound.port : port;
    const self = new HttpRequestServer(server, h2server, h1server, ingress, formatHostPort(advertisedHost(host), boundPort), rootPath);
    h2server.on('session', (session) => {
      self.sessions.add(session);
      session.on('close', () => self.sessions.delete(session));
      session.on('error', () => {});
    });
    h2server.on('stream', (stream, headers) => self.serveH2(stream, headers));
    h1server.on('request', (req: IncomingMessage, res: ServerResponse) => self.serveH1(req, res));
    server.on('connection', (socket) => self.dispatch(socket));
    return self;
  }

  /** Routes `POST {root}/{endpoint}` to the handler; returns the transport URL for discovery. */
  register(registration: HandlerRegistration): string {
    if (this.routes.has(registration.endpoint)) {
      throw new LlmError('LLM_ERR_CONFIG', `endpoint ${registration.endpoint} (instance ${formatInstanceId(registration.instanceId)}) is already served on http://${this.hostPort}`);
    }
    this.routes.set(registration.endpoint, registration);
    return this.rootPath === DEFAULT_RPC_ROOT_PATH
      ? httpTransportAddress(this.hostPort, registration.endpoint)
      : `http://${this.hostPort}${this.rootPath}/${registration.endpoint}`;
  }

  async unregister(registration: HandlerRegistration): Promise<void> {
    if (this.routes.get(registration.endpoint) === registration) this.routes.delete(registration.endpoint);
    await this.ingress.idle(registration);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.sessions) session.destroy();
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  /** Hands a new connection to the h2 or the HTTP/1.1 server by its first bytes. */
  private dispatch(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      const n = Math.min(head.length, H2_PREFACE.length);
      const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isH2 && head.length < H2_PREFACE.length) return; // a prefix of the preface: wait for more
      socket.off('data', onData);
      socket.pause();
      socket.unshift(head);
      // the h2 session takes the bytes already read from the socket's buffer and then reads its handle itself; the
      // HTTP/1.1 parser reads the stream, which must flow again
      if (isH2) this.h2.emit('connection', socket);
      else {
        this.h1.emit('connection', socket);
        socket.resume();
      }
    };
    socket.on('data', onData);
  }

  private serveH2(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', () => {});
    this.serve({
      method: String(headers[':method'] ?? ''),
      path: String(headers[':path'] ?? ''),
      headers,
      body: stream,
      peer: stream.session?.socket.remoteAddress,
      reply: (status, text) => {
        if (stream.destroyed || stream.closed) return;
        stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8' }, { endStream: text.length === 0 });
        if (text.length > 0) stream.end(text);
      },
      abort: () => stream.close(h2.NGHTTP2_CANCEL),
    });
  }

  private serveH1(req: IncomingMessage, res: ServerResponse): void {
    req.on('error', () => {});
    this.serve({
      method: req.method ?? '',
      path: req.url ?? '',
      headers: req.headers,
      body: req,
      peer: req.socket.remoteAddress,
      reply: (status, text) => {
        if (res.headersSent) return;
        res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      },
      // the rest of an oversized body is read and dropped (the answer is already out); the connection then closes
      abort: () => {
        res.shouldKeepAlive = false;
      },
    });
  }

  private serve(request: PlaneRequest): void {
    const { path, headers, reply } = request;
    const prefix = `${this.rootPath}/`;
    if (!path.startsWith(prefix)) {
      reply(404, `No handler found for path: ${path}`);
      return;
    }
    if (request.method !== 'POST') {
      reply(405, `${request.method} ${path}: only POST is served`);
      return;
    }
    const endpoint = decodeURIComponent(path.slice(prefix.length).split('?')[0]);
    const registration = this.routes.get(endpoint);
    if (registration === undefined) {
      reply(404, `No handler found for path: ${path}`);
      return;
    }
    const max = this.ingress.maxMessageSize;
    const declared = Number(headers['content-length'] ?? 0);
    if (declared > max) {
      reply(413, `Request refused: body of ${declared} bytes exceeds the maximum message size of ${max} bytes (DYN_TCP_MAX_MESSAGE_SIZE)`);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    request.body.on('data', (chunk: Buffer) => {
      if (size > max) return;
      size += chunk.length;
      if (size > max) {
        reply(413, `Request refused: body exceeds the maximum message size of ${max} bytes (DYN_TCP_MAX_MESSAGE_SIZE)`);
        request.abort();
        return;
      }
      chunks.push(chunk);
    });
    request.body.on('end', () => {
      if (size > max) return;
      const accepted = this.ingress.accept(registration, Buffer.concat(chunks, size), transportHeaders(headers), request.peer);
      if (accepted.ok) reply(202, '');
      else reply(accepted.overloaded ? 503 : 400, accepted.error);
    });
  }
}

export interface HttpRequestClientOptions {
  ackTimeoutMs?: number;
  maxMessageSize?: number;
  /** Request-plane secret that signs every request (default: DYN_REQUEST_PLANE_SECRET[_FILE]; null = none). */
  secret?: Buffer | null;
}

export class HttpRequestClient {
  private readonly sessions = new Map<string, ClientHttp2Session>();
  private readonly ackTimeoutMs: number;
  private readonly maxMessageSize: number;
  private readonly secret: Buffer | null;

  constructor(
    private readonly responses: ResponseServer,
    options: HttpRequestClientOptions = {},
  ) {
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.maxMessageSize = options.maxMessageSize ?? maxMessageSizeFromEnv();
    this.secret = options.secret === undefined ? requestPlaneSecretFromEnv() : options.secret;
  }

  /** POSTs `body` to an endpoint URL from discovery; resolves on `202 Accepted` with the call-home stream. */
  async request(url: string, body: unknown, options: RequestOptions = {}): Promise<ResponseStream> {
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      throw new LlmError('LLM_ERR_PROTOCOL', `HTTP transport address "${url}": not a URL`);
    }
    if (target.protocol !== 'http:') throw new LlmError('LLM_ERR_PROTOCOL', `HTTP transport address "${url}": expected http://`);
    const { stream, payload, headers } = prepareRequest(this.responses, url, body, options, this.maxMessageSize, this.secret);
    try {
      const { status, text } = await this.post(target, payload, headers);
      if (status !== 202) throw refusal(url, text || `HTTP ${status}`);
    } catch (err) {
      stream.fail(err as LlmError);
      throw err;
    }
    return stream;
  }

  close(): void {
    for (const session of this.sessions.values()) session.destroy();
    this.sessions.clear();
  }

  private session(origin: string): ClientHttp2Session {
    const existing = this.sessions.get(origin);
    if (existing !== undefined && !existing.closed && !existing.destroyed) return existing;
    const session = http2Connect(origin);
    session.on('error', () => {});
    session.on('close', () => {
      if (this.sessions.get(origin) === session) this.sessions.delete(origin);
    });
    session.unref();
    this.sessions.set(origin, session);
    return session;
  }

  private post(target: URL, payload: Buffer, headers: Record<string, string>): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const session = this.session(target.origin);
      const fail = (err: Error) => {
        clearTimeout(timer);
        reject(err instanceof LlmError ? err : new LlmError('LLM_ERR_TRANSPORT', `cannot reach worker ${target.href}: ${err.message}`));
      };
      const req = session.request({
        ...headers,
        ':method': 'POST',
        ':path': target.pathname,
        'content-type': 'application/octet-stream',
        'content-length': String(payload.length),
      });
      const timer = setTimeout(() => {
        req.close(h2.NGHTTP2_CANCEL);
        fail(new LlmError('LLM_ERR_TIMEOUT', `worker ${target.href} did not acknowledge the request within ${this.ackTimeoutMs} ms`));
      }, this.ackTimeoutMs);
      req.on('error', fail);
      let status = 0;
      const chunks: Buffer[] = [];
      req.on('response', (h) => (status = Number(h[':status'])));
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        clearTimeout(timer);
        resolve({ status, text: Buffer.concat(chunks).toString('utf8') });
      });
      req.end(payload);
    });
  }
}

let shared: Promise<HttpRequestServer> | undefined;

/** The process's one HTTP request server, started on first use from DYN_HTTP_RPC_HOST / _PORT / _ROOT_PATH. */
export function sharedHttpRequestServer(): Promise<HttpRequestServer> {
  shared ??= HttpRequestServer.start().catch((err: unknown) => {
    shared = undefined;
    throw err;
  });
  return shared;
}
