// The engine contract as TypeScript sees it. Both native backends (cpu/, cuda/) implement it behind the addon;
// the scheduler and the rank actor speak only these types. The flat binary step layout that carries a batch across
// threads and the addon boundary lives in step.ts (TS side) and native/include/step.h (C++ side).

export type DType = 'f32' | 'f16' | 'bf16';
/** bert: a BERT-style encoder (BertModel), served by embedding workers on the CPU backend only. */
export type Architecture = 'llama' | 'qwen2' | 'qwen3' | 'bert';
export type BackendKind = 'cpu' | 'cuda';

/** Llama-3 style RoPE frequency scaling (HF `rope_scaling` with rope_type "llama3"). */
export interface RopeScaling {
  type: 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

/** One weight tensor inside a memory-mapped file. Names are canonical HF names (GGUF names are mapped). */
export interface TensorRef {
  name: string;
  file: string;
  offset: number; // byte offset of the tensor data inside `file`
  dtype: DType;
  shape: number[]; // HF order: a linear weight is [out_features, in_features], row-major
}

/** Everything the native side needs to build a model: hyper-parameters plus where each tensor lies. */
export interface ModelSpec {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** 'half': HF rotate_half pairing (i, i+d/2); 'interleaved': pairs (2i, 2i+1) as llama.cpp's GGUF llama. */
  ropeLayout: 'half' | 'interleaved';
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  qkvBias: boolean; // Qwen2
  qkNorm: boolean; // Qwen3
  /** bert only: rows of token_type_embeddings (rmsNormEps then holds its LayerNorm epsilon). */
  typeVocabSize?: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  tensors: TensorRef[];
  /** Qwen2.5-VL M-RoPE: how many of the head_dim/2 rotary frequencies take the time, height and width position (in
   * that order). Absent: ordinary RoPE. With the three positions equal (text) M-RoPE is ordinary RoPE. */
  mropeSection?: [number, number, number];
  /** Qwen2.5-VL vision tower; absent for text-only models. */
  vision?: VisionSpec;
}

/** Hyper-parameters of the Qwen2.5-VL vision tower (HF vision_config) and the prompt's vision token ids. */
export interface VisionHyperParams {
  depth: number;
  hiddenSize: number;
  intermediateSize: number;
  numHeads: number;
  inChannels: number;
  /** The merger's output width: the language model's hidden size. */
  outHiddenSize: number;
  patchSize: number;
  spatialMergeSize: number;
  temporalPatchSize: number;
  windowSize: number;
  /** Blocks that attend over the whole image (per frame); the others attend within their window. */
  fullAttBlockIndexes: number[];
  rmsNormEps: number;
  imageTokenId: number;
  visionStartTokenId: number;
  visionEndTokenId: number;
}

/** The vision tower: hyper-parameters plus its tensors (canonical names `visual.*`). */
export interface VisionSpec extends VisionHyperParams {
  tensors: TensorRef[];
}

export interface SamplingParams {
  temperature: number; // 0 = greedy (argmax)
  topP: number; // 1 = off
  topK: number; // <= 0 = off
  minP: number; // 0 = off
  seed: number | null; // null = engine-chosen; a given seed replays exactly
  /** -1: no logprobs; 0: logprob of the chosen token only; n > 0: also the top n. */
  logprobs: number;
}

/** One sequence's share of a step: a prefill chunk (many tokens) or a decode token (one). */
export interface SeqStep {
  tokenIds: ArrayLike<number>; // tokens processed this step
  startPos: number; // position of tokenIds[0] = tokens of this sequence already in the KV cache
  pages: ArrayLike<number>; // KV pages covering positions [0, startPos + tokenIds.length), in order
  sample: boolean; // sample after the last token (false for a non-final prefill chunk)
  sampling: SamplingParams;
  outputIndex: number; // index of the sampled token in the request's output: with the seed it picks the RNG stream
  /** Distinct ids (at most MAX_BANNED_TOKENS, step.ts) this draw may not pick: their logits become -inf before
   * sampling and logprobs (min_tokens bans the request's EOS and stop ids until enough tokens are out). */
  bannedTokenIds?: readonly number[];
  /** Grammar-constrained decoding: the draw's token bitmask, ceil(vocab / 32) words, bit (id % 32) of word (id / 32)
   * set = id allowed (only with `sample`). Every other id's logit becomes -inf before sampling and logprobs. */
  tokenMask?: Int32Array;
}

/** One step as the engine takes it: the flat descriptor of native/include/step.h (step.ts packStep), packed once by
 * the scheduler and handed to every rank unchanged. Whether the step returns logits is its header's flag. */
export type StepDescriptor = Int32Array;

export interface StepResult {
  tokens: Int32Array; // per sequence; -1 where `sample` was false
  logprobs: Float32Array; // per sequence: logprob of the chosen token; NaN where not asked
  topN: number; // slots per sequence in topIds/topLogprobs (max logprobs asked in the batch)
  topIds: Int32Array; // [numSeqs * topN], -1 padded
  topLogprobs: Float32Array; // [numSeqs * topN]
  logits?: Float32Array; // [numSeqs * vocabSize] when asked
}

/** A KV pool as another process on the same node opens it (CUDA IPC): `tensors` tensors (K, V per layer)
 * tensorStrideElems elements apart, each [pages * pageSize, rowElems] bf16. */
export interface KvIpcPool {
  /** cudaIpcMemHandle_t of the pool allocation (64 bytes). */
  handle: Uint8Array;
  tensors: number;
  tensorStrideElems: number;
  rowElems: number;
  pageSize: number;
  /** The exporting GPU, for messages. */
  pciBusId: string;
}

/** One pull of KV pages from a remote pool: bytes moved, timed on the device (the copy kernel) and the host. */
export interface KvPullStats {
  bytes: number;
  deviceMs: number;
  hostMs: number;
}

export interface KvPoolInfo {
  pageSize: number;
  numPages: number;
  bytesPerPage: number; // all layers, K and V
}

export interface MemoryInfo {
  weightsBytes: number;
  kvPoolBytes: number;
  workspaceBytes: number;
  deviceFreeBytes: number | null;
  deviceTotalBytes: number | null;
}

export interface EngineOptions {
  backend: BackendKind;
  deviceId: number;
  pageSize: number;
  /** Number of KV pages; when absent, sized from memFractionStatic on the device (or host RAM for cpu). */
  numPages?: number;
  memFractionStatic: number;
  maxBatchTokens: number; // upper bound on tokens in one step (sizes the workspace)
  maxSeqsPerStep: number;
  threads?: number; // cpu backend worker threads
  /** Tensor parallelism (native/include/tensor_parallel.h): this engine is rank `rank` of a group of `size` ranks in
   * this process, which find each other by `group` (unique per start of the group). Absent: the whole model. */
  tp?: TensorParallelOptions;
}

export interface TensorParallelOptions {
  rank: number;
  size: number;
  group: string;
  /** Joining and every collective give up after this long with LLM_ERR_TP_ABORTED (default 300 s). */
  timeoutMs?: number;
  /** HOST:PORT when the group spans processes (multi-node, cpu backend only): rank 0 listens there, the other ranks
   * connect, and collectives go over TCP (native/src/tp_tcp.cpp). Absent: all ranks are threads of this process. */
  distInitAddr?: string;
  /** CUDA: false runs every collective through NCCL (--disable-custom-all-reduce); default true. */
  customAllReduce?: boolean;
}

export interface Engine {
  readonly backend: BackendKind;
  readonly spec: ModelSpec;
  readonly kv: KvPoolInfo;
  /** Runs one step; the descriptor is checked here, once (LLM_ERR_STEP_INVALID naming the field). `multimodal`
   * (vision-language models, cpu backend): M-RoPE positions of every token of the step, and the embeddings of its
   * image tokens (see MultimodalStepInput); checked at the addon boundary (LLM_ERR_BAD_REQUEST). */
  step(step: StepDescriptor, multimodal?: MultimodalStepInput): StepResult;
  /**
   * Pipelined stepping: stepBegin queues a step on the device and returns; stepEnd waits for the oldest begun step
   * and returns its result. At most two steps are begun and not ended, and no other engine call may come between.
   * A token word < 0 (packed with PackOptions.placeholders) is a placeholder -(1 + row) (src/scheduler/placeholder.ts): what the previously begun step samples
   * in sequence row `row`, resolved on the device, so step N + 1 can be begun before step N ended and the device does
   * not wait for the host between them. Optional: executors fall back to step().
   */
  stepBegin?(step: StepDescriptor): void;
  stepEnd?(): StepResult;
  /** Whether stepEnd would return without waiting (the oldest begun step is done on the device). */
  stepReady?(): boolean;
  /**
   * One embedding pass over a batch of sequences (at most maxSeqsPerStep of them, maxBatchTokens tokens in all): each
   * sequence's final hidden states (after the final norm) pooled as `options` says, one vector of hiddenSize floats
   * per sequence. Nothing of the pass stays in the KV pool. Not while steps are begun.
   */
  embed(sequences: readonly ArrayLike<number>[], options: EmbedOptions): Float32Array[];
  /** Copies the given KV pages (all layers, K and V) to a host buffer: the disaggregated transfer unit. */
  exportPages(pages: ArrayLike<number>): Uint8Array;
  importPages(pages: ArrayLike<number>, data: Uint8Array): void;
  /** GPU-to-GPU KV transfer within a node (CUDA IPC): the prefill side exports its pool; the decode side opens it
   * (an id until closed) and pulls tokens [srcToken0, srcToken0 + numTokens) of the remote page list into its own
   * pages, its stream synchronised on return. Backends without it throw LLM_ERR_KV_TRANSFER; engines that are not
   * native (test fakes) may leave these out. */
  kvIpcExport?(): KvIpcPool;
  kvIpcOpen?(pool: KvIpcPool): number;
  kvIpcPull?(remote: number, srcPages: ArrayLike<number>, srcToken0: number, dstPages: ArrayLike<number>, numTokens: number): KvPullStats;
  kvIpcClose?(remote: number): void;
  memoryInfo(): MemoryInfo;
  /** Vision-language models (spec.vision): the vision tower's embeddings of each image, [tokens, hiddenSize] row-major
   * (tokens = t * h * w / merge^2), in the order the image's placeholder tokens take them. Shapes and values are
   * checked at the addon boundary (LLM_ERR_BAD_REQUEST). Engines of text-only models may leave it out. */
  encodeImages?(images: readonly ImageInput[]): Float32Array[];
  close(): void;
}

/** How an embedding pass turns a sequence's final hidden rows into its vector: the last token's row (decoder
 * embedding models), the mean over all rows, or the first row (a BERT-style CLS token). */
export type EmbedPooling = 'last' | 'mean' | 'cls';
export const EMBED_POOLING_CODES: Record<EmbedPooling, number> = { last: 0, mean: 1, cls: 2 };

export interface EmbedOptions {
  pooling: EmbedPooling;
  /** Scale each vector to unit L2 norm. */
  normalize: boolean;
}

/**
 * The side input of a step with M-RoPE positions and image embeddings (not packed into the descriptor: a step that
 * carries it goes through Engine.step, not stepBegin). Every sequence of the step is covered: text-only ones take
 * their ordinary position in all three sections, a multimodal one the positions of src/multimodal/mrope.ts (prefill)
 * or (index + delta) in all three (decode).
 */
export interface MultimodalStepInput {
  /** [3 * numTokens]: the time section for every token of the step (in descriptor order), then height, then width. */
  positions: Int32Array;
  /** [imageTokens, hiddenSize]: one row per token of the step equal to spec.vision.imageTokenId, in order (a chunk
   * of a prefill carries the rows of its own image tokens). Absent: no token takes an image embedding. */
  imageEmbeds?: Float32Array;
}

/** One processed image (src/multimodal/image-processor.ts): patches [t * h * w, 3 * temporal * patch^2] and its grid. */
export interface ImageInput {
  pixelValues: Float32Array;
  gridThw: readonly [number, number, number];
}
