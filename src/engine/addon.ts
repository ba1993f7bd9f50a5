// Loads the native engine addon (native/build/Release/dynamo_sglang.node) once, with a coded error when it is
// missing, and types its exports. The addon's own checks throw errors whose `.code` is an LLM_ERR_* string.

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LlmError } from '../errors.js';
import type { BackendKind, EngineOptions, KvIpcPool, KvPoolInfo, KvPullStats, MemoryInfo, ModelSpec, MultimodalStepInput, VisionSpec } from './types.js';

/** What NativeEngine.step returns (StepResult with `topN` always a number and `logits` only when asked). */
export interface NativeStepResult {
  tokens: Int32Array;
  logprobs: Float32Array;
  topN: number;
  topIds: Int32Array;
  topLogprobs: Float32Array;
  logits?: Float32Array;
}

export interface NativeEngine {
  step(descriptor: Int32Array, multimodal?: MultimodalStepInput): NativeStepResult;
  stepBegin(descriptor: Int32Array): void;
  stepEnd(): NativeStepResult;
  stepReady(): boolean;
  /** lens[i] tokens of sequence i, back to back in tokenIds; pooling: EMBED_POOLING_CODES. [numSeqs * hidden]. */
  embed(tokenIds: Int32Array, lens: Int32Array, pooling: number, normalize: boolean): Float32Array;
  exportPages(pages: Int32Array): Uint8Array;
  importPages(pages: Int32Array, data: Uint8Array): void;
  kvIpcExport(): KvIpcPool;
  kvIpcOpen(pool: KvIpcPool): number;
  kvIpcPull(remote: number, srcPages: Int32Array, srcToken0: number, dstPages: Int32Array, numTokens: number): KvPullStats;
  kvIpcClose(remote: number): void;
  kvInfo(): KvPoolInfo;
  memoryInfo(): MemoryInfo;
  close(): void;
}

export interface NativeSamplingParams {
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  logprobs: number;
}

export interface NativeSample {
  token: number;
  logprob: number;
  topIds: Int32Array;
  topLogprobs: Float32Array;
}

/** The Qwen2.5-VL vision tower (native/cpu/vision.h). */
export interface NativeVisionTower {
  /** One image: pixels [t*h*w, patchDim] → embeddings [t*h*w / merge^2, outHiddenSize]. */
  encode(pixelValues: Float32Array, gridT: number, gridH: number, gridW: number): Float32Array;
  close(): void;
}

export interface NativeAddon {
  NativeEngine: new (spec: ModelSpec, options: EngineOptions) => NativeEngine;
  VisionTower: new (spec: VisionSpec, options: { threads: number }) => NativeVisionTower;
  /** Test entry: the engine's reference sampler (native/include/sampling.h) on given logits. */
  sampleFromLogits(logits: Float32Array, params: NativeSamplingParams, seedLo: number, seedHi: number, outputIndex: number): NativeSample;
  /** Tensor parallelism (native/include/tensor_parallel.h): every rank of `group` waiting in a join or a collective
   * now, or joining it later, fails with LLM_ERR_TP_ABORTED carrying `reason`. Callable while ranks are blocked in
   * their worker threads. */
  tpAbort(group: string, reason: string): void;
  /** CUDA devices this process sees; 0 in a CPU-only build. */
  cudaDeviceCount(): number;
  /** Backends compiled into this build. */
  backends: BackendKind[];
  stepLayoutVersion: number;
  /** Wakes every rank of tensor-parallel group `group` in this process that is blocked in its join or a collective
   * (they throw LLM_ERR_TP_ABORTED with `reason`); later joins and collectives of that group fail the same way. */
  tpAbort(group: string, reason: string): void;
}

const ADDON_RELATIVE = join('native', 'build', 'Release', 'dynamo_sglang.node');

/** The package root: the nearest directory above this module that holds native/. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'native', 'CMakeLists.txt'))) return dir;
    const up = dirname(dir);
    if (up === dir) return dirname(fileURLToPath(import.meta.url));
    dir = up;
  }
}

let cached: NativeAddon | undefined;

export function addonPath(): string {
  return join(packageRoot(), ADDON_RELATIVE);
}

export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const path = addonPath();
  if (!existsSync(path)) throw new LlmError('LLM_ERR_NATIVE_BUILD', `native addon not built: run npm ci (or npm run build); expected ${path}`);
  try {
    cached = createRequire(import.meta.url)(path) as NativeAddon;
  } catch (err) {
    throw new LlmError('LLM_ERR_NATIVE_BUILD', `native addon at ${path} failed to load: ${(err as Error).message}; rebuild with npm run build`, {
      cause: err,
    });
  }
  return cached;
}

/** CUDA devices present (0 when the addon is missing or CPU-only). */
export function cudaDevicesPresent(): number {
  try {
    return loadAddon().cudaDeviceCount();
  } catch {
    return 0;
  }
}

/** Backends compiled into the addon; empty when the addon is missing. */
export function compiledBackends(): BackendKind[] {
  try {
    return [...loadAddon().backends];
  } catch {
    return [];
  }
}
