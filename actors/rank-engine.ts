// The engine factory a rank actor loads by default (actors/rank.ts EngineFactoryModule): the real engine (CPU or CUDA
// backend) over a model file, and the abort of a tensor-parallel group through the addon. Rank actors import a
// factory module by URL, so tests can hand them a fake engine with the same contract.
import { checkTensorParallel } from '../src/config/parallel.js';
import { compiledBackends, cudaDevicesPresent, loadAddon } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { BackendKind, Engine, EngineOptions } from '../src/engine/types.js';
import { LlmError } from '../src/errors.js';
import type { RankPlacement } from './rank.js';

/** What every rank of a group needs to open its engine; plain data, so it crosses into the worker unchanged. The
 * rank's own device and TP place come apart, in its RankPlacement. */
export interface RankEngineInit {
  modelPath: string;
  device: BackendKind | 'auto';
  options: Omit<EngineOptions, 'backend' | 'deviceId' | 'tp'>;
  /** Ranks of a group on each node (tp / nnodes): a node's devices for the group start at deviceId - rank % this. */
  ranksPerNode: number;
}

export async function createEngine(init: RankEngineInit, placement: RankPlacement): Promise<Engine> {
  const spec = await loadModelSpec(init.modelPath);
  const backends = compiledBackends();
  if (!backends.length) throw new LlmError('LLM_ERR_NATIVE_BUILD', 'the native engine addon is not built: run npm run build');
  const devices = cudaDevicesPresent();
  const backend: BackendKind = init.device === 'auto' ? (backends.includes('cuda') && devices > 0 ? 'cuda' : 'cpu') : init.device;
  // Every rank checks the group's shape; the first failure names the numbers (--tp-size, devices, heads).
  const tp = placement.tp;
  // The group's first device on this machine (each node holds ranksPerNode consecutive ranks of the group).
  const firstDevice = placement.deviceId - ((tp?.rank ?? 0) % init.ranksPerNode);
  checkTensorParallel(tp?.size ?? 1, firstDevice, spec, backend === 'cuda' ? devices : null, init.ranksPerNode);
  return openEngine(spec, { ...init.options, backend, deviceId: placement.deviceId, ...(tp ? { tp } : {}) });
}

/** Wakes every rank of `group` blocked in the addon (join or collective) with LLM_ERR_TP_ABORTED. */
export function abortGroup(group: string, reason: string): void {
  loadAddon().tpAbort(group, reason);
}
