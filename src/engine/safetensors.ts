// safetensors header reader: a single `model.safetensors` or the shards listed by `model.safetensors.index.json`.
// Only the JSON header is read; each tensor's absolute byte range is validated against its file's size so the
// native side can memory-map without further checks.

import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { LlmError } from '../errors.js';

export interface SafetensorsTensor {
  name: string;
  file: string;
  /** safetensors dtype string: F32, F16, BF16, I64, ... */
  dtype: string;
  shape: number[];
  /** Absolute byte offset of the data inside `file`. */
  offset: number;
  byteSize: number;
}

const DTYPE_SIZE: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, U16: 2, I16: 2, F16: 2, BF16: 2, U32: 4, I32: 4, F32: 4,
  U64: 8, I64: 8, F64: 8,
};

// A header larger than this is corrupt (real headers are a few MB at most).
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function formatError(file: string, what: string): LlmError {
  return new LlmError('LLM_ERR_MODEL_FORMAT', `safetensors file ${file}: ${what}`);
}

/** Reads the header of one .safetensors file. */
export function readSafetensorsFile(file: string): SafetensorsTensor[] {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `cannot open safetensors file ${file}: ${(err as Error).message}`);
  }
  try {
    const fileSize = fstatSync(fd).size;
    if (fileSize < 8) throw formatError(file, `truncated: ${fileSize} bytes, not even the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(Math.min(MAX_HEADER_BYTES, fileSize - 8))) {
      throw formatError(file, `header length ${headerLen} exceeds the file size ${fileSize}`);
    }
    const n = Number(headerLen);
    const headerBuf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const r = readSync(fd, headerBuf, got, n - got, 8 + got);
      if (r === 0) throw formatError(file, 'unexpected end of file in the JSON header');
      got += r;
    }
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch (err) {
      throw formatError(file, `header is not valid JSON (${(err as Error).message})`);
    }
    if (header === null || typeof header !== 'object' || Array.isArray(header)) {
      throw formatError(file, 'header is not a JSON object');
    }
    const dataStart = 8 + n;
    const dataSize = fileSize - dataStart;
    const tensors: SafetensorsTensor[] = [];
    for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') continue;
      const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
      if (e === null || typeof e !== 'object') throw formatError(file, `tensor ${name}: entry is not an object`);
      const { dtype, shape, data_offsets: offsets } = e;
      if (typeof dtype !== 'string') throw formatError(file, `tensor ${name}: dtype missing`);
      if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw formatError(file, `tensor ${name}: shape is not a list of non-negative integers`);
      }
      if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0)) {
        throw formatError(file, `tensor ${name}: data_offsets is not [begin, end]`);
      }
      const [begin, end] = offsets as [number, number];
      if (end < begin || end > dataSize) {
        throw formatError(file, `tensor ${name}: data_offsets [${begin}, ${end}] lie outside the ${dataSize} data bytes (file truncated?)`);
      }
      const elemSize = DTYPE_SIZE[dtype];
      const elems = (shape as number[]).reduce((a, b) => a * b, 1);
      if (elemSize !== undefined && elems * elemSize !== end - begin) {
        throw formatError(file, `tensor ${name}: ${dtype} [${shape.join(', ')}] needs ${elems * elemSize} bytes but data_offsets span ${end - begin}`);
      }
      tensors.push({ name, file, dtype, shape: shape as number[], offset: dataStart + begin, byteSize: end - begin });
    }
    return tensors;
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads all tensors of an HF checkpoint directory: `model.safetensors.index.json` (sharded) when present,
 * else `model.safetensors`.
 */
export function readSafetensorsDir(dir: string): SafetensorsTensor[] {
  const indexPath = join(dir, 'model.safetensors.index.json');
  if (existsSync(indexPath)) return readSafetensorsIndex(indexPath);
  const single = join(dir, 'model.safetensors');
  if (!existsSync(single)) {
    throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `model directory ${dir} has neither model.safetensors nor model.safetensors.index.json`);
  }
  return readSafetensorsFile(single);
}

export function readSafetensorsIndex(indexPath: string): SafetensorsTensor[] {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `safetensors index ${indexPath} is not valid JSON: ${(err as Error).message}`);
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap)) {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `safetensors index ${indexPath} has no weight_map object`);
  }
  const dir = dirname(resolve(indexPath));
  const shards = new Set<string>();
  for (const [name, shard] of Object.entries(weightMap as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\')) {
      throw new LlmError('LLM_ERR_MODEL_FORMAT', `safetensors index ${indexPath}: weight_map entry ${name} is not a shard file name`);
    }
    shards.add(shard);
  }
  const byName = new Map<string, SafetensorsTensor>();
  for (const shard of shards) {
    for (const t of readSafetensorsFile(join(dir, shard))) byName.set(t.name, t);
  }
  for (const [name, shard] of Object.entries(weightMap as Record<string, string>)) {
    const t = byName.get(name);
    if (t === undefined || t.file !== join(dir, shard)) {
      throw new LlmError('LLM_ERR_SHAPE_MISMATCH', `tensor ${name} is listed in ${indexPath} under ${shard} but that shard does not hold it`);
    }
  }
  return [...byName.values()];
}
