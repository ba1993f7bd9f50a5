// The one vocabulary of coded errors. Every error that crosses a thread, a process or the addon boundary is an
// LlmError: a stable code, a message that names the flag/field/file/tensor/server at fault, and the rank that
// raised it when it came from a compute actor. Codes are strings so they survive JSON and postMessage unchanged.

export const ErrorCodes = [
  // usage and configuration
  'LLM_ERR_USAGE', // bad CLI flag or value (exit code 2)
  'LLM_ERR_CONFIG', // bad YAML / env / contradictory settings
  // model files and loading
  'LLM_ERR_MODEL_NOT_FOUND',
  'LLM_ERR_MODEL_FORMAT', // corrupt or truncated file
  'LLM_ERR_UNSUPPORTED_ARCH',
  'LLM_ERR_UNSUPPORTED_DTYPE',
  'LLM_ERR_SHAPE_MISMATCH',
  'LLM_ERR_TOKENIZER',
  // engine and device
  'LLM_ERR_STEP_INVALID', // step descriptor failed a check at the addon boundary
  'LLM_ERR_OUT_OF_MEMORY',
  'LLM_ERR_DEVICE', // CUDA/cuBLAS/NCCL failure
  'LLM_ERR_TP_ABORTED', // a tensor-parallel group was aborted (a rank failed or timed out); the group restarts
  'LLM_ERR_NO_DEVICE',
  'LLM_ERR_NATIVE_BUILD', // the addon is missing or was built without the asked backend
  // requests and scheduling
  'LLM_ERR_BAD_REQUEST',
  'LLM_ERR_CANCELLED',
  'LLM_ERR_OVERLOADED',
  'LLM_ERR_CONTEXT_LENGTH',
  'LLM_ERR_ACTOR_CRASHED',
  'LLM_ERR_ACTOR_HUNG',
  'LLM_ERR_SHUTDOWN',
  // distributed runtime
  'LLM_ERR_DISCOVERY',
  'LLM_ERR_TRANSPORT',
  'LLM_ERR_PROTOCOL', // malformed frame or payload on a wire
  'LLM_ERR_TIMEOUT',
  'LLM_ERR_KV_TRANSFER',
  'LLM_ERR_INTERNAL',
] as const;

export type ErrorCode = (typeof ErrorCodes)[number];

/** The plain-object form of an LlmError: what crosses threads, processes and the addon boundary. */
export interface ErrorPayload {
  code: ErrorCode;
  message: string;
  rank?: number;
}

export class LlmError extends Error {
  readonly code: ErrorCode;
  readonly rank: number | undefined;

  constructor(code: ErrorCode, message: string, options?: { rank?: number; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'LlmError';
    this.code = code;
    this.rank = options?.rank;
  }

  toPayload(): ErrorPayload {
    return this.rank === undefined
      ? { code: this.code, message: this.message }
      : { code: this.code, message: this.message, rank: this.rank };
  }

  static fromPayload(p: ErrorPayload): LlmError {
    return new LlmError(p.code, p.message, p.rank === undefined ? undefined : { rank: p.rank });
  }
}

export function isErrorCode(x: unknown): x is ErrorCode {
  return typeof x === 'string' && (ErrorCodes as readonly string[]).includes(x);
}

/** Turns anything thrown (an LlmError, a native error carrying `code`, a plain Error) into a payload. */
export function toErrorPayload(err: unknown, rank?: number): ErrorPayload {
  if (err instanceof LlmError) {
    const p = err.toPayload();
    return rank !== undefined && p.rank === undefined ? { ...p, rank } : p;
  }
  const e = err as { code?: unknown; message?: unknown } | null;
  const code: ErrorCode = e && isErrorCode(e.code) ? e.code : 'LLM_ERR_INTERNAL';
  const message = e && typeof e.message === 'string' ? e.message : String(err);
  return rank === undefined ? { code, message } : { code, message, rank };
}
