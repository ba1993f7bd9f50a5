// Disaggregated serving of one worker (reference §2.2 decode, §2.3 prefill, §3): the `generate` a prefill or decode
// worker serves in place of the aggregated one, over the same Supervisor.
//  - prefill: yields the bootstrap chunk first, runs the prompt (max_tokens 1), then holds the prompt's KV pages
//    for the decode worker that fetches its bootstrap_room from our bootstrap server (./kv-sender.ts); returns once
//    they are sent (or the room was given up / timed out, which frees them).
//  - decode: fetches the pages named by `bootstrap_info` (./kv-receiver.ts), makes them a cached prefix, then
//    generates as usual. Without bootstrap_info it runs the older flow when prefill workers are in discovery: it
//    sends the prompt to one itself and takes the bootstrap info from its first chunk (reference §3.2).
// A FAKE_BOOTSTRAP_HOST (health checks, warm-up) or the `fake` transfer backend moves no pages.
import { randomBytes } from 'node:crypto';
import type { WorkerConfig } from '../config/schema.js';
import { LlmError } from '../errors.js';
import type { Supervisor } from '../../actors/supervisor.js';
import { EndpointClient } from '../runtime/client.js';
import type { Discovery } from '../runtime/discovery/index.js';
import { detectHostIp } from '../runtime/request-plane/address.js';
import { ResponseServer } from '../runtime/request-plane/response-server.js';
import { FAKE_BOOTSTRAP_HOST } from '../protocol/health.js';
import {
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
import { fetchKv } from './kv-receiver.js';
import { KvSender } from './kv-sender.js';
import { kvLayoutOf, type KvLayout } from './layout.js';
import type { PrefixPages } from './prefix.js';

export interface DisaggGenerateOptions {
  signal: AbortSignal;
  requestId: string;
}

export interface DisaggServiceOptions {
  config: WorkerConfig;
  supervisor: Supervisor;
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
  private readonly layout: KvLayout;
  /** The older flow's client of `{ns}.prefill.generate`, with its own call-home server (closed with us). */
  private prefillClient: Promise<{ client: EndpointClient; responses: ResponseServer }> | null = null;

  private constructor(
    private readonly options: DisaggServiceOptions,
    sender: KvSender | null,
  ) {
    this.sender = sender;
    this.layout = kvLayoutOf(options.supervisor.engine, options.config.tpSize);
    this.endpoint = sender ? { bootstrap_host: bootstrapHost(options.config), bootstrap_port: sender.port } : null;
  }

  static async start(options: DisaggServiceOptions): Promise<DisaggService> {
    const c = options.config;
    if (c.servingMode === 'aggregated') throw new LlmError('LLM_ERR_INTERNAL', 'DisaggService started for an aggregated worker');
    if (c.disaggregationTransferBackend === 'nccl' || c.disaggregationTransferBackend === 'cuda-ipc') {
      throw new LlmError('LLM_ERR_CONFIG', `--disaggregation-transfer-backend ${c.disaggregationTransferBackend}: the GPU-to-GPU transfer is not available in this build; use tcp`);
    }
    const sender =
      c.servingMode === 'prefill'
        ? await KvSender.start({
            layout: kvLayoutOf(options.supervisor.engine, c.tpSize),
            port: c.disaggregationBootstrapPort ?? 0,
            timeoutMs: c.kvTransferTimeoutSecs * 1000,
          })
        : null;
    return new DisaggService(options, sender);
  }

  generate(raw: unknown, options: DisaggGenerateOptions): AsyncGenerator<LlmResponseChunk | PrefillBootstrapChunk> {
    return this.sender ? this.prefill(this.sender, raw, options) : this.decode(raw, options);
  }

  async close(): Promise<void> {
    await this.sender?.close();
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
      bootstrap_room: given?.bootstrap_room ?? randomBootstrapRoom(),
    };
    yield prefillBootstrapChunk(info);
    const prefillOnly: PreprocessedRequest = { ...request, stop_conditions: { ...request.stop_conditions, max_tokens: 1 } };
    const fake = info.bootstrap_host === FAKE_BOOTSTRAP_HOST || this.options.config.disaggregationTransferBackend === 'fake';
    if (fake) {
      for await (const chunk of this.options.supervisor.generate(prefillOnly, options)) void chunk;
      return;
    }
    const room = info.bootstrap_room;
    const givenUp = sender.open(room);
    if (givenUp.aborted) return; // the decode side already gave this room up: nothing to compute
    let pages: PrefixPages;
    try {
      const signal = AbortSignal.any([options.signal, givenUp]);
      let finish: string | null | undefined = null;
      for await (const chunk of this.options.supervisor.generate(prefillOnly, { ...options, signal })) finish = chunk.finish_reason;
      if (finish === 'cancelled') {
        throw givenUp.aborted ? (givenUp.reason as LlmError) : new LlmError('LLM_ERR_CANCELLED', `prefill of bootstrap room ${room} was cancelled`);
      }
      // The decode side recomputes at least the last prompt token, so pages up to it suffice.
      pages = await this.options.supervisor.exportPrefix(request.token_ids, request.token_ids.length - 1);
    } catch (err) {
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
    if (info.bootstrap_host !== FAKE_BOOTSTRAP_HOST && c.disaggregationTransferBackend !== 'fake') {
      const fetched = await fetchKv({
        host: info.bootstrap_host,
        port: info.bootstrap_port,
        room: info.bootstrap_room,
        layout: this.layout,
        timeoutMs: c.kvTransferTimeoutSecs * 1000,
        signal: options.signal,
      });
      const n = fetched.header.page_count * this.layout.pageSize;
      if (fetched.header.token_ids.some((t, i) => t !== request.token_ids[i])) {
        throw new LlmError('LLM_ERR_KV_TRANSFER', `bootstrap room ${info.bootstrap_room}: the prefill worker at ${info.bootstrap_host}:${info.bootstrap_port} computed a different prompt (first ${n} tokens differ); the router paired the wrong requests`);
      }
      await this.options.supervisor.importPrefix({ tokenIds: fetched.header.token_ids, pageCount: fetched.header.page_count, data: fetched.data });
    }
    yield* this.options.supervisor.generate(request, options);
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

function bootstrapHost(config: WorkerConfig): string {
  const leader = config.distInitAddr?.replace(/:\d+$/, '');
  const host = leader || process.env.SGLANG_HOST_IP || detectHostIp();
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** The legacy `{request, sampling_params}` wrapper as the flat request the supervisor takes. */
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
