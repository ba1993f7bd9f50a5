// The engine factory a rank actor loads by default (actors/rank.ts EngineFactoryModule): the real engine (CPU or CUDA
// backend) over a model file, and the abort of a tensor-parallel group through the addon. Rank actors import a
// factory module by URL, so tests can hand them a fake engine with the same contract.
import { compiledBackends, loadAddon } from '../src/engine/addon.js';
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
}

export async function createEngine(init: RankEngineInit, placement: RankPlacement): Promise<Engine> {
  const spec = await loadModelSpec(init.modelPath);
  const backends = compiledBackends();
  const backend: BackendKind = init.device === 'auto' ? (backends.includes('cuda') ? 'cuda' : 'cpu') : init.device;
  if (!backends.length) throw new LlmError('LLM_ERR_NATIVE_BUILD', 'the native engine addon is not built: run npm run build');
  return openEngine(spec, { ...init.options, backend, deviceId: placement.deviceId, ...(placement.tp ? { tp: placement.tp } : {}) });
}

/** Wakes every rank of `group` blocked in the addon (join or collective) with LLM_ERR_TP_ABORTED. */
export function abortGroup(group: string, reason: string): void {
  loadAddon().tpAbort(group, reason);
}
