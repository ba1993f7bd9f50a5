// The worker's configuration: the typebox schema of the resolved (frozen) configuration, and the table of every
// flag that feeds it. Each flag names its env var, value schema, default and help once; the parser, the env and
// YAML readers, the help text and the JSON Schema generator all read from here. Value schemas are shared between
// a flag and the config field it fills, so the flag check and the config check cannot disagree.

import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { FlagSpec, FlagValue } from '../cli/args.js';
import { WireProfileSchema } from '../protocol/wire-profile.js';
import { DYN_REASONING_PARSERS, DYN_TOOL_CALL_PARSERS } from './dynamo-parsers.js';

// ---- value schemas (shared by flags and config fields) ----

const NonEmpty = Type.String({ minLength: 1 });
const PositiveInt = Type.Integer({ minimum: 1 });
const Port = Type.Integer({ minimum: 1, maximum: 65535 });
const Seconds = Type.Number({ exclusiveMinimum: 0 });
const NUMBER_TEXT = '^[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?$';
const Name = Type.String({ pattern: '^[A-Za-z0-9_-]+$', description: 'a name of letters, digits, "_" and "-"' });
const NameExpected = 'a non-empty name of letters, digits, "_" and "-"';

export const ServingModeSchema = Type.Union([Type.Literal('aggregated'), Type.Literal('prefill'), Type.Literal('decode')]);
export type ServingMode = Static<typeof ServingModeSchema>;

export const WorkerKindSchema = Type.Union([
  Type.Literal('llm'),
  Type.Literal('embedding'),
  Type.Literal('multimodal-encode'),
  Type.Literal('multimodal-worker'),
  Type.Literal('multimodal-processor'),
]);
export type WorkerKind = Static<typeof WorkerKindSchema>;

export const DiscoveryBackendSchema = Type.Union([Type.Literal('etcd'), Type.Literal('file'), Type.Literal('mem')]);
export const RequestPlaneSchema = Type.Union([Type.Literal('tcp'), Type.Literal('http'), Type.Literal('nats')]);
export const EventPlaneSchema = Type.Union([Type.Literal('nats'), Type.Literal('zmq')]);
export const DeviceSchema = Type.Union([Type.Literal('cpu'), Type.Literal('cuda'), Type.Literal('auto')]);
export const TransferBackendSchema = Type.Union([
  Type.Literal('auto'),
  Type.Literal('tcp'),
  Type.Literal('nccl'),
  Type.Literal('cuda-ipc'),
  Type.Literal('fake'),
]);
export const EndpointTypeSchema = Type.Union([Type.Literal('chat'), Type.Literal('completions')]);
// DYN_LOG syntax (src/runtime/log.ts parses it): comma-separated `level` or `target=level` directives.
const LOG_SPEC_LEVELS = ['trace', 'debug', 'info', 'warn', 'warning', 'error', 'critical', 'off'] as const;
const LOG_DIRECTIVE = `\\s*([A-Za-z0-9_.:-]+\\s*=\\s*)?(${LOG_SPEC_LEVELS.join('|')})\\s*`;
export const LogSpecSchema = Type.String({
  pattern: `^${LOG_DIRECTIVE}(,${LOG_DIRECTIVE})*$`,
  description: 'a log level, or DYN_LOG directives: a default level and target=level overrides, comma-separated',
});

export const EndpointSchema = Type.Object(
  { namespace: Name, component: Name, endpoint: Name },
  { additionalProperties: false, description: 'Dynamo endpoint id: {namespace}.{component}.{endpoint}' },
);
export type EndpointId = Static<typeof EndpointSchema>;

const KvPublisher = Type.Union([Type.Literal('null'), Type.Literal('zmq')]);
const ZmqAddress = Type.String({ pattern: '^(tcp|ipc|inproc)://.+$', description: 'a ZMQ address tcp://host:port' });
/** What `--kv-events-config` accepts (SGLang's KVEventsConfig JSON); absent keys take SGLang's defaults. */
export const KvEventsConfigInputSchema = Type.Object(
  {
    publisher: Type.Optional(KvPublisher),
    topic: Type.Optional(Type.String()),
    endpoint: Type.Optional(ZmqAddress),
    replay_endpoint: Type.Optional(Type.Union([ZmqAddress, Type.Null()])),
    buffer_steps: Type.Optional(PositiveInt),
    hwm: Type.Optional(Type.Integer({ minimum: 0 })),
    max_queue_size: Type.Optional(PositiveInt),
  },
  { additionalProperties: false },
);
export const KvEventsConfigSchema = Type.Object(
  {
    publisher: KvPublisher,
    topic: Type.String(),
    endpoint: ZmqAddress,
    replay_endpoint: Type.Union([ZmqAddress, Type.Null()]),
    buffer_steps: PositiveInt,
    hwm: Type.Integer({ minimum: 0 }),
    max_queue_size: PositiveInt,
  },
  { additionalProperties: false },
);
export type KvEventsConfig = Static<typeof KvEventsConfigSchema>;
export const KV_EVENTS_DEFAULTS: KvEventsConfig = {
  publisher: 'null',
  topic: '',
  endpoint: 'tcp://*:5557',
  replay_endpoint: null,
  buffer_steps: 10_000,
  hwm: 100_000,
  max_queue_size: 100_000,
};

const JsonObject = Type.Object({}, { additionalProperties: true });
const EndpointString = Type.String({ pattern: '^(dyn://)?[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$' });
const HostPort = Type.String({ pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$' });

const nullable = <T extends TSchema>(t: T) => Type.Union([t, Type.Null()]);

// ---- the resolved configuration ----

export const WorkerConfigSchema = Type.Object(
  {
    configFile: Type.Union([NonEmpty, Type.Null()], { description: 'YAML file given by --config' }),
    // model
    modelPath: NonEmpty,
    tokenizerPath: NonEmpty,
    servedModelName: NonEmpty,
    contextLength: nullable(PositiveInt),
    customJinjaTemplate: nullable(NonEmpty),
    // what this worker is
    workerKind: WorkerKindSchema,
    servingMode: ServingModeSchema,
    namespace: Name,
    endpoint: EndpointSchema,
    endpointTypes: Type.Array(EndpointTypeSchema, { minItems: 1 }),
    // runtime planes and discovery
    discoveryBackend: DiscoveryBackendSchema,
    requestPlane: RequestPlaneSchema,
    eventPlane: EventPlaneSchema,
    etcdEndpoints: Type.Array(NonEmpty, { minItems: 1 }),
    natsServer: NonEmpty,
    fileKvRoot: NonEmpty,
    tcpRpcHost: nullable(NonEmpty),
    tcpRpcPort: Type.Integer({ minimum: 0, maximum: 65535 }),
    /** Absent = DEFAULT_WIRE_PROFILE (0.8). */
    wireProfile: WireProfileSchema,
    // published in the model's runtime config
    dynToolCallParser: nullable(NonEmpty),
    dynReasoningParser: nullable(NonEmpty),
    migrationLimit: Type.Integer({ minimum: 0, description: "published as the model card's migration_limit" }),
    useSglangTokenizer: Type.Boolean(),
    excludeToolsWhenToolChoiceNone: Type.Boolean(),
    durableKvEvents: Type.Boolean(),
    enableLocalIndexer: Type.Boolean(),
    // parallelism and multi-node
    tpSize: PositiveInt,
    baseGpuId: Type.Integer({ minimum: 0 }),
    dpSize: PositiveInt,
    nnodes: PositiveInt,
    nodeRank: Type.Integer({ minimum: 0 }),
    distInitAddr: nullable(HostPort),
    disableCustomAllReduce: Type.Boolean(),
    // scheduler and memory
    device: DeviceSchema,
    pageSize: PositiveInt,
    maxRunningRequests: nullable(PositiveInt),
    maxTotalTokens: nullable(PositiveInt),
    maxPrefillTokens: PositiveInt,
    chunkedPrefillSize: nullable(Type.Union([Type.Literal(-1), PositiveInt])),
    memFractionStatic: nullable(Type.Number({ exclusiveMinimum: 0, maximum: 1 })),
    disableOverlapSchedule: Type.Boolean(),
    disableRadixCache: Type.Boolean(),
    cpuThreads: nullable(PositiveInt),
    seed: nullable(Type.Integer({ minimum: 0 })),
    // disaggregation
    disaggregationBootstrapPort: Type.Union([Port, Type.Null()], {
      description: 'null until finalizeConfig() picks a free port',
    }),
    disaggregationTransferBackend: TransferBackendSchema,
    kvTransferTimeoutSecs: Seconds,
    // KV events, metrics, health, lifecycle
    kvEventsConfig: nullable(KvEventsConfigSchema),
    useKvEvents: Type.Boolean(),
    enableMetrics: Type.Boolean(),
    bucketTimeToFirstToken: nullable(Type.Array(Type.Number(), { minItems: 1 })),
    bucketInterTokenLatency: nullable(Type.Array(Type.Number(), { minItems: 1 })),
    bucketE2eRequestLatency: nullable(Type.Array(Type.Number(), { minItems: 1 })),
    collectTokensHistogram: Type.Boolean(),
    systemHost: NonEmpty,
    systemPort: Type.Integer({ minimum: -1, maximum: 65535 }),
    healthCheckEnabled: Type.Boolean(),
    canaryWaitTimeSecs: Seconds,
    healthCheckRequestTimeoutSecs: Seconds,
    healthCheckPayload: nullable(JsonObject),
    gracefulShutdownGracePeriodSecs: Type.Number({ minimum: 0 }),
    multimodalEmbeddingCacheCapacityGb: Type.Number({ minimum: 0 }),
    logLevel: LogSpecSchema,
    dumpConfigTo: nullable(NonEmpty),
    configKey: nullable(NonEmpty),
    unusedFlags: Type.Array(NonEmpty, { description: 'flags given that this worker accepts and does not use, as given (logged at start)' }),
  },
  { additionalProperties: false, $id: 'WorkerConfig', title: 'dynamo-sglang worker configuration' },
);
export type WorkerConfig = Static<typeof WorkerConfigSchema>;

// ---- the flag table ----

/**
 * Intermediate settings the flags fill before derivation. Two spellings of one setting (e.g. --store-kv and
 * --discovery-backend) share a setting; both given with different values is an error.
 */
export type SettingKey =
  | Exclude<keyof WorkerConfig, 'endpoint' | 'workerKind' | 'enableLocalIndexer' | 'useKvEvents' | 'unusedFlags'>
  | 'endpointString' | 'componentName' | 'embeddingWorker' | 'multimodalEncodeWorker' | 'multimodalWorker' | 'version'
  | 'multimodalProcessor' | 'localIndexer';

export interface WorkerFlag extends FlagSpec {
  setting: SettingKey;
  /** Built-in default; null means "absent" (derived later or left to the engine). */
  default: FlagValue;
  /** Maps this spelling's value onto the setting's vocabulary (e.g. --disaggregation-mode null → aggregated). */
  normalize?: (value: FlagValue) => FlagValue;
}

const G_MODEL = 'Model';
const G_ROLE = 'Worker role and endpoint';
const G_RUNTIME = 'Discovery and runtime planes';
const G_PARALLEL = 'Parallelism and multi-node';
const G_SCHED = 'Scheduler, memory and device';
const G_DISAGG = 'Disaggregation (prefill/decode)';
const G_OBS = 'KV events, metrics, health checks and lifecycle';
const G_MISC = 'Configuration and misc';

const str = (schema: TSchema = NonEmpty) => ({ kind: 'string' as const, schema });
const int = (schema: TSchema = PositiveInt) => ({ kind: 'int' as const, schema, valueName: 'N' });
const num = (schema: TSchema) => ({ kind: 'number' as const, schema, valueName: 'X' });
const bool = { kind: 'bool' as const, schema: Type.Boolean() };
const choice = (schema: TSchema, valueName: string) => ({ kind: 'string' as const, schema, valueName });
const literals = (names: readonly string[]) => Type.Union(names.map((n) => Type.Literal(n)));

export const WORKER_FLAGS: readonly WorkerFlag[] = [
  // model
  { name: 'model-path', aliases: ['model'], setting: 'modelPath', ...str(), valueName: 'PATH', env: 'DYN_SGL_MODEL_PATH', default: null, defaultText: '(required)', group: G_MODEL,
    help: 'Model to serve: a local GGUF file or a directory with config.json and safetensors weights, or a Hugging Face repo id (org/name) already in the local Hugging Face cache (HF_HUB_CACHE, HF_HOME); nothing is downloaded.' },
  { name: 'tokenizer-path', setting: 'tokenizerPath', ...str(), valueName: 'PATH', env: 'DYN_SGL_TOKENIZER_PATH', default: null, defaultText: 'the model path', group: G_MODEL,
    help: 'Tokenizer location (tokenizer.json directory or file).' },
  { name: 'served-model-name', setting: 'servedModelName', ...str(), valueName: 'NAME', env: 'DYN_SGL_SERVED_MODEL_NAME', default: null, defaultText: 'the model path', group: G_MODEL,
    help: 'Model name clients use in requests and that is registered in discovery.' },
  { name: 'context-length', setting: 'contextLength', ...int(), env: 'DYN_SGL_CONTEXT_LENGTH', default: null, defaultText: "the model's", group: G_MODEL,
    help: 'Maximum context length (prompt + output tokens); published in the model card.' },
  { name: 'custom-jinja-template', setting: 'customJinjaTemplate', ...str(), valueName: 'PATH', env: 'DYN_CUSTOM_JINJA_TEMPLATE', default: null, defaultText: 'none', group: G_MODEL,
    help: 'Chat template file that overrides the model\'s (applied by the frontend); "~" and $VAR are expanded and the file must exist.' },

  // role and endpoint
  { name: 'disaggregation-mode', setting: 'servingMode', ...choice(Type.Union([Type.Literal('null'), Type.Literal('prefill'), Type.Literal('decode')]), 'MODE'),
    env: 'DYN_SGL_DISAGGREGATION_MODE', default: null, defaultText: 'null (aggregated)', group: G_ROLE,
    normalize: (v) => (v === 'null' ? 'aggregated' : v),
    help: 'Serving mode: null = aggregated (prefill and decode here), prefill = disaggregated prefill worker, decode = disaggregated decode worker.' },
  { name: 'disagg-mode', setting: 'servingMode', ...choice(Type.Union([Type.Literal('prefill'), Type.Literal('decode')]), 'MODE'),
    env: 'DYN_DISAGG_MODE', default: null, defaultText: 'aggregated when absent', group: G_ROLE,
    help: 'Older (0.8) spelling of --disaggregation-mode; must agree with it when both are given.' },
  { name: 'embedding-worker', aliases: ['is-embedding'], setting: 'embeddingWorker', ...bool, env: 'DYN_SGL_EMBEDDING_WORKER', default: false, defaultText: 'false', group: G_ROLE,
    help: 'Serve embeddings (one pooled pass per input) instead of generation; --is-embedding is SGLang\'s spelling.' },
  { name: 'multimodal-encode-worker', setting: 'multimodalEncodeWorker', ...bool, env: 'DYN_SGL_MULTIMODAL_ENCODE_WORKER', default: false, defaultText: 'false', group: G_ROLE,
    help: 'Run the front-facing multimodal encoder (vision tower) that feeds a --multimodal-worker.' },
  { name: 'multimodal-worker', setting: 'multimodalWorker', ...bool, env: 'DYN_SGL_MULTIMODAL_WORKER', default: false, defaultText: 'false', group: G_ROLE,
    help: 'Run the internal multimodal LLM worker (aggregated, prefill or decode per the disaggregation mode).' },
  { name: 'namespace', setting: 'namespace', ...str(Name), expected: NameExpected, valueName: 'NS', env: 'DYN_NAMESPACE', default: 'dynamo', defaultText: 'dynamo', group: G_ROLE,
    help: 'Dynamo namespace; when DYN_NAMESPACE_WORKER_SUFFIX is set it becomes {namespace}-{suffix}.' },
  { name: 'endpoint', setting: 'endpointString', ...str(EndpointString), valueName: 'dyn://NS.COMP.EP', env: 'DYN_ENDPOINT', default: null,
    expected: 'dyn://namespace.component.endpoint (exactly 3 dot-separated names; the dyn:// scheme is optional)',
    defaultText: '{ns}.backend.generate; {ns}.prefill.generate in prefill mode; {ns}.encoder.generate for the multimodal encoder', group: G_ROLE,
    help: 'Endpoint this worker serves.' },
  { name: 'component-name', setting: 'componentName', ...str(Name), expected: NameExpected, valueName: 'NAME', env: 'DYN_COMPONENT_NAME', default: null, defaultText: 'from the endpoint', group: G_ROLE,
    help: 'Older (0.8) way to name the component; the endpoint becomes {ns}.{component}.generate. Must agree with --endpoint when both are given.' },
  { name: 'endpoint-types', aliases: ['dyn-endpoint-types'], setting: 'endpointTypes', kind: 'list', schema: Type.Array(EndpointTypeSchema, { minItems: 1 }), valueName: 'LIST',
    env: 'DYN_ENDPOINT_TYPES', default: ['chat', 'completions'], defaultText: 'chat,completions', group: G_ROLE,
    help: 'OpenAI endpoints registered for the model (embedding workers always register embeddings).' },

  // runtime planes
  { name: 'discovery-backend', setting: 'discoveryBackend', ...choice(DiscoveryBackendSchema, 'BACKEND'), env: 'DYN_DISCOVERY_BACKEND', default: 'etcd', defaultText: 'etcd', group: G_RUNTIME,
    help: 'Discovery store: etcd (see --etcd-endpoints), file (see --file-kv-root) or mem (in-process; single-process setups only).' },
  { name: 'store-kv', setting: 'discoveryBackend', ...choice(DiscoveryBackendSchema, 'BACKEND'), env: 'DYN_STORE_KV', default: null, defaultText: 'etcd', group: G_RUNTIME,
    help: 'Older (0.8) spelling of --discovery-backend; must agree with it when both are given.' },
  { name: 'request-plane', setting: 'requestPlane', ...choice(RequestPlaneSchema, 'PLANE'), env: 'DYN_REQUEST_PLANE', default: 'tcp', defaultText: 'tcp', group: G_RUNTIME,
    help: 'How routers send requests to this worker: tcp, http or nats.' },
  { name: 'event-plane', setting: 'eventPlane', ...choice(EventPlaneSchema, 'PLANE'), env: 'DYN_EVENT_PLANE', default: 'nats', defaultText: 'nats', group: G_RUNTIME,
    help: 'Transport of KV events and load metrics: nats or zmq.' },
  { name: 'etcd-endpoints', setting: 'etcdEndpoints', kind: 'list', schema: Type.Array(NonEmpty, { minItems: 1 }), valueName: 'URLS', env: 'ETCD_ENDPOINTS',
    default: ['http://localhost:2379'], defaultText: 'http://localhost:2379', group: G_RUNTIME,
    help: 'etcd client URLs, comma- or space-separated.' },
  { name: 'nats-server', setting: 'natsServer', ...str(), valueName: 'URL', env: 'NATS_SERVER', default: 'nats://localhost:4222', defaultText: 'nats://localhost:4222', group: G_RUNTIME,
    help: 'NATS server URL (event plane nats, request plane nats).' },
  { name: 'file-kv-root', setting: 'fileKvRoot', ...str(), valueName: 'DIR', env: 'DYN_FILE_KV', default: null, defaultText: '$TMPDIR/dynamo_store_kv', group: G_RUNTIME,
    help: 'Root directory of the file discovery store.' },
  { name: 'tcp-rpc-host', setting: 'tcpRpcHost', ...str(), valueName: 'HOST', env: 'DYN_TCP_RPC_HOST', default: null, defaultText: 'auto-detected IP', group: G_RUNTIME,
    help: 'Address the TCP request-plane server binds and advertises.' },
  { name: 'tcp-rpc-port', setting: 'tcpRpcPort', ...int(Type.Integer({ minimum: 0, maximum: 65535 })), env: 'DYN_TCP_RPC_PORT', default: 0, expected: 'a port 0..65535 (0 = OS-assigned)', defaultText: '0 (OS-assigned)', group: G_RUNTIME,
    help: 'Port of the TCP request-plane server.' },
  { name: 'dynamo-wire', setting: 'wireProfile', ...choice(WireProfileSchema, 'VERSION'), env: 'DYN_WIRE_PROFILE', default: '0.8', defaultText: '0.8', group: G_RUNTIME,
    help: 'Dynamo release whose wire formats this worker speaks: 0.8 (request frames, addresses, JSON KV events and load, NATS local-indexer queries of Dynamo 0.8.0) or main (the later formats).' },
  { name: 'dyn-tool-call-parser', setting: 'dynToolCallParser', ...choice(literals(DYN_TOOL_CALL_PARSERS), 'NAME'), env: 'DYN_TOOL_CALL_PARSER', default: null, defaultText: 'none', group: G_RUNTIME,
    help: 'Tool-call parser name (one of Dynamo\'s) published in the runtime config and applied by the frontend; cannot be combined with SGLang\'s --tool-call-parser.' },
  { name: 'dyn-reasoning-parser', setting: 'dynReasoningParser', ...choice(literals(DYN_REASONING_PARSERS), 'NAME'), env: 'DYN_REASONING_PARSER', default: null, defaultText: 'none', group: G_RUNTIME,
    help: 'Reasoning parser name (one of Dynamo\'s) published in the runtime config and applied by the frontend; cannot be combined with SGLang\'s --reasoning-parser.' },
  { name: 'exclude-tools-when-tool-choice-none', setting: 'excludeToolsWhenToolChoiceNone', ...bool, env: 'DYN_EXCLUDE_TOOLS_WHEN_TOOL_CHOICE_NONE', default: true, defaultText: 'true', group: G_RUNTIME,
    help: 'Published in the runtime config: drop tool definitions from the prompt when tool_choice is "none".' },
  { name: 'durable-kv-events', setting: 'durableKvEvents', ...bool, env: 'DYN_DURABLE_KV_EVENTS', default: false, defaultText: 'false', group: G_RUNTIME,
    help: 'Deprecated: KV events through JetStream instead of the local indexer (turns enable_local_indexer off).' },

  // parallelism
  { name: 'tp-size', aliases: ['tp', 'tensor-parallel-size'], setting: 'tpSize', ...int(), env: 'DYN_SGL_TP_SIZE', default: 1, defaultText: '1', group: G_PARALLEL,
    help: 'Tensor-parallel degree (GPUs per model replica, across all nodes).' },
  { name: 'base-gpu-id', setting: 'baseGpuId', ...int(Type.Integer({ minimum: 0 })), env: 'DYN_SGL_BASE_GPU_ID', default: 0, defaultText: '0', group: G_PARALLEL,
    help: 'First CUDA device of this worker: tensor-parallel rank r runs on device base-gpu-id + r (several workers on one machine).' },
  { name: 'dp-size', aliases: ['data-parallel-size', 'dp'], setting: 'dpSize', ...int(), env: 'DYN_SGL_DP_SIZE', default: 1, defaultText: '1', group: G_PARALLEL,
    help: 'Data-parallel replicas behind this worker; published as data_parallel_size.' },
  { name: 'disable-custom-all-reduce', setting: 'disableCustomAllReduce', ...bool, env: 'DYN_SGL_DISABLE_CUSTOM_ALL_REDUCE', default: false, defaultText: 'false', group: G_PARALLEL,
    help: 'CUDA tensor parallelism: every collective through NCCL (captured in the decode graphs too) instead of this engine\'s peer-mapped kernels; what a group whose ranks cannot map each other\'s memory (other machines, isolated containers) does by itself.' },
  { name: 'nnodes', setting: 'nnodes', ...int(), env: 'DYN_SGL_NNODES', default: 1, defaultText: '1', group: G_PARALLEL,
    help: 'Number of nodes this worker spans.' },
  { name: 'node-rank', setting: 'nodeRank', ...int(Type.Integer({ minimum: 0 })), env: 'DYN_SGL_NODE_RANK', default: 0, defaultText: '0 (leader)', group: G_PARALLEL,
    help: 'This node\'s rank; rank >= 1 runs compute only (no endpoint, no registration, no health checks).' },
  { name: 'dist-init-addr', aliases: ['nccl-init-addr'], setting: 'distInitAddr', ...str(HostPort), valueName: 'HOST:PORT', expected: 'HOST:PORT of the leader node', env: 'DYN_SGL_DIST_INIT_ADDR', default: null, defaultText: 'none', group: G_PARALLEL,
    help: 'Leader address for multi-node start-up; required when --nnodes > 1; also the advertised bootstrap host.' },

  // scheduler, memory, device
  { name: 'device', setting: 'device', ...choice(DeviceSchema, 'DEV'), env: 'DYN_SGL_DEVICE', default: 'auto', defaultText: 'auto (cuda when a GPU is usable, else cpu)', group: G_SCHED,
    help: 'Compute backend of the engine.' },
  { name: 'page-size', setting: 'pageSize', ...int(), env: 'DYN_SGL_PAGE_SIZE', default: 16, defaultText: '16', group: G_SCHED,
    help: 'KV cache page size in tokens; published as kv_cache_block_size (SGLang itself defaults to 1).' },
  { name: 'max-running-requests', setting: 'maxRunningRequests', ...int(), env: 'DYN_SGL_MAX_RUNNING_REQUESTS', default: null, defaultText: 'bounded by KV memory', group: G_SCHED,
    help: 'Most requests decoding at once; published as max_num_seqs.' },
  { name: 'max-prefill-tokens', setting: 'maxPrefillTokens', ...int(), env: 'DYN_SGL_MAX_PREFILL_TOKENS', default: 16384, defaultText: '16384', group: G_SCHED,
    help: 'Most prompt tokens admitted in one step; published as max_num_batched_tokens.' },
  { name: 'chunked-prefill-size', setting: 'chunkedPrefillSize', ...int(Type.Union([Type.Literal(-1), PositiveInt])), env: 'DYN_SGL_CHUNKED_PREFILL_SIZE', default: null,
    expected: '-1 (no chunking) or an integer >= 1', defaultText: 'chosen from device memory', group: G_SCHED,
    help: 'Longest prefill chunk per step; longer prompts are split across steps.' },
  { name: 'mem-fraction-static', setting: 'memFractionStatic', ...num(Type.Number({ exclusiveMinimum: 0, maximum: 1 })), env: 'DYN_SGL_MEM_FRACTION_STATIC', default: null,
    expected: 'a number in (0, 1]', defaultText: 'chosen from device memory', group: G_SCHED,
    help: 'Fraction of device memory for weights plus the KV pool.' },
  { name: 'disable-overlap-schedule', setting: 'disableOverlapSchedule', ...bool, env: 'DYN_SGL_DISABLE_OVERLAP_SCHEDULE', default: false, defaultText: 'false', group: G_SCHED,
    help: 'Build each step only after the previous one finished (no CPU/GPU overlap).' },
  { name: 'disable-radix-cache', setting: 'disableRadixCache', ...bool, env: 'DYN_SGL_DISABLE_RADIX_CACHE', default: false, defaultText: 'false', group: G_SCHED,
    help: 'Turn the radix prefix cache off: every request computes its whole prompt.' },
  { name: 'cpu-threads', setting: 'cpuThreads', ...int(), env: 'DYN_SGL_CPU_THREADS', default: null, defaultText: 'number of cores', group: G_SCHED,
    help: 'Threads of the CPU backend.' },
  { name: 'seed', aliases: ['random-seed'], setting: 'seed', ...int(Type.Integer({ minimum: 0 })), env: 'DYN_SGL_SEED', default: null, defaultText: 'random', group: G_SCHED,
    help: 'Base seed for sampling of requests that carry no seed.' },

  // disaggregation
  { name: 'disaggregation-bootstrap-port', setting: 'disaggregationBootstrapPort', ...int(Port), env: 'DYN_SGL_DISAGGREGATION_BOOTSTRAP_PORT', default: null,
    expected: 'a port number 1..65535', defaultText: 'a free port picked at start', group: G_DISAGG,
    help: 'Port of the KV bootstrap server (prefill workers; advertised by every worker).' },
  { name: 'disaggregation-transfer-backend', setting: 'disaggregationTransferBackend', ...choice(TransferBackendSchema, 'BACKEND'), env: 'DYN_SGL_DISAGGREGATION_TRANSFER_BACKEND', default: 'auto',
    expected: 'one of auto, tcp, nccl, cuda-ipc, fake (the reference\'s nixl and mooncake are not implemented by this engine)', defaultText: 'auto', group: G_DISAGG,
    help: 'How KV pages move from prefill to decode: auto = cuda-ipc where both workers run cuda on one host, else tcp; tcp = pages staged through host memory over TCP (cpu and cuda, any hosts; page size and dtype converted); cuda-ipc = GPU-to-GPU on one host, no host copy (an error where that is impossible); nccl = not in this build; fake = no transfer (tests and warm-up).' },
  { name: 'kv-transfer-timeout', setting: 'kvTransferTimeoutSecs', ...num(Seconds), valueName: 'SECS', env: 'DYN_SGL_KV_TRANSFER_TIMEOUT', default: 30, defaultText: '30', group: G_DISAGG,
    help: 'Seconds a KV transfer may take before the request fails.' },

  // observability and lifecycle
  { name: 'kv-events-config', setting: 'kvEventsConfig', kind: 'json', schema: KvEventsConfigInputSchema, valueName: 'JSON', env: 'DYN_SGL_KV_EVENTS_CONFIG', default: null,
    defaultText: 'none (no KV events)', group: G_OBS,
    help: 'KV event publisher as JSON, e.g. {"publisher":"zmq","topic":"kv-events","endpoint":"tcp://*:5557"}; publisher "null" turns events off.' },
  { name: 'enable-metrics', setting: 'enableMetrics', ...bool, env: 'DYN_SGL_ENABLE_METRICS', default: false, defaultText: 'false', group: G_OBS,
    help: "Export SGLang's engine metrics (sglang:* requests running and queued, token usage, cache hit rate, token counters, TTFT / inter-token / end-to-end latency histograms) on the system server's /metrics." },
  { name: 'system-host', setting: 'systemHost', ...str(), valueName: 'HOST', env: 'DYN_SYSTEM_HOST', default: '0.0.0.0', defaultText: '0.0.0.0', group: G_OBS,
    help: 'Bind address of the system server (/metrics, /health, /live).' },
  { name: 'system-port', setting: 'systemPort', ...int(Type.Integer({ minimum: -1, maximum: 65535 })), env: 'DYN_SYSTEM_PORT', default: -1,
    expected: '-1 (off), 0 (OS-assigned) or a port 1..65535', defaultText: '-1 (off)', group: G_OBS,
    help: 'Port of the system server.' },
  { name: 'health-check-enabled', setting: 'healthCheckEnabled', ...bool, env: 'DYN_HEALTH_CHECK_ENABLED', default: false, defaultText: 'false', group: G_OBS,
    help: 'Send canary health-check requests to this worker\'s endpoint when it has been idle.' },
  { name: 'canary-wait-time', setting: 'canaryWaitTimeSecs', ...num(Seconds), valueName: 'SECS', env: 'DYN_CANARY_WAIT_TIME', default: 10, defaultText: '10', group: G_OBS,
    help: 'Idle seconds before a canary health check is sent.' },
  { name: 'health-check-request-timeout', setting: 'healthCheckRequestTimeoutSecs', ...num(Seconds), valueName: 'SECS', env: 'DYN_HEALTH_CHECK_REQUEST_TIMEOUT', default: 3, defaultText: '3', group: G_OBS,
    help: 'Seconds a health-check request may take.' },
  { name: 'health-check-payload', setting: 'healthCheckPayload', kind: 'json', allowFileRef: true, schema: JsonObject, valueName: 'JSON|@FILE', env: 'DYN_HEALTH_CHECK_PAYLOAD', default: null,
    expected: 'a JSON object (inline or @file.json)', defaultText: 'the mode\'s built-in payload', group: G_OBS,
    help: 'Health-check request body that replaces the built-in one.' },
  { name: 'graceful-shutdown-grace-period', setting: 'gracefulShutdownGracePeriodSecs', ...num(Type.Number({ minimum: 0 })), valueName: 'SECS', env: 'DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS', default: 5, defaultText: '5', group: G_OBS,
    help: 'On SIGTERM/SIGINT: seconds between leaving discovery and cancelling in-flight requests.' },
  { name: 'multimodal-embedding-cache-capacity-gb', setting: 'multimodalEmbeddingCacheCapacityGb', ...num(Type.Number({ minimum: 0 })), valueName: 'GB', env: 'DYN_MULTIMODAL_EMBEDDING_CACHE_CAPACITY_GB', default: 0, defaultText: '0 (off)', group: G_OBS,
    help: 'LRU cache of image embeddings in the multimodal encoder.' },
  // logging (src/runtime/log.ts): a level, or DYN_LOG's directives (`info,dynamo_runtime=trace`)
  { name: 'log-level', setting: 'logLevel', kind: 'string', schema: LogSpecSchema, valueName: 'LEVEL|SPEC',
    expected: `a level (${LOG_SPEC_LEVELS.join(', ')}) or DYN_LOG directives such as info,dynamo_runtime=trace`,
    env: 'DYN_LOG', default: 'info', defaultText: 'info', group: G_OBS,
    normalize: (v) => (v === 'warning' ? 'warn' : v === 'critical' ? 'error' : v),
    help: 'Log verbosity: a level, or a default and per-target levels (DYN_LOG syntax: info,worker=debug,dynamo_runtime=trace); SGLang\'s "warning" and "critical" mean warn and error. DYN_LOGGING_JSONL=1 writes JSON lines.' },

  // Dynamo 0.8 worker flags that were missing
  { name: 'multimodal-processor', setting: 'multimodalProcessor', ...bool, env: 'DYN_SGL_MULTIMODAL_PROCESSOR', default: false, defaultText: 'false', group: G_ROLE,
    help: 'Run the legacy multimodal processor component ({ns}.processor.generate). Resolved into the configuration (worker kind, endpoint); this build does not serve it yet and refuses to start with it.' },
  { name: 'use-sglang-tokenizer', setting: 'useSglangTokenizer', ...bool, env: 'DYN_SGL_USE_TOKENIZER', default: false, defaultText: 'false', group: G_ROLE,
    help: 'Deprecated text in/out mode (the engine tokenizes; chat only). Accepted and not used: this worker keeps serving token ids and the frontend tokenizes, and says so at start. Cannot be combined with --custom-jinja-template.' },
  { name: 'migration-limit', setting: 'migrationLimit', ...int(Type.Integer({ minimum: 0 })), env: 'DYN_MIGRATION_LIMIT', default: 0, defaultText: '0 (no migration)', group: G_RUNTIME,
    help: "How many times the frontend may move a request whose worker died to another worker; published as the model card's migration_limit." },
  { name: 'enable-local-indexer', setting: 'localIndexer', ...bool, explicitValue: true, env: 'DYN_LOCAL_INDEXER', default: null,
    defaultText: 'on unless --durable-kv-events; always off in decode mode', group: G_RUNTIME,
    help: "Keep a worker-local index of this worker's KV blocks for routers that recover (published as enable_local_indexer). Also takes true or false after it, as 0.8 spelled it (--enable-local-indexer false)." },
  // honoured SGLang flags without an earlier row here
  { name: 'max-total-tokens', setting: 'maxTotalTokens', ...int(), env: 'DYN_SGL_MAX_TOTAL_TOKENS', default: null, defaultText: 'sized from device memory', group: G_SCHED,
    help: 'KV pool size in tokens (rounded up to whole pages) instead of a size chosen from --mem-fraction-static.' },
  ...(['time-to-first-token', 'inter-token-latency', 'e2e-request-latency'] as const).map((what): WorkerFlag => ({
    name: `bucket-${what}`,
    setting: ({ 'time-to-first-token': 'bucketTimeToFirstToken', 'inter-token-latency': 'bucketInterTokenLatency', 'e2e-request-latency': 'bucketE2eRequestLatency' } as const)[what],
    kind: 'list', multiValue: true, schema: Type.Array(Type.String({ pattern: NUMBER_TEXT, description: 'a number' }), { minItems: 1 }),
    expected: 'increasing numbers of seconds, space- or comma-separated', valueName: 'SECS...',
    env: `DYN_SGL_BUCKET_${what.toUpperCase().replaceAll('-', '_')}`, default: null, defaultText: "SGLang's", group: G_OBS,
    help: `Bucket bounds of the sglang:${what.replaceAll('-', '_')}_seconds histogram (with --enable-metrics).`,
  })),
  { name: 'collect-tokens-histogram', setting: 'collectTokensHistogram', ...bool, env: 'DYN_SGL_COLLECT_TOKENS_HISTOGRAM', default: false, defaultText: 'false', group: G_OBS,
    help: 'With --enable-metrics, also export the sglang:prompt_tokens_histogram and sglang:generation_tokens_histogram of finished requests.' },

  // meta
  { name: 'config', setting: 'configFile', ...str(), valueName: 'YAML', default: null, defaultText: 'none', group: G_MISC,
    help: 'YAML file of flag values (keys spelled like the flags, e.g. page-size: 16); flags and DYN_* env vars override it.' },
  { name: 'config-key', setting: 'configKey', ...str(), valueName: 'KEY', default: null, defaultText: 'none (the whole file)', group: G_MISC,
    help: 'Read only section KEY of the --config YAML file (e.g. prefill and decode sections of one file); the section must be a mapping of flag names to values.' },
  { name: 'dump-config-to', setting: 'dumpConfigTo', ...str(), valueName: 'FILE|-', env: 'DYN_DUMP_CONFIG_TO', default: null, defaultText: 'none', group: G_MISC,
    help: 'Write the resolved configuration as JSON to FILE (- for stdout) and exit without loading a model.' },
  { name: 'version', setting: 'version', ...bool, default: false, group: G_MISC,
    help: 'Print the version and exit.' },
];

/** A setting's built-in default: that of the first of its flags that has one (null: none, derived later or left to
 * the engine). */
export function flagDefault(setting: SettingKey): FlagValue {
  return WORKER_FLAGS.find((f) => f.setting === setting && f.default !== null)?.default ?? null;
}

/** Help sections in table order. */
export function flagGroups(): { title: string; flags: WorkerFlag[] }[] {
  const groups: { title: string; flags: WorkerFlag[] }[] = [];
  for (const f of WORKER_FLAGS) {
    const title = f.group ?? G_MISC;
    let g = groups.find((x) => x.title === title);
    if (!g) groups.push((g = { title, flags: [] }));
    g.flags.push(f);
  }
  return groups;
}
