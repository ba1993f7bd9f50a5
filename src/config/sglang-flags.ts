// Every SGLang server flag (`python -m sglang.launch_server --help`), so that a command line written for
// `python -m dynamo.sglang` starts here too. Each row says how the flag takes its value and what this worker does with
// it:
//   - honoured: the flag is a spelling of one of our worker flags (src/config/schema.ts), which carries its env var,
//     its check and its effect;
//   - inherent: it asks for what this worker always does (it names why);
//   - unused: accepted, its value checked by kind and choices, and listed in the one start-up line of flags the
//     worker has no use for.
// Source: SGLang's server-arguments reference (docs/advanced_features/server_arguments.md at commit 004813e1, the
// table generated from ServerArgs.add_cli_args), plus what Dynamo adds to it (the extra --load-format choice "gms").
// A value kind mirrors argparse: bool = store_true (no value), list = nargs (several values after the flag, or one
// comma-separated), json = one JSON argument.

import { Type, type TSchema } from '@sinclair/typebox';
import type { FlagSpec } from '../cli/args.js';

export type SglangValue =
  | { kind: 'bool' }
  | { kind: 'int'; choices?: readonly number[] }
  | { kind: 'float' }
  | { kind: 'string'; choices?: readonly string[] }
  | { kind: 'list'; item: 'string' | 'int' | 'float'; choices?: readonly string[] }
  | { kind: 'json'; shape: 'list' | 'object' };

export type SglangFlagUse =
  | { use: 'honoured'; by: string }
  | { use: 'inherent'; why: string }
  | { use: 'unused' };

export type SglangFlag = { name: string; aliases?: readonly string[]; value: SglangValue } & SglangFlagUse;

// ---- value kinds ----
const B: SglangValue = { kind: 'bool' };
const I: SglangValue = { kind: 'int' };
const F: SglangValue = { kind: 'float' };
const S: SglangValue = { kind: 'string' };
const C = (...choices: string[]): SglangValue => ({ kind: 'string', choices });
const IC = (...choices: number[]): SglangValue => ({ kind: 'int', choices });
const LS: SglangValue = { kind: 'list', item: 'string' };
const LI: SglangValue = { kind: 'list', item: 'int' };
const LF: SglangValue = { kind: 'list', item: 'float' };
const LC = (...choices: string[]): SglangValue => ({ kind: 'list', item: 'string', choices });
const JL: SglangValue = { kind: 'json', shape: 'list' };
const JO: SglangValue = { kind: 'json', shape: 'object' };

// ---- choice lists shared by several flags ----
const LOAD_FORMATS = ['auto', 'pt', 'safetensors', 'npcache', 'dummy', 'sharded_state', 'gguf', 'bitsandbytes', 'layered', 'flash_rl',
  'remote', 'remote_instance', 'fastsafetensors', 'private', 'runai_streamer', 'gms'];
const QUANTIZATIONS = ['awq', 'fp8', 'gptq', 'marlin', 'gptq_marlin', 'awq_marlin', 'bitsandbytes', 'gguf', 'modelopt', 'modelopt_fp8',
  'modelopt_fp4', 'petit_nvfp4', 'w8a8_int8', 'w8a8_fp8', 'moe_wna16', 'qoq', 'w4afp8', 'mxfp4', 'mxfp8', 'auto-round', 'compressed-tensors',
  'modelslim', 'quark_int4fp8_moe'];
const ATTENTION_BACKENDS = ['triton', 'torch_native', 'flex_attention', 'dsa', 'nsa', 'cutlass_mla', 'fa3', 'fa4', 'flashinfer', 'flashmla',
  'trtllm_mla', 'trtllm_mha', 'dual_chunk_flash_attn', 'aiter', 'wave', 'intel_amx', 'ascend'];
const MOE_RUNNER_BACKENDS = ['auto', 'deep_gemm', 'triton', 'triton_kernel', 'flashinfer_trtllm', 'flashinfer_trtllm_routed', 'flashinfer_cutlass',
  'flashinfer_mxfp4', 'flashinfer_cutedsl', 'cutlass'];
const MOE_A2A_BACKENDS = ['none', 'deepep', 'mooncake', 'mori', 'nixl', 'ascend_fuseep'];

const unused = (name: string, value: SglangValue, aliases?: readonly string[]): SglangFlag =>
  ({ name, value, use: 'unused', ...(aliases ? { aliases } : {}) });
const honoured = (name: string, value: SglangValue, by: string, aliases?: readonly string[]): SglangFlag =>
  ({ name, value, use: 'honoured', by, ...(aliases ? { aliases } : {}) });
const inherent = (name: string, value: SglangValue, why: string): SglangFlag => ({ name, value, use: 'inherent', why });

const u = unused;

export const SGLANG_SERVER_FLAGS: readonly SglangFlag[] = [
  // Model and tokenizer
  honoured('model-path', S, 'model-path', ['model']),
  honoured('tokenizer-path', S, 'tokenizer-path'),
  u('tokenizer-mode', C('auto', 'slow')),
  u('tokenizer-worker-num', I),
  inherent('skip-tokenizer-init', B, 'the worker always takes and returns token ids (the frontend tokenizes), as Dynamo runs SGLang'),
  u('load-format', C(...LOAD_FORMATS)),
  u('model-loader-extra-config', S),
  u('trust-remote-code', B),
  honoured('context-length', I, 'context-length'),
  honoured('is-embedding', B, 'embedding-worker'),
  u('enable-multimodal', B),
  u('revision', S),
  u('model-impl', S),
  // HTTP server
  u('host', S),
  u('port', I),
  u('fastapi-root-path', S),
  u('grpc-mode', B),
  u('skip-server-warmup', B),
  u('warmups', S),
  u('nccl-port', I),
  u('checkpoint-engine-wait-weights-before-ready', B),
  // Quantization and data type
  u('dtype', C('auto', 'half', 'float16', 'bfloat16', 'float', 'float32')),
  u('quantization', C(...QUANTIZATIONS)),
  u('quantization-param-path', S),
  u('kv-cache-dtype', C('auto', 'fp8_e5m2', 'fp8_e4m3', 'bf16', 'bfloat16', 'fp4_e2m1')),
  u('enable-fp32-lm-head', B),
  u('modelopt-quant', S),
  u('modelopt-checkpoint-restore-path', S),
  u('modelopt-checkpoint-save-path', S),
  u('modelopt-export-path', S),
  u('quantize-and-serve', B),
  u('rl-quant-profile', S),
  u('enable-quant-communications', B),
  // Memory and scheduling
  honoured('mem-fraction-static', F, 'mem-fraction-static'),
  honoured('max-running-requests', I, 'max-running-requests'),
  u('max-queued-requests', I),
  honoured('max-total-tokens', I, 'max-total-tokens'),
  honoured('chunked-prefill-size', I, 'chunked-prefill-size'),
  u('prefill-max-requests', I),
  u('enable-dynamic-chunking', B),
  honoured('max-prefill-tokens', I, 'max-prefill-tokens'),
  u('schedule-policy', C('lpm', 'random', 'fcfs', 'dfs-weight', 'lof', 'priority', 'routing-key')),
  u('enable-priority-scheduling', B),
  u('abort-on-priority-when-disabled', B),
  u('schedule-low-priority-values-first', B),
  u('priority-scheduling-preemption-threshold', I),
  u('schedule-conservativeness', F),
  honoured('page-size', I, 'page-size'),
  u('swa-full-tokens-ratio', F),
  u('disable-hybrid-swa-memory', B),
  u('radix-eviction-policy', C('lru', 'lfu')),
  u('enable-prefill-delayer', B),
  u('prefill-delayer-max-delay-passes', I),
  u('prefill-delayer-token-usage-low-watermark', F),
  u('prefill-delayer-queue-min-ratio', F),
  u('prefill-delayer-max-delay-ms', F),
  u('prefill-delayer-forward-passes-buckets', LF),
  u('prefill-delayer-wait-seconds-buckets', LF),
  // Runtime options
  honoured('device', S, 'device'),
  honoured('tensor-parallel-size', I, 'tp-size', ['tp-size', 'tp']),
  u('pipeline-parallel-size', I, ['pp-size']),
  u('attention-context-parallel-size', I, ['attn-cp-size']),
  u('moe-data-parallel-size', I, ['moe-dp-size']),
  u('pp-max-micro-batch-size', I),
  u('pp-async-batch-depth', I),
  u('stream-interval', I),
  inherent('incremental-streaming-output', B, 'each streamed chunk always carries only the new tokens, as Dynamo forces for SGLang'),
  honoured('random-seed', I, 'seed'),
  u('constrained-json-whitespace-pattern', S),
  u('constrained-json-disable-any-whitespace', B),
  u('watchdog-timeout', F),
  u('soft-watchdog-timeout', F),
  u('dist-timeout', I),
  u('download-dir', S),
  u('model-checksum', S),
  honoured('base-gpu-id', I, 'base-gpu-id'),
  u('gpu-id-step', I),
  u('sleep-on-idle', B),
  u('custom-sigquit-handler', S),
  // Logging
  honoured('log-level', S, 'log-level'),
  u('log-level-http', S),
  u('log-requests', B),
  u('log-requests-level', IC(0, 1, 2, 3)),
  u('log-requests-format', C('text', 'json')),
  u('log-requests-target', LS),
  u('uvicorn-access-log-exclude-prefixes', LS),
  u('crash-dump-folder', S),
  u('show-time-cost', B),
  honoured('enable-metrics', B, 'enable-metrics'),
  u('enable-mfu-metrics', B),
  u('enable-metrics-for-all-schedulers', B),
  u('tokenizer-metrics-custom-labels-header', S),
  u('tokenizer-metrics-allowed-custom-labels', LS),
  honoured('bucket-time-to-first-token', LF, 'bucket-time-to-first-token'),
  honoured('bucket-inter-token-latency', LF, 'bucket-inter-token-latency'),
  honoured('bucket-e2e-request-latency', LF, 'bucket-e2e-request-latency'),
  honoured('collect-tokens-histogram', B, 'collect-tokens-histogram'),
  u('prompt-tokens-buckets', LS),
  u('generation-tokens-buckets', LS),
  u('gc-warning-threshold-secs', F),
  u('decode-log-interval', I),
  u('enable-request-time-stats-logging', B),
  honoured('kv-events-config', S, 'kv-events-config'),
  u('enable-trace', B),
  u('otlp-traces-endpoint', S),
  // RequestMetricsExporter
  u('export-metrics-to-file', B),
  u('export-metrics-to-file-dir', S),
  // API related
  u('api-key', S),
  u('admin-api-key', S),
  honoured('served-model-name', S, 'served-model-name'),
  u('weight-version', S),
  u('chat-template', S),
  u('hf-chat-template-name', S),
  u('completion-template', S),
  u('file-storage-path', S),
  u('enable-cache-report', B),
  u('reasoning-parser', C('deepseek-r1', 'deepseek-v3', 'glm45', 'gpt-oss', 'kimi', 'qwen3', 'qwen3-thinking', 'step3')),
  u('tool-call-parser', C('deepseekv3', 'deepseekv31', 'glm', 'glm45', 'glm47', 'gpt-oss', 'kimi_k2', 'llama3', 'mistral', 'pythonic', 'qwen',
    'qwen25', 'qwen3_coder', 'step3', 'gigachat3')),
  u('tool-server', S),
  u('sampling-defaults', C('openai', 'model')),
  // Data parallelism
  honoured('data-parallel-size', I, 'dp-size', ['dp-size', 'dp']),
  u('load-balance-method', C('auto', 'round_robin', 'follow_bootstrap_room', 'total_requests', 'total_tokens')),
  // Multi-node distributed serving
  honoured('dist-init-addr', S, 'dist-init-addr', ['nccl-init-addr']),
  honoured('nnodes', I, 'nnodes'),
  honoured('node-rank', I, 'node-rank'),
  // Model override args
  u('json-model-override-args', S),
  u('preferred-sampling-params', S),
  // LoRA
  u('enable-lora', B),
  u('enable-lora-overlap-loading', B),
  u('max-lora-rank', I),
  u('lora-target-modules', LC('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'qkv_proj', 'gate_up_proj', 'all')),
  u('lora-paths', LS),
  u('max-loras-per-batch', I),
  u('max-loaded-loras', I),
  u('lora-eviction-policy', C('lru', 'fifo')),
  u('lora-backend', C('triton', 'csgmv', 'ascend', 'torch_native')),
  u('max-lora-chunk-size', IC(16, 32, 64, 128)),
  u('lora-drain-wait-threshold', F),
  // Kernel backends
  u('attention-backend', C(...ATTENTION_BACKENDS)),
  u('prefill-attention-backend', C(...ATTENTION_BACKENDS)),
  u('decode-attention-backend', C(...ATTENTION_BACKENDS)),
  u('sampling-backend', C('flashinfer', 'pytorch', 'ascend')),
  u('grammar-backend', C('xgrammar', 'outlines', 'llguidance', 'none')),
  u('mm-attention-backend', C('sdpa', 'fa3', 'fa4', 'triton_attn', 'ascend_attn', 'aiter_attn')),
  u('dsa-prefill-backend', C('flashmla_sparse', 'flashmla_kv', 'flashmla_auto', 'fa3', 'tilelang', 'aiter', 'trtllm'), ['nsa-prefill-backend']),
  u('dsa-decode-backend', C('flashmla_sparse', 'flashmla_kv', 'fa3', 'tilelang', 'aiter', 'trtllm'), ['nsa-decode-backend']),
  u('fp8-gemm-backend', C('auto', 'deep_gemm', 'flashinfer_trtllm', 'flashinfer_cutlass', 'flashinfer_deepgemm', 'cutlass', 'triton', 'aiter')),
  u('fp4-gemm-backend', C('auto', 'flashinfer_cudnn', 'flashinfer_cutlass', 'flashinfer_trtllm')),
  u('disable-flashinfer-autotune', B),
  // Speculative decoding
  u('speculative-algorithm', C('EAGLE', 'EAGLE3', 'NEXTN', 'STANDALONE', 'NGRAM')),
  u('speculative-draft-model-path', S, ['speculative-draft-model']),
  u('speculative-draft-model-revision', S),
  u('speculative-draft-load-format', C(...LOAD_FORMATS)),
  u('speculative-num-steps', I),
  u('speculative-eagle-topk', I),
  u('speculative-num-draft-tokens', I),
  u('speculative-accept-threshold-single', F),
  u('speculative-accept-threshold-acc', F),
  u('speculative-token-map', S),
  u('speculative-attention-mode', C('prefill', 'decode')),
  u('speculative-draft-attention-backend', C(...ATTENTION_BACKENDS)),
  u('speculative-moe-runner-backend', C(...MOE_RUNNER_BACKENDS)),
  u('speculative-moe-a2a-backend', C(...MOE_A2A_BACKENDS)),
  u('speculative-draft-model-quantization', C(...QUANTIZATIONS)),
  u('speculative-ngram-min-bfs-breadth', I),
  u('speculative-ngram-max-bfs-breadth', I),
  u('speculative-ngram-match-type', C('BFS', 'PROB')),
  u('speculative-ngram-max-trie-depth', I),
  u('speculative-ngram-capacity', I),
  u('enable-multi-layer-eagle', B),
  // MoE
  u('expert-parallel-size', I, ['ep-size', 'ep']),
  u('moe-a2a-backend', C(...MOE_A2A_BACKENDS)),
  u('moe-runner-backend', C(...MOE_RUNNER_BACKENDS)),
  u('flashinfer-mxfp4-moe-precision', C('default', 'bf16')),
  u('enable-flashinfer-allreduce-fusion', B),
  u('enable-aiter-allreduce-fusion', B),
  u('deepep-mode', C('normal', 'low_latency', 'auto')),
  u('deepep-dispatcher-output-dtype', C('bf16', 'fp8', 'int8', 'nvfp4', 'auto')),
  u('enable-fused-grouped-gemm-combine', B),
  u('ep-num-redundant-experts', I),
  u('ep-dispatch-algorithm', S),
  u('init-expert-location', S),
  u('enable-eplb', B),
  u('eplb-algorithm', S),
  u('eplb-rebalance-num-iterations', I),
  u('eplb-rebalance-layers-per-chunk', I),
  u('eplb-min-rebalancing-utilization-threshold', F),
  u('expert-distribution-recorder-mode', S),
  u('expert-distribution-recorder-buffer-size', I),
  u('enable-expert-distribution-metrics', B),
  u('deepep-config', S),
  u('moe-dense-tp-size', I),
  u('elastic-ep-backend', C('none', 'mooncake')),
  u('enable-elastic-expert-backup', B),
  u('mooncake-ib-device', S),
  u('enable-deepep-waterfill', B),
  u('elastic-ep-rejoin', B),
  // Mamba cache
  u('max-mamba-cache-size', I),
  u('mamba-ssm-dtype', C('float32', 'bfloat16', 'float16')),
  u('mamba-full-memory-ratio', F),
  u('mamba-scheduler-strategy', C('auto', 'no_buffer', 'extra_buffer')),
  u('mamba-track-interval', I),
  // Hierarchical cache
  u('enable-hierarchical-cache', B),
  u('hicache-ratio', F),
  u('hicache-size', I),
  u('hicache-write-policy', C('write_back', 'write_through', 'write_through_selective')),
  u('hicache-io-backend', C('direct', 'kernel', 'kernel_ascend')),
  u('hicache-mem-layout', C('layer_first', 'page_first', 'page_first_direct', 'page_first_kv_split', 'page_head')),
  u('hicache-storage-backend', C('file', 'mooncake', 'hf3fs', 'nixl', 'aibrix', 'dynamic', 'eic')),
  u('hicache-storage-prefetch-policy', C('best_effort', 'wait_complete', 'timeout')),
  u('hicache-storage-backend-extra-config', S),
  u('hierarchical-sparse-attention-extra-config', S),
  u('enable-lmcache', B),
  // Ktransformers
  u('kt-weight-path', S),
  u('kt-method', S),
  u('kt-cpuinfer', I),
  u('kt-threadpool-count', I),
  u('kt-num-gpu-experts', I),
  u('kt-max-deferred-experts-per-token', I),
  // Diffusion LLM
  u('dllm-algorithm', S),
  u('dllm-algorithm-config', S),
  // Offloading
  u('cpu-offload-gb', I),
  u('offload-group-size', I),
  u('offload-num-in-group', I),
  u('offload-prefetch-step', I),
  u('offload-mode', S),
  // Multi-item scoring
  u('multi-item-scoring-delimiter', I),
  // Optimization/debug options
  honoured('disable-radix-cache', B, 'disable-radix-cache'),
  u('cuda-graph-max-bs', I),
  u('cuda-graph-bs', LI),
  u('disable-cuda-graph', B),
  u('disable-cuda-graph-padding', B),
  u('enable-profile-cuda-graph', B),
  u('enable-cudagraph-gc', B),
  u('enable-layerwise-nvtx-marker', B),
  u('enable-nccl-nvls', B),
  u('enable-symm-mem', B),
  u('disable-flashinfer-cutlass-moe-fp4-allgather', B),
  u('enable-tokenizer-batch-encode', B),
  u('disable-tokenizer-batch-decode', B),
  u('disable-outlines-disk-cache', B),
  honoured('disable-custom-all-reduce', B, 'disable-custom-all-reduce'),
  u('enable-mscclpp', B),
  u('enable-torch-symm-mem', B),
  honoured('disable-overlap-schedule', B, 'disable-overlap-schedule'),
  u('enable-mixed-chunk', B),
  u('enable-dp-attention', B),
  u('enable-dp-lm-head', B),
  u('enable-two-batch-overlap', B),
  u('enable-single-batch-overlap', B),
  u('tbo-token-distribution-threshold', F),
  u('enable-torch-compile', B),
  u('enable-torch-compile-debug-mode', B),
  u('disable-piecewise-cuda-graph', B),
  u('enforce-piecewise-cuda-graph', B),
  u('piecewise-cuda-graph-tokens', JL),
  u('piecewise-cuda-graph-compiler', C('eager', 'inductor')),
  u('torch-compile-max-bs', I),
  u('piecewise-cuda-graph-max-tokens', I),
  u('torchao-config', S),
  u('enable-nan-detection', B),
  u('enable-p2p-check', B),
  u('triton-attention-reduce-in-fp32', B),
  u('triton-attention-num-kv-splits', I),
  u('triton-attention-split-tile-size', I),
  u('num-continuous-decode-steps', I),
  u('delete-ckpt-after-loading', B),
  u('enable-memory-saver', B),
  u('enable-weights-cpu-backup', B),
  u('enable-draft-weights-cpu-backup', B),
  u('allow-auto-truncate', B),
  u('enable-custom-logit-processor', B),
  u('flashinfer-mla-disable-ragged', B),
  u('disable-shared-experts-fusion', B),
  u('disable-chunked-prefix-cache', B),
  u('disable-fast-image-processor', B),
  u('keep-mm-feature-on-device', B),
  u('enable-return-hidden-states', B),
  u('enable-return-routed-experts', B),
  u('scheduler-recv-interval', I),
  u('numa-node', LI),
  u('enable-deterministic-inference', B),
  u('rl-on-policy-target', C('fsdp')),
  u('enable-attn-tp-input-scattered', B),
  u('enable-dsa-prefill-context-parallel', B, ['enable-nsa-prefill-context-parallel']),
  u('dsa-prefill-cp-mode', C('in-seq-split', 'round-robin-split'), ['nsa-prefill-cp-mode']),
  u('enable-fused-qk-norm-rope', B),
  u('enable-precise-embedding-interpolation', B),
  u('enable-streaming-session', B),
  // Dynamic batch tokenizer
  u('enable-dynamic-batch-tokenizer', B),
  u('dynamic-batch-tokenizer-batch-size', I),
  u('dynamic-batch-tokenizer-batch-timeout', F),
  // Debug tensor dumps
  u('debug-tensor-dump-output-folder', S),
  u('debug-tensor-dump-layers', JL),
  u('debug-tensor-dump-input-file', S),
  u('debug-tensor-dump-inject', S),
  // PD disaggregation
  honoured('disaggregation-mode', C('null', 'prefill', 'decode'), 'disaggregation-mode'),
  honoured('disaggregation-transfer-backend', C('mooncake', 'nixl', 'ascend', 'fake'), 'disaggregation-transfer-backend'),
  honoured('disaggregation-bootstrap-port', I, 'disaggregation-bootstrap-port'),
  u('disaggregation-ib-device', S),
  u('disaggregation-decode-enable-offload-kvcache', B),
  u('num-reserved-decode-tokens', I),
  u('disaggregation-decode-polling-interval', I),
  // Encode prefill disaggregation
  u('encoder-only', B),
  u('language-only', B),
  u('encoder-transfer-backend', C('zmq_to_scheduler', 'zmq_to_tokenizer', 'mooncake')),
  u('encoder-urls', JL),
  // Custom weight loader
  u('custom-weight-loader', LS),
  u('weight-loader-disable-mmap', B),
  u('weight-loader-prefetch-checkpoints', B),
  u('weight-loader-prefetch-num-threads', I),
  u('remote-instance-weight-loader-seed-instance-ip', S),
  u('remote-instance-weight-loader-seed-instance-service-port', I),
  u('remote-instance-weight-loader-send-weights-group-ports', JL),
  u('remote-instance-weight-loader-backend', C('transfer_engine', 'nccl')),
  u('remote-instance-weight-loader-start-seed-via-transfer-engine', B),
  // PD-Multiplexing
  u('enable-pdmux', B),
  u('pdmux-config-path', S),
  u('sm-group-num', I),
  // Configuration file: ours takes the same shape (keys spelled like the flags)
  honoured('config', S, 'config'),
  // Multi-modal
  u('mm-max-concurrent-calls', I),
  u('mm-per-request-timeout', F),
  u('enable-broadcast-mm-inputs-process', B),
  u('mm-process-config', JO),
  u('mm-enable-dp-encoder', B),
  u('limit-mm-data-per-request', JO),
  u('enable-mm-global-cache', B),
  // Checkpoint decryption
  u('decrypted-config-file', S),
  u('decrypted-draft-config-file', S),
  u('enable-prefix-mm-cache', B),
  // Forward hooks, msProbe
  u('forward-hooks', JL),
  u('msprobe-dump-config', S),
  // Deprecated
  u('enable-ep-moe', B),
  u('enable-deepep-moe', B),
  u('prefill-round-robin-balance', B),
  u('enable-flashinfer-cutlass-moe', B),
  u('enable-flashinfer-cutedsl-moe', B),
  u('enable-flashinfer-trtllm-moe', B),
  u('enable-triton-kernel-moe', B),
  u('enable-flashinfer-mxfp4-moe', B),
  u('crash-on-nan', S),
  u('hybrid-kvcache-ratio', F),
  u('load-watch-interval', F),
  u('nsa-prefill', C('flashmla_sparse', 'flashmla_decode', 'fa3', 'tilelang', 'aiter')),
  u('nsa-decode', C('flashmla_prefill', 'flashmla_kv', 'fa3', 'tilelang', 'aiter')),
];

const INT_TEXT = '^[+-]?\\d+$';
const FLOAT_TEXT = '^[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?$';

function valueSchema(v: SglangValue): { kind: FlagSpec['kind']; schema: TSchema; expected?: string; multiValue?: boolean } {
  const literals = (xs: readonly (string | number)[]) => Type.Union(xs.map((x) => Type.Literal(x)));
  switch (v.kind) {
    case 'bool':
      return { kind: 'bool', schema: Type.Boolean() };
    case 'int':
      return { kind: 'int', schema: v.choices ? literals(v.choices) : Type.Integer() };
    case 'float':
      return { kind: 'number', schema: Type.Number() };
    case 'string':
      return { kind: 'string', schema: v.choices ? literals(v.choices) : Type.String() };
    case 'list': {
      const item = v.choices
        ? literals(v.choices)
        : v.item === 'int'
          ? Type.String({ pattern: INT_TEXT, description: 'an integer' })
          : v.item === 'float'
            ? Type.String({ pattern: FLOAT_TEXT, description: 'a number' })
            : Type.String();
      const expected = v.choices
        ? `one or more of ${v.choices.join(', ')}`
        : `one or more ${v.item === 'int' ? 'integers' : v.item === 'float' ? 'numbers' : 'values'}, space- or comma-separated`;
      return { kind: 'list', schema: Type.Array(item), expected, multiValue: true };
    }
    case 'json':
      return v.shape === 'list'
        ? { kind: 'json', schema: Type.Array(Type.Unknown()), expected: 'a JSON list' }
        : { kind: 'json', schema: Type.Object({}, { additionalProperties: true }), expected: 'a JSON object' };
  }
}

const NOT_USED_HELP = 'SGLang server flag, accepted (its value is checked) and not used by this engine; listed at start.';

/** The flag specs of the SGLang flags that are not spellings of a worker flag (unused and inherent ones). */
export const SGLANG_PASSIVE_FLAGS: readonly FlagSpec[] = SGLANG_SERVER_FLAGS.filter((f) => f.use !== 'honoured').map((f) => ({
  name: f.name,
  ...(f.aliases ? { aliases: f.aliases } : {}),
  ...valueSchema(f.value),
  help: f.use === 'inherent' ? `SGLang server flag, accepted: ${f.why}.` : NOT_USED_HELP,
}));

const inherentNames = new Set(SGLANG_SERVER_FLAGS.filter((f) => f.use === 'inherent').map((f) => f.name));

/** Whether a parsed flag is one of the SGLang flags this worker accepts without using (it goes in the start-up line). */
export function isUnusedSglangFlag(spec: FlagSpec): boolean {
  return SGLANG_PASSIVE_FLAGS.includes(spec) && !inherentNames.has(spec.name);
}
