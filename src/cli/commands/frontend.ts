// `dynamo-sglang frontend`: the OpenAI-compatible HTTP server that discovers workers' model cards and routes
// requests to them (reference architecture: the Dynamo frontend). Flags are described once in FRONTEND_FLAGS; the
// all-in-one `run` accepts the same ones.
import { armShutdownWatchdog, SHUTDOWN_MARGIN_MS } from '../shutdown-watchdog.js';
import { readFileSync } from 'node:fs';
import { Type } from '@sinclair/typebox';
import { parseCommandLine, renderHelp, usageError, type FlagSpec } from '../args.js';
import { LOG_LEVEL_HELP } from '../logging.js';
import { Discovery, type DiscoveryConfig } from '../../runtime/discovery/index.js';
import type { NatsConnection } from 'nats';
import { connectNats } from '../../runtime/request-plane/nats.js';
import { redactUrl } from '../../runtime/credentials.js';
import { DiscoveredModels, type FrontendRouting } from '../../frontend/discovered-models.js';
import { DEFAULT_REQUEST_LIMITS, OpenAiServer, type RequestLimits } from '../../frontend/openai-server.js';
import { DEFAULT_WIRE_PROFILE, WireProfileSchema, type WireProfile } from '../../protocol/wire-profile.js';
import { logger } from '../../runtime/log.js';

const log = logger('frontend');

const G_FRONTEND = 'Frontend';

export const FRONTEND_FLAGS: readonly FlagSpec[] = [
  { name: 'http-port', kind: 'int', schema: Type.Integer({ minimum: 0, maximum: 65535 }), env: 'DYN_HTTP_PORT', valueName: 'PORT', default: 8000, defaultText: '8000', group: G_FRONTEND,
    help: 'Port of the OpenAI-compatible HTTP server (0 = pick a free one).' },
  { name: 'http-host', kind: 'string', schema: Type.String({ minLength: 1 }), env: 'DYN_HTTP_HOST', valueName: 'HOST', default: '0.0.0.0', defaultText: '0.0.0.0', group: G_FRONTEND,
    help: 'Address the HTTP server binds.' },
  { name: 'router-mode', kind: 'string', schema: Type.Union([Type.Literal('round-robin'), Type.Literal('random'), Type.Literal('kv')]), env: 'DYN_ROUTER_MODE', valueName: 'MODE', default: 'round-robin', defaultText: 'round-robin', group: G_FRONTEND,
    help: 'How requests are spread over a model\'s workers: round-robin, random, or kv (to the worker with the most of the prompt cached and the least load, from KV events and load on the NATS event plane).' },
  { name: 'kv-overlap-score-weight', kind: 'number', schema: Type.Number({ minimum: 0 }), env: 'DYN_KV_OVERLAP_SCORE_WEIGHT', valueName: 'W', default: 1, defaultText: '1.0', group: G_FRONTEND,
    help: 'Router mode kv: weight of the prompt blocks a worker would have to prefill, against its active blocks.' },
  { name: 'router-temperature', kind: 'number', schema: Type.Number({ minimum: 0 }), env: 'DYN_ROUTER_TEMPERATURE', valueName: 'T', default: 0, defaultText: '0 (always the cheapest worker)', group: G_FRONTEND,
    help: 'Router mode kv: sample workers from a softmax over their costs at this temperature.' },
  { name: 'max-inflight-requests', kind: 'int', schema: Type.Integer({ minimum: 1 }), env: 'DYN_MAX_INFLIGHT_REQUESTS', valueName: 'N', default: 4096, defaultText: '4096', group: G_FRONTEND,
    help: 'Requests in flight at once; more are refused with HTTP 429 and retry-after.' },
  { name: 'max-request-bytes', kind: 'int', schema: Type.Integer({ minimum: 1024 }), env: 'DYN_MAX_REQUEST_BYTES', valueName: 'BYTES', default: DEFAULT_REQUEST_LIMITS.maxRequestBytes, defaultText: '8388608 (8 MiB)', group: G_FRONTEND,
    help: 'Largest request body; a larger one is refused with HTTP 413 before it is read.' },
  { name: 'max-prompt-bytes', kind: 'int', schema: Type.Integer({ minimum: 1 }), env: 'DYN_MAX_PROMPT_BYTES', valueName: 'BYTES', default: DEFAULT_REQUEST_LIMITS.maxPromptBytes, defaultText: '1048576 (1 MiB)', group: G_FRONTEND,
    help: 'Most prompt text of one request (all prompts or all message contents, UTF-8 bytes); more is refused with HTTP 400 before tokenizing.' },
  { name: 'max-choices', kind: 'int', schema: Type.Integer({ minimum: 1 }), env: 'DYN_MAX_CHOICES', valueName: 'N', default: DEFAULT_REQUEST_LIMITS.maxChoices, defaultText: String(DEFAULT_REQUEST_LIMITS.maxChoices), group: G_FRONTEND,
    help: 'Most choices of one request (number of prompts x n); more is refused with HTTP 400 before tokenizing.' },
  { name: 'tokenize-timeout-ms', kind: 'int', schema: Type.Integer({ minimum: 1 }), env: 'DYN_TOKENIZE_TIMEOUT_MS', valueName: 'MS', default: DEFAULT_REQUEST_LIMITS.tokenizeTimeoutMs, defaultText: String(DEFAULT_REQUEST_LIMITS.tokenizeTimeoutMs), group: G_FRONTEND,
    help: 'A request whose prompts take longer to tokenize is refused with HTTP 400.' },
  { name: 'api-key', kind: 'list', multiValue: true, schema: Type.Array(Type.String({ minLength: 1 })), env: 'DYN_API_KEYS', valueName: 'KEY', default: [], defaultText: 'none', group: G_FRONTEND,
    help: 'API keys the HTTP server accepts (several: comma separated or one after another); with any key (here or in --api-key-file) every request but /health and /live needs "Authorization: Bearer KEY", else HTTP 401.' },
  { name: 'api-key-file', kind: 'string', schema: Type.String({ minLength: 1 }), env: 'DYN_API_KEY_FILE', valueName: 'PATH', default: null, defaultText: 'none', group: G_FRONTEND,
    help: 'File of API keys, one a line (blank lines and lines starting with # are skipped); added to --api-key.' },
  { name: 'dynamo-wire', kind: 'string', schema: WireProfileSchema, env: 'DYN_WIRE_PROFILE', valueName: 'VERSION', default: DEFAULT_WIRE_PROFILE, defaultText: DEFAULT_WIRE_PROFILE, group: G_FRONTEND,
    help: 'Dynamo release whose wire formats the workers speak: 0.8 or main (KV events, load and local-indexer queries the kv router reads); the same setting as the workers\'.' },
  { name: 'migration-limit', kind: 'int', schema: Type.Integer({ minimum: 0, maximum: 100 }), env: 'DYN_MIGRATION_LIMIT', valueName: 'N', default: 0, defaultText: '0 (off)', group: G_FRONTEND,
    help: 'How many times a request whose worker dies mid-stream is moved to another worker.' },
];

const DISCOVERY_FLAGS: readonly FlagSpec[] = [
  { name: 'namespace', kind: 'string', schema: Type.String({ minLength: 1 }), env: 'DYN_NAMESPACE', valueName: 'NS', default: 'dynamo', defaultText: 'dynamo', group: 'Discovery',
    help: 'Only serve models registered under this namespace.' },
  { name: 'discovery-backend', aliases: ['store-kv'], kind: 'string', schema: Type.Union([Type.Literal('etcd'), Type.Literal('file'), Type.Literal('mem')]), env: 'DYN_DISCOVERY_BACKEND', valueName: 'KIND', default: 'etcd', defaultText: 'etcd', group: 'Discovery',
    help: 'Where workers are registered: etcd (ETCD_ENDPOINTS), file (DYN_FILE_KV) or mem (same process only).' },
  { name: 'etcd-endpoints', kind: 'list', schema: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }), env: 'ETCD_ENDPOINTS', valueName: 'URLS', default: ['http://localhost:2379'], defaultText: 'http://localhost:2379', group: 'Discovery',
    help: 'etcd endpoints (comma or space separated).' },
  { name: 'file-kv-root', kind: 'string', schema: Type.String({ minLength: 1 }), env: 'DYN_FILE_KV', valueName: 'DIR', default: null, defaultText: '$TMPDIR/dynamo_store_kv', group: 'Discovery',
    help: 'Directory of the file discovery store.' },
  { name: 'nats-server', kind: 'string', schema: Type.String({ minLength: 1 }), env: 'NATS_SERVER', valueName: 'URL', default: 'nats://localhost:4222', defaultText: 'nats://localhost:4222', group: 'Discovery',
    help: 'NATS server: the event plane (KV events and load, for --router-mode kv) and the request plane of workers started with --request-plane nats. Connected when named or with --router-mode kv.' },
];

export interface FrontendSettings {
  httpPort: number;
  httpHost: string;
  routing: FrontendRouting;
  migrationLimit: number;
  maxInflight: number;
  kvOverlapScoreWeight: number;
  routerTemperature: number;
  limits: RequestLimits;
  apiKeys: string[];
  wireProfile: WireProfile;
  /** Address of the call-home server for workers' responses (default DYN_TCP_RPC_HOST, else this host's IP). */
  responseHost?: string;
}

export function frontendSettings(values: Record<string, unknown>): FrontendSettings {
  return {
    httpPort: values['http-port'] as number,
    httpHost: values['http-host'] as string,
    routing: values['router-mode'] === 'random' ? 'random' : values['router-mode'] === 'kv' ? 'kv' : 'round_robin',
    migrationLimit: values['migration-limit'] as number,
    maxInflight: values['max-inflight-requests'] as number,
    kvOverlapScoreWeight: values['kv-overlap-score-weight'] as number,
    routerTemperature: values['router-temperature'] as number,
    apiKeys: [...(values['api-key'] as string[]), ...apiKeysFromFile(values['api-key-file'] as string | null)],
    wireProfile: values['dynamo-wire'] as WireProfile,
    limits: {
      maxRequestBytes: values['max-request-bytes'] as number,
      maxPromptBytes: values['max-prompt-bytes'] as number,
      maxChoices: values['max-choices'] as number,
      tokenizeTimeoutMs: values['tokenize-timeout-ms'] as number,
    },
  };
}

function apiKeysFromFile(path: string | null): string[] {
  if (path === null) return [];
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw usageError(`--api-key-file ${path}: cannot read it: ${(err as Error).message}`);
  }
  const keys = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  if (keys.length === 0) throw usageError(`--api-key-file ${path}: no keys in it (one a line)`);
  return keys;
}

/** Starts the HTTP server over discovered models; prints where it listens. */
export async function startFrontend(
  discovery: Discovery,
  namespace: string | undefined,
  s: FrontendSettings,
  log: (line: string) => void,
  nats?: NatsConnection,
) {
  const models = await DiscoveredModels.create({
    discovery,
    namespace,
    routing: s.routing,
    nats,
    migrationLimit: s.migrationLimit,
    kvOverlapScoreWeight: s.kvOverlapScoreWeight,
    routerTemperature: s.routerTemperature,
    wireProfile: s.wireProfile,
    ...(s.responseHost === undefined ? {} : { responseHost: s.responseHost }),
    log,
  });
  // a port already in use must not leave the discovery watch keeping the process alive
  const server = await OpenAiServer.listen({ models, host: s.httpHost, port: s.httpPort, maxInflight: s.maxInflight, limits: s.limits, apiKeys: s.apiKeys }).catch(async (err: unknown) => {
    await models.close();
    throw err;
  });
  return { models, server };
}

function discoveryConfig(values: Record<string, unknown>): DiscoveryConfig {
  switch (values['discovery-backend']) {
    case 'mem':
      throw usageError('--discovery-backend mem: a standalone frontend cannot see workers of other processes in a mem store; use etcd or file (or `dynamo-sglang run` for one process)');
    case 'file':
      return { backend: 'file', root: (values['file-kv-root'] as string | null) ?? undefined };
    default:
      return { backend: 'etcd', endpoints: [...(values['etcd-endpoints'] as string[])] };
  }
}

export async function main(argv: string[]): Promise<number> {
  const specs = [...FRONTEND_FLAGS, ...DISCOVERY_FLAGS];
  const cl = parseCommandLine(argv, specs);
  if (cl.help) {
    process.stdout.write(renderHelp('dynamo-sglang frontend [options]', 'OpenAI-compatible HTTP frontend: discovers workers and routes requests to them.', [
      { title: 'Frontend', flags: FRONTEND_FLAGS },
      { title: 'Discovery', flags: DISCOVERY_FLAGS },
      { title: 'Logging', flags: [LOG_LEVEL_HELP] },
    ]));
    return 0;
  }
  const settings = frontendSettings(cl.values);
  // the event plane first: a failure then leaves no discovery lease keeping the process alive
  // NATS carries KV events (kv routing) and requests to workers on the nats request plane: connect when either may
  // be needed, i.e. for kv routing or when a NATS server was named
  const natsNamed = argv.some((a) => a === '--nats-server' || a.startsWith('--nats-server=')) || process.env.NATS_SERVER !== undefined;
  const nats = settings.routing === 'kv' || natsNamed ? await connectNats(cl.values['nats-server'] as string) : undefined;
  const discovery = await Discovery.open(discoveryConfig(cl.values)).catch(async (err: unknown) => {
    await nats?.close();
    throw err;
  });
  const { models, server } = await startFrontend(discovery, cl.values['namespace'] as string, settings, (l) => log.info(l), nats).catch(
    async (err: unknown) => {
      await nats?.close();
      await discovery.close();
      throw err;
    },
  );
  const routing = settings.routing === 'kv' ? `kv, events from ${redactUrl(cl.values['nats-server'] as string)}` : settings.routing;
  log.info(`frontend listening on http://${settings.httpHost}:${server.port} (discovery: ${discovery.store.location}; routing: ${routing})`);
  armShutdownWatchdog(SHUTDOWN_MARGIN_MS, 'frontend');
  await waitForSignal();
  await server.close();
  await models.close();
  await nats?.drain();
  await discovery.close();
  return 0;
}

export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGTERM', on);
      process.off('SIGINT', on);
      resolve(sig);
    };
    process.on('SIGTERM', on);
    process.on('SIGINT', on);
  });
}
