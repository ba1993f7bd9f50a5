// The HTTP request plane, as Dynamo's runtime speaks it: HTTP/2 without TLS (h2c, prior knowledge),
// `POST http://host:port/v1/rpc/{endpoint}` whose body is the same TwoPartMessage as on the TCP and NATS planes
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
import { LlmError } from '../../errors.js';
import { formatInstanceId, httpTransportAddress } from '../../protocol/discovery.js';
import { advertisedHost, formatHostPort, resolveRpcHost } from './address.js';
import { prepareRequest, refusal, type RequestOptions } from './egress.js';
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

/** Transport headers of an HTTP/2 request, without pseudo-headers and HTTP plumbing. */
function transportHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(headers)) {
    if (key.startsWith(':') || key === 'content-type' || key === 'content-length' || value === undefined) continue;
    out[key] = Array.isArray(value) ? value.join(', ') : value;
  }
  return out;
}

export class HttpRequestServer {
  private readonly routes = new Map<string, HandlerRegistration>();
  private readonly sessions = new Set<Http2Session>();

  private constructor(
    private readonly server: Http2Server,
    readonly ingress: Ingress,
    readonly hostPort: string,
    readonly rootPath: string,
  ) {}

  static async start(options: HttpRequestServerOptions = {}): Promise<HttpRequestServer> {
    const host = options.host ?? (process.env.DYN_HTTP_RPC_HOST?.trim() || resolveRpcHost());
    const port = options.port ?? envPort('DYN_HTTP_RPC_PORT', process.env.DYN_HTTP_RPC_PORT);
    const rootPath = (options.rootPath ?? (process.env.DYN_HTTP_RPC_ROOT_PATH || DEFAULT_RPC_ROOT_PATH)).replace(/\/+$/, '');
    const ingress = new Ingress({ ...options, maxMessageSize: options.maxMessageSize ?? maxMessageSizeFromEnv() });
    const server = createHttp2Server();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new LlmError('LLM_ERR_TRANSPORT', `HTTP request server cannot listen on ${formatHostPort(host, port)}: ${err.message}`)));
      server.listen(port, host, () => resolve());
    });
    const bound = server.address();
    const boundPort = typeof bound === 'object' && bound !== null ? bound.port : port;
    const self = new HttpRequestServer(server, ingress, formatHostPort(advertisedHost(host), boundPort), rootPath);
    server.on('session', (session) => {
      self.sessions.add(session);
      session.on('close', () => self.sessions.delete(session));
      session.on('error', () => {});
    });
    server.on('stream', (stream, headers) => self.serve(stream, headers));
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
    await closed;
  }

  private serve(stream: ServerHttp2Stream, headers: IncomingHttpHeaders): void {
    stream.on('error', () => {});
    const reply = (status: number, text: string) => {
      if (stream.destroyed || stream.closed) return;
      stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8' }, { endStream: text.length === 0 });
      if (text.length > 0) stream.end(text);
    };
    const path = headers[':path'] ?? '';
    const prefix = `${this.rootPath}/`;
    if (!path.startsWith(prefix)) {
      reply(404, `No handler found for path: ${path}`);
      return;
    }
    if (headers[':method'] !== 'POST') {
      reply(405, `${headers[':method']} ${path}: only POST is served`);
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
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        reply(413, `Request refused: body exceeds the maximum message size of ${max} bytes (DYN_TCP_MAX_MESSAGE_SIZE)`);
        stream.close(h2.NGHTTP2_CANCEL);
        return;
      }
      chunks.push(chunk);
    });
    stream.on('end', () => {
      if (size > max) return;
      const accepted = this.ingress.accept(registration, Buffer.concat(chunks, size), transportHeaders(headers));
      if (accepted.ok) reply(202, '');
      else reply(accepted.overloaded ? 503 : 400, accepted.error);
    });
  }
}

export interface HttpRequestClientOptions {
  ackTimeoutMs?: number;
  maxMessageSize?: number;
}

export class HttpRequestClient {
  private readonly sessions = new Map<string, ClientHttp2Session>();
  private readonly ackTimeoutMs: number;
  private readonly maxMessageSize: number;

  constructor(
    private readonly responses: ResponseServer,
    options: HttpRequestClientOptions = {},
  ) {
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.maxMessageSize = options.maxMessageSize ?? maxMessageSizeFromEnv();
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
    const { stream, payload, headers } = prepareRequest(this.responses, url, body, options, this.maxMessageSize);
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
