// Framing of the KV bootstrap connection (decode worker → prefill worker's bootstrap server, TCP): each frame is
//   u32 BE total length | u32 BE header length | header (JSON) | body (bytes)
// The decode side sends one `fetch` frame naming the bootstrap room, its KV layout and the transfers it takes; the
// prefill side answers with one `pages` frame (header + page bytes, the tcp transfer) or one `error` frame, then
// closes. The GPU path (cuda-ipc, same node) continues the exchange:
//   prefill `ipc-pages` (its pool's IPC handle unless the decode side has it open, and the page list)
//   decode  `pulled` once the pages are in its own pool (its stream synchronised), or `fallback` to get them as
//           host-staged `pages` instead (its GPU cannot open the pool)
//   prefill `released` once it unlocked its pages; only then does the decode side use what it pulled.
// Both page frames may carry `prefilled` (the hand-over, SGLang's KV + aux data): the pages then hold the KV of
// every prompt position, the last page partial when the prompt is not a multiple of the page size, and the prefill
// worker's first output token comes with them, so the decode worker starts decoding at once. Without it they hold
// only whole pages and the decode worker computes the prompt's tail and first token itself.
import type { Socket } from 'node:net';
import { Type, type Static } from '@sinclair/typebox';
import { LlmError } from '../errors.js';
import { parseWire } from '../protocol/validate.js';
import { KvLayoutSchema } from './layout.js';

/** Frames above this are refused (a corrupt length must not make us allocate gigabytes). */
export const MAX_FRAME_BYTES = 2 ** 31;

const RoomText = Type.String({ pattern: '^[0-9]{1,19}$', description: 'bootstrap_room as a decimal string' });

export const TransferKindSchema = Type.Union([Type.Literal('cuda-ipc'), Type.Literal('tcp')]);
export type TransferKind = Static<typeof TransferKindSchema>;

/** Where a process runs: equal hostnames and boot ids mean the same machine (and the same boot of it). */
export const NodeIdentitySchema = Type.Object({ hostname: Type.String(), boot_id: Type.String() }, { title: 'KvNodeIdentity' });
export type NodeIdentity = Static<typeof NodeIdentitySchema>;

export const FetchFrameSchema = Type.Object(
  {
    type: Type.Literal('fetch'),
    room: RoomText,
    layout: KvLayoutSchema,
    /** Absent: tcp only. */
    transfer: Type.Optional(
      Type.Object({
        /** In order of preference. */
        offer: Type.Array(TransferKindSchema, { minItems: 1 }),
        node: NodeIdentitySchema,
        /** The prefill pool this decode worker has open already (its handle need not be sent again). */
        known_pool: Type.Union([Type.String(), Type.Null()]),
      }),
    ),
  },
  { title: 'KvFetchFrame' },
);
/** A CUDA KV pool as another process on the same node opens it: the pool is one allocation holding 2 × layers
 * tensors (K, V per layer) `tensor_stride_elems` bf16 elements apart, each [pages × page_size, row_elems]. */
export const IpcPoolSchema = Type.Object(
  {
    id: Type.String(),
    /** cudaIpcMemHandle_t, base64; null when the decode side said it has this pool open. */
    handle: Type.Union([Type.String(), Type.Null()]),
    tensors: Type.Integer({ minimum: 1 }),
    tensor_stride_elems: Type.Integer({ minimum: 1 }),
    row_elems: Type.Integer({ minimum: 1 }),
    page_size: Type.Integer({ minimum: 1 }),
    pci_bus_id: Type.String(),
  },
  { title: 'KvIpcPool' },
);
export type IpcPoolWire = Static<typeof IpcPoolSchema>;
/** The prefill worker's first output of a handed-over request. */
export const PrefilledSchema = Type.Object(
  {
    first_token_id: Type.Integer({ minimum: 0 }),
    /** Present when the request asked for logprobs (output_options.logprobs >= 0). */
    logprob: Type.Union([Type.Number(), Type.Null()]),
    top_logprobs: Type.Union([Type.Array(Type.Object({ token_id: Type.Integer({ minimum: 0 }), logprob: Type.Number() })), Type.Null()]),
    /** Prompt tokens the prefill worker's prefix cache served (the decode worker reports them in its usage). */
    cached_tokens: Type.Integer({ minimum: 0 }),
  },
  { title: 'KvPrefilled' },
);
export type Prefilled = Static<typeof PrefilledSchema>;

export const IpcPagesFrameSchema = Type.Object(
  {
    type: Type.Literal('ipc-pages'),
    room: RoomText,
    layout: KvLayoutSchema,
    token_ids: Type.Array(Type.Integer({ minimum: 0 })),
    /** The prefill pool's pages holding token_ids, in order (locked until `pulled` or the connection closes). */
    pages: Type.Array(Type.Integer({ minimum: 0 })),
    pool: IpcPoolSchema,
    prefilled: Type.Optional(PrefilledSchema),
  },
  { title: 'KvIpcPagesFrame' },
);
export const PulledFrameSchema = Type.Object(
  { type: Type.Literal('pulled'), room: RoomText, bytes: Type.Integer({ minimum: 0 }), ms: Type.Number({ minimum: 0 }) },
  { title: 'KvPulledFrame' },
);
export const FallbackFrameSchema = Type.Object(
  { type: Type.Literal('fallback'), room: RoomText, reason: Type.String() },
  { title: 'KvFallbackFrame' },
);
export const ReleasedFrameSchema = Type.Object({ type: Type.Literal('released'), room: RoomText }, { title: 'KvReleasedFrame' });
export const PagesFrameSchema = Type.Object(
  {
    type: Type.Literal('pages'),
    room: RoomText,
    layout: KvLayoutSchema,
    /** The tokens whose KV the pages hold: page_count × pageSize leading prompt tokens, or with `prefilled` the
     * whole prompt in ceil(length / pageSize) pages. */
    token_ids: Type.Array(Type.Integer({ minimum: 0 })),
    page_count: Type.Integer({ minimum: 0 }),
    prefilled: Type.Optional(PrefilledSchema),
  },
  { title: 'KvPagesFrame' },
);
export const ErrorFrameSchema = Type.Object(
  { type: Type.Literal('error'), code: Type.String(), message: Type.String() },
  { title: 'KvErrorFrame' },
);
export const BootstrapFrameSchema = Type.Union([
  FetchFrameSchema,
  PagesFrameSchema,
  ErrorFrameSchema,
  IpcPagesFrameSchema,
  PulledFrameSchema,
  FallbackFrameSchema,
  ReleasedFrameSchema,
]);
export type FetchFrame = Static<typeof FetchFrameSchema>;
export type IpcPagesFrame = Static<typeof IpcPagesFrameSchema>;
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
