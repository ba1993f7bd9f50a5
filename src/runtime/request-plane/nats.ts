// The NATS request plane: the worker subscribes (queue group "q", like a NATS service endpoint) to
// `{ns}_{component}.{endpoint}-{instance_id:x}`; a caller sends the same TwoPartMessage as on the TCP plane as a NATS
// request, the worker's reply is the ACK (empty) or error text, and responses stream call-home over TCP.
import { connect as natsConnect, headers as natsHeaders, type Msg, type NatsConnection, type Subscription } from 'nats';
import { LlmError } from '../../errors.js';
import { logger } from '../log.js';
import { OutageLog } from '../outage.js';
import { describeNatsConnectError, natsConnectSettings } from '../credentials.js';
import { natsRequestSubject } from '../../protocol/discovery.js';
import { prepareRequest, refusal, type RequestOptions } from './egress.js';
import { requestPlaneSecretFromEnv } from './trust.js';
import { maxMessageSizeFromEnv } from './framing.js';
import { Ingress, type HandlerRegistration, type IngressOptions } from './ingress.js';
import type { ResponseServer } from './response-server.js';
import type { ResponseStream } from './response-stream.js';

const QUEUE_GROUP = 'q';

/**
 * Connects to a NATS server with the URL's and the environment's credentials and TLS (runtime/credentials.ts); a
 * failure names the server URL, its password redacted.
 */
export async function connectNats(url: string, options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<NatsConnection> {
  const settings = natsConnectSettings(url, options.env);
  let connection: NatsConnection;
  try {
    connection = await natsConnect({ ...settings.options, timeout: options.timeoutMs ?? 5000, name: 'dynamo-sglang' });
  } catch (err) {
    throw new LlmError('LLM_ERR_TRANSPORT', `cannot connect to NATS server ${settings.display}: ${describeNatsConnectError(settings, err)}`);
  }
  // the client reconnects by itself; an outage and the recovery are each logged once
  const outage = new OutageLog(logger('runtime.nats'), `NATS server ${settings.display}`);
  void (async () => {
    for await (const s of connection.status()) {
      if (s.type === 'disconnect') outage.down('the connection dropped; reconnecting (events and NATS-plane requests wait)');
      else if (s.type === 'reconnect') outage.up();
    }
  })();
  return connection;
}

function msgHeaders(msg: Msg): Record<string, string> {
  const out: Record<string, string> = {};
  if (msg.headers === undefined) return out;
  for (const [key, values] of msg.headers) out[key.toLowerCase()] = values.join(', ');
  return out;
}

export class NatsRequestServer {
  readonly ingress: Ingress;
  private readonly subscriptions = new Map<HandlerRegistration, Subscription>();

  constructor(
    readonly connection: NatsConnection,
    options: IngressOptions = {},
  ) {
    this.ingress = new Ingress({ ...options, maxMessageSize: options.maxMessageSize ?? maxMessageSizeFromEnv() });
  }

  /** Subscribes the endpoint's subject; returns the subject, the `nats_tcp` transport value for discovery. */
  register(namespace: string, component: string, registration: HandlerRegistration): string {
    const subject = natsRequestSubject(namespace, component, registration.endpoint, registration.instanceId);
    const subscription = this.connection.subscribe(subject, {
      queue: QUEUE_GROUP,
      callback: (err, msg) => {
        if (err !== null) return;
        const accepted = this.ingress.accept(registration, Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength), msgHeaders(msg));
        msg.respond(accepted.ok ? new Uint8Array(0) : Buffer.from(accepted.error, 'utf8'));
      },
    });
    this.subscriptions.set(registration, subscription);
    return subject;
  }

  async unregister(registration: HandlerRegistration): Promise<void> {
    this.subscriptions.get(registration)?.unsubscribe();
    this.subscriptions.delete(registration);
    await this.ingress.idle(registration);
  }
}

export interface NatsRequestClientOptions {
  ackTimeoutMs?: number;
  maxMessageSize?: number;
  /** For messages: the server the connection goes to. */
  serverUrl?: string;
  /** Request-plane secret that signs every request (default: DYN_REQUEST_PLANE_SECRET[_FILE]; null = none). */
  secret?: Buffer | null;
}

export class NatsRequestClient {
  private readonly ackTimeoutMs: number;
  private readonly maxMessageSize: number;
  private readonly serverUrl: string;
  private readonly secret: Buffer | null;

  constructor(
    private readonly connection: NatsConnection,
    private readonly responses: ResponseServer,
    options: NatsRequestClientOptions = {},
  ) {
    this.ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this.maxMessageSize = options.maxMessageSize ?? maxMessageSizeFromEnv();
    this.serverUrl = options.serverUrl ?? connection.getServer();
    this.secret = options.secret === undefined ? requestPlaneSecretFromEnv() : options.secret;
  }

  /** Sends `body` to the subject from discovery (`nats_tcp`); resolves on the worker's ACK with the call-home stream. */
  async request(subject: string, body: unknown, options: RequestOptions = {}): Promise<ResponseStream> {
    const { stream, payload, headers } = prepareRequest(this.responses, `nats:${subject}`, body, options, this.maxMessageSize, this.secret);
    try {
      const maxPayload = this.connection.info?.max_payload ?? 0;
      if (maxPayload > 0 && payload.length > maxPayload) {
        throw new LlmError('LLM_ERR_BAD_REQUEST', `request of ${payload.length} bytes exceeds the NATS server ${this.serverUrl} max_payload of ${maxPayload} bytes (use the tcp request plane for large requests)`);
      }
      const h = natsHeaders();
      for (const [key, value] of Object.entries(headers)) h.set(key, value);
      let reply: Msg;
      try {
        reply = await this.connection.request(subject, payload, { timeout: this.ackTimeoutMs, headers: h });
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === '503') throw new LlmError('LLM_ERR_TRANSPORT', `no worker is subscribed to ${subject} on NATS server ${this.serverUrl}`);
        if (code === 'TIMEOUT') throw new LlmError('LLM_ERR_TIMEOUT', `worker on ${subject} did not acknowledge the request within ${this.ackTimeoutMs} ms (NATS server ${this.serverUrl})`);
        throw new LlmError('LLM_ERR_TRANSPORT', `NATS request to ${subject} on ${this.serverUrl} failed: ${(err as Error).message}`);
      }
      if (reply.data.length > 0) throw refusal(`nats:${subject}`, Buffer.from(reply.data).toString('utf8'));
    } catch (err) {
      stream.fail(err as LlmError);
      throw err;
    }
    return stream;
  }
}
