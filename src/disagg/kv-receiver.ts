// The decode side of a KV hand-off: fetch a room's KV pages from the prefill worker's bootstrap server (the service
// then imports them as a cached prefix, src/scheduler/kv-transfer.ts). Host-staged pages arrive in one frame and are
// converted to this worker's page size and dtype when those differ (./convert.ts), a hand-over's partial last page too
// (its rows repacked into this worker's pages, the last of them partial). On the GPU path the prefill side answers with
// its pool and page list instead; the caller pulls them, then confirms with `pulled` and must wait for `released`
// before it uses the pages (a prefill side gone before that may have freed them mid-pull).
import { connect, type Socket } from 'node:net';
import { LlmError, isErrorCode } from '../errors.js';
import { convertPages } from './convert.js';
import { FrameReader, writeFrame, type BootstrapFrame, type Frame, type IpcPagesFrame, type NodeIdentity, type Prefilled, type TransferKind } from './frames.js';
import { checkLayouts, type KvLayout } from './layout.js';

export interface FetchKvOptions {
  host: string;
  port: number;
  room: bigint;
  layout: KvLayout;
  timeoutMs: number;
  signal?: AbortSignal;
  /** What this worker takes (absent: tcp only). */
  transfer?: { offer: TransferKind[]; node: NodeIdentity; knownPool: string | null };
}

/** Pages host-staged, already in this worker's layout: whole pages of its page size, or with `prefilled` the KV of
 * every position of tokenIds (the whole prompt) in ceil(length / page size) pages. */
export interface HostKv {
  kind: 'tcp';
  tokenIds: number[];
  pageCount: number;
  data: Uint8Array;
  prefilled: Prefilled | null;
}

/** Pages to pull from the prefill worker's pool; the connection stays open until close(). */
export interface IpcKv {
  kind: 'cuda-ipc';
  header: IpcPagesFrame;
  /** Says the pages are in our pool and waits until the prefill side released its own. */
  pulled(bytes: number, ms: number): Promise<void>;
  /** Asks for the pages host-staged instead. */
  fallback(reason: string): Promise<HostKv>;
  close(): void;
}

export type FetchedKv = HostKv | IpcKv;

/** One bootstrap connection: frames in order, each wait bounded by the transfer timeout, the abort signal and the
 * connection's end. */
class BootstrapConnection {
  private readonly socket: Socket;
  private readonly reader: FrameReader;
  private readonly frames: Frame[] = [];
  private failure: LlmError | null = null;
  private wake: (() => void) | null = null;
  private readonly timer: NodeJS.Timeout;
  private readonly onAbort: () => void;

  constructor(
    private readonly o: FetchKvOptions,
    readonly server: string,
    readonly what: string,
  ) {
    this.reader = new FrameReader(`prefill worker ${server}`);
    this.socket = connect({ host: o.host.replace(/^\[|\]$/g, ''), port: o.port });
    this.timer = setTimeout(
      () => this.fail(new LlmError('LLM_ERR_TIMEOUT', `the ${what} did not arrive within ${o.timeoutMs / 1000} s (--kv-transfer-timeout); ${this.reader.pendingBytes} bytes received`)),
      o.timeoutMs,
    );
    this.onAbort = () => this.fail(new LlmError('LLM_ERR_CANCELLED', `request cancelled while waiting for the ${what}`));
    o.signal?.addEventListener('abort', this.onAbort, { once: true });
    this.socket.on('data', (chunk) => {
      try {
        this.frames.push(...this.reader.push(chunk));
        this.wake?.();
      } catch (err) {
        this.fail(err instanceof LlmError ? err : new LlmError('LLM_ERR_PROTOCOL', String(err)));
      }
    });
    this.socket.on('error', (err) => this.fail(new LlmError('LLM_ERR_KV_TRANSFER', `fetching the ${what}: ${err.message}`)));
    this.socket.on('close', () =>
      this.fail(new LlmError('LLM_ERR_KV_TRANSFER', `the prefill worker at ${server} closed the connection before the ${what} arrived (${this.reader.pendingBytes} bytes received)`)),
    );
  }

  send(frame: BootstrapFrame): void {
    if (!this.failure) writeFrame(this.socket, frame);
  }

  /** The next frame; an `error` frame from the prefill side is thrown with its code. */
  async next(): Promise<Frame> {
    for (;;) {
      const f = this.frames.shift();
      if (f) {
        const h = f.header;
        if (h.type === 'error') {
          throw new LlmError(isErrorCode(h.code) && h.code !== 'LLM_ERR_INTERNAL' ? h.code : 'LLM_ERR_KV_TRANSFER', `prefill worker at ${this.server}: ${h.message}`);
        }
        return f;
      }
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.wake = resolve));
      this.wake = null;
    }
  }

  close(): void {
    this.fail(new LlmError('LLM_ERR_KV_TRANSFER', `the connection for the ${this.what} is closed`));
  }

  private fail(err: LlmError): void {
    if (this.failure) return;
    this.failure = err;
    clearTimeout(this.timer);
    this.o.signal?.removeEventListener('abort', this.onAbort);
    this.socket.destroy();
    this.wake?.();
  }
}

/** Fetches a room's pages. Fails with LLM_ERR_KV_TRANSFER when the prefill side refuses or goes away mid-way,
 * LLM_ERR_TIMEOUT after timeoutMs, LLM_ERR_CANCELLED when the signal aborts (closing the connection tells the
 * prefill side to release the pages). */
export async function fetchKv(o: FetchKvOptions): Promise<FetchedKv> {
  const server = `${o.host}:${o.port}`;
  const what = `KV pages of bootstrap room ${o.room} from the prefill worker at ${server}`;
  if (o.signal?.aborted) throw new LlmError('LLM_ERR_CANCELLED', `request cancelled before fetching the ${what}`);
  const conn = new BootstrapConnection(o, server, what);
  const t = o.transfer;
  conn.send({ type: 'fetch', room: o.room.toString(), layout: o.layout, ...(t ? { transfer: { offer: t.offer, node: t.node, known_pool: t.knownPool } } : {}) });
  try {
    const f = await conn.next();
    if (f.header.type === 'ipc-pages') return ipcSession(conn, f.header, o);
    const host = hostPages(f, o, server);
    conn.close();
    return host;
  } catch (err) {
    conn.close();
    throw err;
  }
}

function hostPages(f: Frame, o: FetchKvOptions, server: string): HostKv {
  const h = f.header;
  if (h.type !== 'pages') throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent a ${h.type} frame`);
  if (h.room !== o.room.toString()) throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent room ${h.room}, asked for ${o.room}`);
  checkLayouts(h.layout, o.layout, `bootstrap room ${o.room}: prefill worker ${server} vs this decode worker`);
  const expected = h.page_count * h.layout.bytesPerPage;
  if (f.body.length !== expected || !pagesHold(h.page_count, h.layout.pageSize, h.token_ids.length, h.prefilled !== undefined)) {
    throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent ${f.body.length} bytes and ${h.token_ids.length} tokens for ${h.page_count} pages of ${h.layout.pageSize} (expected ${expected} bytes)`);
  }
  const prefilled = h.prefilled ?? null;
  const converted = convertPages(f.body, h.page_count, h.layout, o.layout, prefilled ? h.token_ids.length : undefined);
  return { kind: 'tcp', tokenIds: h.token_ids.slice(0, converted.tokenCount), pageCount: converted.pageCount, data: converted.data, prefilled };
}

/** Whether `pages` pages of pageSize are what holds `tokens` tokens: exactly filled, or (a hand-over) the last one
 * partial. */
function pagesHold(pages: number, pageSize: number, tokens: number, partialLast: boolean): boolean {
  return partialLast ? pages === Math.ceil(tokens / pageSize) : tokens === pages * pageSize;
}

function ipcSession(conn: BootstrapConnection, header: IpcPagesFrame, o: FetchKvOptions): IpcKv {
  const server = conn.server;
  if (header.room !== o.room.toString()) throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent room ${header.room}, asked for ${o.room}`);
  checkLayouts(header.layout, o.layout, `bootstrap room ${o.room}: prefill worker ${server} vs this decode worker`);
  if (header.layout.dtype !== o.layout.dtype) {
    throw new LlmError('LLM_ERR_KV_TRANSFER', `bootstrap room ${o.room}: the GPU path copies ${o.layout.dtype} KV, the prefill worker at ${server} holds ${header.layout.dtype}`);
  }
  if (!pagesHold(header.pages.length, header.layout.pageSize, header.token_ids.length, header.prefilled !== undefined) || header.pool.page_size !== header.layout.pageSize) {
    throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} offered ${header.pages.length} pages of ${header.pool.page_size} tokens for ${header.token_ids.length} tokens`);
  }
  const room = o.room.toString();
  return {
    kind: 'cuda-ipc',
    header,
    async pulled(bytes, ms) {
      conn.send({ type: 'pulled', room, bytes, ms });
      const f = await conn.next();
      if (f.header.type !== 'released') throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} answered pulled with a ${f.header.type} frame`);
      conn.close();
    },
    async fallback(reason) {
      conn.send({ type: 'fallback', room, reason });
      const host = hostPages(await conn.next(), o, server);
      conn.close();
      return host;
    },
    close: () => conn.close(),
  };
}
