// The worker's shared TCP request server (reference §10.1): one per process, endpoints multiplexed by the request
// frame's path (`{endpoint}` in the 0.8 wire profile, `{instance_id:x}/{endpoint}` in main). The server speaks one
// profile's request frame on all its connections (the two forms cannot be told apart from the bytes). Each request frame gets exactly one response frame, in order: an empty
// one (ACK) once the work is queued, or error text. Responses then stream call-home (ingress.ts).
//
// A frame with sound boundaries but bad content (headers, payload) is answered with an error frame and the connection
// goes on; a length over DYN_TCP_MAX_MESSAGE_SIZE is answered with an error frame and the connection is closed, since
// the byte stream can no longer be trusted.
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { tcpPlaneTlsFromEnv, type TcpPlaneTls } from './trust.js';
import { LlmError } from '../../errors.js';
import { formatInstanceId, tcpRequestPath, tcpTransportAddress } from '../../protocol/discovery.js';
import { advertisedHost, formatHostPort, resolveRpcHost, resolveRpcPort } from './address.js';
import { encodeResponseFrame, maxMessageSizeFromEnv, RequestFrameDecoder } from './framing.js';
import { Ingress, type HandlerRegistration, type IngressOptions } from './ingress.js';
import type { WireProfile } from '../../protocol/wire-profile.js';
import { wireProfileFromEnv } from '../wire-profile.js';

const ACK = encodeResponseFrame();

export interface TcpRequestServerOptions extends IngressOptions {
  /** Bind address; default `DYN_TCP_RPC_HOST` or this host's IPv4 address (see address.ts). */
  host?: string;
  /** Default `DYN_TCP_RPC_PORT`, else OS-assigned. */
  port?: number;
  /** Request frame form and path (default DYN_WIRE_PROFILE, else 0.8). */
  wireProfile?: WireProfile;
  /** Mutual TLS: only callers with a certificate signed by `ca` get in (default DYN_TCP_RPC_TLS_*; null = plaintext). */
  tls?: TcpPlaneTls | null;
}

export class TcpRequestServer {
  private readonly routes = new Map<string, HandlerRegistration>();
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly ingress: Ingress,
    /** `host:port` as advertised in discovery. */
    readonly hostPort: string,
    readonly wireProfile: WireProfile,
  ) {}

  static async start(options: TcpRequestServerOptions = {}): Promise<TcpRequestServer> {
    const host = options.host ?? resolveRpcHost();
    const port = options.port ?? resolveRpcPort();
    const ingress = new Ingress({ ...options, maxMessageSize: options.maxMessageSize ?? maxMessageSizeFromEnv() });
    const tls = options.tls === undefined ? tcpPlaneTlsFromEnv() : options.tls;
    const server: Server =
      tls === null
        ? createServer({ noDelay: true })
        : createTlsServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: true, rejectUnauthorized: true, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new LlmError('LLM_ERR_TRANSPORT', `TCP request server cannot listen on ${formatHostPort(host, port)}: ${err.message}`)));
      server.listen(port, host, () => resolve());
    });
    const bound = server.address();
    const boundPort = typeof bound === 'object' && bound !== null ? bound.port : port;
    const self = new TcpRequestServer(server, ingress, formatHostPort(advertisedHost(host), boundPort), options.wireProfile ?? wireProfileFromEnv());
    // with TLS a connection is served only once its client certificate verified
    server.on(tls === null ? 'connection' : 'secureConnection', (socket: Socket) => self.serveConnection(socket));
    if (tls !== null) server.on('tlsClientError', () => {});
    return self;
  }

  /** Routes the endpoint's request path to the handler; returns the transport address for discovery. */
  register(registration: HandlerRegistration): string {
    const path = tcpRequestPath(registration.instanceId, registration.endpoint, this.wireProfile);
    if (this.routes.has(path)) {
      throw new LlmError('LLM_ERR_CONFIG', `endpoint ${registration.endpoint} of instance ${formatInstanceId(registration.instanceId)} is already served on ${this.hostPort}`);
    }
    this.routes.set(path, registration);
    return tcpTransportAddress(this.hostPort, registration.instanceId, registration.endpoint, this.wireProfile);
  }

  /** Stops routing new requests to the endpoint, then waits for its queued and running ones to finish. */
  async unregister(registration: HandlerRegistration): Promise<void> {
    const path = tcpRequestPath(registration.instanceId, registration.endpoint, this.wireProfile);
    if (this.routes.get(path) === registration) this.routes.delete(path);
    await this.ingress.idle(registration);
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await closed;
  }

  private serveConnection(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => {});
    const decoder = new RequestFrameDecoder(this.ingress.maxMessageSize, this.wireProfile);
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        socket.end(encodeResponseFrame(`Request refused: ${(err as Error).message}`));
        socket.removeAllListeners('data');
        return;
      }
      for (const frame of frames) {
        if (frame instanceof LlmError) {
          socket.write(encodeResponseFrame(`Malformed request frame: ${frame.message}`));
          continue;
        }
        const registration = this.routes.get(frame.path);
        if (registration === undefined) {
          socket.write(encodeResponseFrame(`Unknown endpoint: ${frame.path}`));
          continue;
        }
        const accepted = this.ingress.accept(registration, frame.payload, frame.headers, socket.remoteAddress);
        socket.write(accepted.ok ? ACK : encodeResponseFrame(accepted.error));
      }
    });
  }
}

let shared: Promise<TcpRequestServer> | undefined;

/** The process's one TCP request server, started on first use from DYN_TCP_RPC_HOST / DYN_TCP_RPC_PORT. */
export function sharedTcpRequestServer(): Promise<TcpRequestServer> {
  shared ??= TcpRequestServer.start().catch((err: unknown) => {
    shared = undefined;
    throw err;
  });
  return shared;
}
