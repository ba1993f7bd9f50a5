// resolveConfig(): the one place a worker configuration is made. Layers, highest first: CLI flags, env vars,
// the YAML file given by --config, built-in defaults. Every value is converted and checked against its flag's
// typebox schema where it is read (so errors name the flag, env var or YAML key as the user wrote it), then the
// derived settings (serving mode, worker kind, endpoint, ...) are computed, cross-checked and frozen.

import { readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join, resolve as resolvePath } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';
import { LlmError } from '../errors.js';
import {
  closest,
  convertTyped,
  FlagIndex,
  parseArgs,
  readEnv,
  usageError,
  type FlagSpec,
  type FlagValue,
  type ParsedFlag,
} from '../cli/args.js';
import {
  flagDefault,
  KV_EVENTS_DEFAULTS,
  WORKER_FLAGS,
  WorkerConfigSchema,
  type EndpointId,
  type KvEventsConfig,
  type SettingKey,
  type WorkerConfig,
  type WorkerFlag,
  type WorkerKind,
  type ServingMode,
} from './schema.js';
import { SGLANG_PASSIVE_FLAGS, isUnusedSglangFlag } from './sglang-flags.js';
import { resolveModelPath } from './model-path.js';

/** Every spelling `start` accepts: the worker flags (SGLang's honoured flags among their aliases) and SGLang's other
 * server flags, which are checked and then only reported. */
export const WORKER_FLAG_INDEX = new FlagIndex([...WORKER_FLAGS, ...SGLANG_PASSIVE_FLAGS]);

export interface ResolveOptions {
  /** Base directory for relative paths (--config, @file payloads, the template); default process.cwd(). */
  cwd?: string;
}

/** A setting after layering: its value and where it came from (null = built-in default). */
interface Setting {
  value: FlagValue;
  given: ParsedFlag | null;
}

type Layer = Map<FlagSpec, ParsedFlag>;

function workerFlag(name: string): WorkerFlag {
  const f = WORKER_FLAGS.find((x) => x.name === name);
  if (!f) throw new Error(`no flag --${name} in the table`);
  return f;
}

/** How a given value is named in messages: `--disagg-mode decode`, `DYN_X=decode`, `w.yaml: key "x" = decode`. */
export function describeGiven(p: ParsedFlag): string {
  const text = typeof p.value === 'string' ? p.value : JSON.stringify(p.value);
  switch (p.source.layer) {
    case 'cli':
      return typeof p.value === 'boolean' ? p.source.label : `${p.source.label} ${text}`;
    case 'env':
      return `${p.source.label}=${text}`;
    case 'yaml':
      return `${p.source.label} = ${text}`;
  }
}

function readYamlLayer(file: string, cwd: string, section: string | null): Layer {
  const path = resolvePath(cwd, file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw usageError(`${file}: cannot read the --config file: ${(err as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw usageError(`${file}: invalid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const layer: Layer = new Map();
  if (section !== null) {
    // --config-key: one section of a file that holds several (e.g. prefill: and decode:)
    const sections = doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? (doc as Record<string, unknown>) : null;
    if (sections === null) throw usageError(`${file}: --config-key ${section} needs a mapping of sections, got ${Array.isArray(doc) ? 'a list' : JSON.stringify(doc ?? null)}`);
    if (!Object.hasOwn(sections, section)) {
      throw usageError(`--config-key ${section}: no section "${section}" in ${file}; it has ${Object.keys(sections).map((k) => `"${k}"`).join(', ') || 'none'}`);
    }
    doc = sections[section];
    const isMapping = doc !== null && typeof doc === 'object' && !Array.isArray(doc);
    if (!isMapping) throw usageError(`--config-key ${section}: section "${section}" of ${file} must be a mapping of flag names to values, got ${Array.isArray(doc) ? 'a list' : JSON.stringify(doc ?? null)}`);
    file = `${file} [${section}]`;
  }
  if (doc === null || doc === undefined) return layer;
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw usageError(`${file}: expected a mapping of flag names to values, got ${Array.isArray(doc) ? 'a list' : JSON.stringify(doc)}`);
  }
  const keyOf = new Map<FlagSpec, string>();
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    const hit = WORKER_FLAG_INDEX.lookup(key);
    if (!hit || hit.negated) {
      const names = [...WORKER_FLAGS, ...SGLANG_PASSIVE_FLAGS].flatMap((f) => [f.name, ...(f.aliases ?? [])]);
      const near = hit?.spec.name ?? closest(key, names);
      throw usageError(`${file}: unknown key "${key}"${near ? `; did you mean "${near}"?` : ''}`);
    }
    const spec = hit.spec;
    if (spec.name === 'config' || spec.name === 'config-key' || spec.name === 'version') {
      throw usageError(`${file}: key "${key}" cannot be used inside a --config file`);
    }
    const earlier = keyOf.get(spec);
    if (earlier !== undefined) throw usageError(`${file}: keys "${earlier}" and "${key}" set the same flag --${spec.name}`);
    keyOf.set(spec, key);
    const label = `${file}: key "${key}"`;
    layer.set(spec, { spec, value: convertTyped(spec, value, label, cwd), source: { layer: 'yaml', label } });
  }
  return layer;
}

function normalized(p: ParsedFlag): FlagValue {
  const f = p.spec as WorkerFlag;
  return f.normalize ? f.normalize(p.value) : p.value;
}

/** Picks each setting from the highest layer that gives it; two spellings in one layer must agree. */
function mergeLayers(layers: readonly Layer[]): Map<SettingKey, Setting> {
  const bySetting = new Map<SettingKey, WorkerFlag[]>();
  for (const f of WORKER_FLAGS) bySetting.set(f.setting, [...(bySetting.get(f.setting) ?? []), f]);
  const out = new Map<SettingKey, Setting>();
  for (const [setting, specs] of bySetting) {
    let chosen: Setting | undefined;
    for (const layer of layers) {
      const given = specs.map((s) => layer.get(s)).filter((p): p is ParsedFlag => p !== undefined);
      if (given.length === 0) continue;
      const [first, ...rest] = given;
      for (const other of rest) {
        if (JSON.stringify(normalized(other)) !== JSON.stringify(normalized(first))) {
          throw usageError(`${describeGiven(first)} contradicts ${describeGiven(other)}`);
        }
      }
      chosen = { value: normalized(first), given: first };
      break;
    }
    out.set(setting, chosen ?? { value: flagDefault(setting), given: null });
  }
  return out;
}

/** `~` and `$VAR` / `${VAR}` expansion (unset variables are left as written), then made absolute. */
function expandPath(p: string, env: NodeJS.ProcessEnv, cwd: string): string {
  let out = p.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (whole, a?: string, b?: string) => {
    const v = env[(a ?? b) as string];
    return v === undefined ? whole : v;
  });
  if (out === '~' || out.startsWith('~/')) out = (env.HOME ?? homedir()) + out.slice(1);
  return resolvePath(cwd, out);
}

function parseEndpoint(text: string): EndpointId {
  const [namespace, component, endpoint] = text.replace(/^dyn:\/\//, '').split('.');
  return { namespace, component, endpoint };
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/** Resolves and validates the worker configuration; throws LlmError('LLM_ERR_USAGE') on any bad input. */
export function resolveConfig(argv: string[], env: NodeJS.ProcessEnv = process.env, opts: ResolveOptions = {}): WorkerConfig {
  const cwd = opts.cwd ?? process.cwd();
  const cli = parseArgs(argv, WORKER_FLAG_INDEX, { cwd });
  const envLayer = readEnv(WORKER_FLAGS, env, cwd);
  const configFile = cli.flags.get(workerFlag('config'))?.value;
  const configKey = cli.flags.get(workerFlag('config-key'))?.value;
  if (typeof configKey === 'string' && typeof configFile !== 'string') {
    throw usageError(`--config-key ${configKey} needs --config FILE: it names a section of that YAML file`);
  }
  const yamlLayer: Layer = typeof configFile === 'string' ? readYamlLayer(configFile, cwd, typeof configKey === 'string' ? configKey : null) : new Map();
  const settings = mergeLayers([cli.flags, envLayer, yamlLayer]);
  // SGLang flags this worker only checks: the command line's, then the file's for those the command line lacks
  const passive = new Map<string, ParsedFlag>();
  for (const layer of [cli.flags, yamlLayer]) {
    for (const p of layer.values()) if (SGLANG_PASSIVE_FLAGS.includes(p.spec) && !passive.has(p.spec.name)) passive.set(p.spec.name, p);
  }
  return deepFreeze(derive(settings, [...passive.values()], env, cwd));
}

function derive(settings: Map<SettingKey, Setting>, passive: readonly ParsedFlag[], env: NodeJS.ProcessEnv, cwd: string): WorkerConfig {
  const setting = (k: SettingKey): Setting => settings.get(k) as Setting;
  // Values were checked against their flag schemas when read; these accessors only narrow the static type.
  const str = (k: SettingKey) => setting(k).value as string;
  const optStr = (k: SettingKey) => setting(k).value as string | null;
  const num = (k: SettingKey) => setting(k).value as number;
  const optNum = (k: SettingKey) => setting(k).value as number | null;
  const bool = (k: SettingKey) => setting(k).value as boolean;
  const list = (k: SettingKey) => setting(k).value as readonly string[];
  const named = (k: SettingKey, fallback: string) => {
    const g = setting(k).given;
    return g ? describeGiven(g) : fallback;
  };
  const refuse = (msg: string): never => {
    throw usageError(msg);
  };

  const modelPathGiven = optStr('modelPath');
  if (modelPathGiven === null) refuse('missing --model-path (or DYN_SGL_MODEL_PATH, or model-path in the --config file)');
  // a Hugging Face repo id resolves to its snapshot in the local cache; it stays the default served model name
  const model = resolveModelPath(modelPathGiven as string, env, setting('modelPath').given?.source.label ?? '--model-path');
  const modelPath = model.path;

  // serving mode and worker kind
  const servingMode = (optStr('servingMode') ?? 'aggregated') as ServingMode;
  const modeText = named('servingMode', servingMode);
  const roles: { key: SettingKey; kind: WorkerKind }[] = [
    { key: 'embeddingWorker', kind: 'embedding' },
    { key: 'multimodalEncodeWorker', kind: 'multimodal-encode' },
    { key: 'multimodalWorker', kind: 'multimodal-worker' },
    { key: 'multimodalProcessor', kind: 'multimodal-processor' },
  ];
  const active = roles.filter((r) => bool(r.key));
  if (active.length > 1) {
    refuse(`${named(active[0].key, '')} cannot be combined with ${named(active[1].key, '')}: a worker has exactly one role`);
  }
  const workerKind: WorkerKind = active[0]?.kind ?? 'llm';
  if (servingMode !== 'aggregated' && (workerKind === 'embedding' || workerKind === 'multimodal-encode' || workerKind === 'multimodal-processor')) {
    const why = workerKind === 'embedding'
      ? 'an embedding worker runs one pooled pass per input and has no prefill/decode split'
      : workerKind === 'multimodal-processor'
        ? 'the multimodal processor only prepares requests; prefill/decode is split on the --multimodal-worker side'
        : 'the multimodal encoder only produces image embeddings; prefill/decode is split on the --multimodal-worker side';
    refuse(`${named(active[0].key, '')} cannot be combined with ${modeText}: ${why}`);
  }

  // namespace and endpoint
  const suffix = env.DYN_NAMESPACE_WORKER_SUFFIX;
  const baseNamespace = str('namespace');
  const namespace = suffix ? `${baseNamespace}-${suffix}` : baseNamespace;
  const endpointText = optStr('endpointString');
  const componentName = optStr('componentName');
  let endpoint: EndpointId;
  if (endpointText !== null) {
    endpoint = parseEndpoint(endpointText);
    if (componentName !== null && componentName !== endpoint.component) {
      refuse(`${named('componentName', '')} contradicts ${named('endpointString', '')} (component "${endpoint.component}")`);
    }
    if (setting('namespace').given && baseNamespace !== endpoint.namespace) {
      refuse(`${named('namespace', '')} contradicts ${named('endpointString', '')} (namespace "${endpoint.namespace}")`);
    }
  } else {
    const component = componentName
      ?? (workerKind === 'embedding'
        ? 'backend'
        : servingMode === 'prefill'
          ? 'prefill'
          : workerKind === 'multimodal-processor' ? 'processor' : workerKind === 'multimodal-encode' ? 'encoder' : 'backend');
    endpoint = { namespace, component, endpoint: 'generate' };
  }

  // parallelism and multi-node
  const nnodes = num('nnodes');
  const nodeRank = num('nodeRank');
  const tpSize = num('tpSize');
  const distInitAddr = optStr('distInitAddr');
  if (nodeRank >= nnodes) refuse(`${named('nodeRank', `--node-rank ${nodeRank}`)} must be less than ${named('nnodes', `--nnodes ${nnodes}`)}`);
  if (nnodes > 1 && distInitAddr === null) {
    refuse(`${named('nnodes', '')} needs --dist-init-addr HOST:PORT (the leader node's address that every node joins)`);
  }
  if (tpSize % nnodes !== 0) {
    refuse(`${named('tpSize', `--tp-size ${tpSize}`)} is not a multiple of ${named('nnodes', '')}: each node runs tp-size/nnodes ranks`);
  }

  // chat template
  const templateRaw = optStr('customJinjaTemplate');
  let customJinjaTemplate: string | null = null;
  if (templateRaw !== null) {
    customJinjaTemplate = expandPath(templateRaw, env, cwd);
    let isFile = false;
    try {
      isFile = statSync(customJinjaTemplate).isFile();
    } catch {
      isFile = false;
    }
    if (!isFile) refuse(`${named('customJinjaTemplate', '')}: Custom Jinja template file not found: ${customJinjaTemplate}`);
  }

  // KV events
  const kvInput = setting('kvEventsConfig').value as Partial<KvEventsConfig> | null;
  const kvEventsConfig: KvEventsConfig | null = kvInput === null ? null : { ...KV_EVENTS_DEFAULTS, ...kvInput };
  const durableKvEvents = bool('durableKvEvents');
  const localIndexer = setting('localIndexer').value as boolean | null;
  if (localIndexer === true && durableKvEvents) {
    refuse(`${named('localIndexer', '')} contradicts ${named('durableKvEvents', '')}: durable KV events replace the local indexer`);
  }

  // SGLang's parser flags and Dynamo's: the reference refuses both of a kind (SGLang's alone is not used here)
  const given = (name: string) => passive.find((p) => p.spec.name === name);
  for (const [sglang, dyn] of [['tool-call-parser', 'dynToolCallParser'], ['reasoning-parser', 'dynReasoningParser']] as const) {
    const theirs = given(sglang);
    if (theirs && optStr(dyn) !== null) refuse(`${describeGiven(theirs)} cannot be combined with ${named(dyn, '')}: use only --dyn-${sglang}`);
  }
  const lowFirst = given('schedule-low-priority-values-first');
  if (lowFirst?.value === true) {
    refuse(`${describeGiven(lowFirst)} is not supported: in Dynamo a higher priority value means a more important request`);
  }
  const useSglangTokenizer = bool('useSglangTokenizer');
  if (useSglangTokenizer && templateRaw !== null) {
    refuse(`${named('useSglangTokenizer', '--use-sglang-tokenizer')} cannot be combined with ${named('customJinjaTemplate', '')}: the template is applied by the frontend's preprocessor, which text mode bypasses (SGLang's --chat-template is the engine-side one)`);
  }
  if (useSglangTokenizer && (servingMode !== 'aggregated' || workerKind !== 'llm')) {
    refuse(`${named('useSglangTokenizer', '--use-sglang-tokenizer')} (text in, text out) is served by aggregated LLM workers only, not with ${servingMode !== 'aggregated' ? modeText : `the ${workerKind} worker`}`);
  }
  // as typed: a list given as several values reads back as those values
  const asGiven = (p: ParsedFlag) => (Array.isArray(p.value) ? describeGiven({ ...p, value: p.value.join(' ') }) : describeGiven(p));
  const unusedFlags = passive.filter((p) => isUnusedSglangFlag(p.spec)).map(asGiven);

  // histogram buckets: numbers, strictly increasing (as Prometheus needs them)
  const buckets = (k: SettingKey): number[] | null => {
    const text = setting(k).value as readonly string[] | null;
    if (text === null) return null;
    const bounds = text.map(Number);
    if (bounds.some((b, i) => i > 0 && b <= bounds[i - 1])) refuse(`${named(k, '')}: bucket bounds must be strictly increasing, got ${text.join(' ')}`);
    return bounds;
  };

  const endpointTypes = [...new Set(list('endpointTypes'))] as WorkerConfig['endpointTypes'];

  const config: WorkerConfig = {
    configFile: optStr('configFile'),
    modelPath,
    tokenizerPath: optStr('tokenizerPath') ?? modelPath,
    servedModelName: optStr('servedModelName') ?? model.repoId ?? modelPath,
    contextLength: optNum('contextLength'),
    customJinjaTemplate,
    workerKind,
    servingMode,
    namespace: endpointText !== null ? endpoint.namespace : namespace,
    endpoint,
    endpointTypes,
    discoveryBackend: str('discoveryBackend') as WorkerConfig['discoveryBackend'],
    requestPlane: str('requestPlane') as WorkerConfig['requestPlane'],
    eventPlane: str('eventPlane') as WorkerConfig['eventPlane'],
    etcdEndpoints: [...list('etcdEndpoints')],
    natsServer: str('natsServer'),
    fileKvRoot: optStr('fileKvRoot') ?? join(env.TMPDIR ?? tmpdir(), 'dynamo_store_kv'),
    tcpRpcHost: optStr('tcpRpcHost'),
    tcpRpcPort: num('tcpRpcPort'),
    wireProfile: str('wireProfile') as WorkerConfig['wireProfile'],
    dynToolCallParser: optStr('dynToolCallParser'),
    dynReasoningParser: optStr('dynReasoningParser'),
    migrationLimit: num('migrationLimit'),
    useSglangTokenizer,
    excludeToolsWhenToolChoiceNone: bool('excludeToolsWhenToolChoiceNone'),
    durableKvEvents,
    enableLocalIndexer: (localIndexer ?? !durableKvEvents) && servingMode !== 'decode',
    tpSize,
    baseGpuId: num('baseGpuId'),
    dpSize: num('dpSize'),
    nnodes,
    nodeRank,
    distInitAddr,
    disableCustomAllReduce: bool('disableCustomAllReduce'),
    device: str('device') as WorkerConfig['device'],
    pageSize: num('pageSize'),
    maxRunningRequests: optNum('maxRunningRequests'),
    maxTotalTokens: optNum('maxTotalTokens'),
    maxPrefillTokens: num('maxPrefillTokens'),
    chunkedPrefillSize: optNum('chunkedPrefillSize'),
    memFractionStatic: optNum('memFractionStatic'),
    disableOverlapSchedule: bool('disableOverlapSchedule'),
    disableRadixCache: bool('disableRadixCache'),
    cpuThreads: optNum('cpuThreads'),
    seed: optNum('seed'),
    disaggregationBootstrapPort: optNum('disaggregationBootstrapPort'),
    disaggregationTransferBackend: str('disaggregationTransferBackend') as WorkerConfig['disaggregationTransferBackend'],
    kvTransferTimeoutSecs: num('kvTransferTimeoutSecs'),
    kvEventsConfig,
    useKvEvents: kvEventsConfig !== null && kvEventsConfig.publisher !== 'null',
    enableMetrics: bool('enableMetrics'),
    bucketTimeToFirstToken: buckets('bucketTimeToFirstToken'),
    bucketInterTokenLatency: buckets('bucketInterTokenLatency'),
    bucketE2eRequestLatency: buckets('bucketE2eRequestLatency'),
    collectTokensHistogram: bool('collectTokensHistogram'),
    systemHost: str('systemHost'),
    systemPort: num('systemPort'),
    healthCheckEnabled: bool('healthCheckEnabled'),
    canaryWaitTimeSecs: num('canaryWaitTimeSecs'),
    healthCheckRequestTimeoutSecs: num('healthCheckRequestTimeoutSecs'),
    healthCheckPayload: setting('healthCheckPayload').value as WorkerConfig['healthCheckPayload'],
    gracefulShutdownGracePeriodSecs: num('gracefulShutdownGracePeriodSecs'),
    multimodalEmbeddingCacheCapacityGb: num('multimodalEmbeddingCacheCapacityGb'),
    logLevel: str('logLevel') as WorkerConfig['logLevel'],
    dumpConfigTo: optStr('dumpConfigTo'),
    configKey: optStr('configKey'),
    unusedFlags,
  };

  // Guard: the derivation above must produce a config its own schema accepts.
  const bad = Value.Errors(WorkerConfigSchema, config).First();
  if (bad) throw new LlmError('LLM_ERR_INTERNAL', `resolved configuration fails its schema at ${bad.path}: ${bad.message}`);
  return config;
}

/** Binds an ephemeral port on localhost, closes it and returns its number (what the reference does). */
export function pickFreePort(host = 'localhost'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Fills what needs the host: a bootstrap port when none was given. Returns a new frozen config. A prefill worker
 * keeps none: its bootstrap server listens on a port the OS picks and advertises the one it got (picking a free port
 * here and listening on it later could lose the port to another process in between).
 */
export async function finalizeConfig(config: WorkerConfig): Promise<WorkerConfig> {
  if (config.disaggregationBootstrapPort !== null || config.servingMode === 'prefill') return config;
  const port = await pickFreePort();
  return deepFreeze({ ...structuredClone(config), disaggregationBootstrapPort: port });
}
