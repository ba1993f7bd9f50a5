// GGUF (v2/v3) reader: header, metadata key/values, tensor infos and the aligned data offset. Only the header is
// read (tensor data stays on disk for the native side to memory-map). Every read is bounds-checked against the
// file size so a truncated or corrupt file gives LLM_ERR_MODEL_FORMAT naming the file and the fault, never a
// RangeError or a huge allocation.

import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { LlmError } from '../errors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian uint32
export const GGUF_DEFAULT_ALIGNMENT = 32;

export enum GgufValueType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** ggml tensor types by their GGUF numeric id (the ones the format defines; only F32/F16/BF16 are loadable). */
export const GGML_TYPE_NAMES: Readonly<Record<number, string>> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 8: 'Q8_0', 9: 'Q8_1', 10: 'Q2_K', 11: 'Q3_K',
  12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS', 19: 'IQ1_S',
  20: 'IQ4_NL', 21: 'IQ3_S', 22: 'IQ2_S', 23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32', 27: 'I64', 28: 'F64',
  29: 'IQ1_M', 30: 'BF16', 34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
};
export const GGML_TYPE_F32 = 0;
export const GGML_TYPE_F16 = 1;
export const GGML_TYPE_BF16 = 30;

/** Bytes per element of the unquantized types whose size we can check exactly. */
const UNQUANTIZED_TYPE_SIZE: Readonly<Record<number, number>> = { 0: 4, 1: 2, 24: 1, 25: 2, 26: 4, 27: 8, 28: 8, 30: 2 };

export type GgufScalar = number | bigint | boolean | string;
export type GgufValue = GgufScalar | GgufScalar[];

export interface GgufTensorInfo {
  name: string;
  /** ggml order: dims[0] is the innermost (contiguous) dimension. */
  dims: number[];
  type: number;
  typeName: string;
  /** Absolute byte offset of the tensor data inside the file. */
  offset: number;
  /** Data size in bytes when the type is unquantized, else null. */
  byteSize: number | null;
}

export interface GgufFile {
  path: string;
  version: number;
  fileSize: number;
  alignment: number;
  dataOffset: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
}

// Caps on counts read from the header: a corrupt count must fail cleanly instead of allocating gigabytes.
const MAX_STRING_BYTES = 1 << 26;
const MAX_DIMS = 4;

/** Sequential reader over a file descriptor with a refillable window; reads past EOF throw a format error. */
class BoundedReader {
  private buf = Buffer.alloc(0);
  private bufStart = 0; // file offset of buf[0]
  pos = 0; // current file offset

  constructor(
    private readonly fd: number,
    readonly fileSize: number,
    private readonly path: string,
  ) {}

  fail(what: string): never {
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `GGUF file ${this.path}: ${what} (at byte ${this.pos} of ${this.fileSize})`);
  }

  private ensure(n: number, what: string): void {
    if (this.pos + n > this.fileSize) this.fail(`truncated while reading ${what}: needs ${n} bytes`);
    if (this.pos >= this.bufStart && this.pos + n <= this.bufStart + this.buf.length) return;
    const size = Math.min(Math.max(n, 1 << 20), this.fileSize - this.pos);
    this.buf = Buffer.alloc(size);
    let got = 0;
    while (got < size) {
      const r = readSync(this.fd, this.buf, got, size - got, this.pos + got);
      if (r === 0) this.fail(`unexpected end of file while reading ${what}`);
      got += r;
    }
    this.bufStart = this.pos;
  }

  private at(n: number, what: string): number {
    this.ensure(n, what);
    const o = this.pos - this.bufStart;
    this.pos += n;
    return o;
  }

  u8(what: string): number { const o = this.at(1, what); return this.buf.readUInt8(o); }
  i8(what: string): number { const o = this.at(1, what); return this.buf.readInt8(o); }
  u16(what: string): number { const o = this.at(2, what); return this.buf.readUInt16LE(o); }
  i16(what: string): number { const o = this.at(2, what); return this.buf.readInt16LE(o); }
  u32(what: string): number { const o = this.at(4, what); return this.buf.readUInt32LE(o); }
  i32(what: string): number { const o = this.at(4, what); return this.buf.readInt32LE(o); }
  f32(what: string): number { const o = this.at(4, what); return this.buf.readFloatLE(o); }
  f64(what: string): number { const o = this.at(8, what); return this.buf.readDoubleLE(o); }
  u64(what: string): bigint { const o = this.at(8, what); return this.buf.readBigUInt64LE(o); }
  i64(what: string): bigint { const o = this.at(8, what); return this.buf.readBigInt64LE(o); }

  /** A uint64 that must fit a JS number and stay below `max` (counts, lengths, offsets). */
  count(what: string, max: number): number {
    const v = this.u64(what);
    if (v > BigInt(max)) this.fail(`${what} is ${v}, larger than possible (max ${max})`);
    return Number(v);
  }

  string(what: string): string {
    const len = this.count(`length of ${what}`, Math.min(MAX_STRING_BYTES, this.fileSize - this.pos));
    const o = this.at(len, what);
    return this.buf.toString('utf8', o, o + len);
  }
}

function readScalar(r: BoundedReader, type: number, what: string): GgufScalar {
  switch (type) {
    case GgufValueType.UINT8: return r.u8(what);
    case GgufValueType.INT8: return r.i8(what);
    case GgufValueType.UINT16: return r.u16(what);
    case GgufValueType.INT16: return r.i16(what);
    case GgufValueType.UINT32: return r.u32(what);
    case GgufValueType.INT32: return r.i32(what);
    case GgufValueType.FLOAT32: return r.f32(what);
    case GgufValueType.BOOL: {
      const b = r.u8(what);
      if (b > 1) r.fail(`${what}: bool value ${b} is neither 0 nor 1`);
      return b === 1;
    }
    case GgufValueType.STRING: return r.string(what);
    case GgufValueType.UINT64: {
      const v = r.u64(what);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    }
    case GgufValueType.INT64: {
      const v = r.i64(what);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) && v >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(v) : v;
    }
    case GgufValueType.FLOAT64: return r.f64(what);
    default: return r.fail(`${what}: unknown value type ${type}`);
  }
}

const SCALAR_MIN_BYTES: Readonly<Record<number, number>> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 10: 8, 11: 8, 12: 8 };

function readValue(r: BoundedReader, type: number, what: string): GgufValue {
  if (type !== GgufValueType.ARRAY) return readScalar(r, type, what);
  const elemType = r.u32(`element type of ${what}`);
  if (elemType === GgufValueType.ARRAY) r.fail(`${what}: nested arrays are not supported`);
  const minBytes = SCALAR_MIN_BYTES[elemType];
  if (minBytes === undefined) r.fail(`${what}: unknown array element type ${elemType}`);
  const n = r.count(`length of ${what}`, Math.floor((r.fileSize - r.pos) / minBytes));
  const out: GgufScalar[] = new Array(n);
  for (let i = 0; i < n; i++) out[i] = readScalar(r, elemType, what);
  return out;
}

/** Reads the header of a GGUF file. Throws LLM_ERR_MODEL_NOT_FOUND or LLM_ERR_MODEL_FORMAT naming the file. */
export function readGguf(path: string): GgufFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `cannot open GGUF file ${path}: ${(err as Error).message}`);
  }
  try {
    const fileSize = fstatSync(fd).size;
    const r: BoundedReader = new BoundedReader(fd, fileSize, path);
    const magic = r.u32('magic');
    if (magic !== GGUF_MAGIC) r.fail(`not a GGUF file (magic 0x${magic.toString(16)}, expected "GGUF")`);
    const version = r.u32('version');
    if (version !== 2 && version !== 3) r.fail(`unsupported GGUF version ${version} (supported: 2, 3)`);
    // Each tensor info takes at least 8+4+8+4+8 bytes, each key/value at least 8+4+1.
    const tensorCount = r.count('tensor count', Math.floor(fileSize / 32));
    const kvCount = r.count('metadata count', Math.floor(fileSize / 13));

    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < kvCount; i++) {
      const key = r.string(`metadata key #${i}`);
      const type = r.u32(`type of metadata ${key}`);
      metadata.set(key, readValue(r, type, `metadata ${key}`));
    }

    const alignValue = metadata.get('general.alignment') ?? GGUF_DEFAULT_ALIGNMENT;
    if (typeof alignValue !== 'number' || alignValue <= 0 || (alignValue & (alignValue - 1)) !== 0) {
      r.fail(`general.alignment ${String(alignValue)} is not a positive power of two`);
    }
    const alignment = alignValue;

    const infos: { name: string; dims: number[]; type: number; rel: number }[] = [];
    for (let i = 0; i < tensorCount; i++) {
      const name = r.string(`name of tensor #${i}`);
      const nDims = r.u32(`dimension count of tensor ${name}`);
      if (nDims < 1 || nDims > MAX_DIMS) r.fail(`tensor ${name} has ${nDims} dimensions (1..${MAX_DIMS} allowed)`);
      const dims: number[] = [];
      for (let d = 0; d < nDims; d++) dims.push(r.count(`dimension ${d} of tensor ${name}`, Number.MAX_SAFE_INTEGER));
      const type = r.u32(`type of tensor ${name}`);
      const rel = r.count(`data offset of tensor ${name}`, fileSize);
      if (rel % alignment !== 0) r.fail(`tensor ${name} data offset ${rel} is not a multiple of the alignment ${alignment}`);
      infos.push({ name, dims, type, rel });
    }
    const dataOffset = Math.ceil(r.pos / alignment) * alignment;

    const tensors: GgufTensorInfo[] = infos.map(({ name, dims, type, rel }) => {
      const typeName = GGML_TYPE_NAMES[type] ?? `type#${type}`;
      const elemSize = UNQUANTIZED_TYPE_SIZE[type];
      const elems = dims.reduce((a, b) => a * b, 1);
      const byteSize = elemSize === undefined ? null : elems * elemSize;
      const offset = dataOffset + rel;
      if (offset > fileSize || (byteSize !== null && offset + byteSize > fileSize)) {
        r.fail(`tensor ${name} (${typeName} [${dims.join(', ')}]) at data offset ${rel} lies past the end of the file`);
      }
      return { name, dims, type, typeName, offset, byteSize };
    });
    return { path, version, fileSize, alignment, dataOffset, metadata, tensors };
  } finally {
    closeSync(fd);
  }
}

/** Typed metadata accessors that name the key and file when a value is missing or of the wrong type. */
export function ggufNumber(f: GgufFile, key: string): number;
export function ggufNumber(f: GgufFile, key: string, fallback: number): number;
export function ggufNumber(f: GgufFile, key: string, fallback?: number): number {
  const v = f.metadata.get(key);
  if (v === undefined) {
    if (fallback !== undefined) return fallback;
    throw new LlmError('LLM_ERR_MODEL_FORMAT', `GGUF file ${f.path}: metadata ${key} is missing`);
  }
  if (typeof v !== 'number') throw new LlmError('LLM_ERR_MODEL_FORMAT', `GGUF file ${f.path}: metadata ${key} is not a number`);
  return v;
}

export function ggufString(f: GgufFile, key: string): string | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new LlmError('LLM_ERR_MODEL_FORMAT', `GGUF file ${f.path}: metadata ${key} is not a string`);
  return v;
}

export function ggufArray(f: GgufFile, key: string): GgufScalar[] | undefined {
  const v = f.metadata.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw new LlmError('LLM_ERR_MODEL_FORMAT', `GGUF file ${f.path}: metadata ${key} is not an array`);
  return v;
}
