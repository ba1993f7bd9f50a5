// `dynamo-sglang start`: resolve the worker configuration, then either dump it (--dump-config-to, no model is
// loaded) or hand it to the worker runtime.

import { redactUrl } from '../../runtime/credentials.js';
import { armShutdownWatchdog, SHUTDOWN_MARGIN_MS } from '../shutdown-watchdog.js';
import { writeFileSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { renderHelp, usageError } from '../args.js';
import { flagGroups, type WorkerConfig } from '../../config/schema.js';
import { SGLANG_SERVER_FLAGS } from '../../config/sglang-flags.js';
import { finalizeConfig, resolveConfig } from '../../config/resolve.js';
import { packageVersion } from '../main.js';
import { LlmError } from '../../errors.js';
import { logger } from '../../runtime/log.js';
import { applyLogLevel } from '../logging.js';

const DESCRIPTION =
  'Runs one worker: loads the model, registers with discovery and serves its endpoint. Every flag can also come ' +
  'from its env var or from the --config YAML file (keys spelled like the flags); precedence is flags, then env ' +
  'vars, then the YAML file, then defaults.';

const wrapWords = (words: readonly string[], indent: string, width = 100): string[] => {
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && indent.length + line.length + 1 + w.length > width) {
      lines.push(indent + line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(indent + line);
  return lines;
};

/** What happens to each of SGLang's server flags, from the one table of them (src/config/sglang-flags.ts). */
function sglangFlagsHelp(): string {
  const spell = (f: { name: string; aliases?: readonly string[] }) => [f.name, ...(f.aliases ?? [])].map((n) => `--${n}`).join('/');
  const honoured = SGLANG_SERVER_FLAGS.flatMap((f) => (f.use === 'honoured' ? [`${spell(f)}${f.by === f.name ? '' : ` (= --${f.by})`}`] : []));
  const inherent = SGLANG_SERVER_FLAGS.flatMap((f) => (f.use === 'inherent' ? [`${spell(f)}: ${f.why}.`] : []));
  const unused = SGLANG_SERVER_FLAGS.flatMap((f) => (f.use === 'unused' ? [spell(f)] : []));
  return [
    'SGLang server flags:',
    ...wrapWords(['Honoured (the flags above carry them):', ...honoured.map((h, i) => (i < honoured.length - 1 ? `${h},` : h))], '  '),
    ...inherent.flatMap((line) => wrapWords(line.replace(':', ': accepted;').split(' '), '  ')),
    ...wrapWords([...'Accepted and not used: their values are checked (kind and choices, as SGLang does) and the worker names the ones given in one line at start:'.split(' '),
      ...unused.map((h, i) => (i < unused.length - 1 ? `${h},` : h))], '  '),
    '',
  ].join('\n');
}

export function startHelp(): string {
  return renderHelp('dynamo-sglang start [flags]', DESCRIPTION, flagGroups()) + sglangFlagsHelp();
}

function dumpConfig(config: WorkerConfig, target: string): void {
  // credentials in URLs (nats://user:pass@, https://user:pass@ etcd) are never written out
  const text = `${JSON.stringify(config, (_key, value: unknown) => (typeof value === 'string' ? redactUrl(value) : value), 2)}\n`;
  if (target === '-') {
    process.stdout.write(text);
    return;
  }
  const file = resolvePath(target);
  try {
    writeFileSync(file, text);
  } catch (err) {
    throw usageError(`--dump-config-to: cannot write ${file}: ${(err as Error).message}`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const flagsOnly = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  if (flagsOnly.includes('--help') || flagsOnly.includes('-h')) {
    process.stdout.write(startHelp());
    return 0;
  }
  if (flagsOnly.includes('--version')) {
    process.stdout.write(`dynamo-sglang ${packageVersion()}\n`);
    return 0;
  }
  const config = await finalizeConfig(resolveConfig(argv, process.env));
  if (config.dumpConfigTo !== null) {
    dumpConfig(config, config.dumpConfigTo);
    return 0;
  }
  applyLogLevel(config.logLevel, 'log level');
  if (config.unusedFlags.length > 0) {
    logger('worker').warn(`accepted and not used by this worker: ${config.unusedFlags.join(', ')} (see start --help)`);
  }
  if (config.nnodes > 1 && config.nodeRank > 0) return runFollowerNode(config);
  // loaded only now, so --help, --version and --dump-config-to never pull in the engine
  const { runWorker } = await import('../../worker/worker.js');
  armShutdownWatchdog(config.gracefulShutdownGracePeriodSecs * 1000 + SHUTDOWN_MARGIN_MS, 'start');
  return runWorker(config);
}

/** A follower node (--node-rank > 0): runs its ranks for the leader until the leader goes, then exits non-zero. It
 * registers nothing; its system server (--system-port) answers /health (ready while its ranks are in a group) and
 * /metrics. */
async function runFollowerNode(config: WorkerConfig): Promise<number> {
  const [{ buildTopology }, { runFollower }, { HealthRegistry }, { WorkerMetrics }, { SystemServer }] = await Promise.all([
    import('../../topology/topology.js'), import('../../topology/multinode.js'), import('../../runtime/health.js'),
    import('../../runtime/metrics.js'), import('../../runtime/system-server.js'),
  ]);
  const followerLog = logger('worker.follower');
  const log = (line: string): void => followerLog.info(line);
  const { cores } = buildTopology(config); // with --dp-size, this node's ranks of every data-parallel group
  const health = new HealthRegistry('notready');
  const system = await SystemServer.start({ port: config.systemPort, host: config.systemHost, health, metrics: new WorkerMetrics() });
  if (system) log(`node ${config.nodeRank}: system server on ${system.url('/')} (/metrics, /health, /live)`);
  const ready = cores.map(() => false);
  const ending = new AbortController();
  const groups = cores.map((core) => {
    if (!core.multiNode) throw new LlmError('LLM_ERR_INTERNAL', 'a follower node without multi-node settings');
    return runFollower(core, core.multiNode, log, (groupReady) => {
      ready[core.dpRank] = groupReady;
      health.setSystemStatus(ready.every(Boolean) ? 'ready' : 'notready');
    }, ending.signal);
  });
  try {
    // Any group's leader connection ending ends the node (the leader runs every group): the other groups stop too.
    return await Promise.race(groups);
  } catch (err) {
    const e = err as { code?: string; message: string };
    log(`node ${config.nodeRank}: ${e.code ?? 'LLM_ERR_INTERNAL'}: ${e.message}`);
    return 1;
  } finally {
    ending.abort();
    await Promise.allSettled(groups);
    await system?.close();
  }
}
