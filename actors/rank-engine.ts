// The engine factory a rank actor loads by default: the real engine (CPU or CUDA backend) over a model file.
// Rank actors import a factory module by URL, so tests can hand them a fake engine with the same contract.
import { compiledBackends } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { BackendKind, Engine, EngineOptions } from '../src/engine/types.js';
import { LlmError } from '../src/errors.js';

/** What a rank needs to open its engine; plain data, so it crosses into the worker unchanged. */
export interface RankEngineInit {
  modelPath: string;
  device: BackendKind | 'auto';
  options: Omit<EngineOptions, 'backend'>;
}

export async function createEngine(init: RankEngineInit): Promise<Engine> {
  const spec = await loadModelSpec(init.modelPath);
  const backends = compiledBackends();
  const backend: BackendKind = init.device === 'auto' ? (backends.includes('cuda') ? 'cuda' : 'cpu') : init.device;
  if (!backends.length) throw new LlmError('LLM_ERR_NATIVE_BUILD', 'the native engine addon is not built: run npm run build');
  return openEngine(spec, { ...init.options, backend });
}
