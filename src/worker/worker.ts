// One worker process's job (reference §2.2, §4, §6, §11): start the actors its topology lists (src/topology: the
// model's core behind a Supervisor, the tokenizer, the KV sender or receiver of a disaggregated worker), serve
// `{ns}.{component}.generate` on the request plane with the reference decode handler's semantics, register the
// model deployment card, expose metrics and health on the system port, and shut down gracefully: unregister from
// discovery, give in-flight requests a grace period, then end them with EngineShutdown (which the frontend may
// migrate) and stop. KV events and load go to the event plane (./kv-events.ts says when); with
// `--health-check-enabled` a canary sends the health-check payload to our own handler when the endpoint is idle.
//
// Test pacing: DYN_SGL_STREAM_DELAY_MS=N makes the handler wait N ms before each response chunk, so tests of
// migration and drain can stop a worker mid-stream even with a model as fast as stories260K. Not for production.
import { setMaxListeners } from 'node:events';
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { WorkerConfig } from '../config/schema.js';
import { LlmError } from '../errors.js';
import type { Supervisor } from '../../actors/supervisor.js';
import { mergeSnapshots } from '../../actors/metrics.js';
import type { DisaggService } from '../disagg/service.js';
import { buildTopology } from '../topology/topology.js';
import { startTopology, type RunningTopology } from '../topology/start.js';
import { Discovery, type DiscoveryConfig } from '../runtime/discovery/index.js';
import { serveEndpoint, type EndpointHandler, type ServedEndpoint } from '../runtime/endpoint.js';
import { CanaryHealthCheck, effectiveHealthCheckPayload, HealthRegistry } from '../runtime/health.js';
import { RequestControl } from '../runtime/request-plane/context.js';
import { healthCheckPayload } from '../protocol/health.js';
import { eventPlaneMode, WorkerKvEvents } from './kv-events.js';
import { embeddingServing } from './embedding.js';
import { SERVING_MODES } from './serving.js';
import { DiscoveryPresence } from './presence.js';
import { textModeServing } from './text-mode.js';
import { detectHostIp } from '../runtime/request-plane/address.js';
import { HttpRequestServer } from '../runtime/request-plane/http.js';
import { TcpRequestServer } from '../runtime/request-plane/tcp-server.js';
import { connectNats, NatsRequestServer } from '../runtime/request-plane/nats.js';
import { registerTrustMetrics } from '../runtime/request-plane/trust-metrics.js';
import { WorkerMetrics } from '../runtime/metrics.js';
import { SystemServer } from '../runtime/system-server.js';
import { SglangMetrics } from '../runtime/sglang-metrics.js';
import { modelTypeToWire, ModelTypeFlag, type ModelDeploymentCard } from '../protocol/mdc.js';
import { WorkerKvQueryRequestSchema, workerKvIndexerQueryEndpoint } from '../protocol/kv-query.js';
import { parseWire } from '../protocol/validate.js';
import { stringifyJsonExact } from '../protocol/json.js';
import { missingModelReason } from '../config/model-path.js';
import { logger } from '../runtime/log.js';

const workerLog = logger('worker');

export type WorkerLog = (line: string) => void;

export interface WorkerOptions {
  /** Share a discovery connection (the all-in-one `run` passes its in-process mem store). */
  discovery?: Discovery;
  log?: WorkerLog;
  /** Publish KV events and load on the event plane even on the mem store (`run --router-mode kv`). */
  publishKvEvents?: boolean;
}

export interface WorkerHandle {
  readonly config: WorkerConfig;
  readonly discovery: Discovery;
  /** The worker's actors as its topology graph lists them. */
  readonly topology: RunningTopology;
  /** Data-parallel rank 0's supervisor (topology.core); every group's: topology.groups. */
  readonly supervisor: Supervisor;
  readonly instanceId: bigint;
  readonly card: ModelDeploymentCard;
  readonly systemServer: SystemServer | null;
  /** The disaggregated prefill/decode service: the KV sender or receiver (topology.kvTransfer; null when aggregated). */
  readonly disagg: DisaggService | null;
  readonly health: HealthRegistry;
  /** Graceful shutdown; resolves when everything is stopped. Idempotent. */
  shutdown(): Promise<void>;
}

export function discoveryConfigOf(config: WorkerConfig): DiscoveryConfig {
  switch (config.discoveryBackend) {
    case 'mem':
      return { backend: 'mem' };
    case 'file':
      return { backend: 'file', root: config.fileKvRoot };
    case 'etcd':
      return { backend: 'etcd', endpoints: config.etcdEndpoints };
  }
}

/** What this build cannot serve yet, refused before anything is loaded. */
function checkSupported(config: WorkerConfig): void {
  if (config.workerKind !== 'llm' && config.workerKind !== 'embedding') {
    throw new LlmError('LLM_ERR_CONFIG', `worker kind "${config.workerKind}" (multimodal) is not available in this build yet`);
  }
  if (config.workerKind === 'embedding' && config.dpSize !== 1) {
    throw new LlmError('LLM_ERR_CONFIG', `--embedding-worker with --dp-size ${config.dpSize}: an embedding worker runs one data-parallel group in this build (start one worker per group)`);
  }
}

export async function startWorker(config: WorkerConfig, options: WorkerOptions = {}): Promise<WorkerHandle> {
  const log = options.log ?? ((line: string) => workerLog.info(line));
  checkSupported(config);
  if (!existsSync(config.modelPath)) {
    throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `--model-path ${config.modelPath}: ${missingModelReason(config.modelPath)}`);
  }
  const { namespace, component, endpoint } = config.endpoint;
  const model = config.servedModelName;

  const health = new HealthRegistry('notready');
  const metrics = new WorkerMetrics();
  // Everything started from here on is released in reverse order, on a failed start and at shutdown.
  const resources = new ResourceStack();
  const systemServer = await resources.open(
    () => SystemServer.start({ port: config.systemPort, host: config.systemHost, health, metrics }),
    (s) => s?.close(),
  );
  if (systemServer) log(`system server on ${systemServer.url('/')} (/metrics, /health, /live)`);

  // discovery before the model: an unreachable etcd fails in seconds, not after a load of minutes
  const discovery = await resources.open(
    () => options.discovery ?? Discovery.open(discoveryConfigOf(config)),
    (d) => (options.discovery ? undefined : d.close()),
  );

  // the nats request plane's connection too: an unreachable NATS server fails before the load, naming the URL
  const natsRequests = await resources.open(
    async () => (config.requestPlane === 'nats' ? new NatsRequestServer(await connectNats(config.natsServer)) : null),
    (n) => n?.connection.drain(),
  );

  log(`loading model ${config.modelPath} (device ${config.device}) ...`);
  const t0 = performance.now();
  // The worker's actors, from the frozen config (src/topology): metrics recorder, tokenizer, core, KV transfer.
  const topology = await resources.open(() => startTopology(buildTopology(config), { config, discovery, log }), (t) => t.stop());
  // tokenizer: never null, a worker's config gives its graph one
  const { core: supervisor, groups, router, tokenizer, kvTransfer: disagg } = topology;
  const loadSeconds = (performance.now() - t0) / 1000;
  const engine = supervisor.engine;
  log(`model loaded in ${loadSeconds.toFixed(2)} s: ${engine.backend} backend, ${groups.length > 1 ? `${groups.length} data-parallel groups, each with a ` : ''}KV pool ${engine.kv.numPages} pages of ${engine.kv.pageSize} tokens (${(engine.kv.numPages * engine.kv.bytesPerPage / 2 ** 20).toFixed(1)} MiB)`);
  metrics.setModelLoadTime(model, component, loadSeconds);
  for (const g of groups) metrics.setKvStats({ model, component, dpRank: g.dpRank, totalBlocks: g.engine.kv.numPages, gpuCacheUsagePercent: 0 });
  const engineType = ({ aggregated: 'unified', prefill: 'prefill', decode: 'decode' } as const)[config.servingMode];
  const sglangMetrics = !config.enableMetrics ? null : new SglangMetrics({
    registry: metrics.registry, modelName: model, engineType, endpoint: config.endpoint, pageSize: engine.kv.pageSize,
    snapshot: () => mergeSnapshots(groups.map((g) => g.metrics.snapshot())), schedulerSnapshots: () => groups.map((g) => g.metrics.snapshot()), histograms: config,
  });

  const kvEvents = await resources.open(
    () => WorkerKvEvents.start({ config, groups, discovery, metrics }, eventPlaneMode(config, options.publishKvEvents), log),
    (k) => k.close(),
  );
  // What the endpoint runs per request, fixed by the serving mode (./serving.ts).
  const serving = config.workerKind === 'embedding'
    ? embeddingServing({ core: supervisor, tokenizer: tokenizer! })
    : config.useSglangTokenizer
      ? textModeServing({ router, tokenizer: tokenizer!, model, eosTokenIds: engine.eosTokenIds })
      : SERVING_MODES[config.servingMode]({ core: supervisor, router, kvTransfer: disagg });
  if (config.workerKind === 'embedding') {
    const e = await supervisor.embeddingModel();
    log(`embeddings: ${e.pooling} pooling${e.normalize ? ', L2-normalised' : ''} (${e.source}), ${e.hiddenSize} dimensions${e.matryoshka ? ' (fewer on request)' : ''}, inputs up to ${e.maxInputTokens} tokens`);
  }

  // Shutdown fires this: requests still running after the grace period end with EngineShutdown.
  const shutdownController = new AbortController();
  setMaxListeners(0, shutdownController.signal);  // every in-flight request listens to it
  const endpointMetrics = metrics.endpointMetrics(namespace, component, endpoint, model);
  const streamDelayMs = streamDelayFromEnv();
  const endpointName = `${namespace}.${component}.${endpoint}`;
  let canary: CanaryHealthCheck | undefined;

  const handler: EndpointHandler = async function* generate(raw, ctx) {
    const recorder = endpointMetrics.requestStarted(Buffer.byteLength(stringifyJsonExact(raw)));
    const latency = sglangMetrics?.requestStarted();
    canary?.noteActivity();
    let unlinkRequest = (): void => undefined;
    try {
      const accepted = serving.accept(raw);
      if (shutdownController.signal.aborted) throw new LlmError('LLM_ERR_SHUTDOWN', `worker ${discovery.instanceId.toString(16)} is shutting down`);
      // One controller per request linked to the caller's and the worker's signals, its listeners removed when the
      // request ends (AbortSignal.any would leave one on the long-lived shutdown signal per request until GC).
      const linked = new AbortController();
      const abortLinked = (): void => linked.abort();
      ctx.signal.addEventListener('abort', abortLinked, { once: true });
      shutdownController.signal.addEventListener('abort', abortLinked, { once: true });
      unlinkRequest = () => {
        ctx.signal.removeEventListener('abort', abortLinked);
        shutdownController.signal.removeEventListener('abort', abortLinked);
      };
      if (ctx.signal.aborted) linked.abort();
      const signal = linked.signal;
      for await (const chunk of accepted({ signal, requestId: ctx.id })) {
        if (shutdownController.signal.aborted && !ctx.signal.aborted) {
          throw new LlmError('LLM_ERR_SHUTDOWN', `worker ${discovery.instanceId.toString(16)} shut down before the request finished`);
        }
        if (streamDelayMs > 0) await new Promise((r) => setTimeout(r, streamDelayMs));
        recorder.responseBytes(Buffer.byteLength(stringifyJsonExact(chunk)));
        if ('token_ids' in chunk) latency?.chunk(chunk);
        yield chunk;
      }
      latency?.finish();
    } catch (err) {
      if (ctx.signal.aborted) throw err; // the caller's cancellation, counted below
      recorder.error(err instanceof LlmError && err.code === 'LLM_ERR_BAD_REQUEST' ? 'deserialization' : 'generate');
      throw err;
    } finally {
      // the request plane ends a killed or disconnected request's loop early (return()), so it is counted here
      if (ctx.signal.aborted) recorder.cancelled();
      unlinkRequest();
      recorder.finish();
    }
  };

  // The worker owns its request-plane server, so a shutdown leaves nothing listening.
  const rpc = { host: config.tcpRpcHost ?? undefined, port: config.tcpRpcPort };
  const planeServer =
    natsRequests ??
    (await resources.open(
      async (): Promise<TcpRequestServer | HttpRequestServer> => (config.requestPlane === 'http' ? HttpRequestServer.start(rpc) : TcpRequestServer.start({ ...rpc, wireProfile: config.wireProfile })),
      (p) => p.close(),
    ));
  registerTrustMetrics(metrics.registry, planeServer.ingress.trustCounters);
  const plane = {
    discovery, namespace, component,
    plane: config.requestPlane,
    ...(planeServer instanceof TcpRequestServer
      ? { tcpServer: planeServer }
      : planeServer instanceof HttpRequestServer
        ? { httpServer: planeServer }
        : { natsServer: planeServer }),
    deviceType: engine.backend === 'cuda' ? 'cuda' : 'cpu',
  };
  // each group's local-indexer query endpoint is in discovery before the worker serves anything a router could miss
  for (const localIndexer of kvEvents.localIndexers) {
    const queryHandler: EndpointHandler = async function* workerKvIndexerQuery(raw) {
      yield localIndexer.query(parseWire(WorkerKvQueryRequestSchema, raw, 'worker kv indexer query'));
    };
    const endpointName = workerKvIndexerQueryEndpoint(localIndexer.dpRank);
    await resources.open(() => serveEndpoint({ ...plane, endpoint: endpointName, handler: queryHandler }), (s) => s.stop());
  }
  const served: ServedEndpoint = await resources.open(() => serveEndpoint({ ...plane, endpoint, handler }));
  const baseCard = modelCard(config, tokenizerArtifacts(config.tokenizerPath ?? config.modelPath), {
    contextLength: config.contextLength ?? engine.maxPositionEmbeddings,
    totalKvBlocks: engine.kv.numPages,
  });
  // A prefill worker registers as Prefill and publishes where its bootstrap server really listens.
  const card: ModelDeploymentCard = disagg?.endpoint
    ? { ...baseCard, model_type: modelTypeToWire(ModelTypeFlag.Prefill), runtime_config: { ...baseCard.runtime_config, disaggregated_endpoint: disagg.endpoint } }
    : baseCard;
  await resources.open(() => discovery.registerModel({ namespace, component, endpoint, card }));
  health.setSystemStatus('ready');
  health.setEndpointStatus(endpointName, 'ready');
  const presence = new DiscoveryPresence({
    groups,
    name: `worker ${discovery.instanceId.toString(16)}`,
    list: async () => {
      await discovery.registerEndpointInstance({ namespace, component, endpoint, transport: served.record.transport, deviceType: plane.deviceType });
      await discovery.registerModel({ namespace, component, endpoint, card });
      health.setSystemStatus('ready');
      health.setEndpointStatus(endpointName, 'ready');
    },
    withdraw: async () => {
      health.setSystemStatus('notready');
      health.setEndpointStatus(endpointName, 'notready');
      await discovery.unregisterModel(namespace, component, endpoint);
      await discovery.unregisterEndpointInstance(namespace, component, endpoint);
    },
  });
  if (config.healthCheckEnabled) {
    const payload = effectiveHealthCheckPayload({ ...healthCheckPayload({ bos: tokenizer!.bosTokenId, disagg: disagg !== null, bootstrapPort: disagg?.endpoint?.bootstrap_port ?? 0, textMode: config.useSglangTokenizer }) }, config.healthCheckPayload);
    canary = new CanaryHealthCheck({
      endpoint: endpointName,
      payload,
      registry: health,
      canaryWaitMs: config.canaryWaitTimeSecs * 1000,
      timeoutMs: config.healthCheckRequestTimeoutSecs * 1000,
      probe: (body, signal) => {
        const ctx = new RequestControl(`health-check-${Date.now()}`, {});
        signal.addEventListener('abort', () => ctx.cancel('kill'), { once: true });
        return handler(body, ctx);
      },
    });
    canary.start();
  }
  log(`serving ${namespace}.${component}.${endpoint} as instance ${discovery.instanceId.toString(16)} over ${config.requestPlane} (${served.record.transport ? JSON.stringify(served.record.transport) : ''})`);

  let stopping: Promise<void> | undefined;
  const shutdown = () => {
    stopping ??= (async () => {
      health.setSystemStatus('notready');
      await presence.close();
      await canary?.stop();
      // 1. leave discovery: no new requests are routed here
      await discovery.unregisterModel(namespace, component, endpoint).catch(() => undefined);
      const drained = served.stop();
      // 2. grace period for in-flight requests
      const graceMs = config.gracefulShutdownGracePeriodSecs * 1000;
      const timer = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), graceMs).unref());
      const outcome = await Promise.race([drained.then(() => 'drained' as const), timer]);
      // 3. what is still running ends with EngineShutdown
      if (outcome === 'timeout') {
        log(`grace period of ${config.gracefulShutdownGracePeriodSecs} s over: ending ${served.inflight()} in-flight request(s)`);
        shutdownController.abort();
        await drained;
      }
      await resources.releaseAll();
    })();
    return stopping;
  };

  return { config, discovery, topology, supervisor, instanceId: discovery.instanceId, card, systemServer, health, disagg, shutdown };
}

/** `dynamo-sglang start`: runs until SIGTERM/SIGINT, then shuts down gracefully and returns the exit code. */
export async function runWorker(config: WorkerConfig): Promise<number> {
  const worker = await startWorker(config);
  await new Promise<void>((resolveSignal) => {
    const onSignal = (sig: NodeJS.Signals) => {
      workerLog.info(`received ${sig}: shutting down (grace period ${config.gracefulShutdownGracePeriodSecs} s)`);
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      resolveSignal();
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  await worker.shutdown();
  return 0;
}

function streamDelayFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env['DYN_SGL_STREAM_DELAY_MS'];
  if (raw === undefined || raw === '') return 0;
  const ms = Number(raw);
  if (!Number.isFinite(ms) || ms < 0) throw new LlmError('LLM_ERR_CONFIG', `DYN_SGL_STREAM_DELAY_MS "${raw}": expected a number of milliseconds >= 0`);
  return ms;
}

interface TokenizerArtifacts {
  tokenizer: Record<string, string>;
  promptFormatter: Record<string, string> | null;
  modelInfo: Record<string, string> | null;
  genConfig: Record<string, string> | null;
}

function tokenizerArtifacts(path: string): TokenizerArtifacts {
  const abs = resolve(path);
  const dir = existsSync(abs) && statSync(abs).isDirectory() ? abs : dirname(abs);
  const file = (name: string) => (existsSync(join(dir, name)) ? join(dir, name) : null);
  if (!abs.endsWith('.json') && existsSync(abs) && statSync(abs).isFile()) {
    return { tokenizer: { gguf: abs }, promptFormatter: { gguf: abs }, modelInfo: null, genConfig: null };
  }
  const tokenizerJson = abs.endsWith('.json') ? abs : join(dir, 'tokenizer.json');
  const tokenizerConfig = file('tokenizer_config.json');
  const config = file('config.json');
  const gen = file('generation_config.json');
  return {
    tokenizer: { hf_tokenizer_json: tokenizerJson },
    promptFormatter: tokenizerConfig ? { hf_tokenizer_config_json: tokenizerConfig } : null,
    modelInfo: config ? { hf_config_json: config } : null,
    genConfig: gen ? { hf_generation_config_json: gen } : null,
  };
}

/** The model deployment card with the runtime config SGLang workers publish (reference §4.1). */
export function modelCard(
  config: WorkerConfig,
  files: TokenizerArtifacts,
  engine: { contextLength: number; totalKvBlocks: number },
): ModelDeploymentCard {
  let bits = 0;
  for (const t of config.endpointTypes) bits |= t === 'chat' ? ModelTypeFlag.Chat : t === 'completions' ? ModelTypeFlag.Completions : 0;
  // An embedding worker registers as Embedding with text input (reference §2.4): it tokenizes its requests itself.
  const embedding = config.workerKind === 'embedding';
  if (embedding) bits = ModelTypeFlag.Embedding;
  // Text mode registers a chat model with text input (reference: ModelInput.Text, Chat only): the frontend forwards
  // the OpenAI request and the worker templates and tokenizes it.
  if (config.useSglangTokenizer) bits = ModelTypeFlag.Chat;
  const slug = config.servedModelName.replace(/[^A-Za-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '').toLowerCase() || basename(config.modelPath);
  return {
    display_name: config.servedModelName,
    slug,
    source_path: config.modelPath,
    model_info: files.modelInfo,
    tokenizer: files.tokenizer,
    prompt_formatter: files.promptFormatter,
    gen_config: files.genConfig,
    context_length: engine.contextLength,
    kv_cache_block_size: config.pageSize,
    model_type: modelTypeToWire(bits || ModelTypeFlag.Chat | ModelTypeFlag.Completions),
    model_input: embedding || config.useSglangTokenizer ? 'Text' : 'Tokens',
    runtime_config: {
      total_kv_blocks: engine.totalKvBlocks,
      ...(config.maxRunningRequests == null ? {} : { max_num_seqs: config.maxRunningRequests }),
      max_num_batched_tokens: config.maxPrefillTokens ?? engine.totalKvBlocks * config.pageSize,
      tool_call_parser: config.dynToolCallParser,
      reasoning_parser: config.dynReasoningParser,
      exclude_tools_when_tool_choice_none: config.excludeToolsWhenToolChoiceNone,
      enable_local_indexer: config.enableLocalIndexer && config.servingMode !== 'decode',
      data_parallel_size: config.dpSize,
      data_parallel_start_rank: 0,
      disaggregated_endpoint:
        config.disaggregationBootstrapPort == null ? null : { bootstrap_host: detectHostIp(), bootstrap_port: config.disaggregationBootstrapPort },
      enable_eagle: false,
    },
  };
}

/** Resources opened one after another; on a failure while opening, or at shutdown, they close newest first. */
class ResourceStack {
  private readonly closers: (() => Promise<unknown> | unknown)[] = [];

  push(close: () => Promise<unknown> | unknown): void {
    this.closers.push(close);
  }

  /** Opens one more resource; if that fails, everything opened so far is released and the error rethrown. */
  async open<T>(open: () => Promise<T> | T, close?: (resource: T) => Promise<unknown> | unknown): Promise<T> {
    let resource: T;
    try {
      resource = await open();
    } catch (err) {
      await this.releaseAll();
      throw err;
    }
    if (close) this.push(() => close(resource));
    return resource;
  }

  async releaseAll(): Promise<void> {
    while (this.closers.length > 0) await this.closers.pop()!();
  }
}
