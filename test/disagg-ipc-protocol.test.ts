// The GPU path's exchange over the bootstrap connection, without a GPU: a KvSender whose rooms hold (fake) device
// pages and a decode side using fetchKv. Checks that the pool handle goes out once per decode worker (it says what
// it has open), that the prefill side unlocks its pages only after `pulled` and answers `released`, that a
// `fallback` gets the pages host-staged, and that a decode side going away mid-pull, a timeout, or a forced
// cuda-ipc prefill side asked for tcp all release the pages with a clear error where one is due; a hand-over's
// partial last page and first token travel with the page list and with a fallback.
import t from 'tap';
import { fetchKv, type IpcKv } from '../src/disagg/kv-receiver.js';
import { KvSender, type HeldPrefix } from '../src/disagg/kv-sender.js';
import type { KvLayout } from '../src/disagg/layout.js';
import { thisNode, type TransferMode } from '../src/disagg/transfer.js';

const layout: KvLayout = { backend: 'cuda', dtype: 'bf16', pageSize: 4, numLayers: 2, numKvHeads: 2, headDim: 8, tpSize: 1, bytesPerPage: 2 * 2 * 4 * 16 * 2 };
const pool = { id: 'pool-1', handle: Buffer.alloc(64, 7).toString('base64'), tensors: 4, tensor_stride_elems: 4 * 16 * 100, row_elems: 16, page_size: 4, pci_bus_id: '0000:01:00.0' };

async function sender(t: { teardown(fn: () => unknown): void }, mode: TransferMode = 'auto', timeoutMs = 3000): Promise<KvSender> {
  const s = await KvSender.start({
    layout,
    port: 0,
    timeoutMs,
    transfer: { side: { mode, backend: 'cuda', node: thisNode(), ipcReady: true }, pool: () => Promise.resolve(pool) },
  });
  t.teardown(() => s.close());
  return s;
}

/** A held prefix of `pages` pages whose release is counted. */
function held(pages: number[]): HeldPrefix & { releases: number } {
  const h = {
    releases: 0,
    tokenIds: Array.from({ length: pages.length * 4 }, (_, i) => 10 + i),
    pages,
    toHost: () => Promise.resolve(new Uint8Array(pages.length * layout.bytesPerPage).fill(3)),
    release: () => void h.releases++,
  };
  return h;
}

const ipcOffer = (knownPool: string | null = null) => ({ offer: ['cuda-ipc' as const, 'tcp' as const], node: thisNode(), knownPool });

t.test('pulled: the handle once, then the page list; pages released only after pulled', async (t) => {
  const s = await sender(t);
  const h = held([5, 9, 2]);
  const published = s.publish(1n, { kind: 'held', held: h, prefilled: null });
  const got = (await fetchKv({ host: '127.0.0.1', port: s.port, room: 1n, layout, timeoutMs: 3000, transfer: ipcOffer() })) as IpcKv;
  t.equal(got.kind, 'cuda-ipc');
  t.same(got.header.pages, [5, 9, 2]);
  t.equal(got.header.pool.handle, pool.handle, 'the handle goes out to a decode worker that does not have the pool open');
  t.equal(h.releases, 0, 'still locked while the decode side pulls');
  t.equal(s.pending.bytes, 3 * layout.bytesPerPage);
  await got.pulled(3 * layout.bytesPerPage, 0.1);
  await published;
  t.equal(h.releases, 1, 'released once, after pulled');
  t.same(s.pending, { rooms: 0, bytes: 0 });

  const h2 = held([1]);
  const published2 = s.publish(2n, { kind: 'held', held: h2, prefilled: null });
  const again = (await fetchKv({ host: '127.0.0.1', port: s.port, room: 2n, layout, timeoutMs: 3000, transfer: ipcOffer('pool-1') })) as IpcKv;
  t.equal(again.header.pool.handle, null, 'no handle for a pool the decode worker has open');
  await again.pulled(layout.bytesPerPage, 0.01);
  await published2;
  t.equal(h2.releases, 1);
});

t.test('fallback: the held pages host-staged; tcp-only decode workers get them host-staged at once', async (t) => {
  const s = await sender(t);
  const h = held([3, 4]);
  const published = s.publish(3n, { kind: 'held', held: h, prefilled: null });
  const got = (await fetchKv({ host: '127.0.0.1', port: s.port, room: 3n, layout, timeoutMs: 3000, transfer: ipcOffer() })) as IpcKv;
  const host = await got.fallback('cudaIpcOpenMemHandle failed');
  await published;
  t.equal(host.pageCount, 2);
  t.equal(host.data.length, 2 * layout.bytesPerPage);
  t.equal(h.releases, 1);

  const h2 = held([6]);
  const published2 = s.publish(4n, { kind: 'held', held: h2, prefilled: null });
  const tcp = await fetchKv({ host: '127.0.0.1', port: s.port, room: 4n, layout, timeoutMs: 3000, transfer: { offer: ['tcp'], node: thisNode(), knownPool: null } });
  await published2;
  t.equal(tcp.kind, 'tcp');
  t.equal(h2.releases, 1);
});

t.test('a decode side gone mid-pull releases the pages; so does the timeout', async (t) => {
  const s = await sender(t, 'auto', 500);
  const h = held([7]);
  const published = s.publish(5n, { kind: 'held', held: h, prefilled: null }).then(() => null, (e: Error) => e);
  const got = (await fetchKv({ host: '127.0.0.1', port: s.port, room: 5n, layout, timeoutMs: 3000, transfer: ipcOffer() })) as IpcKv;
  got.close();
  t.match((await published)?.message, /decode worker .* went away before the KV pages were sent/);
  t.equal(h.releases, 1);

  const h2 = held([8]);
  const timedOut = await s.publish(6n, { kind: 'held', held: h2, prefilled: null }).then(() => null, (e: Error) => e);
  t.match(timedOut?.message, /LLM_ERR_TIMEOUT|no decode worker fetched its KV pages within 0.5 s/);
  t.equal(h2.releases, 1);
  t.same(s.pending, { rooms: 0, bytes: 0 });
});

t.test('a forced cuda-ipc prefill side refuses tcp-only and fallback requests, naming why', async (t) => {
  const s = await sender(t, 'cuda-ipc');
  const h = held([1]);
  const published = s.publish(7n, { kind: 'held', held: h, prefilled: null }).then(() => null, (e: Error) => e);
  const err = await fetchKv({ host: '127.0.0.1', port: s.port, room: 7n, layout, timeoutMs: 3000, transfer: { offer: ['tcp'], node: thisNode(), knownPool: null } }).then(
    () => null,
    (e: Error) => e,
  );
  t.match(err?.message, /LLM_ERR_KV_TRANSFER|no KV transfer both sides can use \(decode offers tcp\): tcp: this prefill worker runs with --disaggregation-transfer-backend cuda-ipc/);
  // the refused fetch did not take the room: a GPU-path decode side still gets it, and a fallback is refused
  const got = (await fetchKv({ host: '127.0.0.1', port: s.port, room: 7n, layout, timeoutMs: 3000, transfer: ipcOffer() })) as IpcKv;
  const fb = await got.fallback('no peer access').then(() => null, (e: Error) => e);
  t.match(fb?.message, /cannot pull the KV pages of bootstrap room 7 \(no peer access\), and this prefill worker runs with --disaggregation-transfer-backend cuda-ipc/);
  t.match((await published)?.message, /no tcp fallback/);
  t.equal(h.releases, 1);
});

t.test('a hand-over: the partial last page and the first token go with the page list, and with a fallback', async (t) => {
  const s = await sender(t);
  const prefilled = { first_token_id: 42, logprob: -0.5, top_logprobs: [{ token_id: 42, logprob: -0.5 }], cached_tokens: 4 };
  const h = held([3, 8, 5]);
  h.tokenIds = Array.from({ length: 10 }, (_, i) => 10 + i); // 2 full pages of 4 and one of 2
  const published = s.publish(8n, { kind: 'held', held: h, prefilled });
  const got = (await fetchKv({ host: '127.0.0.1', port: s.port, room: 8n, layout, timeoutMs: 3000, transfer: ipcOffer() })) as IpcKv;
  t.same(got.header.prefilled, prefilled);
  t.same([got.header.token_ids.length, got.header.pages], [10, [3, 8, 5]]);
  const host = await got.fallback('no peer access');
  await published;
  t.same([host.tokenIds.length, host.pageCount, host.data.length, host.prefilled], [10, 3, 3 * layout.bytesPerPage, prefilled]);
  t.equal(h.releases, 1);
});
