// Our wire forms checked byte for byte against fixtures derived from the reference's source (test/fixtures/
// dynamo-wire/*: each names the commit, file and lines it was read from): the 0.8 TCP frames both ways, discovery
// keys and records, the 0.8 event payloads and local-indexer answers, error items, health payloads, and the model
// card by the reference's field rules.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import * as tcp from './fixtures/dynamo-wire/tcp-0.8.js';
import * as tcpMain from './fixtures/dynamo-wire/tcp-main.js';
import * as ev from './fixtures/dynamo-wire/events-0.8.js';
import * as card from './fixtures/dynamo-wire/model-card.js';
import * as disc from './fixtures/dynamo-wire/discovery-0.8.js';
import { errorItem } from './fixtures/dynamo-wire/annotated.js';
import * as health from './fixtures/dynamo-wire/health.js';
import { healthCheckPayload, legacyPrefillHealthCheckPayload } from '../src/protocol/health.js';
import {
  decodeActiveLoad08,
  decodeRouterEvent08,
  decodeWorkerKvQueryResponse08,
  encodeActiveLoad08,
  encodeRouterEvent08,
  encodeWorkerKvQueryResponse08,
  rangeAnswer08,
  workerKvIndexerQuerySubject08,
} from '../src/protocol/events-0.8.js';
import { WireModelCardSchema, type ModelDeploymentCard } from '../src/protocol/mdc.js';
import { encodeWireJson, errorFromItem, errorItemText, type Annotated } from '../src/protocol/transport.js';
import type { WorkerKvQueryRequest, WorkerKvQueryResponse } from '../src/protocol/kv-query.js';
import {
  decodeRequestFrame,
  decodeTwoPart,
  encodeRequestFrame,
  encodeResponseFrame,
  encodeTwoPart,
  RequestFrameDecoder,
  ResponseFrameDecoder,
  TwoPartDecoder,
} from '../src/runtime/request-plane/framing.js';
import { mdcKey, tcpProfileOfPath, tcpRequestPath, tcpTransportAddress } from '../src/protocol/discovery.js';
import { parseJsonExact } from '../src/protocol/json.js';
import { Discovery, MemStore } from '../src/runtime/discovery/index.js';
import { connect } from 'node:net';
import { blake3Hex } from '../src/runtime/blake3.js';
import { LocalKvIndexer } from '../src/worker/local-kv-indexer.js';
import { TcpRequestServer } from '../src/runtime/request-plane/tcp-server.js';
import { modelSlug, wireModelCard } from '../src/runtime/model-card.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const text = (b: Uint8Array) => Buffer.from(b).toString('utf8');

t.test('0.8 TCP request frame: our encoder writes the reference bytes, our decoder reads them', async (t) => {
  const payload = Buffer.from(tcp.requestFrame.payload, 'hex');
  t.equal(hex(encodeRequestFrame({ path: tcp.requestFrame.path, headers: { 'request-id': 'dropped in 0.8' }, payload }, '0.8')), tcp.requestFrame.bytes);
  const decoded = decodeRequestFrame(Buffer.from(tcp.requestFrame.bytes, 'hex'), undefined, '0.8');
  t.same([decoded.path, decoded.headers, hex(decoded.payload)], [tcp.requestFrame.path, {}, tcp.requestFrame.payload]);
  // the 0.8 path is the endpoint alone; the address says so, and a caller picks the frame form from it
  t.equal(tcpRequestPath(7n, 'generate', '0.8'), 'generate');
  t.equal(tcpTransportAddress('10.0.0.1:4000', 7n, 'generate', '0.8'), '10.0.0.1:4000/generate');
  t.equal(tcpProfileOfPath('generate'), '0.8');
  t.equal(tcpProfileOfPath('7/generate'), 'main');
});

t.test('0.8 TCP request frame of 2 KiB, split anywhere, is one frame of 2048 payload bytes', async (t) => {
  const payload = Buffer.alloc(tcp.twoKibFrameHead.payloadLength, 0x5a);
  const bytes = Buffer.concat([Buffer.from(tcp.twoKibFrameHead.head, 'hex'), payload]);
  for (const cut of [1, 3, 10, 14, 15, 1000, bytes.length - 1]) {
    const decoder = new RequestFrameDecoder(undefined, '0.8');
    const frames = [...decoder.push(bytes.subarray(0, cut)), ...decoder.push(bytes.subarray(cut))];
    t.equal(frames.length, 1, `cut at ${cut}`);
    const f = frames[0];
    t.ok(!(f instanceof Error) && f.payload.length === 2048 && f.path === 'generate');
  }
});

t.test('main TCP request frame: headers block after the path, byte for byte both ways', async (t) => {
  const f = tcpMain.requestFrame;
  t.equal(hex(encodeRequestFrame({ path: f.path, headers: f.headers, payload: Buffer.from(f.payload, 'hex') }, 'main')), f.bytes);
  const decoded = decodeRequestFrame(Buffer.from(f.bytes, 'hex'), undefined, 'main');
  t.same([decoded.path, decoded.headers, hex(decoded.payload)], [f.path, f.headers, f.payload]);
  t.equal(tcpProfileOfPath(f.path), 'main');
});

t.test('TCP response frames both ways: ACK and error text', async (t) => {
  t.equal(hex(encodeResponseFrame()), tcp.responseFrames.ack);
  t.equal(hex(encodeResponseFrame(tcp.responseFrames.error.text)), tcp.responseFrames.error.bytes);
  const decoded = new ResponseFrameDecoder().push(Buffer.from(tcp.responseFrames.ack + tcp.responseFrames.error.bytes, 'hex'));
  t.same(decoded, [{ ack: true }, { ack: false, error: 'boom' }]);
});

t.test('0.8 TCP server: a path it does not serve gets the reference\'s response frame', async (t) => {
  const server = await TcpRequestServer.start({ host: '127.0.0.1', port: 0, wireProfile: '0.8', tls: null });
  t.teardown(() => server.close());
  const [host, port] = [server.hostPort.slice(0, server.hostPort.lastIndexOf(':')), Number(server.hostPort.slice(server.hostPort.lastIndexOf(':') + 1))];
  const socket = connect({ host, port });
  t.teardown(() => socket.destroy());
  const f = tcp.responseFrames.unknownEndpoint;
  socket.write(encodeRequestFrame({ path: f.path, headers: {}, payload: Buffer.from('{}') }, '0.8'));
  const got: Buffer[] = [];
  for await (const chunk of socket as AsyncIterable<Buffer>) {
    got.push(chunk);
    if (Buffer.concat(got).length >= f.bytes.length / 2) break;
  }
  t.equal(hex(Buffer.concat(got)), f.bytes);
});

t.test('0.8 discovery: instance and model keys, and the endpoint record value for value', async (t) => {
  const discovery = new Discovery(new MemStore());
  t.teardown(() => discovery.close());
  const idHex = discovery.instanceId.toString(16);
  const transport = { tcp: tcpTransportAddress('10.0.0.1:4000', discovery.instanceId, 'generate', '0.8') };
  await discovery.registerEndpointInstance({ namespace: disc.namespace, component: 'backend', endpoint: 'generate', transport });
  const [kv] = await discovery.store.get(`v1/instances/${disc.namespace}/`);
  t.equal(kv.key, disc.instanceKey(idHex));
  t.same(parseJsonExact(kv.value), parseJsonExact(disc.instanceRecord(discovery.instanceId.toString(10))));
  t.equal(mdcKey(disc.namespace, 'backend', 'generate', discovery.instanceId), disc.modelKey(idHex));
});

t.test('TwoPartMessage as a release build writes it (checksum 0), both ways', async (t) => {
  const f = tcp.twoPartRelease;
  t.equal(hex(encodeTwoPart(f.header, f.body)), f.bytes);
  const decoded = decodeTwoPart(Buffer.from(f.bytes, 'hex'));
  t.same([decoded.header.toString(), decoded.body.toString()], [f.header, f.body]);
  const streamed = new TwoPartDecoder().push(Buffer.from(f.bytes + f.bytes, 'hex'));
  t.same(streamed.map((m) => [m.header.toString(), m.body.toString()]), [[f.header, f.body], [f.header, f.body]]);
});

t.test('0.8 KV events: JSON RouterEvent byte for byte, decoded into the router shape', async (t) => {
  for (const fixture of [ev.stored, ev.storedWithParent, ev.removed, ev.cleared]) {
    const decoded = decodeRouterEvent08(Buffer.from(fixture));
    t.equal(decoded.storage_tier, 'device');
    t.equal(text(encodeRouterEvent08(decoded)), fixture, 're-encoded byte for byte');
  }
  const stored = decodeRouterEvent08(Buffer.from(ev.stored));
  t.same(stored, {
    worker_id: ev.workerId,
    storage_tier: 'device',
    event: { event_id: 3n, dp_rank: 0, data: { stored: { parent_hash: null, blocks: [{ block_hash: 2n ** 64n - 1n, tokens_hash: 1n }, { block_hash: 2n, tokens_hash: 2n ** 63n }] } } },
  });
  // what our worker holds in memory (main's shape, start_position and tier included) encodes to the 0.8 bytes
  t.equal(
    text(encodeRouterEvent08({ worker_id: ev.workerId, storage_tier: 'device', event: { event_id: 5n, dp_rank: 0, data: { removed: { block_hashes: [5n, 2n] } } } })),
    ev.removed,
  );
  t.throws(() => decodeRouterEvent08(Buffer.from('{"worker_id":1}')), { code: 'LLM_ERR_PROTOCOL' });
});

t.test('0.8 load: used blocks travel as active_decode_blocks', async (t) => {
  const load = { worker_id: ev.workerId, dp_rank: 0, active_decode_blocks: null, active_prefill_tokens: null, kv_used_blocks: 12 };
  t.equal(text(encodeActiveLoad08(load)), ev.activeLoad);
  t.same(decodeActiveLoad08(Buffer.from(ev.activeLoad)), { ...load, active_decode_blocks: 12 });
});

t.test('0.8 local-indexer query: subject, request and every answer byte for byte', async (t) => {
  t.equal(workerKvIndexerQuerySubject08('dynamo', 'backend', ev.workerId), ev.querySubject);
  const request: WorkerKvQueryRequest = { worker_id: ev.workerId, start_event_id: null, end_event_id: null };
  t.equal(text(encodeWireJson(request)), ev.queryRequest);
  const removed = decodeRouterEvent08(Buffer.from(ev.removed));
  const cleared = decodeRouterEvent08(Buffer.from(ev.cleared));
  const answers: [WorkerKvQueryResponse, string][] = [
    [{ Events: { events: [removed, cleared], last_event_id: 6n } }, ev.eventsAnswer],
    [{ TreeDump: { events: [decodeRouterEvent08(Buffer.from(ev.stored))], last_event_id: 0n } }, ev.treeDumpAnswer],
    [{ TooNew: { requested_start: 10n, requested_end: 6n, newest_available: 6n } }, ev.tooNewAnswer],
    [{ InvalidRange: { start_id: 9n, end_id: 3n } }, ev.invalidRangeAnswer],
  ];
  for (const [answer, fixture] of answers) {
    t.equal(text(encodeWorkerKvQueryResponse08(answer)), fixture);
    t.same(decodeWorkerKvQueryResponse08(Buffer.from(fixture)), answer);
  }
  // 0.8 has no error answer: we never write one, and one that arrives is not a 0.8 answer
  t.throws(() => encodeWorkerKvQueryResponse08({ Error: 'worker_id mismatch' }), { code: 'LLM_ERR_PROTOCOL', message: /no error answer/ });
  t.throws(() => decodeWorkerKvQueryResponse08(Buffer.from('{"Error":"worker_id mismatch"}')), { code: 'LLM_ERR_PROTOCOL' });
});

t.test("0.8 local-indexer answers follow the reference's range rule", async (t) => {
  const indexer = new LocalKvIndexer(ev.workerId);
  for (const fixture of [ev.stored, ev.storedWithParent, ev.removed, ev.cleared]) indexer.record(decodeRouterEvent08(Buffer.from(fixture)));
  const answer = (start: bigint | null, end: bigint | null) =>
    text(encodeWorkerKvQueryResponse08(rangeAnswer08(indexer.query({ worker_id: ev.workerId, start_event_id: start, end_event_id: end }), end)));
  t.equal(answer(5n, null), ev.eventsAnswer, 'from start to the newest');
  t.equal(answer(5n, 5n), `{"Events":[${ev.removed}]}`, 'up to end_event_id');
  t.equal(answer(5n, 99n), ev.eventsAnswer, 'an end past the newest stops at the newest');
  t.equal(answer(10n, null), ev.tooNewAnswer, 'TooNew names the newest as the end');
  t.equal(answer(9n, 3n), ev.invalidRangeAnswer);
  t.equal(answer(null, null), '{"TreeDump":[]}', 'no start: a dump (empty: the last event cleared the cache)');
  t.equal(answer(1n, null), '{"TreeDump":[]}', 'older than the buffer: a dump');
});

t.test('error items: the reference form, with our code leading the text', async (t) => {
  const item: Annotated = { event: 'error', comment: [errorItemText('LLM_ERR_BAD_REQUEST', 'token_ids: required')] };
  t.equal(JSON.stringify(item), errorItem('LLM_ERR_BAD_REQUEST: token_ids: required'));
  const back = errorFromItem(JSON.parse(errorItem('LLM_ERR_BAD_REQUEST: token_ids: required')) as Annotated);
  t.same([back.code, back.message], ['LLM_ERR_BAD_REQUEST', 'token_ids: required']);
  const foreign = errorFromItem(JSON.parse(errorItem('engine died')) as Annotated);
  t.same([foreign.code, foreign.message], ['LLM_ERR_INTERNAL', 'engine died']);
});

t.test('health-check payloads: key for key, in order, as the reference builds them', async (t) => {
  const same = (ours: unknown, fixture: string) => t.equal(JSON.stringify(ours), JSON.stringify(JSON.parse(fixture)));
  same(healthCheckPayload({ bos: 1 }), health.decodePayload(1));
  same(healthCheckPayload({ bos: 151643 }), health.decodePayload(151643));
  same(healthCheckPayload({ textMode: true }), health.textPayload);
  same(legacyPrefillHealthCheckPayload(1), health.prefillPayload(1));
});

t.test('BLAKE3 matches the official test vectors', async (t) => {
  for (const [input, digest] of card.blake3Vectors) {
    const bytes = typeof input === 'string' ? Buffer.from(input) : Uint8Array.from({ length: input }, (_, i) => i % 251);
    t.equal(blake3Hex(bytes), digest, `input ${typeof input === 'string' ? JSON.stringify(input) : `${input} bytes`}`);
  }
});

t.test('model card: written in the form the reference decodes', async (t) => {
  for (const [name, expected] of card.slugs) {
    t.equal(modelSlug(name), expected, `slug of ${JSON.stringify(name)}`);
    t.match(modelSlug(name), card.slugPattern);
  }
  const slug = modelSlug('Qwen/Qwen3-0.6B');

  const dir = mkdtempSync(join(tmpdir(), 'mdc-'));
  const tokenizer = join(dir, 'tokenizer.json');
  const config = join(dir, 'config.json');
  writeFileSync(tokenizer, 'abc');
  writeFileSync(config, '');
  const draft: ModelDeploymentCard = {
    display_name: 'Qwen/Qwen3-0.6B',
    slug: 'qwen-qwen3-0.6b',
    source_path: dir,
    model_info: { hf_config_json: config },
    tokenizer: { hf_tokenizer_json: tokenizer },
    prompt_formatter: null,
    context_length: 4096,
    kv_cache_block_size: 16,
    model_type: 'Chat | Completions',
    model_input: 'Tokens',
    runtime_config: { total_kv_blocks: 10 },
  };
  const wire = await wireModelCard(draft);
  for (const field of card.requiredFields) t.ok(field in wire, `required field ${field} is written`);
  t.equal(wire.migration_limit, 0);
  t.equal(wire.slug, slug);
  t.same(wire.tokenizer, { hf_tokenizer_json: { path: tokenizer, checksum: `blake3:${card.blake3Vectors[1][1]}` } });
  t.same(wire.model_info, { hf_config_json: { path: config, checksum: `blake3:${card.blake3Vectors[0][1]}` } });
  t.notOk('prompt_formatter' in wire);
  t.ok(Value.Check(WireModelCardSchema, JSON.parse(JSON.stringify(wire))), 'the wire schema accepts it');

  // a GGUF model names its file as the source; the reference has no gguf variant, so none is written
  const gguf = await wireModelCard({ ...draft, tokenizer: { gguf: join(dir, 'm.gguf') }, prompt_formatter: { gguf: join(dir, 'm.gguf') }, model_info: null });
  t.notOk('tokenizer' in gguf || 'prompt_formatter' in gguf);

  // what the reference refuses, the wire schema refuses
  const refused: [string, Record<string, unknown>][] = [
    ['no migration_limit', { ...wire, migration_limit: undefined }],
    ['a slug with "."', { ...wire, slug: 'qwen-qwen3-0.6b' }],
    ['a bare file path', { ...wire, tokenizer: { hf_tokenizer_json: tokenizer } }],
    ['a non-blake3 checksum', { ...wire, tokenizer: { hf_tokenizer_json: { path: tokenizer, checksum: 'sha256:00' } } }],
    ['a gguf variant', { ...wire, tokenizer: { gguf: { path: tokenizer, checksum: `blake3:${card.blake3Vectors[1][1]}` } } }],
  ];
  for (const [why, value] of refused) t.notOk(Value.Check(WireModelCardSchema, JSON.parse(JSON.stringify(value))), why);
  await t.rejects(wireModelCard({ ...draft, tokenizer: { hf_tokenizer_json: join(dir, 'missing.json') } }), { code: 'LLM_ERR_MODEL_NOT_FOUND', message: /missing\.json/ });
});

t.test('the bootstrap room a router chose: bootstrap_info (main), else extra_args.bootstrap_room (0.8)', async (t) => {
  const { requestedBootstrapRoom } = await import('../src/protocol/request.js');
  t.equal(requestedBootstrapRoom({ bootstrap_info: { bootstrap_room: 7n }, extra_args: { bootstrap_room: 9 } }), 7n);
  t.equal(requestedBootstrapRoom({ extra_args: { bootstrap_room: 9 } }), 9n);
  t.equal(requestedBootstrapRoom({ extra_args: { bootstrap_room: 18446744073709551615n } }), 18446744073709551615n);
  t.equal(requestedBootstrapRoom({ extra_args: { bootstrap_room: '42' } }), 42n);
  t.equal(requestedBootstrapRoom({ extra_args: {} }), null);
  t.equal(requestedBootstrapRoom({}), null);
  t.throws(() => requestedBootstrapRoom({ extra_args: { bootstrap_room: -1 } }), { code: 'LLM_ERR_BAD_REQUEST', message: /extra_args\.bootstrap_room -1/ });
  t.throws(() => requestedBootstrapRoom({ extra_args: { bootstrap_room: '18446744073709551616' } }), { code: 'LLM_ERR_BAD_REQUEST' });
});
