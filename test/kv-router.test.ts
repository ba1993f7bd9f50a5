// The KV router's index and cost (reference §5.1): stored runs chain through engine block hashes into sequence
// hashes the router recomputes from a request's tokens; overlap counts leading cached blocks only; cost =
// uncached prefill blocks + decode blocks (the worker's load, or what this router sent it and has not finished);
// removals, clears and unknown parents; ties broken at random.
import t from 'tap';
import type { RouterEvent } from '../src/protocol/events.js';
import { blockTokensHashes } from '../src/runtime/kv-hash.js';
import { KvRouter } from '../src/frontend/kv-router.js';

const BS = 4;
const A = 0xaan;
const B = 0xbbn;
let eventId = 0n;

function stored(worker: bigint, tokens: number[], blockHashes: bigint[], parent: bigint | null = null, tier: RouterEvent['storage_tier'] = 'device'): RouterEvent {
  const th = blockTokensHashes(tokens, BS);
  return {
    worker_id: worker,
    storage_tier: tier,
    event: { event_id: eventId++, dp_rank: 0, data: { stored: { parent_hash: parent, start_position: null, blocks: blockHashes.map((h, i) => ({ block_hash: h, tokens_hash: th[i] })) } } },
  };
}

function removed(worker: bigint, hashes: bigint[]): RouterEvent {
  return { worker_id: worker, storage_tier: 'device', event: { event_id: eventId++, dp_rank: 0, data: { removed: { block_hashes: hashes } } } };
}

const prompt = Array.from({ length: 18 }, (_, i) => 10 + i); // 4 full blocks and 2 tokens more
const blocks = (from: number, to: number) => prompt.slice(from * BS, to * BS);

t.test('overlap counts the leading blocks a worker has, across stored runs linked by parent hash', async (t) => {
  const r = new KvRouter({ blockSize: BS });
  r.applyEvent(stored(A, blocks(0, 2), [101n, 102n]));
  r.applyEvent(stored(A, blocks(2, 3), [103n], 102n));
  const seq = r.sequenceHashesOf(prompt);
  t.equal(seq.length, 4);
  t.equal(r.overlap(A, seq), 3);
  t.equal(r.overlap(B, seq), 0);
  // the same tokens as a first block elsewhere are a different sequence: no overlap from the middle
  r.applyEvent(stored(B, blocks(1, 2), [201n]));
  t.equal(r.overlap(B, seq), 0, 'a block matches only with its whole prefix');
  // a run whose parent the router never saw is dropped
  r.applyEvent(stored(B, blocks(1, 2), [202n], 999n));
  t.equal(r.overlap(B, seq), 0);
  // host-tier blocks are not device cache
  r.applyEvent(stored(B, blocks(0, 1), [203n], null, 'host_pinned'));
  t.equal(r.overlap(B, seq), 0);
});

t.test('cost: uncached prefill blocks plus decode blocks, the minimum wins', async (t) => {
  const r = new KvRouter({ blockSize: BS });
  r.applyEvent(stored(A, blocks(0, 3), [1n, 2n, 3n]));
  let d = r.select(prompt, [A, B]);
  t.same({ id: d.instanceId, overlap: d.overlapBlocks, blocks: d.requestBlocks, cost: d.cost }, { id: A, overlap: 3, blocks: 5, cost: 2 });
  r.applyLoad({ worker_id: A, dp_rank: 0, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 10 });
  d = r.select(prompt, [A, B]);
  t.equal(d.instanceId, B, 'a busy worker loses to an idle one despite its cache (12 > 5)');
  t.equal(d.cost, 5);
  r.applyLoad({ worker_id: A, dp_rank: 0, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 0 });
  // what this router sent counts until the stream ends, even before the worker reports it
  const release = r.track(A, 4);
  t.equal(r.select(prompt, [A, B]).instanceId, B);
  release();
  release();
  t.equal(r.select(prompt, [A, B]).instanceId, A);
  t.equal(r.select(prompt, [B]).instanceId, B, 'only candidates are considered');
});

t.test('removals and clears take blocks away; workers that left are forgotten', async (t) => {
  const r = new KvRouter({ blockSize: BS });
  r.applyEvent(stored(A, blocks(0, 4), [1n, 2n, 3n, 4n]));
  const seq = r.sequenceHashesOf(prompt);
  r.applyEvent(removed(A, [4n, 3n, 77n]));
  t.equal(r.overlap(A, seq), 2);
  r.applyEvent({ worker_id: A, storage_tier: 'device', event: { event_id: eventId++, dp_rank: 0, data: 'cleared' } });
  t.equal(r.overlap(A, seq), 0);
  r.applyEvent(stored(A, blocks(0, 1), [1n]));
  r.retain(new Set([B]));
  t.equal(r.overlap(A, seq), 0);
});

t.test('ties are broken at random', async (t) => {
  const r = new KvRouter({ blockSize: BS });
  const picks = new Set<bigint>();
  for (let i = 0; i < 200 && picks.size < 2; i++) picks.add(r.select(prompt, [A, B]).instanceId);
  t.same([...picks].sort(), [A, B]);
});

t.test('overlap weight and router temperature', async (t) => {
  const weightless = new KvRouter({ blockSize: BS, overlapScoreWeight: 0 });
  weightless.applyEvent(stored(A, blocks(0, 4), [1n, 2n, 3n, 4n]));
  weightless.applyLoad({ worker_id: A, dp_rank: 0, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 1 });
  t.equal(weightless.select(prompt, [A, B]).instanceId, B, 'weight 0: only load counts');

  const warm = new KvRouter({ blockSize: BS, temperature: 1 });
  warm.applyEvent(stored(A, blocks(0, 4), [1n, 2n, 3n, 4n]));
  const counts = new Map<bigint, number>([[A, 0], [B, 0]]);
  for (let i = 0; i < 400; i++) {
    const id = warm.select(prompt, [A, B]).instanceId;
    counts.set(id, counts.get(id)! + 1);
  }
  // normalised costs 0 and 1: P(A) = 1 / (1 + e^-1) ≈ 0.73
  t.ok(counts.get(A)! > 220 && counts.get(B)! > 40, `softmax sampling favours the cached worker without excluding the other: ${[...counts.values()]}`);
});

t.test('data parallelism: the router scores (worker, dp_rank) pairs, each with its own cache, load and routed blocks', async (t) => {
  const r = new KvRouter({ blockSize: BS });
  r.learnWorker(A, false, 2);
  const onRank = (e: RouterEvent, dpRank: number): RouterEvent => ({ ...e, event: { ...e.event, dp_rank: dpRank } });
  r.applyEvent(onRank(stored(A, blocks(0, 3), [1n, 2n, 3n]), 1));
  const seq = r.sequenceHashesOf(prompt);
  t.same([r.overlap(A, seq, 0), r.overlap(A, seq, 1)], [0, 3], 'the blocks are in dp rank 1\'s pool only');
  t.match(r.select(prompt, [A]), { instanceId: A, dpRank: 1, overlapBlocks: 3, cost: 2 }, 'the cached rank wins');
  r.applyLoad({ worker_id: A, dp_rank: 1, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 10 });
  t.match(r.select(prompt, [A]), { instanceId: A, dpRank: 0, overlapBlocks: 0, cost: 5 }, 'rank 1 busy (12 > 5): rank 0 of the same worker');
  r.applyLoad({ worker_id: A, dp_rank: 1, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 0 });
  const release = r.track(A, 8, 1);
  t.match(r.select(prompt, [A]), { dpRank: 0 }, 'blocks routed to rank 1 count against rank 1 only');
  release();
  t.match(r.select(prompt, [A]), { dpRank: 1 });
  r.applyEvent(onRank({ worker_id: A, storage_tier: 'device', event: { event_id: eventId++, dp_rank: 0, data: 'cleared' } }, 0));
  t.equal(r.overlap(A, seq, 1), 3, 'a clear of rank 0 leaves rank 1\'s cache');
  t.match(r.select(prompt, [B]), { instanceId: B, dpRank: 0 }, 'a worker not learnt has one rank');
  r.retain(new Set([B]));
  t.equal(r.overlap(A, seq, 1), 0, 'a worker that left is forgotten, every rank of it');
});

t.test('data parallelism: a worker with the local indexer is asked once per dp rank', async (t) => {
  const asked: [bigint, bigint | null, number][] = [];
  const r = new KvRouter({
    blockSize: BS, log: () => undefined,
    queryWorker: async (workerId, start, dpRank) => {
      asked.push([workerId, start, dpRank]);
      const dump = dpRank === 1 ? [{ ...stored(A, blocks(0, 2), [7n, 8n]), event: { ...stored(A, blocks(0, 2), [7n, 8n]).event, dp_rank: 1, event_id: 0n } }] : [];
      return { TreeDump: { events: dump, last_event_id: 0n } };
    },
  });
  r.learnWorker(A, true, 2);
  r.learnWorker(A, true, 2);
  await r.recovered();
  t.same(asked, [[A, null, 0], [A, null, 1]]);
  const seq = r.sequenceHashesOf(prompt);
  t.same([r.overlap(A, seq, 0), r.overlap(A, seq, 1)], [0, 2], 'rank 1\'s dump went to rank 1');
});
