// openEngine(): the Engine of src/engine/types.ts over the native addon. Step descriptors (step.ts) go to the addon
// as they are and are checked there; native errors arrive with `.code` and are rethrown as LlmError.

import { LlmError, isErrorCode } from '../errors.js';
import { loadAddon, type NativeEngine, type NativeStepResult, type NativeVisionTower } from './addon.js';
import { EMBED_POOLING_CODES, type EmbedOptions } from './types.js';
import type { BackendKind, Engine, EngineOptions, ImageInput, KvIpcPool, KvPoolInfo, KvPullStats, MemoryInfo, ModelSpec, MultimodalStepInput, StepDescriptor, StepResult } from './types.js';

/** Rethrows a native error as an LlmError with the same code (unknown codes become LLM_ERR_INTERNAL). */
function native<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof LlmError) throw err;
    const e = err as { code?: unknown; message?: unknown };
    const code = isErrorCode(e?.code) ? e.code : 'LLM_ERR_INTERNAL';
    throw new LlmError(code, typeof e?.message === 'string' ? e.message : String(err), { cause: err });
  }
}

function toInt32(xs: ArrayLike<number>): Int32Array {
  return xs instanceof Int32Array ? xs : Int32Array.from(xs as ArrayLike<number>);
}

class NativeBackedEngine implements Engine {
  readonly backend: BackendKind;
  readonly spec: ModelSpec;
  readonly kv: KvPoolInfo;
  private handle: NativeEngine | null;
  /** The vision tower of a vision-language model on the cpu backend; null otherwise. */
  private vision: NativeVisionTower | null;

  constructor(handle: NativeEngine, spec: ModelSpec, backend: BackendKind, vision: NativeVisionTower | null) {
    this.handle = handle;
    this.vision = vision;
    this.spec = spec;
    this.backend = backend;
    this.kv = native(() => handle.kvInfo());
  }

  private live(): NativeEngine {
    if (!this.handle) throw new LlmError('LLM_ERR_SHUTDOWN', 'engine is closed');
    return this.handle;
  }

  step(desc: StepDescriptor, multimodal?: MultimodalStepInput): StepResult {
    const h = this.live();
    return toStepResult(native(() => (multimodal === undefined ? h.step(desc) : h.step(desc, multimodal))));
  }

  stepBegin(desc: StepDescriptor): void {
    const h = this.live();
    native(() => h.stepBegin(desc));
  }

  stepEnd(): StepResult {
    const h = this.live();
    return toStepResult(native(() => h.stepEnd()));
  }

  stepReady(): boolean {
    const h = this.live();
    return native(() => h.stepReady());
  }

  embed(sequences: readonly ArrayLike<number>[], options: EmbedOptions): Float32Array[] {
    const h = this.live();
    const lens = Int32Array.from(sequences, (s) => s.length);
    const ids = new Int32Array(lens.reduce((a, b) => a + b, 0));
    let at = 0;
    for (const s of sequences) {
      ids.set(s, at);
      at += s.length;
    }
    const flat = native(() => h.embed(ids, lens, EMBED_POOLING_CODES[options.pooling], options.normalize));
    const H = this.spec.hiddenSize;
    return sequences.map((_, i) => flat.slice(i * H, (i + 1) * H));
  }

  exportPages(pages: ArrayLike<number>): Uint8Array {
    const h = this.live();
    return native(() => h.exportPages(toInt32(pages)));
  }

  importPages(pages: ArrayLike<number>, data: Uint8Array): void {
    const h = this.live();
    native(() => h.importPages(toInt32(pages), data));
  }

  kvIpcExport(): KvIpcPool {
    const h = this.live();
    return native(() => h.kvIpcExport());
  }

  kvIpcOpen(pool: KvIpcPool): number {
    const h = this.live();
    return native(() => h.kvIpcOpen(pool));
  }

  kvIpcPull(remote: number, srcPages: ArrayLike<number>, srcToken0: number, dstPages: ArrayLike<number>, numTokens: number): KvPullStats {
    const h = this.live();
    return native(() => h.kvIpcPull(remote, toInt32(srcPages), srcToken0, toInt32(dstPages), numTokens));
  }

  kvIpcClose(remote: number): void {
    const h = this.live();
    native(() => h.kvIpcClose(remote));
  }

  memoryInfo(): MemoryInfo {
    const h = this.live();
    return native(() => h.memoryInfo());
  }

  encodeImages(images: readonly ImageInput[]): Float32Array[] {
    this.live();
    if (this.spec.vision === undefined) throw new LlmError('LLM_ERR_BAD_REQUEST', 'this model has no vision tower: it takes no images');
    const tower = this.vision;
    if (tower === null) {
      throw new LlmError('LLM_ERR_UNSUPPORTED_ARCH', `the vision tower runs on the cpu backend only in this build (engine backend: ${this.backend}): images are refused`);
    }
    return images.map((im, i) => {
      if (!(im.pixelValues instanceof Float32Array) || !Array.isArray(im.gridThw) || im.gridThw.length !== 3) {
        throw new LlmError('LLM_ERR_BAD_REQUEST', `image ${i}: needs pixelValues (Float32Array) and gridThw [t, h, w]`);
      }
      const [t, h, w] = im.gridThw;
      try {
        return native(() => tower.encode(im.pixelValues, t, h, w));
      } catch (err) {
        if (err instanceof LlmError) throw new LlmError(err.code, `image ${i}: ${err.message}`, { cause: err });
        throw err;
      }
    });
  }

  close(): void {
    if (!this.handle) return;
    this.vision?.close();
    this.vision = null;
    this.handle.close();
    this.handle = null;
  }
}

/**
 * Opens an engine on the asked backend ('auto' is resolved by the caller). A backend missing from this build is
 * LLM_ERR_NATIVE_BUILD; bad model files or options surface with their own codes, naming the file/tensor/field.
 */
export function openEngine(spec: ModelSpec, options: EngineOptions): Engine {
  const addon = loadAddon();
  if (!addon.backends.includes(options.backend)) {
    throw new LlmError(
      'LLM_ERR_NATIVE_BUILD',
      `backend '${options.backend}' is not compiled into the native addon (compiled: ${addon.backends.join(', ')}); ` +
        (options.backend === 'cuda' ? 'rebuild where the CUDA toolkit with cuBLAS is installed, without DYNAMO_SGLANG_CPU_ONLY' : 'rebuild with npm run build'),
    );
  }
  const handle = native(() => new addon.NativeEngine(spec, options));
  const visionSpec = spec.vision;
  let vision: NativeVisionTower | null = null;
  if (visionSpec !== undefined && options.backend === 'cpu') {
    try {
      vision = native(() => new addon.VisionTower(visionSpec, { threads: options.threads ?? 1 }));
    } catch (err) {
      handle.close();
      throw err;
    }
  }
  return new NativeBackedEngine(handle, spec, options.backend, vision);
}

function toStepResult(r: NativeStepResult): StepResult {
  const result: StepResult = { tokens: r.tokens, logprobs: r.logprobs, topN: r.topN, topIds: r.topIds, topLogprobs: r.topLogprobs };
  if (r.logits) result.logits = r.logits;
  return result;
}
