// The frontend's view of the models workers register (`v1/mdc/...` cards): one ServedModel per served model name,
// whose requests go to that model's endpoint through an EndpointClient that follows discovery (round-robin or
// random). A worker that dies mid-stream (Disconnected, or EngineShutdown at drain) makes the request migrate: it is
// re-sent to another instance with the tokens generated so far appended to the prompt, up to `migrationLimit` times.
// With routing "kv" each request goes to the instance a KvRouter (./kv-router.ts) finds cheapest, following the
// endpoint component's KV events and the namespace's load on the event plane (NATS).
import { LlmError } from '../errors.js';
import { errorFromItem } from '../protocol/transport.js';
import type { NatsConnection } from 'nats';
import type { Discovery, RecordWatch } from '../runtime/discovery/index.js';
import { EndpointClient, DisconnectedError, type RoutingMode } from '../runtime/client.js';
import { ResponseServer } from '../runtime/request-plane/response-server.js';
import { NatsRequestClient } from '../runtime/request-plane/nats.js';
import type { ModelRecord } from '../protocol/discovery.js';
import { modelTypeFromWire, ModelTypeFlag } from '../protocol/mdc.js';
import type { PreprocessedRequest } from '../protocol/request.js';
import type { LlmResponseChunk } from '../protocol/response.js';
import { LlmResponseChunkSchema } from '../protocol/response.js';
import { parseWire } from '../protocol/validate.js';
import type { ResponseStream } from '../runtime/request-plane/response-stream.js';
import { KvRouter } from './kv-router.js';
import {
  WorkerKvQueryResponseSchema,
  workerKvIndexerQueryEndpoint,
  type WorkerKvQueryRequest,
  type WorkerKvQueryResponse,
} from '../protocol/kv-query.js';
import { loadTokenizer, type Tokenizer } from '../tokenizer/index.js';
import type { GenerateOptions, ModelDirectory, ServedModel } from './models.js';
import { unimplementedParsers } from './chat-output.js';
import { PrefillRouter } from './prefill-router.js';
import { decodeWorkerKvQueryResponse08, workerKvIndexerQuerySubject08 } from '../protocol/events-0.8.js';
import { encodeWireJson } from '../protocol/transport.js';
import type { WireProfile } from '../protocol/wire-profile.js';
import { wireProfileFromEnv } from '../runtime/wire-profile.js';
import { acquireTokenizerPool, releaseTokenizerPool } from './tokenizer-pool.js';
import type { TokenizerSource } from '../../actors/tokenizer.js';

export interface DiscoveredModelsOptions {
  discovery: Discovery;
  /** Only models of this namespace (all namespaces when absent). */
  namespace?: string;
  routing?: FrontendRouting;
  /** NATS: the event plane (needed by routing "kv") and the request plane of workers serving over nats. */
  nats?: NatsConnection;
  /** Routing "kv": weight of uncached prompt blocks against load, and the sampling temperature (0: the cheapest). */
  kvOverlapScoreWeight?: number;
  routerTemperature?: number;
  migrationLimit?: number;
  /** The Dynamo release whose event and local-indexer wires the workers speak (default DYN_WIRE_PROFILE, else 0.8). Request frames need no
   * setting: each worker's transport address says which form it reads. */
  wireProfile?: WireProfile;
  /** Address the response server (workers' call-home) binds; default DYN_TCP_RPC_HOST, else this host's IP. */
  responseHost?: string;
  log?: (line: string) => void;
}

export type FrontendRouting = RoutingMode | 'kv';

/** How long a worker's local KV indexer may take to answer the router's recovery query. */
const KV_QUERY_TIMEOUT_MS = 5000;

interface ModelEntry {
  model: DiscoveredModel;
  endpointKey: string;
}

export class DiscoveredModels implements ModelDirectory {
  private readonly models = new Map<string, ModelEntry>();
  private readonly clients = new Map<string, Promise<EndpointClient>>();
  private readonly kvRouters = new Map<string, KvRouter>();
  private readonly tokenizers = new Map<string, Tokenizer>();
  /** The frontend's tokenizer pool, held to load each new model's tokenizer in its threads before a request comes. */
  private readonly tokenizerPool = acquireTokenizerPool();

  private constructor(
    private readonly options: DiscoveredModelsOptions,
    private readonly watch: RecordWatch<ModelRecord>,
    /** Where workers call home with response streams; owned here so close() leaves nothing listening. */
    private readonly responses: ResponseServer,
    /** Pairs requests with prefill workers for models that have them (disaggregated serving). */
    private readonly prefill: PrefillRouter,
  ) {
    watch.onChange((records) => this.refresh(records));
  }

  static async create(options: DiscoveredModelsOptions): Promise<DiscoveredModels> {
    if (options.routing === 'kv' && options.nats === undefined) {
      throw new LlmError('LLM_ERR_CONFIG', '--router-mode kv needs the event plane: a NATS connection (--nats-server)');
    }
    const watch = options.discovery.watchModels(options.namespace);
    await watch.ready;
    const responses = await ResponseServer.start(options.responseHost === undefined ? {} : { host: options.responseHost });
    const prefill = await PrefillRouter.create({ discovery: options.discovery, namespace: options.namespace, responses, log: options.log });
    const d = new DiscoveredModels(options, watch, responses, prefill);
    d.refresh(watch.list());
    return d;
  }

  list(): readonly ServedModel[] {
    return [...this.models.values()].map((e) => e.model);
  }

  get(name: string): ServedModel | undefined {
    return this.models.get(name)?.model;
  }

  /** Resolves once a model with this name is served (or rejects after `timeoutMs`). */
  async waitFor(name: string, timeoutMs: number): Promise<ServedModel> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.get(name);
      if (m) return m;
      if (Date.now() >= deadline) throw new LlmError('LLM_ERR_DISCOVERY', `model "${name}" did not appear in discovery within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async close(): Promise<void> {
    this.watch.close();
    this.prefill.close();
    for (const c of this.clients.values()) (await c.catch(() => null))?.close();
    for (const r of this.kvRouters.values()) r.close();
    await this.responses.close();
    await releaseTokenizerPool();
  }

  private refresh(records: ModelRecord[]): void {
    const seen = new Set<string>();
    for (const r of records) {
      const card = r.card_json;
      const bits = modelTypeFromWire(card.model_type);
      if ((bits & (ModelTypeFlag.Chat | ModelTypeFlag.Completions)) === 0) continue; // prefill / embedding workers
      // every worker's card, not only the first of a model: the KV router recovers each one's cache once
      if (this.options.routing === 'kv') this.kvRouter(r, card.kv_cache_block_size).learnWorker(r.instance_id, card.runtime_config?.enable_local_indexer === true, card.runtime_config?.data_parallel_size ?? 1);
      const name = card.display_name;
      if (seen.has(name)) continue;
      seen.add(name);
      const endpointKey = `${r.namespace}/${r.component}/${r.endpoint}`;
      if (this.models.get(name)?.endpointKey === endpointKey) continue;
      try {
        const { tokenizer, source } = this.tokenizerFor(card.tokenizer ?? null, card.source_path ?? null);
        const router = this.options.routing === 'kv' ? this.kvRouter(r, card.kv_cache_block_size) : null;
        const parsers = {
          toolCallParser: card.runtime_config?.tool_call_parser ?? null,
          reasoningParser: card.runtime_config?.reasoning_parser ?? null,
          excludeToolsWhenToolChoiceNone: card.runtime_config?.exclude_tools_when_tool_choice_none ?? true,
        };
        const model = new DiscoveredModel(name, tokenizer, source, card.context_length, () => this.client(r), router, this.options.migrationLimit ?? 0, this.prefill, parsers);
        this.models.set(name, { model, endpointKey });
        this.options.log?.(`model "${name}" served by ${endpointKey}`);
        for (const line of unimplementedParsers(parsers)) this.options.log?.(`model "${name}": ${line}`);
      } catch (err) {
        this.options.log?.(`model "${name}" from ${endpointKey} left out: ${(err as Error).message}`);
      }
    }
    for (const name of [...this.models.keys()]) if (!seen.has(name)) this.models.delete(name);
  }

  private tokenizerFor(artifact: Record<string, unknown> | null, sourcePath: string | null): { tokenizer: Tokenizer; source: TokenizerSource } {
    const ref = artifact ? Object.values(artifact)[0] : null;
    const path = typeof ref === 'string' ? ref : ref && typeof ref === 'object' && 'path' in ref ? String((ref as { path: unknown }).path) : sourcePath;
    if (path === null) throw new LlmError('LLM_ERR_TOKENIZER', 'the model card names no tokenizer');
    if (path.startsWith('hf://')) throw new LlmError('LLM_ERR_TOKENIZER', `tokenizer ${path} is on the hub, which this frontend cannot reach; give the worker a local path`);
    const source: TokenizerSource = { modelPath: path };
    let t = this.tokenizers.get(path);
    if (t === undefined) {
      t = loadTokenizer(path);
      this.tokenizers.set(path, t);
      this.tokenizerPool.load(source).catch((err: unknown) => this.options.log?.(`tokenizer pool could not load ${path}: ${(err as Error).message}`));
    }
    return { tokenizer: t, source };
  }

  private client(r: ModelRecord): Promise<EndpointClient> {
    const key = `${r.namespace}/${r.component}/${r.endpoint}`;
    let c = this.clients.get(key);
    if (c === undefined) {
      c = EndpointClient.create({
        discovery: this.options.discovery,
        namespace: r.namespace,
        component: r.component,
        endpoint: r.endpoint,
        routing: this.options.routing === 'random' ? 'random' : 'round_robin',
        responses: this.responses,
        // workers on the nats request plane are reached through the same connection as the event plane
        ...(this.options.nats ? { nats: new NatsRequestClient(this.options.nats, this.responses) } : {}),
      });
      this.clients.set(key, c);
    }
    return c;
  }

  /** One router per endpoint: it follows the endpoint component's kv-events and the namespace's kv_metrics. */
  private kvRouter(r: ModelRecord, blockSize: number): KvRouter {
    const key = `${r.namespace}/${r.component}/${r.endpoint}`;
    let router = this.kvRouters.get(key);
    if (router === undefined) {
      router = KvRouter.follow(this.options.nats!, r.namespace, r.component, {
        blockSize,
        overlapScoreWeight: this.options.kvOverlapScoreWeight,
        temperature: this.options.routerTemperature,
        queryWorker: (workerId, startEventId, dpRank) =>
          this.wireProfile === '0.8' ? this.queryWorkerKvIndexer08(r, workerId, startEventId, dpRank) : this.queryWorkerKvIndexer(r, workerId, startEventId, dpRank),
        wireProfile: this.wireProfile,
        log: this.options.log,
      });
      this.kvRouters.set(key, router);
    }
    return router;
  }

  private get wireProfile(): WireProfile {
    return this.options.wireProfile ?? wireProfileFromEnv();
  }

  /** Dynamo 0.8's query: a NATS request to the worker's `...worker_kv_indexer_query.{id}` subject, the JSON reply;
   * the subject names no dp rank, so the request does (only when not 0, the form 0.8 routers send). */
  private async queryWorkerKvIndexer08(r: ModelRecord, workerId: bigint, startEventId: bigint | null, dpRank: number): Promise<WorkerKvQueryResponse> {
    const request: WorkerKvQueryRequest = { worker_id: workerId, ...(dpRank === 0 ? {} : { dp_rank: dpRank }), start_event_id: startEventId, end_event_id: null };
    const subject = workerKvIndexerQuerySubject08(r.namespace, r.component, workerId);
    const reply = await this.options.nats!.request(subject, encodeWireJson(request), { timeout: KV_QUERY_TIMEOUT_MS }).catch((err: unknown) => {
      throw new LlmError('LLM_ERR_TRANSPORT', `worker ${workerId.toString(16)}: no answer on ${subject}: ${(err as Error).message}`);
    });
    return decodeWorkerKvQueryResponse08(reply.data);
  }

  /** One query of a worker's `worker_kv_indexer_query_dp{N}` (its component's endpoint), its single answer. */
  private async queryWorkerKvIndexer(r: ModelRecord, workerId: bigint, startEventId: bigint | null, dpRank: number): Promise<WorkerKvQueryResponse> {
    const client = await this.client({ ...r, endpoint: workerKvIndexerQueryEndpoint(dpRank) });
    const request: WorkerKvQueryRequest = { worker_id: workerId, dp_rank: dpRank, start_event_id: startEventId, end_event_id: null };
    // the worker registers this endpoint before its model card; the wait covers a discovery watch that lags
    const stream = await client.direct(request, workerId, { waitForInstancesMs: 2000, signal: AbortSignal.timeout(KV_QUERY_TIMEOUT_MS) });
    let answer: WorkerKvQueryResponse | undefined;
    for await (const annotated of stream) {
      if (annotated.event === 'error' || annotated.error !== undefined) throw errorFromItem(annotated);
      if (annotated.data !== undefined && answer === undefined) answer = parseWire(WorkerKvQueryResponseSchema, annotated.data, 'worker kv indexer answer', 'LLM_ERR_PROTOCOL');
    }
    if (answer === undefined) throw new LlmError('LLM_ERR_PROTOCOL', `worker ${workerId.toString(16)}: ${workerKvIndexerQueryEndpoint(dpRank)} answered nothing`);
    return answer;
  }
}

class DiscoveredModel implements ServedModel {
  readonly created = Math.floor(Date.now() / 1000);

  constructor(
    readonly name: string,
    readonly tokenizer: Tokenizer,
    readonly tokenizerSource: TokenizerSource,
    readonly contextLength: number,
    private readonly client: () => Promise<EndpointClient>,
    private readonly router: KvRouter | null,
    private readonly migrationLimit: number,
    private readonly prefill: PrefillRouter | null = null,
    parsers: { toolCallParser: string | null; reasoningParser: string | null; excludeToolsWhenToolChoiceNone: boolean } = { toolCallParser: null, reasoningParser: null, excludeToolsWhenToolChoiceNone: true },
  ) {
    this.toolCallParser = parsers.toolCallParser;
    this.reasoningParser = parsers.reasoningParser;
    this.excludeToolsWhenToolChoiceNone = parsers.excludeToolsWhenToolChoiceNone;
  }

  readonly toolCallParser: string | null;
  readonly reasoningParser: string | null;
  readonly excludeToolsWhenToolChoiceNone: boolean;

  async *generate(request: PreprocessedRequest, options: GenerateOptions): AsyncIterable<LlmResponseChunk> {
    const client = await this.client();
    const produced: number[] = [];
    let migrations = 0;
    let current = request;
    for (;;) {
      // a caller gone before the request is sent (or between migrations) costs no worker anything
      if (options.signal.aborted) return;
      try {
        const sent = this.prefill?.serves(this.name) ? await this.prefill.route(this.name, current) : current;
        if (options.signal.aborted) return;
        const { stream, release } = await this.route(client, sent, options.signal);
        try {
          for await (const annotated of stream) {
            if (annotated.event === 'error' || annotated.error !== undefined) throw errorFromItem(annotated);
            if (annotated.data === undefined) continue;
            const chunk = parseWire(LlmResponseChunkSchema, annotated.data, 'response chunk', 'LLM_ERR_PROTOCOL');
            produced.push(...chunk.token_ids);
            if (migrations > 0 && chunk.completion_usage) {
              // the worker counted our re-sent tokens as prompt: report them as the completion they are
              const prompt = request.token_ids.length;
              chunk.completion_usage = { ...chunk.completion_usage, prompt_tokens: prompt, completion_tokens: produced.length, total_tokens: prompt + produced.length };
            }
            yield chunk;
            if (chunk.finish_reason) return;
          }
        } finally {
          release();
        }
        return;
      } catch (err) {
        if (options.signal.aborted) return;
        // a decode attempt whose KV transfer failed (its prefill worker died) ends before its first token: route it
        // again, through another prefill worker
        const transferFailed = err instanceof LlmError && err.code === 'LLM_ERR_KV_TRANSFER';
        if (!(isMigratable(err) || transferFailed) || migrations >= this.migrationLimit) throw err;
        migrations++;
        current = migrated(request, produced);
        if ((current.stop_conditions.max_tokens ?? 1) <= 0) return;
      }
    }
  }

  /** Sends the request: through the KV router's choice, or the client's own routing. */
  private async route(client: EndpointClient, request: PreprocessedRequest, signal: AbortSignal): Promise<{ stream: ResponseStream; release: () => void }> {
    const router = this.router;
    if (router === null) return { stream: await client.generate(request, { signal, waitForInstancesMs: 1000 }), release: () => undefined };
    router.retain(new Set(client.instances().map((r) => r.instance_id)));
    const tried = new Set<bigint>();
    let lastError: unknown;
    for (;;) {
      let candidates = client.available().filter((r) => !tried.has(r.instance_id));
      if (candidates.length === 0 && tried.size === 0) candidates = await client.waitForInstances(1000);
      if (candidates.length === 0) throw lastError;
      const choice = router.select(request.token_ids, candidates.map((r) => r.instance_id));
      const release = router.track(choice.instanceId, choice.requestBlocks - choice.overlapBlocks, choice.dpRank);
      // the worker runs it in the group (dp rank) whose KV pool was scored
      const routed: PreprocessedRequest = { ...request, routing: { ...request.routing, dp_rank: choice.dpRank } };
      try {
        return { stream: await client.generate(routed, { signal, routing: { instanceId: choice.instanceId } }), release };
      } catch (err) {
        release();
        // an instance that refused the request never saw it: another may take it
        if (!(err instanceof LlmError && (err.code === 'LLM_ERR_TRANSPORT' || err.code === 'LLM_ERR_TIMEOUT'))) throw err;
        tried.add(choice.instanceId);
        lastError = err;
      }
    }
  }
}

function isMigratable(err: unknown): boolean {
  return err instanceof DisconnectedError || (err instanceof LlmError && err.code === 'LLM_ERR_SHUTDOWN');
}

/** The request re-sent after a worker died: prompt plus what was generated, the token budget reduced. */
function migrated(request: PreprocessedRequest, produced: readonly number[]): PreprocessedRequest {
  const sc = request.stop_conditions;
  return {
    ...request,
    token_ids: [...request.token_ids, ...produced],
    stop_conditions: {
      ...sc,
      max_tokens: sc.max_tokens == null ? sc.max_tokens : sc.max_tokens - produced.length,
      min_tokens: sc.min_tokens == null ? sc.min_tokens : Math.max(0, sc.min_tokens - produced.length),
    },
  };
}

