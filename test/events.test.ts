import t from 'tap';
import { decode as msgpackDecode } from '@msgpack/msgpack';
import { connect, type NatsConnection } from 'nats';
import type { LlmError } from '../src/errors.js';
import { decodeRouterEvent, encodeRouterEvent, type RouterEvent } from '../src/protocol/events.js';
import { Discovery } from '../src/runtime/discovery/index.js';
import {
  EventPublisher,
  KvEventPublisher,
  LoadPublisher,
  kvHashSeed,
  registerNatsEventChannel,
  subscribeKvEvents,
  subscribeLoad,
  type EventSubscription,
  type ReceivedEvent,
} from '../src/runtime/events/index.js';
import { tokensHash } from '../src/runtime/kv-hash.js';
import { xxh3_64 } from '../src/runtime/xxh3.js';
import { startNats, type NatsService } from './helpers/services.js';

let nats: NatsService;
let pub: NatsConnection;
let sub: NatsConnection;
t.before(async () => {
  nats = await startNats();
  pub = await connect({ servers: nats.url });
  sub = await connect({ servers: nats.url });
});
t.teardown(async () => {
  await pub?.close();
  await sub?.close();
  await nats?.stop();
});

const iterators = new WeakMap<object, AsyncIterator<unknown>>();

/** The next `n` events of a subscription (one iterator per subscription, kept across calls), failing after `ms`. */
async function take<T>(subscription: EventSubscription<T>, n: number, ms = 5000): Promise<ReceivedEvent<T>[]> {
  let it = iterators.get(subscription) as AsyncIterator<ReceivedEvent<T>> | undefined;
  if (!it) {
    it = subscription[Symbol.asyncIterator]();
    iterators.set(subscription, it);
  }
  const out: ReceivedEvent<T>[] = [];
  const deadline = Date.now() + ms;
  while (out.length < n) {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), Math.max(0, deadline - Date.now()))));
    const r = await Promise.race([it.next(), timeout]);
    clearTimeout(timer);
    if (r === 'timeout' || r.done) throw new Error(`got ${out.length} of ${n} events within ${ms} ms`);
    out.push(r.value);
  }
  return out;
}

/** Waits until the subscriptions are registered on the server, so nothing published next is missed. */
async function synced(): Promise<void> {
  await sub.flush();
}

t.test('envelope bytes: named msgpack fields, uint64 integers, payload as bin', async (t) => {
  const raw = sub.subscribe('namespace.ns1.component.backend.kv-events', { max: 1 });
  await synced();
  const publisher = new EventPublisher(pub, { namespace: 'ns1', component: 'backend', topic: 'kv-events' }, 0xfedcba9876543210n, 'main');
  t.equal(publisher.subject, 'namespace.ns1.component.backend.kv-events');
  const event: RouterEvent = {
    worker_id: 0xfedcba9876543210n,
    storage_tier: 'device',
    event: { event_id: 7n, dp_rank: 0, data: { removed: { block_hashes: [1n, 2n ** 64n - 1n] } } },
  };
  const before = Date.now();
  publisher.publish(encodeRouterEvent(event));
  let bytes: Uint8Array | undefined;
  for await (const msg of raw) bytes = msg.data;
  const b = Buffer.from(bytes!);

  t.equal(b[0], 0x85, 'a map of 5 entries');
  const generic = msgpackDecode(b, { useBigInt64: true }) as Record<string, unknown>;
  t.same(Object.keys(generic), ['publisher_id', 'sequence', 'published_at', 'topic', 'payload']);
  const field = (name: string) => {
    const at = b.indexOf(Buffer.from(name));
    t.equal(b[at - 1], 0xa0 | name.length, `${name}: a fixstr key`);
    return at + name.length;
  };
  let at = field('publisher_id');
  t.equal(b[at], 0xcf, 'publisher_id: uint64');
  t.equal(b.readBigUInt64BE(at + 1), 0xfedcba9876543210n);
  at = field('sequence');
  t.equal(b[at], 0xcf, 'sequence: uint64');
  t.equal(b.readBigUInt64BE(at + 1), 0n, 'the first sequence number is 0');
  at = field('published_at');
  t.equal(b[at], 0xcf, 'published_at: uint64, not float64');
  const publishedAt = Number(b.readBigUInt64BE(at + 1));
  t.ok(publishedAt >= before && publishedAt <= Date.now(), 'published_at is milliseconds since the epoch');
  at = field('topic');
  t.equal(b.subarray(at, at + 10).toString('latin1'), '\xa9kv-events', 'topic: the topic name');
  at = field('payload');
  t.ok(b[at] === 0xc4 || b[at] === 0xc5, 'payload: msgpack bin, not a nested map');
  t.same(decodeRouterEvent(generic.payload as Uint8Array), event);
});

t.test('KV events: conversion, coalescing, monotonic event ids, decoding subscriber', async (t) => {
  const worker = 0x1234n;
  const events = subscribeKvEvents(sub, 'ns2', 'backend', undefined, 'main');
  await synced();
  const kv = new KvEventPublisher(pub, { namespace: 'ns2', component: 'backend', workerId: worker, batchWindowMs: 20, wireProfile: 'main' });
  const tokens = Array.from({ length: 12 }, (_, i) => 100 + i);

  // three pages stored in two reports that chain (parent = last block), a signed engine hash among them
  kv.stored({ blockHashes: [11n, -1n], parentBlockHash: null, tokenIds: tokens.slice(0, 8), blockSize: 4 });
  kv.stored({ blockHashes: [13], parentBlockHash: -1n, tokenIds: tokens.slice(8, 12), blockSize: 4 });
  // two removals in a row coalesce too
  kv.removed([11n]);
  kv.removed([13n, 2n ** 64n - 1n]);
  // a LoRA block and a report with a duplicate hash
  kv.stored({ blockHashes: [21n], tokenIds: [1, 2], blockSize: 2, loraName: 'my-adapter', medium: 'CPU_PINNED' });
  kv.stored({ blockHashes: [5n, 5n], tokenIds: [1, 2, 3, 4], blockSize: 2 });
  kv.flush();
  // a clear makes a pending removal moot: only the clear goes out
  kv.removed([99n]);
  kv.cleared();

  const got = await take(events, 5);
  t.same(got.map((r) => r.event.event.event_id), [0n, 1n, 2n, 3n, 4n], 'event ids count up from 0');
  t.same(got.map((r) => r.envelope!.sequence), [0n, 1n, 2n, 3n, 4n]);
  for (const r of got) {
    t.equal(r.event.worker_id, worker);
    t.equal(r.envelope!.publisher_id, worker);
    t.equal(r.envelope!.topic, 'kv-events');
  }
  t.same(got[0]!.event, {
    worker_id: worker,
    storage_tier: 'device',
    event: {
      event_id: 0n,
      dp_rank: 0,
      data: {
        stored: {
          parent_hash: null,
          start_position: null,
          blocks: [
            { block_hash: 11n, tokens_hash: tokensHash(tokens.slice(0, 4)) },
            { block_hash: 2n ** 64n - 1n, tokens_hash: tokensHash(tokens.slice(4, 8)) },
            { block_hash: 13n, tokens_hash: tokensHash(tokens.slice(8, 12)) },
          ],
        },
      },
    },
  });
  t.same(got[1]!.event.event.data, { removed: { block_hashes: [11n, 13n, 2n ** 64n - 1n] } });
  t.equal(got[4]!.event.event.data, 'cleared');
  t.equal(got[2]!.event.storage_tier, 'host_pinned');
  const loraSeed = BigInt.asUintN(64, 1337n + xxh3_64(new TextEncoder().encode('my-adapter')));
  t.equal(kvHashSeed('my-adapter'), loraSeed);
  t.same(got[2]!.event.event.data, { stored: { parent_hash: null, start_position: null, blocks: [{ block_hash: 21n, tokens_hash: tokensHash([1, 2], loraSeed) }] } });
  t.same(got[3]!.event.event.data, { removed: { block_hashes: [] } }, 'duplicate hashes: an empty removal instead');

  t.throws(() => kv.stored({ blockHashes: [1n], tokenIds: [1, 2, 3], blockSize: 4 }), { code: 'LLM_ERR_INTERNAL', message: /need 4 token ids, got 3/ });
  kv.close();
});

t.test('KV events: a burst within the window is one message, later events are not held back', async (t) => {
  const events = subscribeKvEvents(sub, 'ns3', 'prefill', undefined, 'main');
  await synced();
  const kv = new KvEventPublisher(pub, { namespace: 'ns3', component: 'prefill', workerId: 1n, dpRank: 2, batchWindowMs: 5, wireProfile: 'main' });
  t.equal(kv.subject, 'namespace.ns3.component.prefill.kv-events');
  let parent: bigint | null = null;
  for (let i = 0n; i < 100n; i++) {
    kv.stored({ blockHashes: [i + 1n], parentBlockHash: parent, tokenIds: [Number(i)], blockSize: 1 });
    parent = i + 1n;
  }
  const [first] = await take(events, 1);
  const data = first!.event.event.data as { stored: { blocks: unknown[] } };
  t.equal(data.stored.blocks.length, 100, 'one stored event with all 100 blocks');
  t.equal(first!.event.event.dp_rank, 2);
  const sentAt = Date.now();
  kv.removed([1n]);
  await take(events, 1);
  t.ok(Date.now() - sentAt < 1000, 'the window flushes by itself');
  kv.close();
});

t.test('load samples: initial zero, debounced, only on change', async (t) => {
  const loads = subscribeLoad(sub, 'ns4', undefined, 'main');
  await synced();
  const load = new LoadPublisher(pub, { namespace: 'ns4', workerId: 9n, wireProfile: 'main' });
  t.equal(load.subject, 'namespace.ns4.kv_metrics');
  load.start([0, 1]);
  for (let i = 1; i <= 5; i++) load.update(0, i);
  await new Promise((r) => setTimeout(r, 30));
  load.update(0, 5); // unchanged: nothing
  load.update(1, 0); // unchanged: nothing
  await new Promise((r) => setTimeout(r, 30));
  load.update(1, 3);
  const got = await take(loads, 4);
  t.same(
    got.map((r) => [r.event.dp_rank, r.event.kv_used_blocks]),
    [[0, 0], [1, 0], [0, 5], [1, 3]],
  );
  t.same(got[2]!.event, { worker_id: 9n, dp_rank: 0, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 5 });
  t.equal(got[0]!.envelope!.topic, 'kv_metrics');
  load.close();
  loads.close();
});

t.test('a malformed message is reported and skipped', async (t) => {
  const invalid: LlmError[] = [];
  const events = subscribeKvEvents(sub, 'ns5', 'backend', { onInvalid: (err) => invalid.push(err) }, 'main');
  await synced();
  pub.publish('namespace.ns5.component.backend.kv-events', Uint8Array.of(0xc1));
  const kv = new KvEventPublisher(pub, { namespace: 'ns5', component: 'backend', workerId: 3n, batchWindowMs: 0, wireProfile: 'main' });
  kv.cleared();
  const [good] = await take(events, 1);
  t.equal(good!.event.event.data, 'cleared');
  t.equal(invalid.length, 1);
  t.equal(invalid[0]!.code, 'LLM_ERR_PROTOCOL');
  t.match(invalid[0]!.message, /event envelope on namespace\.ns5\.component\.backend\.kv-events: not valid msgpack/);
});

t.test('event channel record in discovery', async (t) => {
  const discovery = await Discovery.open({ backend: 'mem' });
  t.teardown(() => discovery.close());
  const key = await registerNatsEventChannel(discovery, { namespace: 'ns6', component: 'backend', topic: 'kv-events' });
  t.equal(key, `v1/event_channels/ns6/backend/kv-events/${discovery.instanceId.toString(16)}`);
  const [kv] = await discovery.store.get(key);
  t.equal(
    kv?.value,
    `{"type":"EventChannel","namespace":"ns6","component":"backend","topic":"kv-events","instance_id":${discovery.instanceId},` +
      '"transport":{"kind":"Nats","config":{"subject_prefix":"namespace.ns6.component.backend"}}}',
  );
});
