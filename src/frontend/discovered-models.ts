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
import { candidateInstances, ownInstances } from './model-instances.js';
import { DiscoveredEmbeddingModel } from './embeddings.js';
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
import { logger } from '../runtime/log.js';
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
  model: DiscoveredModel | DiscoveredEmbeddingModel;
  endpointKey: string;
  /** Instances whose card names this model (shared with the model, updated in place). */
  instances: Set<bigint>;
}

const log = logger('frontend.discovery');

export class DiscoveredModels implements ModelDirectory {
  private readonly models = new Map<string, ModelEntry>();
  private readonly clients = new Map<string, Promise<EndpointClient>>();
  private readonly kvRouters = new Map<string, KvRouter>();
  private readonly tokenizers = new Map<string, Tokenizer>();
  /** Models whose workers all left (logged once, until one is back). */
  private readonly workerless = new Set<string>();
  /** Chat models with text input (text-mode workers), which this frontend does not serve (warned once). */
  private readonly textModels = new Set<string>();
  /** Models registered on more than one endpoint (warned once). */
  private readonly splitModels = new Set<string>();
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
    // Per model: the endpoint serving it (the first card's) and the instances whose card names it. Two models may
    // register on one endpoint (namespace/component/endpoint): each one's requests still go only to its own workers.
    const served = new Map<string, { record: ModelRecord; endpointKey: string; instances: Set<bigint> }>();
    for (const r of records) {
      const card = r.card_json;
      const bits = modelTypeFromWire(card.model_type);
      const embedding = (bits & ModelTypeFlag.Embedding) !== 0;
      if (!embedding && (bits & (ModelTypeFlag.Chat | ModelTypeFlag.Completions)) === 0) continue; // prefill workers
      const name = card.display_name;
      if (!embedding && card.model_input === 'Text') {
        // a text-mode worker (--use-sglang-tokenizer) takes the OpenAI request itself; this frontend sends tokens
        if (!this.textModels.has(name)) log.warn('model takes text input (its workers run --use-sglang-tokenizer); this frontend sends token requests, so it is not served here: use a Dynamo frontend, or start the workers without --use-sglang-tokenizer', { model: name });
        this.textModels.add(name);
        continue;
      }
      const endpointKey = `${r.namespace}/${r.component}/${r.endpoint}`;
      let entry = served.get(name);
      if (entry === undefined) served.set(name, (entry = { record: r, endpointKey, instances: new Set() }));
      if (entry.endpointKey !== endpointKey) {
        if (!this.splitModels.has(name)) log.warn('model is registered on two endpoints; serving it from the first', { model: name, serving: entry.endpointKey, ignored: endpointKey });
        this.splitModels.add(name);
        continue;
      }
      entry.instances.add(r.instance_id);
      // every worker's card, not only the first of a model: the KV router recovers each one's cache once
      if (this.options.routing === 'kv' && !embedding) this.kvRouter(r, card.kv_cache_block_size).learnWorker(r.instance_id, card.runtime_config?.enable_local_indexer === true, card.runtime_config?.data_parallel_size ?? 1);
    }
    for (const [name, { record: r, endpointKey, instances }] of served) {
      const existing = this.models.get(name);
      if (existing?.endpointKey === endpointKey) {
        this.follow(name, existing.instances, instances);
        continue;
      }
      try {
        const card = r.card_json;
        const { tokenizer, source } = this.tokenizerFor(card.tokenizer ?? null, card.source_path ?? null);
        const embedding = (modelTypeFromWire(card.model_type) & ModelTypeFlag.Embedding) !== 0;
        const router = this.options.routing === 'kv' && !embedding ? this.kvRouter(r, card.kv_cache_block_size) : null;
        const own = new Set(instances);
        const routingMode = this.options.routing === 'random' ? 'random' : 'round_robin';
        const parsers = {
          toolCallParser: card.runtime_config?.tool_call_parser ?? null,
          reasoningParser: card.runtime_config?.reasoning_parser ?? null,
          excludeToolsWhenToolChoiceNone: card.runtime_config?.exclude_tools_when_tool_choice_none ?? true,
        };
        const model = embedding
          ? new DiscoveredEmbeddingModel(name, tokenizer, source, card.context_length, () => this.client(r), own)
          : new DiscoveredModel(name, tokenizer, source, card.context_length, () => this.client(r), own, router, this.options.migrationLimit ?? 0, this.prefill, routingMode, parsers);
        this.models.set(name, { model, endpointKey, instances: own });
        this.options.log?.(`model "${name}" served by ${endpointKey}`);
        for (const line of unimplementedParsers(parsers)) this.options.log?.(`model "${name}": ${line}`);
        if (this.workerless.delete(name)) log.info('model has workers again', { model: name, endpoint: endpointKey, workers: own.size });
        else log.info('model served', { model: name, endpoint: endpointKey, workers: own.size });
      } catch (err) {
        this.options.log?.(`model "${name}" from ${endpointKey} left out: ${(err as Error).message}`);
      }
    }
    for (const [name, entry] of [...this.models]) {
      if (served.has(name)) continue;
      this.follow(name, entry.instances, new Set());
      this.models.delete(name);
    }
  }

  /** Updates a model's worker set in place, logging each worker that joins or leaves once. */
  private follow(name: string, current: Set<bigint>, next: ReadonlySet<bigint>): void {
    for (const id of current) {
      if (next.has(id)) continue;
      current.delete(id);
      log.warn('worker left discovery', { model: name, instance: id.toString(16), workersLeft: current.size });
    }
    const wasEmpty = current.size === 0;
    for (const id of next) {
      if (current.has(id)) continue;
      current.add(id);
      log.info('worker joined', { model: name, instance: id.toString(16), workers: current.size });
    }
    if (current.size === 0 && !this.workerless.has(name)) {
      this.workerless.add(name);
      log.error('model has no worker left: its requests get 503 until one registers', { model: name });
    } else if (wasEmpty && current.size > 0 && this.workerless.delete(name)) {
      log.info('model has workers again', { model: name, workers: current.size });
    }
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

  /** One router per endpoint and model: it follows the endpoint component's kv-events and the namespace's kv_metrics,
   * with the model's own block size (two models on one endpoint may differ). */
  private kvRouter(r: ModelRecord, blockSize: number): KvRouter {
    const key = `${r.namespace}/${r.component}/${r.endpoint}/${r.card_json.display_name}`;
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
    /** The endpoint's instances whose card names this model: the only ones its requests may go to. */
    private readonly instances: ReadonlySet<bigint>,
    private readonly router: KvRouter | null,
    private readonly migrationLimit: number,
    private readonly prefill: PrefillRouter | null = null,
    private readonly routingMode: RoutingMode = 'round_robin',
    parsers: { toolCallParser: string | null; reasoningParser: string | null; excludeToolsWhenToolChoiceNone: boolean } = { toolCallParser: null, reasoningParser: null, excludeToolsWhenToolChoiceNone: true },
  ) {
    this.toolCallParser = parsers.toolCallParser;
    this.reasoningParser = parsers.reasoningParser;
    this.excludeToolsWhenToolChoiceNone = parsers.excludeToolsWhenToolChoiceNone;
  }

  readonly toolCallParser: string | null;
  readonly reasoningParser: string | null;
  readonly excludeToolsWhenToolChoiceNone: boolean;

  private next = 0;

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
        if (!(isMigratable(err) || transferFailed) || migrations >= this.migrationLimit) {
          if (isMigratable(err)) log.warn('worker lost a request; not migrated', { model: this.name, migrations, migrationLimit: this.migrationLimit, error: (err as Error).message });
          throw err;
        }
        migrations++;
        log.warn('request migrated', { model: this.name, migration: migrations, tokensSoFar: produced.length, error: (err as Error).message });
        current = migrated(request, produced);
        if ((current.stop_conditions.max_tokens ?? 1) <= 0) return;
      }
    }
  }

  /** Sends the request to one of this model's instances: the KV router's choice, else round-robin or random as the
   * client routes. An instance that refuses it (unreachable) is skipped and the next one tried. */
  private async route(client: EndpointClient, request: PreprocessedRequest, signal: AbortSignal): Promise<{ stream: ResponseStream; release: () => void }> {
    const router = this.router;
    router?.retain(new Set(client.instances().map((r) => r.instance_id)));
    const tried = new Set<bigint>();
    let lastError: unknown;
    for (;;) {
      const candidates = tried.size === 0
        ? await candidateInstances(client, this.instances, this.name, signal)
        : ownInstances(client.available(), this.instances).filter((id) => !tried.has(id));
      if (candidates.length === 0) throw lastError ?? new LlmError('LLM_ERR_CANCELLED', 'the client went away before a worker was found');
      let instanceId: bigint;
      let release: () => void = () => undefined;
      let routed = request;
      if (router !== null) {
        const choice = router.select(request.token_ids, candidates);
        instanceId = choice.instanceId;
        release = router.track(choice.instanceId, choice.requestBlocks - choice.overlapBlocks, choice.dpRank);
        // the worker runs it in the group (dp rank) whose KV pool was scored
        routed = { ...request, routing: { ...request.routing, dp_rank: choice.dpRank } };
      } else {
        instanceId = this.routingMode === 'random' ? candidates[Math.floor(Math.random() * candidates.length)] : candidates[this.next++ % candidates.length];
      }
      try {
        return { stream: await client.generate(routed, { signal, routing: { instanceId } }), release };
      } catch (err) {
        release();
        // an instance that refused the request never saw it: another may take it
        if (!(err instanceof LlmError && (err.code === 'LLM_ERR_TRANSPORT' || err.code === 'LLM_ERR_TIMEOUT'))) throw err;
        tried.add(instanceId);
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

