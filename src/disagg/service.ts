// Disaggregated serving of one worker (reference §2.2 decode, §2.3 prefill, §3): the `generate` a prefill or decode
// worker serves in place of the aggregated one, over the worker's core (./port.ts KvPort). The mode is fixed at
// start: a service serves either the prefill or the decode side.
//  - prefill: yields the bootstrap chunk first, runs the prompt (max_tokens 1), then holds the KV of every prompt
//    position (the partial last page included, parked in the scheduler) and the first output token for the decode
//    worker that fetches its bootstrap_room from our bootstrap server (./kv-sender.ts); returns once they are sent
//    (or the room was given up / timed out, which frees them).
//  - decode: fetches the pages named by `bootstrap_info` (./kv-receiver.ts) and hands the request over to its
//    scheduler already prefilled (src/scheduler/request.ts Q5): the KV parked, the first token streamed at once, the
//    first engine step a decode step. As SGLang does, nothing of the prompt is recomputed, so the outputs are the
//    prefill engine's own. When the request needs logprobs the prefill side did not send, only the full pages become
//    a cached prefix and it computes its prompt's tail and first token itself. On the GPU path (./transfer.ts) it
//    pulls the pages from the prefill worker's pool into pages of its own (the prefill pool's IPC mapping opened
//    once per prefill rank and kept), confirms, and uses them only once the prefill side released its copy.
//    Without bootstrap_info it runs the older flow when prefill workers are in discovery: it sends the prompt to
//    one itself and takes the bootstrap info from its first chunk (reference §3.2).
// A FAKE_BOOTSTRAP_HOST (health checks, warm-up) or the `fake` transfer backend moves no pages.
import { randomBytes, randomUUID } from 'node:crypto';
import type { WorkerConfig } from '../config/schema.js';
import { LlmError } from '../errors.js';
import { EndpointClient } from '../runtime/client.js';
import type { Discovery } from '../runtime/discovery/index.js';
import { detectHostIp } from '../runtime/request-plane/address.js';
import { ResponseServer } from '../runtime/request-plane/response-server.js';
import { FAKE_BOOTSTRAP_HOST } from '../protocol/health.js';
import {
  requestedBootstrapRoom,
  BootstrapInfoSchema,
  type DisaggPreprocessedRequest,
  PrefillRequestSchema,
  PreprocessedRequestSchema,
  type BootstrapInfo,
  type PrefillRequest,
  type PreprocessedRequest,
} from '../protocol/request.js';
import { LlmResponseChunkSchema, prefillBootstrapChunk, type LlmResponseChunk, type PrefillBootstrapChunk } from '../protocol/response.js';
import { parseWire } from '../protocol/validate.js';
import type { EngineSummary, KvIpcOp, KvIpcReply } from '../engine/summary.js';
import type { HandOver } from '../scheduler/request.js';
import type { IpcPoolWire, Prefilled, TransferKind } from './frames.js';
import { fetchKv, type HostKv, type IpcKv } from './kv-receiver.js';
import { KvSender, type HeldPrefix, type RoomPages } from './kv-sender.js';
import { kvLayoutOf, type KvLayout } from './layout.js';
import type { KvPort } from './port.js';
import { checkTransferMode, decodeOffer, thisNode, type TransferMode } from './transfer.js';

export interface DisaggGenerateOptions {
  signal: AbortSignal;
  requestId: string;
}

export interface DisaggServiceOptions {
  config: WorkerConfig;
  /** The worker's core: generation and its KV operations. */
  core: KvPort;
  discovery: Discovery;
  log?: (line: string) => void;
}

/** A bootstrap_room drawn uniformly in [0, 2^63 - 1]. */
export function randomBootstrapRoom(): bigint {
  return randomBytes(8).readBigUInt64BE() & ((1n << 63n) - 1n);
}

export class DisaggService {
  /** The kv sender of a prefill worker. */
  readonly sender: KvSender | null;
  /** What a prefill worker publishes in its card's runtime_config. */
  readonly endpoint: { bootstrap_host: string; bootstrap_port: number } | null;
  /** The endpoint's generate: this worker's side (prefill with a sender, else decode), chosen at start. */
  readonly generate: (raw: unknown, options: DisaggGenerateOptions) => AsyncGenerator<LlmResponseChunk | PrefillBootstrapChunk>;
  private readonly layout: KvLayout;
  /** The older flow's client of `{ns}.prefill.generate`, with its own call-home server (closed with us). */
  private prefillClient: Promise<{ client: EndpointClient; responses: ResponseServer }> | null = null;
  // Per engine (the core's summary of its current rank: a restarted rank has a new pool and opens afresh):
  /** Prefill side: the pool's IPC description. */
  private readonly exported = new WeakMap<EngineSummary, Promise<IpcPoolWire>>();
  /** Decode side: prefill pools open in our rank, by prefill bootstrap address. */
  private readonly opened = new WeakMap<EngineSummary, Map<string, { poolId: string; remote: Promise<number> }>>();
  /** Decode side, auto mode: prefill workers whose pool our GPU could not open (tcp from then on). */
  private readonly noIpc = new Set<string>();

  private constructor(
    private readonly options: DisaggServiceOptions,
    sender: KvSender | null,
    private readonly mode: TransferMode,
  ) {
    this.sender = sender;
    this.generate = sender ? (raw, o) => this.prefill(sender, raw, o) : (raw, o) => this.decode(raw, o);
    this.layout = kvLayoutOf(options.core.engine, options.config.tpSize);
    this.endpoint = sender ? { bootstrap_host: bootstrapHost(options.config), bootstrap_port: sender.port } : null;
  }

  static async start(options: DisaggServiceOptions): Promise<DisaggService> {
    const c = options.config;
    if (c.servingMode === 'aggregated') throw new LlmError('LLM_ERR_INTERNAL', 'DisaggService started for an aggregated worker');
    const backendFlag = c.disaggregationTransferBackend;
    if (backendFlag === 'nccl') {
      throw new LlmError('LLM_ERR_CONFIG', '--disaggregation-transfer-backend nccl: the NCCL transfer is not available in this build; use cuda-ipc (GPU to GPU on one host), tcp or auto');
    }
    const mode: TransferMode = backendFlag === 'fake' ? 'tcp' : backendFlag;
    const role = c.servingMode;
    const backend = options.core.engine.backend;
    checkTransferMode(mode, backend, role);
    let service: DisaggService;
    if (role === 'prefill') {
      // The GPU path holds pages in place, so it needs the pool exported; in auto mode a failure means tcp.
      let ipcReady = backend === 'cuda' && mode !== 'tcp';
      if (ipcReady) {
        try {
          await options.core.disaggKv({ op: 'ipc', request: { op: 'export' } });
        } catch (err) {
          if (mode === 'cuda-ipc') throw err;
          options.log?.(`KV transfer: cuda-ipc unavailable, using tcp: ${(err as Error).message}`);
          ipcReady = false;
        }
      }
      const sender = await KvSender.start({
        layout: kvLayoutOf(options.core.engine, c.tpSize),
        port: c.disaggregationBootstrapPort ?? 0,
        timeoutMs: c.kvTransferTimeoutSecs * 1000,
        transfer: { side: { mode, backend, node: thisNode(), ipcReady }, pool: ipcReady ? () => service.exportedPool() : null },
        ...(options.log ? { log: options.log } : {}),
      });
      service = new DisaggService(options, sender, mode);
    } else {
      service = new DisaggService(options, null, mode);
    }
    return service;
  }

  async close(): Promise<void> {
    await this.sender?.close();
    const engine = this.currentEngine();
    for (const peer of (engine && this.opened.get(engine)?.keys()) ?? []) await this.closePool(engine!, peer);
    const legacy = await this.prefillClient?.catch(() => null);
    legacy?.client.close();
    await legacy?.responses.close();
  }

  private async *prefill(sender: KvSender, raw: unknown, options: DisaggGenerateOptions): AsyncGenerator<PrefillBootstrapChunk> {
    const request = flatPrefillRequest(parseWire(PrefillRequestSchema, raw, 'prefill request'));
    const given = request.bootstrap_info;
    const info: BootstrapInfo = {
      bootstrap_host: given?.bootstrap_host ?? this.endpoint!.bootstrap_host,
      bootstrap_port: given?.bootstrap_port ?? this.endpoint!.bootstrap_port,
      // a room the router chose: bootstrap_info, or 0.8's extra_args.bootstrap_room
      bootstrap_room: requestedBootstrapRoom(request) ?? randomBootstrapRoom(),
    };
    yield prefillBootstrapChunk(info);
    const prefillOnly: PreprocessedRequest = { ...request, stop_conditions: { ...request.stop_conditions, max_tokens: 1 } };
    const fake = info.bootstrap_host === FAKE_BOOTSTRAP_HOST || this.options.config.disaggregationTransferBackend === 'fake';
    if (fake) {
      for await (const chunk of this.options.core.generate(prefillOnly, options)) void chunk;
      return;
    }
    const room = info.bootstrap_room;
    const givenUp = sender.open(room);
    if (givenUp.aborted) return; // the decode side already gave this room up: nothing to compute
    let pages: RoomPages;
    // the scheduler parks the prompt's KV under this key when the request stops at its first token
    const kvKey = randomUUID();
    const core = this.options.core;
    try {
      const signal = AbortSignal.any([options.signal, givenUp]);
      const outputs: LlmResponseChunk[] = [];
      for await (const chunk of core.generate(prefillOnly, { ...options, signal, parkKvAs: kvKey })) outputs.push(chunk);
      if (outputs.at(-1)?.finish_reason === 'cancelled') {
        throw givenUp.aborted ? (givenUp.reason as LlmError) : new LlmError('LLM_ERR_CANCELLED', `prefill of bootstrap room ${room} was cancelled`);
      }
      const tokens = request.token_ids;
      if (sender.holdsPages) {
        const held = await this.holdPrefix(kvKey, tokens);
        pages = { kind: 'held', held, prefilled: held.tokenIds.length === tokens.length ? prefilledOf(outputs) : null };
      } else {
        const host = await core.exportParked(kvKey, tokens);
        pages = { kind: 'host', ...host, prefilled: host.tokenIds.length === tokens.length ? prefilledOf(outputs) : null };
      }
    } catch (err) {
      void core.disaggKv({ op: 'release', key: kvKey }).catch(() => undefined); // a failed core dropped what it parked
      const e = err instanceof LlmError ? err : new LlmError('LLM_ERR_INTERNAL', String(err));
      sender.abandon(room, e);
      if (givenUp.aborted) return; // the decode side is gone: nobody to tell
      throw e;
    }
    // Waiting for the decode side ends early when this request is cancelled or the worker shuts down.
    const onAbort = () => {
      const reason: unknown = options.signal.reason;
      // the caller's cancellation carries an LlmError; the worker's shutdown aborts without one
      sender.abandon(room, reason instanceof LlmError ? reason : new LlmError('LLM_ERR_SHUTDOWN', 'the prefill worker shut down before the decode side fetched the KV pages'));
    };
    options.signal.addEventListener('abort', onAbort, { once: true });
    try {
      if (options.signal.aborted) onAbort();
      await sender.publish(room, pages);
    } catch (err) {
      if (err instanceof LlmError && err.code === 'LLM_ERR_CANCELLED' && !options.signal.aborted) return; // the decode side went away
      throw err;
    } finally {
      options.signal.removeEventListener('abort', onAbort);
    }
  }

  private async *decode(raw: unknown, options: DisaggGenerateOptions): AsyncGenerator<LlmResponseChunk> {
    const request = parseWire(PreprocessedRequestSchema, raw, 'request');
    const info = request.bootstrap_info ?? (await this.legacyPrefill(request, options));
    const c = this.options.config;
    let handOver: HandOver | null = null;
    if (info.bootstrap_host !== FAKE_BOOTSTRAP_HOST && c.disaggregationTransferBackend !== 'fake') {
      const peer = `${info.bootstrap_host}:${info.bootstrap_port}`;
      const engine = this.options.core.engine;
      const offer: TransferKind[] = decodeOffer(this.mode, this.options.core.engine.backend, !this.noIpc.has(peer));
      const t0 = performance.now();
      const fetched = await fetchKv({
        host: info.bootstrap_host,
        port: info.bootstrap_port,
        room: info.bootstrap_room,
        layout: this.layout,
        timeoutMs: c.kvTransferTimeoutSecs * 1000,
        signal: options.signal,
        transfer: { offer, node: thisNode(), knownPool: this.opened.get(engine)?.get(peer)?.poolId ?? null },
      });
      const tokenIds = fetched.kind === 'tcp' ? fetched.tokenIds : fetched.header.token_ids;
      if (tokenIds.some((t, i) => t !== request.token_ids[i])) {
        if (fetched.kind === 'cuda-ipc') fetched.close();
        throw new LlmError('LLM_ERR_KV_TRANSFER', `bootstrap room ${info.bootstrap_room}: the prefill worker at ${peer} computed a different prompt (first ${tokenIds.length} tokens differ); the router paired the wrong requests`);
      }
      const prefilled = fetched.kind === 'tcp' ? fetched.prefilled : (fetched.header.prefilled ?? null);
      // a hand-over needs the KV of the whole prompt (the tokens were checked above)
      handOver = prefilled && tokenIds.length === request.token_ids.length && coversOutputOptions(request, prefilled) ? handOverOf(prefilled) : null;
      const parkAs = handOver?.kvKey ?? null;
      if (fetched.kind === 'tcp') {
        await this.options.core.importPrefix(fetched, parkAs);
        this.options.log?.(`kv transfer tcp room ${info.bootstrap_room}: ${fetched.tokenIds.length} tokens, ${fetched.data.length} bytes in ${(performance.now() - t0).toFixed(3)} ms (fetch and import)`);
      }
      else await this.pullPrefix(engine, peer, fetched, info.bootstrap_room, parkAs);
    }
    try {
      yield* this.options.core.generate(request, handOver ? { ...options, handOver } : options);
    } finally {
      // what a request that never reached the scheduler left parked (nothing once it adopted it)
      if (handOver) void this.options.core.disaggKv({ op: 'release', key: handOver.kvKey }).catch(() => undefined);
    }
  }

  /** The GPU path on the decode side: open the prefill pool (once per prefill rank), pull the pages the cache lacks
   * into fresh pages of ours, confirm, and keep them only once the prefill side released its own. */
  private async pullPrefix(engine: EngineSummary, peer: string, fetched: IpcKv, room: bigint, parkAs: string | null): Promise<void> {
    const h = fetched.header;
    let remote: number;
    try {
      remote = await this.openPool(engine, peer, h.pool);
    } catch (err) {
      if (this.mode === 'cuda-ipc') {
        fetched.close();
        throw err;
      }
      // auto: this prefill worker's pool is out of our GPU's reach; tcp from now on
      this.noIpc.add(peer);
      const reason = (err as Error).message;
      this.options.log?.(`KV transfer from ${peer}: cuda-ipc failed, falling back to tcp: ${reason}`);
      const host: HostKv = await fetched.fallback(reason);
      await this.options.core.importPrefix(host, parkAs);
      return;
    }
    const core = this.options.core;
    let importId: number | null = null;
    try {
      const pulled = await core.disaggKv({ op: 'pullBegin', tokenIds: h.token_ids, parkAs, remote, srcPages: h.pages });
      if (pulled.op !== 'pullBegin') throw new LlmError('LLM_ERR_INTERNAL', `pullBegin answered with ${pulled.op}`);
      importId = pulled.importId;
      const stats = pulled.stats ?? { bytes: 0, deviceMs: 0, hostMs: 0 }; // null: the cache had every page, or no room
      if (stats.bytes) {
        this.options.log?.(
          `kv transfer cuda-ipc room ${room}: ${pulled.tokens} tokens, ${stats.bytes} bytes in ${stats.deviceMs.toFixed(3)} ms on the device ` +
            `(${stats.hostMs.toFixed(3)} ms on the host), ${(stats.bytes / stats.deviceMs / 1e6).toFixed(1)} GB/s`,
        );
      }
      await fetched.pulled(stats.bytes, stats.deviceMs);
    } catch (err) {
      fetched.close();
      if (importId !== null) await core.disaggKv({ op: 'pullEnd', importId, commit: false });
      // the prefill side went away mid-pull: its pool mapping is useless now
      if (err instanceof LlmError && err.code === 'LLM_ERR_KV_TRANSFER') await this.closePool(engine, peer);
      throw err;
    }
    // the prefill side released its pages only after our pull: what we pulled is whole
    if (importId !== null) await core.disaggKv({ op: 'pullEnd', importId, commit: true });
  }

  private async kvIpc<O extends KvIpcOp>(request: O): Promise<KvIpcReply<O>> {
    const r = await this.options.core.disaggKv({ op: 'ipc', request });
    if (r.op !== 'ipc') throw new LlmError('LLM_ERR_INTERNAL', `a KV IPC op answered with ${r.op}`);
    return r.reply as KvIpcReply<O>;
  }

  /** Prefill side: the prompt's KV the scheduler parked under key, left in place until the room releases it. */
  private async holdPrefix(key: string, tokenIds: number[]): Promise<HeldPrefix> {
    const core = this.options.core;
    const r = await core.disaggKv({ op: 'hold', key });
    if (r.op !== 'hold') throw new LlmError('LLM_ERR_INTERNAL', `hold answered with ${r.op}`);
    let held = true;
    return {
      tokenIds: tokenIds.slice(0, r.tokenCount),
      pages: r.pages,
      toHost: async () => {
        const h = await core.disaggKv({ op: 'heldToHost', key });
        return h.op === 'heldToHost' ? h.data : new Uint8Array(0);
      },
      release: () => {
        if (held) void core.disaggKv({ op: 'release', key }).catch(() => undefined); // a failed core dropped what it parked
        held = false;
      },
    };
  }

  private openPool(engine: EngineSummary, peer: string, pool: IpcPoolWire): Promise<number> {
    let byPeer = this.opened.get(engine);
    if (!byPeer) this.opened.set(engine, (byPeer = new Map()));
    const known = byPeer.get(peer);
    if (known?.poolId === pool.id) return known.remote;
    if (known) void this.closePool(engine, peer); // the prefill rank restarted: a new pool
    if (pool.handle === null) return Promise.reject(new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${peer} sent no handle for KV pool ${pool.id}, which this worker does not have open`));
    const remote = this.kvIpc({
      op: 'open',
      pool: { handle: Buffer.from(pool.handle, 'base64'), tensors: pool.tensors, tensorStrideElems: pool.tensor_stride_elems, rowElems: pool.row_elems, pageSize: pool.page_size, pciBusId: pool.pci_bus_id },
    });
    byPeer.set(peer, { poolId: pool.id, remote });
    remote.catch(() => byPeer.get(peer)?.remote === remote && byPeer.delete(peer));
    return remote;
  }

  private async closePool(engine: EngineSummary, peer: string): Promise<void> {
    const known = this.opened.get(engine)?.get(peer);
    if (!known) return;
    this.opened.get(engine)!.delete(peer);
    await known.remote.then((id) => this.kvIpc({ op: 'close', remote: id })).catch(() => undefined);
  }

  /** Prefill side: this rank's pool as decode workers open it. */
  private exportedPool(): Promise<IpcPoolWire> {
    const engine = this.options.core.engine;
    let pool = this.exported.get(engine);
    if (!pool) {
      pool = this.kvIpc({ op: 'export' }).then((p) => ({
        id: randomUUID(),
        handle: Buffer.from(p.handle).toString('base64'),
        tensors: p.tensors,
        tensor_stride_elems: p.tensorStrideElems,
        row_elems: p.rowElems,
        page_size: p.pageSize,
        pci_bus_id: p.pciBusId,
      }));
      this.exported.set(engine, pool);
      pool.catch(() => this.exported.get(engine) === pool && this.exported.delete(engine));
    }
    return pool;
  }

  private currentEngine(): EngineSummary | null {
    try {
      return this.options.core.engine;
    } catch {
      return null;
    }
  }

  /** The older flow: no bootstrap_info, so this decode worker sends the prompt to a prefill worker itself and
   * reads the bootstrap info from its first chunk; the rest of the prefill stream drains in the background. */
  private async legacyPrefill(request: PreprocessedRequest, options: DisaggGenerateOptions): Promise<BootstrapInfo> {
    const c = this.options.config;
    this.prefillClient ??= (async () => {
      const responses = await ResponseServer.start();
      const client = await EndpointClient.create({ discovery: this.options.discovery, namespace: c.namespace, component: 'prefill', endpoint: 'generate', responses });
      return { client, responses };
    })();
    const { client } = await this.prefillClient;
    if (!client.instances().length) {
      throw new LlmError('LLM_ERR_BAD_REQUEST', 'bootstrap_info is required for disaggregated decode but was not provided (and no prefill worker is in discovery to ask for it)');
    }
    const stream = await client.generate({ ...request, stop_conditions: { ...request.stop_conditions, max_tokens: 1 }, bootstrap_info: null }, { signal: options.signal });
    const it = stream[Symbol.asyncIterator]();
    const first = await it.next();
    const data = first.done ? undefined : first.value.data;
    const chunk = data === undefined ? undefined : parseWire(LlmResponseChunkSchema, data, 'prefill response', 'LLM_ERR_PROTOCOL');
    const params = chunk?.disaggregated_params;
    if (first.done || first.value.error !== undefined || !params) {
      throw new LlmError('LLM_ERR_KV_TRANSFER', `prefill worker ${stream.instanceId?.toString(16) ?? '?'} did not answer with its bootstrap info: ${JSON.stringify(first.done ? 'end of stream' : first.value)}`);
    }
    void (async () => {
      for (let r = await it.next(); !r.done; r = await it.next());
    })().catch((err: unknown) => this.options.log?.(`legacy prefill stream failed: ${(err as Error).message}`));
    return parseWire(BootstrapInfoSchema, params, 'prefill disaggregated_params', 'LLM_ERR_PROTOCOL');
  }
}

/** The prefill request's first output, as the hand-over sends it (its only output: it ran with max_tokens 1). */
function prefilledOf(outputs: readonly LlmResponseChunk[]): Prefilled | null {
  const first = outputs.find((c) => c.token_ids.length);
  if (!first) return null;
  const usage = outputs.at(-1)?.completion_usage;
  return {
    first_token_id: first.token_ids[0],
    logprob: first.log_probs?.[0] ?? null,
    top_logprobs: first.top_logprobs?.[0]?.map((t) => ({ token_id: t.token_id, logprob: t.logprob })) ?? null,
    cached_tokens: usage?.prompt_tokens_details?.cached_tokens ?? 0,
  };
}

/** Whether the hand-over carries the logprobs the decode request asks for with its first token. */
function coversOutputOptions(request: PreprocessedRequest, p: Prefilled): boolean {
  const n = request.output_options?.logprobs ?? -1;
  if (n < 0) return true;
  return p.logprob !== null && (n === 0 || (p.top_logprobs?.length ?? 0) >= n);
}

function handOverOf(p: Prefilled): HandOver {
  return {
    kvKey: randomUUID(),
    tokenId: p.first_token_id,
    logprob: p.logprob,
    topLogprobs: p.top_logprobs?.map((t) => ({ tokenId: t.token_id, logprob: t.logprob })) ?? null,
    cachedTokens: p.cached_tokens,
  };
}

function bootstrapHost(config: WorkerConfig): string {
  const leader = config.distInitAddr?.replace(/:\d+$/, '');
  const host = leader || process.env.SGLANG_HOST_IP || detectHostIp();
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** The legacy `{request, sampling_params}` wrapper as the flat request the core takes. */
function flatPrefillRequest(r: PrefillRequest): PreprocessedRequest {
  if (!('sampling_params' in r)) return r;
  const w: DisaggPreprocessedRequest = r;
  const inner = w.request;
  const sp = w.sampling_params;
  return {
    ...inner,
    token_ids: inner.token_ids,
    eos_token_ids: inner.eos_token_ids ?? [],
    stop_conditions: { ...inner.stop_conditions, max_tokens: sp.max_new_tokens ?? 1, ignore_eos: sp.ignore_eos ?? null },
    sampling_options: { ...inner.sampling_options, temperature: sp.temperature ?? null, top_p: sp.top_p ?? null, top_k: sp.top_k ?? null, min_p: sp.min_p ?? null },
  };
}
