// `dynamo-sglang run`: a worker and the OpenAI frontend in one process on the embedded mem store. Without
// --model-path it serves the bundled stories260K model, so it works on a fresh machine with no GPU and no
// services. Requests take the real path: frontend → discovery → request plane (TCP loopback) → worker.
import { armShutdownWatchdog, SHUTDOWN_MARGIN_MS } from '../shutdown-watchdog.js';
import { fileURLToPath } from 'node:url';
import { parseArgs, parseCommandLine, renderHelp } from '../args.js';
import { finalizeConfig, resolveConfig, WORKER_FLAG_INDEX } from '../../config/resolve.js';
import { Discovery } from '../../runtime/discovery/index.js';
import { connectNats } from '../../runtime/request-plane/nats.js';
import { startWorker } from '../../worker/worker.js';
import { FRONTEND_FLAGS, frontendSettings, startFrontend, waitForSignal } from './frontend.js';
import { logger } from '../../runtime/log.js';
import { applyLogLevel } from '../logging.js';

const LOOPBACK = '127.0.0.1';

export const BUNDLED_MODEL = fileURLToPath(new URL('../../../../models/stories260K.gguf', import.meta.url));
const BUNDLED_MODEL_FROM_SOURCE = fileURLToPath(new URL('../../../models/stories260K.gguf', import.meta.url));

/** Flags both halves take (the Dynamo wire profile: the frontend's kv router reads what the worker publishes). */
const SHARED_FLAGS = new Set(['dynamo-wire']);

/** Splits argv into the frontend's flags and the worker's (everything else; shared flags go to both). */
function splitArgv(argv: string[]): { frontend: string[]; worker: string[] } {
  const names = new Set(FRONTEND_FLAGS.flatMap((f) => [f.name, ...(f.aliases ?? [])]));
  const frontend: string[] = [];
  const worker: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const m = /^--([^=]+)(=.*)?$/.exec(a);
    if (m && names.has(m[1])) {
      const flag = m[2] === undefined && i + 1 < argv.length ? [a, argv[++i]] : [a];
      frontend.push(...flag);
      if (SHARED_FLAGS.has(m[1])) worker.push(...flag);
    } else {
      worker.push(a);
    }
  }
  return { frontend, worker };
}

export async function bundledModel(): Promise<string> {
  const { existsSync } = await import('node:fs');
  return existsSync(BUNDLED_MODEL) ? BUNDLED_MODEL : BUNDLED_MODEL_FROM_SOURCE;
}

export async function main(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(renderHelp('dynamo-sglang run [frontend options] [worker options]',
      'Worker and OpenAI frontend in one process on the embedded mem store. Without --model-path it serves the bundled stories260K model. With --embedding the model serves /v1/embeddings (an embedding worker). Every `start` flag is accepted (see `dynamo-sglang start --help`).',
      [{ title: 'Frontend', flags: FRONTEND_FLAGS }]));
    return 0;
  }
  // `run --embedding`: the model (bundled or given) serves /v1/embeddings (an embedding worker)
  argv = argv.map((a) => (a === '--embedding' ? '--embedding-worker' : a));
  const { frontend, worker } = splitArgv(argv);
  const fe = frontendSettings(parseCommandLine(frontend, FRONTEND_FLAGS).values);
  // the all-in-one serves this machine: every server binds loopback unless a host is named (flag or environment)
  const named = (flag: string, env: string) => argv.some((a) => a === `--${flag}` || a.startsWith(`--${flag}=`)) || (process.env[env] ?? '') !== '';
  if (!named('http-host', 'DYN_HTTP_HOST')) fe.httpHost = LOOPBACK;
  // defaults of the all-in-one: the bundled model, the mem store, an ephemeral RPC port
  const given = parseArgs(worker, WORKER_FLAG_INDEX).flags;
  const has = (name: string) => [...given.keys()].some((s) => s.name === name);
  const extra: string[] = [];
  if (!has('model-path') && !process.env.DYN_SGL_MODEL_PATH) {
    extra.push('--model-path', await bundledModel());
    if (!has('served-model-name')) extra.push('--served-model-name', 'stories260K');
  }
  if (!has('discovery-backend')) extra.push('--discovery-backend', 'mem');
  const rpcLoopback = !named('tcp-rpc-host', 'DYN_TCP_RPC_HOST');
  if (rpcLoopback) {
    extra.push('--tcp-rpc-host', LOOPBACK);
    fe.responseHost = LOOPBACK; // the frontend's call-home server for the worker's responses
  }
  if (!named('system-host', 'DYN_SYSTEM_HOST')) extra.push('--system-host', LOOPBACK);
  const config = await finalizeConfig(resolveConfig([...worker, ...extra], process.env));
  applyLogLevel(config.logLevel, 'log level');
  const runLog = logger('run');
  const log = (line: string) => runLog.info(line);
  const discovery = await Discovery.open({ backend: 'mem' });
  // what is started so far, released newest first: at shutdown, and when a later step fails (a frontend port in
  // use must not leave the worker keeping the process alive)
  const started: (() => Promise<unknown>)[] = [() => discovery.close()];
  const releaseAll = async () => {
    while (started.length > 0) await started.pop()!();
  };
  try {
    // --router-mode kv: the worker publishes and the router follows KV events on the event plane (--nats-server)
    const kv = fe.routing === 'kv';
    const nats = kv ? await connectNats(config.natsServer) : undefined;
    if (nats) started.push(() => nats.drain());
    const w = await startWorker(config, { discovery, log, publishKvEvents: kv });
    started.push(() => w.shutdown());
    const { models, server } = await startFrontend(discovery, config.namespace, fe, log, nats);
    // at shutdown the worker goes first: it leaves discovery and drains its in-flight streams (grace period, then
    // a clear end) through the frontend, which closes after it
    const stopWorker = started.pop()!;
    started.push(() => models.close(), () => server.close(), stopWorker);
    await models.waitFor(config.servedModelName, 5000);
    const host = fe.httpHost === '0.0.0.0' || fe.httpHost === '::' ? LOOPBACK : fe.httpHost;
    const url = `http://${host}:${server.port}`;
    const example = config.workerKind === 'embedding'
      ? { path: 'embeddings', body: { model: config.servedModelName, input: ['Once upon a time', 'a little girl'] } }
      : { path: 'completions', body: { model: config.servedModelName, prompt: 'Once upon a time', max_tokens: 32, temperature: 0 } };
    process.stdout.write(
      `\ndynamo-sglang is serving "${config.servedModelName}" at ${url}/v1 (OpenAI-compatible). Try:\n\n` +
        `curl ${url}/v1/${example.path} -H 'content-type: application/json' \\\n` +
        `  -d '${JSON.stringify(example.body)}'\n\n` +
        'Stop with Ctrl-C.\n',
    );
    armShutdownWatchdog(config.gracefulShutdownGracePeriodSecs * 1000 + SHUTDOWN_MARGIN_MS, 'run');
    const sig = await waitForSignal();
    log(`received ${sig}: shutting down`);
  } finally {
    await releaseAll();
  }
  return 0;
}
