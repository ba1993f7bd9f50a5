// A Dynamo caller written from the reference's wire rules, not from this project's code (nothing under src/ is
// imported), for 0.8 and for later main: discovery straight from etcd, the model card checked by the reference's
// field rules, the TCP request frame of lib/runtime/src/pipeline/network/codec.rs (0.8: u16 path_len | path | u32 len
// | payload; main adds u16 headers_len | headers JSON after the path, and its path is {instance_id:x}/{endpoint}), the
// TwoPartMessage payload and the call-home response stream (reference §10.1, §10.3), cancellation by a "kill"
// control message, KV events as 0.8 JSON (test/fixtures/dynamo-wire/events-0.8.ts names the source) or main's msgpack
// EventEnvelope, the local-indexer query (0.8: NATS request/reply; main: the worker_kv_indexer_query_dp0 endpoint on
// the request plane), and migration as the reference's frontend does it: a stream that closes before
// `complete_final` is re-sent to another instance with the tokens produced so far appended to the prompt and
// max_tokens reduced by as many.
import { randomUUID } from 'node:crypto';
import { request as http1Request } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Etcd3 } from 'etcd3';
import { decode as msgpackDecode } from '@msgpack/msgpack';
import type { NatsConnection } from 'nats';

export type DynamoVersion = '0.8' | 'main';

export interface Instance {
  /** Set for an instance on the HTTP request plane (then hostPort and path are unused). */
  httpUrl?: string;
  instanceIdHex: string;
  /** decimal, as the 0.8 NATS subjects print it */
  instanceIdDec: string;
  hostPort: string;
  path: string;
}

/** `v1/instances/{ns}/{component}/{endpoint}/` → the HTTP instances' URLs. */
export async function listHttpUrls(etcd: Etcd3, ns: string, component: string, endpoint: string): Promise<string[]> {
  const kvs = await etcd.getAll().prefix(`v1/instances/${ns}/${component}/${endpoint}/`).strings();
  return Object.values(kvs)
    .map((value) => (JSON.parse(value) as { transport: { http?: string } }).transport.http)
    .filter((url): url is string => typeof url === 'string');
}

/** `v1/instances/{ns}/{component}/{endpoint}/` → the TCP instances (records of other planes are left out). */
export async function listInstances(etcd: Etcd3, ns: string, component: string, endpoint: string): Promise<Instance[]> {
  const kvs = await etcd.getAll().prefix(`v1/instances/${ns}/${component}/${endpoint}/`).strings();
  const tcp = Object.entries(kvs).filter(([, value]) => typeof (JSON.parse(value) as { transport: { tcp?: unknown } }).transport.tcp === 'string');
  return tcp.map(([key, value]) => {
    const record = JSON.parse(value) as { type: string; transport: { tcp?: string } };
    if (record.type !== 'Endpoint' || typeof record.transport.tcp !== 'string') throw new Error(`not a TCP endpoint record: ${value}`);
    const address = record.transport.tcp;
    const slash = address.indexOf('/');
    const hex = key.slice(key.lastIndexOf('/') + 1);
    // the instance id is a bare JSON integer; read it from the key to keep it exact
    return { instanceIdHex: hex, instanceIdDec: BigInt(`0x${hex}`).toString(10), hostPort: address.slice(0, slash), path: address.slice(slash + 1) };
  });
}

/** Model cards under `v1/mdc/{ns}/{component}/{endpoint}/`, each checked by the reference's decoding rules; a card
 * that breaks one throws, naming it (the reference frontend would drop it). */
export async function listModelCards(etcd: Etcd3, ns: string, component: string, endpoint: string): Promise<Record<string, unknown>[]> {
  const kvs = await etcd.getAll().prefix(`v1/mdc/${ns}/${component}/${endpoint}/`).strings();
  return Object.values(kvs).map((value) => {
    const record = JSON.parse(value) as { type: string; card_json: Record<string, unknown> };
    if (record.type !== 'Model') throw new Error(`not a model record: ${value}`);
    const card = record.card_json;
    for (const field of ['display_name', 'slug', 'context_length', 'kv_cache_block_size', 'migration_limit', 'model_type', 'model_input']) {
      if (!(field in card) || card[field] === null) throw new Error(`card lacks required field ${field}`);
    }
    if (!/^[a-z0-9_-]+$/.test(String(card.slug))) throw new Error(`slug "${String(card.slug)}" has a character outside a-z 0-9 - _`);
    const artifacts: Record<string, string[]> = {
      model_info: ['hf_config_json'],
      tokenizer: ['hf_tokenizer_json', 'tiktoken_model'],
      prompt_formatter: ['hf_tokenizer_config_json'],
      gen_config: ['hf_generation_config_json'],
    };
    for (const [field, variants] of Object.entries(artifacts)) {
      const value = card[field];
      if (value === undefined || value === null) continue;
      const entries = Object.entries(value as Record<string, unknown>);
      if (entries.length !== 1 || !variants.includes(entries[0][0])) throw new Error(`${field}: unknown variant ${JSON.stringify(value)}`);
      const file = entries[0][1] as { path?: unknown; checksum?: unknown };
      if (typeof file !== 'object' || typeof file.path !== 'string' || typeof file.checksum !== 'string') throw new Error(`${field}: not a CheckedFile`);
      const [algorithm, hash, ...rest] = file.checksum.split(':');
      if (algorithm !== 'blake3' || !hash || rest.length > 0) throw new Error(`${field}: checksum "${file.checksum}" is not blake3:<hex>`);
    }
    return card;
  });
}

function postHttp1(url: string, payload: Buffer): Promise<{ code: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http1Request(url, { method: 'POST', headers: { 'content-type': 'application/octet-stream', 'content-length': payload.length } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ code: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(payload);
  });
}

// ---- TwoPartMessage (u64 header_len | u64 body_len | u64 checksum | header | body) ----

function twoPart(header: string, body: string): Buffer {
  const h = Buffer.from(header);
  const b = Buffer.from(body);
  const prefix = Buffer.alloc(24);
  prefix.writeBigUInt64BE(BigInt(h.length), 0);
  prefix.writeBigUInt64BE(BigInt(b.length), 8);
  prefix.writeBigUInt64BE(0n, 16);
  return Buffer.concat([prefix, h, b]);
}

interface Message {
  header: string;
  body: string;
}

/** Splits back-to-back TwoPartMessages out of a byte stream. */
function twoPartReader(onMessage: (m: Message) => void): (chunk: Buffer) => void {
  let pending = Buffer.alloc(0);
  return (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 24) {
      const h = Number(pending.readBigUInt64BE(0));
      const b = Number(pending.readBigUInt64BE(8));
      if (pending.length < 24 + h + b) return;
      onMessage({ header: pending.subarray(24, 24 + h).toString(), body: pending.subarray(24 + h, 24 + h + b).toString() });
      pending = pending.subarray(24 + h + b);
    }
  };
}

// ---- the caller ----

/** A request body given as JSON text (for u64 values a JS number cannot hold). */
export class RawJson {
  constructor(readonly text: string) {}
}

export interface StreamResult {
  /** `data` of each Annotated item, in order. */
  items: unknown[];
  /** true when `{"complete_final": true}` arrived; false when the connection closed first (a disconnect). */
  completed: boolean;
  /** The control message that closed the stream, if any. */
  sentinel: boolean;
}

interface Pending {
  onItem: (data: unknown, annotated: Record<string, unknown>) => void;
  resolve: (r: StreamResult) => void;
  items: unknown[];
  completed: boolean;
  sentinel: boolean;
  socket?: Socket;
}

export class DynamoCaller {
  private readonly pending = new Map<string, Pending>();
  private readonly connections = new Map<string, Socket>();

  private constructor(
    private readonly server: Server,
    readonly address: string,
    readonly version: DynamoVersion,
  ) {
    server.on('connection', (socket) => this.callHome(socket));
  }

  /** Starts the response server the workers call home to. */
  static async start(version: DynamoVersion = '0.8'): Promise<DynamoCaller> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    return new DynamoCaller(server, `127.0.0.1:${(server.address() as AddressInfo).port}`, version);
  }

  close(): void {
    for (const s of this.connections.values()) s.destroy();
    this.server.close();
  }

  /**
   * Sends `body` to the instance in a 0.8 request frame (one request at a time per connection until its ACK); resolves when the worker's ACK (an empty response frame)
   * came, with the stream's end as a promise. `onItem` sees each Annotated as it arrives.
   */
  async send(instance: Instance, body: unknown, onItem: (data: unknown, annotated: Record<string, unknown>) => void = () => {}): Promise<{ done: Promise<StreamResult>; kill: () => void }> {
    const subject = randomUUID();
    const requestId = randomUUID();
    const done = new Promise<StreamResult>((resolve) => this.pending.set(subject, { onItem, resolve, items: [], completed: false, sentinel: false }));
    const control = {
      id: requestId,
      request_type: 'single_in',
      response_type: 'many_out',
      connection_info: {
        transport: 'tcp_server',
        info: JSON.stringify({ address: this.address, subject, context: requestId, stream_type: 'response' }),
      },
    };
    const payload = twoPart(JSON.stringify(control), body instanceof RawJson ? body.text : JSON.stringify(body));
    if (instance.httpUrl !== undefined) {
      // the HTTP plane as 0.8's client speaks it: an HTTP/1.1 POST of the same payload, 202 = accepted
      const status = await postHttp1(instance.httpUrl, payload);
      if (status.code !== 202) throw new Error(`worker refused the request: HTTP ${status.code} ${status.text}`);
      return { done, kill: () => this.pending.get(subject)?.socket?.write(twoPart(JSON.stringify('kill'), '')) };
    }
    const path = Buffer.from(instance.path);
    const headers = this.version === 'main' ? Buffer.from(JSON.stringify({ 'request-id': requestId, 'x-endpoint-path': instance.path })) : null;
    const headersBytes = headers === null ? 0 : 2 + headers.length;
    const frame = Buffer.alloc(2 + path.length + headersBytes + 4);
    frame.writeUInt16BE(path.length, 0);
    path.copy(frame, 2);
    if (headers !== null) {
      frame.writeUInt16BE(headers.length, 2 + path.length);
      headers.copy(frame, 4 + path.length);
    }
    frame.writeUInt32BE(payload.length, 2 + path.length + headersBytes);
    const socket = await this.connection(instance.hostPort);
    const ack = await new Promise<string>((resolve, reject) => {
      let got = Buffer.alloc(0);
      const onData = (chunk: Buffer) => {
        got = Buffer.concat([got, chunk]);
        if (got.length < 4 || got.length < 4 + got.readUInt32BE(0)) return;
        socket.off('data', onData);
        resolve(got.subarray(4, 4 + got.readUInt32BE(0)).toString());
      };
      socket.on('data', onData);
      socket.once('error', reject);
      socket.write(Buffer.concat([frame, payload]));
    });
    if (ack !== '') throw new Error(`worker refused the request: ${ack}`);
    const kill = () => {
      const p = this.pending.get(subject);
      p?.socket?.write(twoPart(JSON.stringify('kill'), ''));
    };
    return { done, kill };
  }

  private async connection(hostPort: string): Promise<Socket> {
    const open = this.connections.get(hostPort);
    if (open && !open.destroyed) return open;
    const [host, port] = [hostPort.slice(0, hostPort.lastIndexOf(':')), Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))];
    const socket = connect({ host, port });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', () => resolve());
      socket.once('error', reject);
    });
    socket.on('error', () => {});
    this.connections.set(hostPort, socket);
    return socket;
  }

  private callHome(socket: Socket): void {
    let stream: Pending | undefined;
    let step = 0;
    socket.on('error', () => {});
    socket.on('data', twoPartReader((m) => {
      if (step === 0) {
        const handshake = JSON.parse(m.header) as { subject: string; stream_type: string };
        stream = this.pending.get(handshake.subject);
        if (stream === undefined || handshake.stream_type !== 'response') {
          socket.destroy();
          return;
        }
        stream.socket = socket;
        step = 1;
        return;
      }
      if (stream === undefined) return;
      if (step === 1) {
        const prologue = JSON.parse(m.header) as { error: string | null };
        if (prologue.error !== null) throw new Error(`worker refused the stream: ${prologue.error}`);
        step = 2;
        return;
      }
      if (m.header.length > 0) {
        if (JSON.parse(m.header) === 'sentinel') stream.sentinel = true;
        return;
      }
      const frame = JSON.parse(m.body) as { data?: Record<string, unknown>; complete_final: boolean };
      if (frame.complete_final) {
        stream.completed = true;
        return;
      }
      if (frame.data) {
        stream.items.push(frame.data.data ?? frame.data);
        stream.onItem(frame.data.data, frame.data);
      }
    }));
    socket.on('close', () => {
      if (stream === undefined) return;
      for (const [subject, p] of this.pending) if (p === stream) this.pending.delete(subject);
      stream.resolve({ items: stream.items, completed: stream.completed, sentinel: stream.sentinel });
    });
  }
}

interface Chunk {
  token_ids: number[];
  finish_reason?: string | null;
}

/**
 * Generates on `instances[0]`; when its stream closes before completing, re-sends to the next instance with the
 * tokens so far appended and max_tokens reduced (the reference frontend's migration), up to `migrationLimit` times.
 * `onChunk` may act mid-stream (kill a worker). Returns the tokens and how many migrations happened.
 */
export async function generateWithMigration(
  client: DynamoCaller,
  instances: () => Promise<Instance[]>,
  request: { token_ids: number[]; stop_conditions: { max_tokens: number }; [k: string]: unknown },
  migrationLimit: number,
  onChunk: (produced: number, instance: Instance) => void = () => {},
): Promise<{ tokens: number[]; migrations: number; finishReason: string | null | undefined }> {
  const tokens: number[] = [];
  const tried = new Set<string>();
  let migrations = 0;
  for (;;) {
    const candidates = (await instances()).filter((i) => !tried.has(i.instanceIdHex));
    if (candidates.length === 0) throw new Error('no instance left to migrate to');
    const instance = candidates[0];
    tried.add(instance.instanceIdHex);
    const attempt = {
      ...request,
      token_ids: [...request.token_ids, ...tokens],
      stop_conditions: { ...request.stop_conditions, max_tokens: request.stop_conditions.max_tokens - tokens.length },
    };
    let finishReason: string | null | undefined;
    const { done } = await client.send(instance, attempt, (data) => {
      const chunk = data as Chunk;
      tokens.push(...chunk.token_ids);
      if (chunk.finish_reason) finishReason = chunk.finish_reason;
      onChunk(tokens.length, instance);
    });
    const result = await done;
    if (result.completed) return { tokens, migrations, finishReason };
    if (migrations >= migrationLimit) throw new Error('stream disconnected and the migration limit is reached');
    migrations++;
  }
}

export interface KvEventMessage {
  /** The JSON text (u64 ids are exact here, not in `value`). */
  raw: string;
  value: { worker_id: number; event: { event_id: number; data: unknown; dp_rank?: number }; [k: string]: unknown };
}

/** Subscribes to the KV events of a component: 0.8 JSON, or main's msgpack EventEnvelope whose payload is the
 * msgpack RouterEvent (`raw` is then the payload re-written as JSON, for reading only). */
export function followKvEvents(nats: NatsConnection, ns: string, component: string, version: DynamoVersion = '0.8'): { events: KvEventMessage[]; stop: () => void } {
  const events: KvEventMessage[] = [];
  const sub = nats.subscribe(`namespace.${ns}.component.${component}.kv-events`);
  void (async () => {
    for await (const m of sub) {
      if (version === 'main') {
        const envelope = msgpackDecode(m.data, { useBigInt64: true }) as { topic: string; payload: Uint8Array };
        const value = msgpackDecode(envelope.payload, { useBigInt64: true }) as KvEventMessage['value'];
        const raw = JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}` : v));
        events.push({ raw, value });
        continue;
      }
      const raw = new TextDecoder().decode(m.data);
      events.push({ raw, value: JSON.parse(raw) as KvEventMessage['value'] });
    }
  })();
  return { events, stop: () => sub.unsubscribe() };
}

/** main's local-indexer query: a request to the worker's `worker_kv_indexer_query_dp0` endpoint; its one item. */
export async function queryLocalIndexerEndpoint(client: DynamoCaller, instance: Instance, startEventId: number | null): Promise<Record<string, unknown>> {
  const body = new RawJson(`{"worker_id":${instance.instanceIdDec},"start_event_id":${startEventId === null ? 'null' : startEventId},"end_event_id":null}`);
  const { done } = await client.send(instance, body);
  const result = await done;
  return result.items[0] as Record<string, unknown>;
}

/** The 0.8 local-indexer query: NATS request/reply, JSON both ways. */
export async function queryLocalIndexer(nats: NatsConnection, ns: string, component: string, instance: Instance, startEventId: number | null): Promise<Record<string, unknown>> {
  const subject = `namespace.${ns}.component.${component}.worker_kv_indexer_query.${instance.instanceIdDec}`;
  const request = `{"worker_id":${instance.instanceIdDec},"start_event_id":${startEventId === null ? 'null' : startEventId},"end_event_id":null}`;
  const reply = await nats.request(subject, new TextEncoder().encode(request), { timeout: 5000 });
  return JSON.parse(new TextDecoder().decode(reply.data)) as Record<string, unknown>;
}
