// Framing of the KV bootstrap connection (decode worker → prefill worker's bootstrap server, TCP): each frame is
//   u32 BE total length | u32 BE header length | header (JSON) | body (bytes)
// The decode side sends one `fetch` frame naming the bootstrap room and its KV layout; the prefill side answers
// with one `pages` frame (header + page bytes) or one `error` frame, then closes.
import type { Socket } from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import { parseWire } from '../protocol/validate.js';
import { KvLayoutSchema } from './layout.js';

/** Frames above this are refused (a corrupt length must not make us allocate gigabytes). */
export const MAX_FRAME_BYTES = 2 ** 31;

const RoomText = Type.String({ pattern: '^[0-9]{1,19}$', description: 'bootstrap_room as a decimal string' });

export const FetchFrameSchema = Type.Object(
  { type: Type.Literal('fetch'), room: RoomText, layout: KvLayoutSchema },
  { title: 'KvFetchFrame' },
);
export const PagesFrameSchema = Type.Object(
  {
    type: Type.Literal('pages'),
    room: RoomText,
    layout: KvLayoutSchema,
    /** The tokens whose KV the pages hold: pageCount × pageSize leading prompt tokens. */
    token_ids: Type.Array(Type.Integer({ minimum: 0 })),
    page_count: Type.Integer({ minimum: 0 }),
  },
  { title: 'KvPagesFrame' },
);
export const ErrorFrameSchema = Type.Object(
  { type: Type.Literal('error'), code: Type.String(), message: Type.String() },
  { title: 'KvErrorFrame' },
);
export const BootstrapFrameSchema = Type.Union([FetchFrameSchema, PagesFrameSchema, ErrorFrameSchema]);
export type FetchFrame = Static<typeof FetchFrameSchema>;
export type PagesFrame = Static<typeof PagesFrameSchema>;
export type ErrorFrame = Static<typeof ErrorFrameSchema>;
export type BootstrapFrame = Static<typeof BootstrapFrameSchema>;

export interface Frame {
  header: BootstrapFrame;
  body: Uint8Array;
}

export function writeFrame(socket: Socket, header: BootstrapFrame, body: Uint8Array = new Uint8Array(0)): void {
  const json = Buffer.from(JSON.stringify(header));
  const prefix = Buffer.allocUnsafe(8);
  prefix.writeUInt32BE(4 + json.length + body.length, 0);
  prefix.writeUInt32BE(json.length, 4);
  socket.write(Buffer.concat([prefix, json]));
  if (body.length) socket.write(body);
}

/** Splits a byte stream into frames; `push` returns the frames completed by a chunk. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly peer: string) {}

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.buffered < 4) return out;
      const head = this.peek(8);
      const total = head.readUInt32BE(0);
      if (total < 4 || total > MAX_FRAME_BYTES) {
        throw new LlmError('LLM_ERR_PROTOCOL', `KV bootstrap frame from ${this.peer} claims ${total} bytes (allowed 4..${MAX_FRAME_BYTES})`);
      }
      if (this.buffered < 4 + total) return out;
      const all = Buffer.concat(this.chunks, this.buffered);
      const jsonLength = all.readUInt32BE(4);
      if (jsonLength > total - 4) throw new LlmError('LLM_ERR_PROTOCOL', `KV bootstrap frame from ${this.peer}: header length ${jsonLength} exceeds the frame`);
      let raw: unknown;
      try {
        raw = JSON.parse(all.subarray(8, 8 + jsonLength).toString('utf8'));
      } catch {
        throw new LlmError('LLM_ERR_PROTOCOL', `KV bootstrap frame from ${this.peer}: header is not JSON`);
      }
      const header = parseWire(BootstrapFrameSchema, raw, `KV bootstrap frame from ${this.peer}`, 'LLM_ERR_PROTOCOL');
      const rest = all.subarray(4 + total);
      // a body that ends the buffered bytes is handed out as is; otherwise copied, so the rest can be released
      const bodyView = all.subarray(8 + jsonLength, 4 + total);
      out.push({ header, body: rest.length ? new Uint8Array(bodyView) : bodyView });
      this.chunks = rest.length ? [Buffer.from(rest)] : [];
      this.buffered = rest.length;
    }
  }

  /** Bytes received toward the frame being read (progress in error messages). */
  get pendingBytes(): number {
    return this.buffered;
  }

  private peek(n: number): Buffer {
    return this.chunks.length === 1 || this.chunks[0].length >= n ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
  }
}
