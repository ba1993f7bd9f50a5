// The event plane: publishers for KV events and load, and the decoding subscriptions a KV router follows.
import type { NatsConnection } from 'nats';
import {
  decodeActiveLoad,
  decodeRouterEvent,
  kvEventsSubject,
  kvMetricsSubject,
  type ActiveLoad,
  type RouterEvent,
} from '../../protocol/events.js';
import { decodeActiveLoad08, decodeRouterEvent08 } from '../../protocol/events-0.8.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from '../../protocol/wire-profile.js';
import { EventSubscription, type SubscribeOptions } from './plane.js';

export { KvEventPublisher, kvHashSeed, storageTierOf, type BlocksStored, type KvEventPublisherOptions } from './kv-publisher.js';
export { LoadPublisher, type LoadPublisherOptions } from './load-publisher.js';
export {
  EventPublisher,
  EventSubscription,
  registerNatsEventChannel,
  type EventScope,
  type ReceivedEvent,
  type SubscribeOptions,
} from './plane.js';

/** KV events of every worker of a component (`namespace.{ns}.component.{comp}.kv-events`). */
export function subscribeKvEvents(
  connection: NatsConnection,
  namespace: string,
  component: string,
  options?: SubscribeOptions,
  profile: WireProfile = DEFAULT_WIRE_PROFILE,
): EventSubscription<RouterEvent> {
  const decode = profile === '0.8' ? decodeRouterEvent08 : decodeRouterEvent;
  return new EventSubscription(connection, kvEventsSubject(namespace, component), decode, options, profile);
}

/** Load samples of every worker of a namespace (`namespace.{ns}.kv_metrics`). */
export function subscribeLoad(
  connection: NatsConnection,
  namespace: string,
  options?: SubscribeOptions,
  profile: WireProfile = DEFAULT_WIRE_PROFILE,
): EventSubscription<ActiveLoad> {
  const decode = profile === '0.8' ? decodeActiveLoad08 : decodeActiveLoad;
  return new EventSubscription(connection, kvMetricsSubject(namespace), decode, options, profile);
}
