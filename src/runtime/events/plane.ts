// The event plane on NATS Core (reference §10.2). In the main wire profile every event is an msgpack EventEnvelope
// {publisher_id, sequence, published_at, topic, payload} published on `namespace.{ns}[.component.{comp}].{topic}`;
// `payload` is msgpack bin holding the topic's own msgpack message (RouterEvent, ActiveLoad, ...), and `topic` the
// subject's last element. In the 0.8 profile the message itself (JSON) is published on the same subject, with no
// envelope; the payload codecs (protocol/events.ts, events-0.8.ts) are chosen by the caller.
import type { NatsConnection, Subscription } from 'nats';
import { LlmError } from '../../errors.js';
import { eventChannelKey } from '../../protocol/discovery.js';
import {
  decodeEventEnvelope,
  encodeEventEnvelope,
  eventSubject,
  eventSubjectPrefix,
  type EventEnvelope,
} from '../../protocol/events.js';
import type { Discovery } from '../discovery/index.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from '../../protocol/wire-profile.js';

export interface EventScope {
  namespace: string;
  /** Absent for namespace-wide topics such as `kv_metrics`. */
  component?: string;
  topic: string;
}

/** Publishes one topic's events, numbering them per publisher. */
export class EventPublisher {
  readonly subject: string;
  private sequence = 0n;

  constructor(
    private readonly connection: NatsConnection,
    readonly scope: EventScope,
    /** Who publishes: the worker's discovery instance id. */
    readonly publisherId: bigint,
    readonly wireProfile: WireProfile = DEFAULT_WIRE_PROFILE,
  ) {
    this.subject = eventSubject(scope.namespace, scope.topic, scope.component);
  }

  /** Publishes the encoded `payload`, in an envelope in the main profile (buffered by the client; never blocks).
   * Returns the envelope (null in 0.8, which has none). */
  publish(payload: Uint8Array): EventEnvelope | null {
    const envelope: EventEnvelope | null =
      this.wireProfile === '0.8'
        ? null
        : { publisher_id: this.publisherId, sequence: this.sequence++, published_at: BigInt(Date.now()), topic: this.scope.topic, payload };
    try {
      this.connection.publish(this.subject, envelope === null ? payload : encodeEventEnvelope(envelope));
    } catch (err) {
      throw new LlmError(
        'LLM_ERR_TRANSPORT',
        `event plane: publishing on ${this.subject} via nats-server ${this.connection.getServer()} failed: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return envelope;
  }
}

/** Advertises an event channel in discovery: `v1/event_channels/{ns}/{component}/{topic}/{instance_id:x}`. */
export async function registerNatsEventChannel(discovery: Discovery, scope: Required<EventScope>): Promise<string> {
  await discovery.registerEventChannel({
    namespace: scope.namespace,
    component: scope.component,
    topic: scope.topic,
    transport: { kind: 'Nats', config: { subject_prefix: eventSubjectPrefix(scope.namespace, scope.component) } },
  });
  return eventChannelKey(scope.namespace, scope.component, scope.topic, discovery.instanceId);
}

export interface ReceivedEvent<T> {
  /** null in the 0.8 profile (no envelopes). */
  envelope: EventEnvelope | null;
  /** The decoded payload. */
  event: T;
}

export interface SubscribeOptions {
  /** A message that does not decode is skipped and reported here (default: a process warning). */
  onInvalid?: (error: LlmError, subject: string) => void;
}

/** Decoded events of one subject, in arrival order, until `close()`. */
export class EventSubscription<T> implements AsyncIterable<ReceivedEvent<T>> {
  private readonly subscription: Subscription;

  constructor(
    connection: NatsConnection,
    readonly subject: string,
    private readonly decodePayload: (payload: Uint8Array, what: string) => T,
    private readonly options: SubscribeOptions = {},
    readonly wireProfile: WireProfile = DEFAULT_WIRE_PROFILE,
  ) {
    this.subscription = connection.subscribe(subject);
  }

  close(): void {
    this.subscription.unsubscribe();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ReceivedEvent<T>> {
    for await (const msg of this.subscription) {
      try {
        if (this.wireProfile === '0.8') {
          yield { envelope: null, event: this.decodePayload(msg.data, `event on ${msg.subject}`) };
          continue;
        }
        const envelope = decodeEventEnvelope(msg.data, `event envelope on ${msg.subject}`);
        yield { envelope, event: this.decodePayload(envelope.payload, `${envelope.topic} payload on ${msg.subject}`) };
      } catch (err) {
        const error = err instanceof LlmError ? err : new LlmError('LLM_ERR_PROTOCOL', String(err));
        if (this.options.onInvalid) this.options.onInvalid(error, msg.subject);
        else process.emitWarning(error.message, 'EventPlaneWarning');
      }
    }
  }
}
