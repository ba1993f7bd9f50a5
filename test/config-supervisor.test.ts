// The Supervisor's settings are the config's fields: one table of defaults (the flag table's), the resolved
// WorkerConfig passed as is, and the actor settings no flag sets.
import t from 'tap';
import { resolveConfig } from '../src/config/resolve.js';
import { flagDefault, WORKER_FLAGS } from '../src/config/schema.js';
import { ACTOR_DEFAULTS, resolveSupervisorConfig, SUPERVISOR_FLAG_FIELDS, type SupervisorConfig } from '../src/config/supervisor.js';

t.test('only modelPath given: the flag table\'s defaults, the worker\'s choices for unset sizes, the actor defaults', async (t) => {
  const r = resolveSupervisorConfig({ modelPath: 'm' });
  t.same(r, {
    modelPath: 'm',
    device: 'auto',
    contextLength: null,
    pageSize: 16,
    memFractionStatic: 0.85,
    maxRunningRequests: 256,
    maxTotalTokens: null,
    maxPrefillTokens: 16384,
    chunkedPrefillSize: 8192,
    disableOverlapSchedule: false,
    disableRadixCache: false,
    cpuThreads: null,
    seed: null,
    tpSize: 1,
    baseGpuId: 0,
    dpSize: 1,
    nnodes: 1,
    nodeRank: 0,
    distInitAddr: null,
    disableCustomAllReduce: false,
    numPages: null,
    ...ACTOR_DEFAULTS,
  });
  t.ok(Object.isFrozen(r), 'frozen');
  for (const field of SUPERVISOR_FLAG_FIELDS) {
    const d = flagDefault(field);
    if (d !== null) t.equal(r[field], d, `${field} takes the flag table's default`);
  }
});

t.test('every supervisor field is a flag of the table', async (t) => {
  const settings = new Set(WORKER_FLAGS.map((f) => f.setting));
  for (const field of SUPERVISOR_FLAG_FIELDS) t.ok(settings.has(field), `${field} has a flag`);
});

t.test('a resolved WorkerConfig passes straight through', async (t) => {
  const argv = ['--model-path', 'm', '--device', 'cpu', '--page-size', '4', '--max-running-requests', '8', '--max-prefill-tokens', '512',
    '--chunked-prefill-size', '-1', '--mem-fraction-static', '0.5', '--disable-overlap-schedule', '--disable-radix-cache', '--cpu-threads', '3',
    '--seed', '9', '--context-length', '1024', '--tp', '2', '--base-gpu-id', '1'];
  const config = resolveConfig(argv, {});
  const r = resolveSupervisorConfig(config);
  for (const field of SUPERVISOR_FLAG_FIELDS) t.same(r[field], config[field], field);
  t.equal(r.chunkedPrefillSize, -1, '-1 (no chunking) is kept for the supervisor to read');
  t.same([r.numPages, r.maxRestarts], [null, ACTOR_DEFAULTS.maxRestarts]);
});

t.test('actor settings and programmatic nulls', async (t) => {
  const hook = { module: 'file:///hook.js', init: { x: 1 } };
  const factory = { module: 'file:///engine.js', init: null };
  const given: SupervisorConfig = {
    modelPath: 'm', numPages: 64, stepTimeoutMs: 5, schedulerTimeoutMs: 6, startTimeoutMs: 7, maxRestarts: 0, engineFactory: factory, schedulerHook: hook,
    maxRunningRequests: null, chunkedPrefillSize: null, memFractionStatic: null, contextLength: null,
  };
  const r = resolveSupervisorConfig(given);
  t.same([r.numPages, r.stepTimeoutMs, r.schedulerTimeoutMs, r.startTimeoutMs, r.maxRestarts], [64, 5, 6, 7, 0]);
  t.equal(r.engineFactory, factory);
  t.equal(r.schedulerHook, hook);
  t.same([r.maxRunningRequests, r.chunkedPrefillSize, r.memFractionStatic, r.contextLength], [256, 8192, 0.85, null], 'null: left to the worker, or the model\'s');
  t.notOk('engineFactory' in resolveSupervisorConfig({ modelPath: 'm' }), 'no factory: the native engine');
});
