// Router recovery from a worker's local KV indexer (reference §5.1): the worker keeps its last 1024 published events
// with their ids and the blocks they leave cached; a query answers the events from an id while the ring still has
// them, otherwise a dump of the cached blocks with the newest id. The router applies a dump in place of what it knew,
// then the live events that came meanwhile above that id, skips ids it has applied, fills a gap by asking again, and
// follows a worker whose indexer cannot answer by its live events alone, saying so once.
import t from 'tap';
import type { RouterEvent } from '../src/protocol/events.js';
import { parseJsonExact, stringifyJsonExact } from '../src/protocol/json.js';
import { WorkerKvQueryResponseSchema, type WorkerKvQueryResponse } from '../src/protocol/kv-query.js';
import { parseWire } from '../src/protocol/validate.js';
import { blockTokensHashes } from '../src/runtime/kv-hash.js';
import { KvRouter } from '../src/frontend/kv-router.js';
import { LocalKvIndexer } from '../src/worker/local-kv-indexer.js';

const BS = 4;
const W = 0xfedcba9876543210n; // above 2^53: must survive JSON exactly
const prompt = Array.from({ length: 24 }, (_, i) => 10 + i); // 6 blocks
const other = [...prompt.slice(0, 8), ...Array.from({ length: 16 }, (_, i) => 200 + i)]; // shares 2 blocks

class Publisher {
  next = 0n;
  constructor(readonly indexer: LocalKvIndexer) {}
  stored(tokens: number[], from: number, hashes: bigint[], parent: bigint | null): RouterEvent {
    const th = blockTokensHashes(tokens.slice(from * BS, (from + hashes.length) * BS), BS);
    return this.publish({ stored: { parent_hash: parent, start_position: null, blocks: hashes.map((h, i) => ({ block_hash: h, tokens_hash: th[i] })) } });
  }
  removed(hashes: bigint[]): RouterEvent {
    return this.publish({ removed: { block_hashes: hashes } });
  }
  publish(data: RouterEvent['event']['data']): RouterEvent {
    const e: RouterEvent = { worker_id: W, storage_tier: 'device', event: { event_id: this.next++, dp_rank: 0, data } };
    this.indexer.record(e);
    return e;
  }
}

/** Through JSON as the request plane carries it. */
function wire(answer: WorkerKvQueryResponse): WorkerKvQueryResponse {
  return parseWire(WorkerKvQueryResponseSchema, parseJsonExact(stringifyJsonExact(answer)), 'answer', 'LLM_ERR_PROTOCOL');
}

t.test('the ring keeps the newest 1024 events with their ids; queries answer events, a dump, TooNew, InvalidRange, Error', async (t) => {
  const indexer = new LocalKvIndexer(W);
  const pub = new Publisher(indexer);
  pub.stored(prompt, 0, [1n, 2n], null);
  for (let i = 1; i < 1100; i++) pub.removed([BigInt(1000 + i)]);
  const ring = indexer.buffered();
  t.equal(ring.length, 1024);
  t.same(ring.map((e) => e.event.event_id), Array.from({ length: 1024 }, (_, i) => BigInt(76 + i)), 'oldest first, consecutive ids');

  const events = wire(indexer.query({ worker_id: W, start_event_id: 500n }));
  t.ok('Events' in events);
  if ('Events' in events) {
    t.equal(events.Events.events.length, 600);
    t.equal(events.Events.events[0].event.event_id, 500n);
    t.equal(events.Events.last_event_id, 1099n);
  }
  // older than the ring: the router cannot replay from there, so it gets every cached block instead
  const dump = wire(indexer.query({ worker_id: W, start_event_id: 10n }));
  t.ok('TreeDump' in dump);
  if ('TreeDump' in dump) {
    t.equal(dump.TreeDump.last_event_id, 1099n);
    t.same(dump.TreeDump.events.map((e) => e.event.event_id), [0n], 'synthetic ids from 0');
    const d = dump.TreeDump.events[0].event.data;
    t.same(typeof d === 'object' && 'stored' in d ? d.stored.blocks.map((b) => b.block_hash) : null, [1n, 2n]);
    t.equal(dump.TreeDump.events[0].worker_id, W);
  }
  t.ok('TreeDump' in indexer.query({ worker_id: W }), 'no start: a dump');
  t.same(indexer.query({ worker_id: W, start_event_id: 1100n }), { TooNew: { requested_start: 1100n, requested_end: null, newest_available: 1099n } });
  t.same(indexer.query({ worker_id: W, start_event_id: 900n, end_event_id: 800n }), { InvalidRange: { start_id: 900n, end_id: 800n } });
  t.match(indexer.query({ worker_id: 7n }), { Error: /worker_id mismatch/ });
  t.match(indexer.query({ worker_id: W, dp_rank: 1 }), { Error: /dp_rank mismatch/ });
  t.same(new LocalKvIndexer(W).query({ worker_id: W, start_event_id: 0n }), { TreeDump: { events: [], last_event_id: 0n } }, 'nothing published yet');
});

t.test('a dump of a branching cache leaves the router the overlaps the events did', async (t) => {
  const indexer = new LocalKvIndexer(W);
  const pub = new Publisher(indexer);
  const live = new KvRouter({ blockSize: BS });
  const apply = (e: RouterEvent) => live.applyEvent(e);
  apply(pub.stored(prompt, 0, [1n, 2n, 3n], null));
  apply(pub.stored(prompt, 3, [4n, 5n, 6n], 3n));
  apply(pub.stored(other, 2, [21n, 22n], 2n));
  apply(pub.removed([6n, 22n]));
  apply(pub.stored(other, 4, [23n], 21n)); // skips 22: its parent link is 21 in this test, a chain of its own
  const fromDump = new KvRouter({ blockSize: BS });
  const dump = indexer.query({ worker_id: W });
  t.ok('TreeDump' in dump);
  if ('TreeDump' in dump) for (const e of dump.TreeDump.events) fromDump.applyEvent(e);
  t.equal(indexer.blockCount, 7);
  for (const tokens of [prompt, other]) {
    const seq = live.sequenceHashesOf(tokens);
    t.equal(fromDump.overlap(W, seq), live.overlap(W, seq));
  }
  t.equal(fromDump.overlap(W, fromDump.sequenceHashesOf(prompt)), 5);
  t.equal(fromDump.overlap(W, fromDump.sequenceHashesOf(other)), 3);
  pub.publish('cleared');
  t.equal(indexer.blockCount, 0);
  const cleared = indexer.query({ worker_id: W });
  t.same('TreeDump' in cleared ? cleared.TreeDump.events : null, []);
});

t.test('replay: a dump replaces what the router knew, live events above its id follow, duplicates are skipped, gaps are asked for', async (t) => {
  const indexer = new LocalKvIndexer(W);
  const pub = new Publisher(indexer);
  const e0 = pub.stored(prompt, 0, [1n, 2n], null);
  const e1 = pub.stored(prompt, 2, [3n], 2n);
  const e2 = pub.removed([3n]);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const asked: (bigint | null)[] = [];
  const logs: string[] = [];
  const router = new KvRouter({
    blockSize: BS,
    log: (l) => logs.push(l),
    queryWorker: async (id, start) => {
      asked.push(start);
      const answer = wire(indexer.query({ worker_id: id, start_event_id: start }));
      if (start === null) await gate; // the dump is taken now, answered later: live events arrive in between
      return answer;
    },
  });
  const seq = router.sequenceHashesOf(prompt);
  router.receiveEvent(e0); // before the router learned of the worker: applied at once
  router.learnWorker(W, true);
  router.learnWorker(W, true); // known: not asked twice
  await new Promise((r) => setImmediate(r)); // the query is out: the worker has taken its dump
  const e3 = pub.stored(prompt, 2, [4n, 5n], 2n); // published after the dump was taken
  for (const e of [e1, e2, e3]) router.receiveEvent(e);
  t.equal(router.overlap(W, seq), 2, 'live events wait while the query is out');
  release();
  await router.recovered();
  t.same(asked, [null]);
  t.equal(router.overlap(W, seq), 4, 'dump (blocks 1, 2 through event 2) then event 3');
  t.match(logs, [/worker fedcba9876543210: recovered 2 cached blocks from its local indexer \(through event 2\)/]);
  router.receiveEvent(e1); // redelivered: applying it again would bring back block 3, removed by event 2
  t.equal(router.overlap(W, seq), 4);
  router.receiveEvent(pub.removed([5n]));
  t.equal(router.overlap(W, seq), 3);
  // event 5 is lost on the way: event 6 shows the gap, the router asks for 5.. and applies both in order
  pub.removed([4n]);
  const e6 = pub.stored(prompt, 3, [7n], 4n);
  router.receiveEvent(e6);
  await router.recovered();
  t.same(asked, [null, 5n]);
  t.equal(router.overlap(W, seq), 2, 'block 4 removed (event 5), so event 6 has no known parent');
  router.receiveEvent(pub.stored(prompt, 2, [8n, 9n], 2n));
  t.equal(router.overlap(W, seq), 4, 'then live again');
});

t.test('a worker whose indexer cannot answer is logged once and followed by its live events', async (t) => {
  const logs: string[] = [];
  let calls = 0;
  const router = new KvRouter({
    blockSize: BS,
    log: (l) => logs.push(l),
    queryWorker: async () => {
      calls++;
      throw new Error('no handler for worker_kv_indexer_query_dp0');
    },
  });
  const indexer = new LocalKvIndexer(W);
  const pub = new Publisher(indexer);
  router.learnWorker(W, true);
  router.receiveEvent(pub.stored(prompt, 0, [1n, 2n], null));
  await router.recovered();
  router.learnWorker(W, true);
  router.receiveEvent(pub.stored(prompt, 2, [3n], 2n));
  router.receiveEvent(pub.stored(prompt, 3, [4n], 3n)); // ids not checked any more: a gap asks nobody
  t.equal(calls, 1);
  t.equal(logs.length, 1);
  t.match(logs[0], /worker fedcba9876543210: its local KV indexer did not answer \(no handler for worker_kv_indexer_query_dp0\); following its live events only/);
  t.equal(router.overlap(W, router.sequenceHashesOf(prompt)), 4, 'the event that waited and the later ones applied');
  // a worker without the local indexer is never asked
  router.learnWorker(5n, false);
  t.equal(calls, 1);
  // an error answer counts as no answer
  const erring = new KvRouter({ blockSize: BS, log: (l) => logs.push(l), queryWorker: async () => ({ Error: 'worker_id mismatch' }) });
  erring.learnWorker(W, true);
  await erring.recovered();
  t.match(logs[1], /did not answer \(\{"Error":"worker_id mismatch"\}\)/);
});
