// Byte-exact framing of Dynamo's TCP request plane (reference §10.1, §10.3). Pure functions and incremental decoders;
// no sockets here. All integers are big-endian.
//
//   request frame   0.8:  u16 path_len | path (UTF-8) | u32 payload_len | payload
//                   main: u16 path_len | path (UTF-8) | u16 headers_len | headers (JSON map<string,string>) | u32 payload_len | payload
//   response frame  u32 len | data                      (len 0 = ACK, otherwise UTF-8 error text)
//   TwoPartMessage  u64 header_len | u64 body_len | u64 checksum | header | body
//                   (checksum = xxh3-64 of header‖body, 0 = not checked)
//
// Sizes are checked against the maximum message size as soon as the length prefix is read, before any buffer for
// the message is allocated, so a hostile length cannot make the process allocate it.
import { LlmError } from '../../errors.js';
import { DEFAULT_WIRE_PROFILE, type WireProfile } from '../../protocol/wire-profile.js';
import { xxh3_64 } from '../xxh3.js';

/** Dynamo's default for `DYN_TCP_MAX_MESSAGE_SIZE`: 32 MiB. */
export const DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024;

/** Size of the TwoPartMessage prefix: header_len, body_len, checksum (three u64). */
export const TWO_PART_PREFIX_BYTES = 24;

/** Reads `DYN_TCP_MAX_MESSAGE_SIZE` (bytes, a positive integer) or returns the 32 MiB default. */
export function maxMessageSizeFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.DYN_TCP_MAX_MESSAGE_SIZE;
  if (raw === undefined || raw === '') return DEFAULT_MAX_MESSAGE_SIZE;
  const value = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(value) || value <= 0) {
    throw new LlmError('LLM_ERR_CONFIG', `DYN_TCP_MAX_MESSAGE_SIZE must be a positive integer number of bytes, got "${raw}"`);
  }
  return value;
}

// ---------------------------------------------------------------------------------------------------------------
// Request frame

export interface RequestFrame {
  /** `{endpoint}` (0.8) or `{instance_id:x}/{endpoint}` (main) */
  path: string;
  /** Trace headers, `request-id`, `x-frontend-send-ts-ns`, `x-endpoint-path` (main only: a 0.8 frame has none, so
   * encoding drops them and decoding gives `{}`). */
  headers: Record<string, string>;
  /** An encoded TwoPartMessage (request control header + request body). */
  payload: Buffer;
}

export function encodeRequestFrame(frame: RequestFrame, profile: WireProfile = DEFAULT_WIRE_PROFILE): Buffer {
  const path = Buffer.from(frame.path, 'utf8');
  const headers = profile === '0.8' ? null : Buffer.from(JSON.stringify(frame.headers), 'utf8');
  if (path.length > 0xffff) throw new LlmError('LLM_ERR_PROTOCOL', `request frame path is ${path.length} bytes; the u16 length allows at most 65535`);
  if (headers !== null && headers.length > 0xffff) throw new LlmError('LLM_ERR_PROTOCOL', `request frame headers are ${headers.length} bytes of JSON; the u16 length allows at most 65535`);
  if (frame.payload.length > 0xffffffff) throw new LlmError('LLM_ERR_PROTOCOL', `request frame payload is ${frame.payload.length} bytes; the u32 length allows at most 4294967295`);
  const headersBytes = headers === null ? 0 : 2 + headers.length;
  const out = Buffer.allocUnsafe(2 + path.length + headersBytes + 4 + frame.payload.length);
  let at = out.writeUInt16BE(path.length, 0);
  at += path.copy(out, at);
  if (headers !== null) {
    at = out.writeUInt16BE(headers.length, at);
    at += headers.copy(out, at);
  }
  at = out.writeUInt32BE(frame.payload.length, at);
  frame.payload.copy(out, at);
  return out;
}

/** Strict UTF-8: a frame whose text is not valid UTF-8 is malformed rather than silently repaired. */
const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeUtf8(bytes: Buffer, what: string): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new LlmError('LLM_ERR_PROTOCOL', `${what} is not valid UTF-8`);
  }
}

function parseHeaders(bytes: Buffer): Record<string, string> {
  if (bytes.length === 0) return {};
  const text = decodeUtf8(bytes, 'request frame headers');
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new LlmError('LLM_ERR_PROTOCOL', `request frame headers are not valid JSON (${(err as Error).message}): ${text.slice(0, 120)}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new LlmError('LLM_ERR_PROTOCOL', `request frame headers must be a JSON object of strings, got ${text.slice(0, 120)}`);
  }
  const headers: Record<string, string> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (typeof value !== 'string') {
      throw new LlmError('LLM_ERR_PROTOCOL', `request frame header "${key}" must be a string, got ${JSON.stringify(value)}`);
    }
    headers[key] = value;
  }
  return headers;
}

function tooLarge(what: string, size: number, max: number): LlmError {
  return new LlmError('LLM_ERR_PROTOCOL', `${what} of ${size} bytes exceeds the maximum message size of ${max} bytes (DYN_TCP_MAX_MESSAGE_SIZE)`);
}

// ---------------------------------------------------------------------------------------------------------------
// Response frame (ACK or error text)

export function encodeResponseFrame(data: string | Buffer = ''): Buffer {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  const out = Buffer.allocUnsafe(4 + bytes.length);
  out.writeUInt32BE(bytes.length, 0);
  bytes.copy(out, 4);
  return out;
}

/** A decoded response frame: `ack` when empty, otherwise the worker's error text. */
export type ResponseFrame = { ack: true } | { ack: false; error: string };

// ---------------------------------------------------------------------------------------------------------------
// TwoPartMessage

export interface TwoPartMessage {
  header: Buffer;
  body: Buffer;
}

export interface TwoPartEncodeOptions {
  /** Write xxh3-64(header‖body) instead of 0 (Dynamo's debug builds do; release builds write 0). */
  checksum?: boolean;
  maxMessageSize?: number;
}

/** Strings are written as UTF-8 straight into the message (no intermediate buffer: data frames are hot). */
export function encodeTwoPart(header: Buffer | string, body: Buffer | string, options: TwoPartEncodeOptions = {}): Buffer {
  const headerLen = typeof header === 'string' ? Buffer.byteLength(header, 'utf8') : header.length;
  const bodyLen = typeof body === 'string' ? Buffer.byteLength(body, 'utf8') : body.length;
  const total = TWO_PART_PREFIX_BYTES + headerLen + bodyLen;
  const max = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
  if (total > max) throw tooLarge('TwoPartMessage', total, max);
  const out = Buffer.allocUnsafe(total);
  // u64 BE of lengths below 2^53: high and low u32 halves
  out.writeUInt32BE(Math.floor(headerLen / 0x1_0000_0000), 0);
  out.writeUInt32BE(headerLen >>> 0, 4);
  out.writeUInt32BE(Math.floor(bodyLen / 0x1_0000_0000), 8);
  out.writeUInt32BE(bodyLen >>> 0, 12);
  const bodyAt = TWO_PART_PREFIX_BYTES + headerLen;
  if (typeof header === 'string') out.write(header, TWO_PART_PREFIX_BYTES, 'utf8');
  else header.copy(out, TWO_PART_PREFIX_BYTES);
  if (typeof body === 'string') out.write(body, bodyAt, 'utf8');
  else body.copy(out, bodyAt);
  out.writeBigUInt64BE(options.checksum ? xxh3_64(out.subarray(TWO_PART_PREFIX_BYTES)) : 0n, 16);
  return out;
}

/** Header-only message (control and setup messages on the call-home socket). */
export function encodeTwoPartHeader(header: unknown, options?: TwoPartEncodeOptions): Buffer {
  return encodeTwoPart(JSON.stringify(header), Buffer.alloc(0), options);
}

/** Body-only message (data frames on the call-home socket). */
export function encodeTwoPartBody(body: unknown, options?: TwoPartEncodeOptions): Buffer {
  return encodeTwoPart(Buffer.alloc(0), JSON.stringify(body), options);
}

/** Reads the 24-byte prefix, checking sizes; returns the total message length. */
function readTwoPartPrefix(prefix: Buffer, max: number): { headerLen: number; bodyLen: number; checksum: bigint; total: number } {
  const headerLen = prefix.readBigUInt64BE(0);
  const bodyLen = prefix.readBigUInt64BE(8);
  const checksum = prefix.readBigUInt64BE(16);
  const total = BigInt(TWO_PART_PREFIX_BYTES) + headerLen + bodyLen;
  if (total > BigInt(max)) {
    throw new LlmError(
      'LLM_ERR_PROTOCOL',
      `TwoPartMessage of ${total} bytes (header ${headerLen}, body ${bodyLen}) exceeds the maximum message size of ${max} bytes (DYN_TCP_MAX_MESSAGE_SIZE)`,
    );
  }
  return { headerLen: Number(headerLen), bodyLen: Number(bodyLen), checksum, total: Number(total) };
}

function splitTwoPart(message: Buffer, headerLen: number, checksum: bigint): TwoPartMessage {
  const content = message.subarray(TWO_PART_PREFIX_BYTES);
  if (checksum !== 0n) {
    const actual = xxh3_64(content);
    if (actual !== checksum) {
      throw new LlmError(
        'LLM_ERR_PROTOCOL',
        `TwoPartMessage checksum mismatch: frame says 0x${checksum.toString(16)}, xxh3-64 of header and body is 0x${actual.toString(16)}`,
      );
    }
  }
  return { header: content.subarray(0, headerLen), body: content.subarray(headerLen) };
}

/** Decodes exactly one TwoPartMessage occupying all of `message` (an HTTP body, a NATS payload, a request payload). */
export function decodeTwoPart(message: Buffer, maxMessageSize: number = DEFAULT_MAX_MESSAGE_SIZE): TwoPartMessage {
  if (message.length < TWO_PART_PREFIX_BYTES) {
    throw new LlmError('LLM_ERR_PROTOCOL', `TwoPartMessage is ${message.length} bytes, shorter than its ${TWO_PART_PREFIX_BYTES}-byte length prefix`);
  }
  const { headerLen, checksum, total } = readTwoPartPrefix(message, maxMessageSize);
  if (total !== message.length) {
    throw new LlmError('LLM_ERR_PROTOCOL', `TwoPartMessage lengths say ${total} bytes but the message holds ${message.length}`);
  }
  return splitTwoPart(message, headerLen, checksum);
}

// ---------------------------------------------------------------------------------------------------------------
// Incremental decoding of a byte stream

/** Chunks received but not yet decoded; copies only when a read spans chunks. */
class ByteQueue {
  private chunks: Buffer[] = [];
  length = 0;

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /** The first `n` bytes (n ≤ length) without consuming them. */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) return first.subarray(0, n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    for (const chunk of this.chunks) {
      filled += chunk.copy(out, filled, 0, Math.min(chunk.length, n - filled));
      if (filled === n) break;
    }
    return out;
  }

  /** Removes and returns the first `n` bytes (n ≤ length). */
  take(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length === n) {
      this.chunks.shift();
      this.length -= n;
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      this.length -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const want = n - filled;
      if (chunk.length <= want) {
        chunk.copy(out, filled);
        filled += chunk.length;
        this.chunks.shift();
      } else {
        chunk.copy(out, filled, 0, want);
        this.chunks[0] = chunk.subarray(want);
        filled += want;
      }
    }
    this.length -= n;
    return out;
  }
}

/**
 * Decodes request frames from a connection's bytes, however they are split into chunks. A frame whose boundaries are
 * sound but whose path or headers are malformed comes back as an LlmError in its place (the connection can go on).
 * A thrown error (a length over the maximum) means the stream is out of step and the connection must be closed.
 */
export class RequestFrameDecoder {
  private readonly queue = new ByteQueue();
  /** Total length of the frame at the head of the queue, once its three length fields have been read. */
  private pendingTotal = 0;

  constructor(
    private readonly maxMessageSize: number = DEFAULT_MAX_MESSAGE_SIZE,
    private readonly profile: WireProfile = DEFAULT_WIRE_PROFILE,
  ) {}

  push(chunk: Buffer): Array<RequestFrame | LlmError> {
    this.queue.push(chunk);
    const frames: Array<RequestFrame | LlmError> = [];
    for (;;) {
      if (this.pendingTotal === 0) {
        const q = this.queue;
        if (q.length < 2) break;
        const pathLen = q.peek(2).readUInt16BE(0);
        let payloadAt = 2 + pathLen;
        if (this.profile !== '0.8') {
          if (q.length < 2 + pathLen + 2) break;
          payloadAt += 2 + q.peek(2 + pathLen + 2).readUInt16BE(2 + pathLen);
        }
        if (q.length < payloadAt + 4) break;
        const total = payloadAt + 4 + q.peek(payloadAt + 4).readUInt32BE(payloadAt);
        if (total > this.maxMessageSize) throw tooLarge('request frame', total, this.maxMessageSize);
        this.pendingTotal = total;
      }
      if (this.queue.length < this.pendingTotal) break;
      const frame = this.queue.take(this.pendingTotal);
      this.pendingTotal = 0;
      try {
        frames.push(parseRequestFrame(frame, this.profile));
      } catch (err) {
        frames.push(err as LlmError);
      }
    }
    return frames;
  }

  /** Bytes received that do not yet form a whole frame. */
  get buffered(): number {
    return this.queue.length;
  }
}

/** Decodes one complete request frame (exactly `frame.length` bytes). */
export function decodeRequestFrame(
  frame: Buffer,
  maxMessageSize: number = DEFAULT_MAX_MESSAGE_SIZE,
  profile: WireProfile = DEFAULT_WIRE_PROFILE,
): RequestFrame {
  const decoder = new RequestFrameDecoder(maxMessageSize, profile);
  const frames = decoder.push(frame);
  if (frames.length !== 1 || decoder.buffered !== 0) {
    throw new LlmError('LLM_ERR_PROTOCOL', `expected exactly one request frame in ${frame.length} bytes, found ${frames.length} with ${decoder.buffered} bytes left over`);
  }
  const only = frames[0];
  if (only instanceof LlmError) throw only;
  return only;
}

function parseRequestFrame(frame: Buffer, profile: WireProfile): RequestFrame {
  const pathLen = frame.readUInt16BE(0);
  const path = decodeUtf8(frame.subarray(2, 2 + pathLen), 'request frame path');
  if (profile === '0.8') return { path, headers: {}, payload: frame.subarray(2 + pathLen + 4) };
  const headersLen = frame.readUInt16BE(2 + pathLen);
  const headersAt = 4 + pathLen;
  const headers = parseHeaders(frame.subarray(headersAt, headersAt + headersLen));
  const payloadAt = headersAt + headersLen + 4;
  return { path, headers, payload: frame.subarray(payloadAt) };
}

/** Decodes response frames (ACKs and error texts) from the client side of a request connection. */
export class ResponseFrameDecoder {
  private readonly queue = new ByteQueue();
  private pendingTotal = 0;

  constructor(private readonly maxMessageSize: number = DEFAULT_MAX_MESSAGE_SIZE) {}

  push(chunk: Buffer): ResponseFrame[] {
    this.queue.push(chunk);
    const frames: ResponseFrame[] = [];
    for (;;) {
      if (this.pendingTotal === 0) {
        if (this.queue.length < 4) break;
        const total = 4 + this.queue.peek(4).readUInt32BE(0);
        if (total > this.maxMessageSize) throw tooLarge('response frame', total, this.maxMessageSize);
        this.pendingTotal = total;
      }
      if (this.queue.length < this.pendingTotal) break;
      const frame = this.queue.take(this.pendingTotal);
      this.pendingTotal = 0;
      frames.push(frame.length === 4 ? { ack: true } : { ack: false, error: decodeUtf8(frame.subarray(4), 'response frame error text') });
    }
    return frames;
  }
}

/** Decodes back-to-back TwoPartMessages (the call-home socket, both directions). */
export class TwoPartDecoder {
  private readonly queue = new ByteQueue();
  private pending: { headerLen: number; checksum: bigint; total: number } | undefined;

  constructor(private readonly maxMessageSize: number = DEFAULT_MAX_MESSAGE_SIZE) {}

  push(chunk: Buffer): TwoPartMessage[] {
    this.queue.push(chunk);
    const messages: TwoPartMessage[] = [];
    for (;;) {
      if (this.pending === undefined) {
        if (this.queue.length < TWO_PART_PREFIX_BYTES) break;
        this.pending = readTwoPartPrefix(this.queue.peek(TWO_PART_PREFIX_BYTES), this.maxMessageSize);
      }
      if (this.queue.length < this.pending.total) break;
      const { headerLen, checksum, total } = this.pending;
      this.pending = undefined;
      messages.push(splitTwoPart(this.queue.take(total), headerLen, checksum));
    }
    return messages;
  }

  get buffered(): number {
    return this.queue.length;
  }
}
