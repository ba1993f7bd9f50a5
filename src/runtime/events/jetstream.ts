// Dynamo 0.8's durable KV-event stream. A 0.8 worker without the local indexer publishes its RouterEvents into a
// JetStream stream instead of on NATS core, and a 0.8 router that sees such a worker reads that stream (reference
// 7436e3bc0: lib/llm/src/kv_router/publisher.rs, subscriber.rs; lib/runtime/src/transports/nats.rs NatsQueue):
//   stream name  slug("namespace.{ns}.component.{c}.kv-events") with '_' turned into '-', e.g.
//                `namespace-dynamo-component-backend-kv-events`
//   subjects     ["{stream}.*"]; each event is published on "{stream}.kv-events"
//   config       max_age DYN_NATS_STREAM_MAX_AGE seconds (default 3600); everything else the server's defaults
//                (limits retention, file storage); an existing stream is used as it is (get-or-create)
//   payload      the same JSON RouterEvent as on NATS core (protocol/events-0.8.ts)
// The reference has no fallback to core when JetStream is missing: its client refuses to start without it.
import { AckPolicy, DeliverPolicy, nanos, type JetStreamClient, type NatsConnection, type NatsError } from 'nats';
import { LlmError } from '../../errors.js';
import { KV_EVENTS_TOPIC, type RouterEvent } from '../../protocol/events.js';
import { decodeRouterEvent08 } from '../../protocol/events-0.8.js';
import { redactUrl } from '../credentials.js';
import { logger } from '../log.js';

const log = logger('events.jetstream');

/** The reference's Slug::slugify: lowercase; anything but [a-z0-9_-] becomes '_'; leading '_' dropped. */
function slugify(s: string): string {
  return s
    .toLowerCase()
    .replace(/[^a-z0-9_-]/g, '_')
    .replace(/^_+/, '');
}

/** `namespace-{ns}-component-{c}-kv-events` (after the reference's slug rule). */
export function kvEventsStreamName08(namespace: string, component: string): string {
  return slugify(`namespace.${namespace}.component.${component}.${KV_EVENTS_TOPIC}`).replace(/_/g, '-');
}

/** The subject each event is published on: `{stream}.kv-events`. */
export function kvEventsStreamSubject08(namespace: string, component: string): string {
  return `${kvEventsStreamName08(namespace, component)}.${KV_EVENTS_TOPIC}`;
}

/** The stream's max age in seconds: DYN_NATS_STREAM_MAX_AGE when it is a whole number, else one hour (as the
 * reference, which ignores a value it cannot parse). */
export function streamMaxAgeSeconds(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.DYN_NATS_STREAM_MAX_AGE;
  // Rust's u64 parse: digits with an optional leading '+', nothing else (no spaces)
  return raw !== undefined && /^\+?\d+$/.test(raw) ? Number(raw) : 3600;
}

function isNatsError(err: unknown): err is NatsError {
  return err instanceof Error && 'code' in err;
}

/** Creates the component's KV-event stream unless it exists. A server without JetStream is named, with the setting. */
export async function ensureKvEventsStream08(
  connection: NatsConnection,
  namespace: string,
  component: string,
  /** The server as configured (--nats-server), for messages. */
  serverUrl: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<string> {
  const name = kvEventsStreamName08(namespace, component);
  const server = redactUrl(serverUrl);
  const why = `KV events of a worker without the local indexer (--durable-kv-events, or a decode worker) go to the JetStream stream ${name}, as Dynamo 0.8 workers publish them`;
  let jsm;
  try {
    jsm = await connection.jetstreamManager();
  } catch (err) {
    throw new LlmError(
      'LLM_ERR_TRANSPORT',
      `nats-server ${server} has no JetStream (${isNatsError(err) && err.code === '503' ? 'not enabled' : (err as Error).message}): ${why}; start nats-server with -js (or "jetstream: enabled" in its config)`,
      { cause: err },
    );
  }
  try {
    await jsm.streams.info(name);
    return name;
  } catch (err) {
    if (!(isNatsError(err) && err.api_error?.err_code === 10059)) {
      throw new LlmError('LLM_ERR_TRANSPORT', `nats-server ${server}: cannot look up JetStream stream ${name}: ${(err as Error).message}`, { cause: err });
    }
  }
  try {
    await jsm.streams.add({ name, subjects: [`${name}.*`], max_age: nanos(streamMaxAgeSeconds(env) * 1000) });
  } catch (err) {
    // another worker of the component may have created it in the meantime
    try {
      await jsm.streams.info(name);
    } catch {
      throw new LlmError('LLM_ERR_TRANSPORT', `nats-server ${server}: cannot create JetStream stream ${name}: ${(err as Error).message}`, { cause: err });
    }
  }
  return name;
}

/** Publishes already-encoded 0.8 RouterEvents into the component's stream. The PUB goes out at once, so events keep
 * their order; a failed acknowledgement is logged, as the reference's publisher does, and the next event goes on. */
export class KvEventsStream08 {
  readonly subject: string;
  private readonly js: JetStreamClient;

  constructor(connection: NatsConnection, namespace: string, component: string) {
    this.subject = kvEventsStreamSubject08(namespace, component);
    this.js = connection.jetstream();
  }

  publish(payload: Uint8Array): void {
    this.js.publish(this.subject, payload).catch((err: unknown) => {
      log.warn('kv event not stored in JetStream', { subject: this.subject, error: (err as Error).message });
    });
  }
}

/** A router's reading of a component's stream, from its first stored event, until close(). */
export interface KvEventsStreamReader08 {
  close(): void;
}

/**
 * Reads the component's stream as a 0.8 router does (creating it if missing, as the reference's router does), with
 * a consumer from the start of what the stream keeps: a router that starts late replays the events of
 * workers without a local indexer. Each decoded RouterEvent goes to `onEvent`; one that does not decode is logged.
 */
export async function readKvEventsStream08(
  connection: NatsConnection,
  namespace: string,
  component: string,
  serverUrl: string,
  onEvent: (event: RouterEvent) => void,
): Promise<KvEventsStreamReader08> {
  const name = await ensureKvEventsStream08(connection, namespace, component, serverUrl);
  // an ephemeral pull consumer without acks (the server drops it a minute after the router is gone)
  const jsm = await connection.jetstreamManager();
  const info = await jsm.consumers.add(name, { ack_policy: AckPolicy.None, deliver_policy: DeliverPolicy.All, inactive_threshold: nanos(60_000) });
  const consumer = await connection.jetstream().consumers.get(name, info.name);
  const messages = await consumer.consume();
  void (async () => {
    for await (const msg of messages) {
      try {
        onEvent(decodeRouterEvent08(msg.data, `kv event on ${msg.subject} (JetStream ${name})`));
      } catch (err) {
        log.warn('kv event in JetStream not decoded', { stream: name, seq: msg.seq, error: (err as Error).message });
      }
    }
  })();
  return { close: () => void messages.close() };
}
