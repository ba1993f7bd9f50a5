// The Supervisor's settings: the engine and scheduler fields of the worker configuration, under the same names and
// with the same defaults (the flag table's, src/config/schema.ts), so a resolved WorkerConfig is passed as is; plus
// the actor settings no flag sets (timeouts, restarts, and the modules tests swap in). resolveSupervisorConfig()
// applies the defaults once; the supervisor reads only its result.
import { Value } from '@sinclair/typebox/value';
import { LlmError } from '../errors.js';
import { flagDefault, WorkerConfigSchema, type WorkerConfig } from './schema.js';

/** The WorkerConfig fields the supervisor, its scheduler and its ranks read. */
export const SUPERVISOR_FLAG_FIELDS = [
  'device',
  'contextLength',
  'pageSize',
  'memFractionStatic',
  'maxRunningRequests',
  'maxTotalTokens',
  'maxPrefillTokens',
  'chunkedPrefillSize',
  'disableOverlapSchedule',
  'disableRadixCache',
  'cpuThreads',
  'seed',
  'tpSize',
  'baseGpuId',
  'dpSize',
  'nnodes',
  'nodeRank',
  'distInitAddr',
  'disableCustomAllReduce',
] as const satisfies readonly (keyof WorkerConfig)[];
export type SupervisorFlagField = (typeof SUPERVISOR_FLAG_FIELDS)[number];
type FlagFields = Pick<WorkerConfig, SupervisorFlagField>;

/** A module URL and the value its entry point is called with. */
export interface ModuleInit {
  module: string;
  init: unknown;
}

/** Actor settings without a flag, and their defaults. */
export interface ActorSettings {
  /** A step not answered within this many ms marks the rank hung. */
  stepTimeoutMs: number;
  /** A scheduler thread whose event loop is blocked this long is hung. */
  schedulerTimeoutMs: number;
  /** Engine start-up (model load) limit in ms. */
  startTimeoutMs: number;
  /** Core restarts after a crash or hang before the supervisor gives up. */
  maxRestarts: number;
}
export const ACTOR_DEFAULTS: Readonly<ActorSettings> = Object.freeze({
  stepTimeoutMs: 120_000,
  schedulerTimeoutMs: 30_000,
  startTimeoutMs: 600_000,
  maxRestarts: 2,
});

/** What the supervisor takes: modelPath, any of the flag fields and actor settings. */
export interface SupervisorConfig
  extends Pick<WorkerConfig, 'modelPath'>, Partial<Pick<WorkerConfig, SupervisorFlagField>>, Partial<ActorSettings> {
  /** KV pool size in pages; when absent it follows maxTotalTokens, else the engine sizes it from memFractionStatic. */
  numPages?: number | null;
  /** The rank's engine factory: a module exporting createEngine(init), and its init. Defaults to the native engine
   * over modelPath (actors/rank-engine.ts); tests pass a fake engine here. */
  engineFactory?: ModuleInit;
  /** A module exporting beforeStep(stepNo, init), which the scheduler thread calls before each step (tests: faults
   * in the scheduler thread). */
  schedulerHook?: ModuleInit;
}

/** What the worker picks where the flag table leaves a setting unset (null, "chosen from device memory"): fixed
 * values until the engine sizes them from the device. */
const CHOSEN_WHEN_UNSET = { maxRunningRequests: 256, chunkedPrefillSize: 8192, memFractionStatic: 0.85 } as const;
type ChosenField = keyof typeof CHOSEN_WHEN_UNSET;

/** Every setting decided: what the supervisor reads. */
export interface ResolvedSupervisorConfig
  extends Pick<WorkerConfig, 'modelPath' | Exclude<SupervisorFlagField, ChosenField>>,
    ActorSettings,
    Pick<SupervisorConfig, 'engineFactory' | 'schedulerHook'> {
  maxRunningRequests: number;
  /** -1: no chunking. */
  chunkedPrefillSize: number;
  memFractionStatic: number;
  numPages: number | null;
}

/** The flag table's defaults of the supervisor's fields, checked once against the config schema. */
const FLAG_DEFAULTS = Object.freeze(
  Object.fromEntries(
    SUPERVISOR_FLAG_FIELDS.map((field) => {
      const value = flagDefault(field);
      if (!Value.Check(WorkerConfigSchema.properties[field], value)) {
        throw new LlmError('LLM_ERR_INTERNAL', `the flag table's default of ${field} (${JSON.stringify(value)}) does not fit the config schema`);
      }
      return [field, value];
    }),
  ),
) as FlagFields;

/** Fills every absent (or null where the flag table has a default) setting from the one table of defaults: the
 * flag table's, then the worker's choices for settings it leaves unset, then the actor defaults. Frozen. */
export function resolveSupervisorConfig(config: SupervisorConfig): ResolvedSupervisorConfig {
  // null given for a field whose flag has a default takes the default, as an absent flag does
  const flag = <K extends SupervisorFlagField>(k: K): FlagFields[K] => (config[k] ?? FLAG_DEFAULTS[k]) as FlagFields[K];
  const chosen = <K extends ChosenField>(k: K): number => flag(k) ?? CHOSEN_WHEN_UNSET[k];
  const maxTotalTokens = flag('maxTotalTokens');
  return Object.freeze({
    modelPath: config.modelPath,
    device: flag('device'),
    contextLength: flag('contextLength'),
    pageSize: flag('pageSize'),
    memFractionStatic: chosen('memFractionStatic'),
    maxRunningRequests: chosen('maxRunningRequests'),
    maxTotalTokens,
    maxPrefillTokens: flag('maxPrefillTokens'),
    chunkedPrefillSize: chosen('chunkedPrefillSize'),
    disableOverlapSchedule: flag('disableOverlapSchedule'),
    disableRadixCache: flag('disableRadixCache'),
    cpuThreads: flag('cpuThreads'),
    seed: flag('seed'),
    tpSize: flag('tpSize'),
    baseGpuId: flag('baseGpuId'),
    dpSize: flag('dpSize'),
    nnodes: flag('nnodes'),
    nodeRank: flag('nodeRank'),
    distInitAddr: flag('distInitAddr'),
    disableCustomAllReduce: flag('disableCustomAllReduce'),
    numPages: config.numPages ?? (maxTotalTokens === null ? null : Math.ceil(maxTotalTokens / flag('pageSize'))),
    stepTimeoutMs: config.stepTimeoutMs ?? ACTOR_DEFAULTS.stepTimeoutMs,
    schedulerTimeoutMs: config.schedulerTimeoutMs ?? ACTOR_DEFAULTS.schedulerTimeoutMs,
    startTimeoutMs: config.startTimeoutMs ?? ACTOR_DEFAULTS.startTimeoutMs,
    maxRestarts: config.maxRestarts ?? ACTOR_DEFAULTS.maxRestarts,
    ...(config.engineFactory ? { engineFactory: config.engineFactory } : {}),
    ...(config.schedulerHook ? { schedulerHook: config.schedulerHook } : {}),
  });
}
