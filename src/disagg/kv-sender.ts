// The prefill side of a KV hand-off: a bootstrap server (TCP) where decode workers fetch the KV pages of a prompt
// by bootstrap_room, and the table pairing each room's prefill with the decode connection asking for it. Either
// may come first: a fetch for a room whose prefill is still running waits for it.
//
// Host-staged (tcp) rooms: once the prefill finished, its pages are copied to a host buffer
// (src/scheduler/kv-transfer.ts), which the room holds until the decode side has it, the decode side goes away, or the
// transfer timeout passes; the device pages go back to the prefix cache at once. GPU-path (cuda-ipc) rooms instead keep
// the device pages locked in place: the decode side pulls them from our pool and says `pulled`, and only then are they
// unlocked (also when the decode side goes away or the timeout passes). A decode side that cannot use the GPU path gets
// them host-staged, copied at that moment. No KV page can leak either way. Rooms of a finished prefill carry its KV for
// every prompt position (the last page partial) and its first output token (`prefilled`, ./frames.ts).
import { createServer, type Server, type Socket } from 'node:net';
import { LlmError } from '../errors.js';
import { FrameReader, writeFrame, type BootstrapFrame, type FetchFrame, type IpcPoolWire, type Prefilled, type TransferKind } from './frames.js';
import { checkLayouts, type KvLayout } from './layout.js';
import type { PrefixPages } from '../scheduler/kv-transfer.js';
import { pickTransfer, type PrefillSide } from './transfer.js';

/** How this prefill worker may send: its side of the transfer pick, and (GPU path) its pool's IPC description. */
export interface KvSenderTransfer {
  side: PrefillSide;
  pool: (() => Promise<IpcPoolWire>) | null;
}

export interface KvSenderOptions {
  layout: KvLayout;
  /** Port on all interfaces (0: any free one). */
  port: number;
  /** How long each half of a room waits for the other (and for the pages to go out). */
  timeoutMs: number;
  transfer: KvSenderTransfer;
  log?: (line: string) => void;
}

/** A prompt's KV pages, parked in the device pool until released. */
export interface HeldPrefix {
  tokenIds: number[];
  pages: number[];
  /** Copies the pages to the host (the decode side falls back to tcp). */
  toHost(): Promise<Uint8Array>;
  /** Unlocks them; later calls do nothing. */
  release(): void;
}

/** A room's pages: copied to the host (tcp), or held in the device pool (GPU path); with the prefill's first
 * output when they hold every prompt position (a hand-over). */
export type RoomPages = (({ kind: 'host' } & PrefixPages) | { kind: 'held'; held: HeldPrefix }) & { prefilled: Prefilled | null };

interface Room {
  room: bigint;
  /** A decode connection waiting for this room's pages, and the transfer picked for it. */
  fetcher: { socket: Socket; peer: string; kind: TransferKind; knownPool: string | null } | null;
  /** Set by publish. */
  pages: RoomPages | null;
  /** The pages went out (tcp) or were offered for pulling (cuda-ipc): no second send. */
  sending: boolean;
  /** Aborts when the decode side gave the room up or it timed out. */
  cancelled: AbortController;
  timer: NodeJS.Timeout | undefined;
  settle: (err?: LlmError) => void;
  done: Promise<void>;
}

export class KvSender {
  private readonly rooms = new Map<bigint, Room>();
  private readonly sockets = new Set<Socket>();
  /** Rooms the decode side gave up before their prefill finished, kept for one timeout: their prefill is skipped. */
  private readonly givenUp = new Map<bigint, { error: LlmError; until: number }>();
  private closed = false;

  private constructor(
    private readonly options: KvSenderOptions,
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async start(options: KvSenderOptions): Promise<KvSender> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new LlmError('LLM_ERR_CONFIG', `--disaggregation-bootstrap-port ${options.port}: cannot listen for KV bootstrap connections: ${err.message}`)),
      );
      server.listen(options.port, () => resolve());
    });
    const sender = new KvSender(options, server, (server.address() as { port: number }).port);
    server.on('connection', (s) => sender.onConnection(s));
    return sender;
  }

  /** Whether rooms hold their pages in the device pool (GPU path possible) rather than copied to the host. */
  get holdsPages(): boolean {
    return this.options.transfer.pool !== null;
  }

  /** Rooms not settled yet, and the bytes they hold (tests check that nothing lingers). */
  get pending(): { rooms: number; bytes: number } {
    let bytes = 0;
    for (const r of this.rooms.values()) {
      const p = r.pages;
      if (p) bytes += p.kind === 'host' ? p.data.length : p.held.pages.length * this.options.layout.bytesPerPage;
    }
    return { rooms: this.rooms.size, bytes };
  }

  /** Starts (or joins, when its fetch came first) a room before its prefill runs. The signal aborts when the decode
   * side gives the room up, so the prefill can stop early. */
  open(room: bigint): AbortSignal {
    const gone = this.givenUp.get(room);
    if (gone) return AbortSignal.abort(gone.error);
    return this.entry(room).cancelled.signal;
  }

  /** The room's prefill finished: hand its pages to the decode side. Resolves once they are sent; rejects when the
   * decode side went away (LLM_ERR_CANCELLED) or never came within the timeout (LLM_ERR_TIMEOUT). */
  publish(room: bigint, pages: RoomPages): Promise<void> {
    const gone = this.givenUp.get(room);
    if (gone) {
      if (pages.kind === 'held') pages.held.release();
      return Promise.reject(gone.error);
    }
    const r = this.entry(room);
    r.pages = pages;
    this.rearm(r);
    this.trySend(r);
    return r.done;
  }

  /** The room's prefill failed: tell a waiting decode side and drop the room. */
  abandon(room: bigint, error: LlmError): void {
    const r = this.rooms.get(room);
    if (!r) return;
    this.refuse(r, error.code, `prefill of bootstrap room ${room} failed: ${error.message}`);
    this.settle(r, error);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const r of [...this.rooms.values()]) this.abandon(r.room, new LlmError('LLM_ERR_SHUTDOWN', 'the prefill worker is shutting down'));
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private entry(room: bigint): Room {
    let r = this.rooms.get(room);
    if (r) return r;
    let settle!: (err?: LlmError) => void;
    const done = new Promise<void>((resolve, reject) => (settle = (err) => (err ? reject(err) : resolve())));
    done.catch(() => undefined); // nobody awaits a room whose fetch came first and whose prefill never does
    r = { room, fetcher: null, pages: null, sending: false, cancelled: new AbortController(), timer: undefined, settle, done };
    this.rooms.set(room, r);
    this.rearm(r);
    return r;
  }

  private rearm(r: Room): void {
    clearTimeout(r.timer);
    const ms = this.options.timeoutMs;
    r.timer = setTimeout(() => {
      const waitingFor = r.pages ? 'no decode worker fetched its KV pages' : 'its prefill did not finish';
      const err = new LlmError('LLM_ERR_TIMEOUT', `bootstrap room ${r.room}: ${waitingFor} within ${ms / 1000} s (--kv-transfer-timeout); pages released`);
      this.refuse(r, err.code, err.message);
      this.settle(r, err);
    }, ms);
    r.timer.unref();
  }

  /** Sends an error frame to a waiting decode side and closes its connection. */
  private refuse(r: Room, code: string, message: string): void {
    if (!r.fetcher) return;
    writeFrame(r.fetcher.socket, { type: 'error', code, message });
    r.fetcher.socket.end();
    r.fetcher = null;
  }

  private settle(r: Room, err?: LlmError): void {
    if (this.rooms.get(r.room) !== r) return;
    this.rooms.delete(r.room);
    clearTimeout(r.timer);
    if (err && !r.pages) {
      const now = Date.now();
      for (const [k, v] of this.givenUp) if (v.until < now) this.givenUp.delete(k);
      this.givenUp.set(r.room, { error: err, until: now + this.options.timeoutMs });
    }
    if (r.pages?.kind === 'held') r.pages.held.release();
    r.pages = null;
    if (err) r.cancelled.abort(err);
    r.settle(err);
  }

  private onConnection(socket: Socket): void {
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    this.sockets.add(socket);
    const reader = new FrameReader(`decode worker ${peer}`);
    let room: Room | null = null;
    socket.on('data', (chunk) => {
      try {
        for (const f of reader.push(chunk)) {
          if (room && (f.header.type === 'pulled' || f.header.type === 'fallback')) this.onPullAnswer(room, f.header);
          else if (f.header.type !== 'fetch' || room) throw new LlmError('LLM_ERR_PROTOCOL', `KV bootstrap: expected one fetch frame from ${peer}, got ${f.header.type}`);
          else room = this.onFetch(socket, peer, f.header);
        }
      } catch (err) {
        const e = err instanceof LlmError ? err : new LlmError('LLM_ERR_PROTOCOL', String(err));
        writeFrame(socket, { type: 'error', code: e.code, message: e.message });
        socket.end();
        // a room this connection was being served: it ends with this error (its pages are released)
        if (room && room.fetcher?.socket === socket) {
          room.fetcher = null;
          this.settle(room, e);
        }
      }
    });
    socket.on('error', () => undefined); // 'close' follows
    socket.on('close', () => {
      this.sockets.delete(socket);
      // The decode side went away before its pages were sent (cancelled, or died): drop them now.
      if (room && room.fetcher?.socket === socket) {
        room.fetcher = null;
        this.settle(room, new LlmError('LLM_ERR_CANCELLED', `bootstrap room ${room.room}: the decode worker ${peer} went away before the KV pages were sent`));
      }
    });
  }

  private onFetch(socket: Socket, peer: string, f: FetchFrame): Room {
    const roomId = BigInt(f.room);
    checkLayouts(this.options.layout, f.layout, `bootstrap room ${roomId}: prefill worker (bootstrap port ${this.port}) vs decode worker ${peer}`);
    const gone = this.givenUp.get(roomId);
    if (gone) throw new LlmError(gone.error.code, `bootstrap room ${roomId} was already given up: ${gone.error.message}`);
    const offer = f.transfer?.offer ?? ['tcp'];
    const kind = pickTransfer(this.options.transfer.side, offer, f.transfer?.node ?? null);
    const r = this.entry(roomId);
    if (r.fetcher) throw new LlmError('LLM_ERR_PROTOCOL', `bootstrap room ${roomId} is already being fetched by ${r.fetcher.peer}`);
    r.fetcher = { socket, peer, kind, knownPool: f.transfer?.known_pool ?? null };
    this.trySend(r);
    return r;
  }

  /** Sends the pages (or offers them for pulling) when both halves are there. */
  private trySend(r: Room): void {
    if (!r.fetcher || !r.pages || r.sending) return;
    r.sending = true;
    const fetcher = r.fetcher;
    const send = fetcher.kind === 'cuda-ipc' && r.pages.kind === 'held' ? this.offerPull(r, r.pages.held) : this.sendHost(r);
    send.catch((err: unknown) => {
      const e = err instanceof LlmError ? err : new LlmError('LLM_ERR_KV_TRANSFER', String(err));
      this.refuse(r, e.code, `bootstrap room ${r.room}: ${e.message}`);
      this.settle(r, e);
    });
  }

  /** tcp: the pages host-staged in one frame (copied from the device now when they were held there). */
  private async sendHost(r: Room): Promise<void> {
    const p = r.pages!;
    const pages: PrefixPages = p.kind === 'host' ? p : { tokenIds: p.held.tokenIds, pageCount: p.held.pages.length, data: await p.held.toHost() };
    const fetcher = r.fetcher;
    if (!fetcher || this.rooms.get(r.room) !== r) return; // settled while copying (the decode side went away)
    const prefilled = p.prefilled ? { prefilled: p.prefilled } : {};
    writeFrame(fetcher.socket, { type: 'pages', room: r.room.toString(), layout: this.options.layout, token_ids: pages.tokenIds, page_count: pages.pageCount, ...prefilled }, pages.data);
    r.fetcher = null; // the close that follows is not a cancellation
    fetcher.socket.end();
    this.settle(r);
  }

  /** cuda-ipc: our pool (its handle unless the decode side has it open) and the page list; the pages stay locked
   * until the decode side answers `pulled` (or `fallback`) or goes away. */
  private async offerPull(r: Room, held: HeldPrefix): Promise<void> {
    const exportPool = this.options.transfer.pool;
    if (!exportPool) throw new LlmError('LLM_ERR_INTERNAL', 'cuda-ipc picked without an exported pool');
    const pool = await exportPool();
    const fetcher = r.fetcher;
    if (!fetcher || this.rooms.get(r.room) !== r) return;
    writeFrame(fetcher.socket, {
      type: 'ipc-pages',
      room: r.room.toString(),
      layout: this.options.layout,
      token_ids: held.tokenIds,
      pages: held.pages,
      pool: { ...pool, handle: fetcher.knownPool === pool.id ? null : pool.handle },
      ...(r.pages?.prefilled ? { prefilled: r.pages.prefilled } : {}),
    });
  }

  private onPullAnswer(r: Room, h: Extract<BootstrapFrame, { type: 'pulled' | 'fallback' }>): void {
    const fetcher = r.fetcher;
    if (!fetcher || fetcher.kind !== 'cuda-ipc' || !r.sending || h.room !== r.room.toString()) {
      throw new LlmError('LLM_ERR_PROTOCOL', `KV bootstrap: unexpected ${h.type} frame for bootstrap room ${h.room}`);
    }
    if (h.type === 'fallback') {
      if (this.options.transfer.side.mode === 'cuda-ipc') {
        throw new LlmError('LLM_ERR_KV_TRANSFER', `the decode worker cannot pull the KV pages of bootstrap room ${r.room} (${h.reason}), and this prefill worker runs with --disaggregation-transfer-backend cuda-ipc (no tcp fallback)`);
      }
      this.options.log?.(`bootstrap room ${r.room}: the decode worker ${fetcher.peer} falls back to tcp: ${h.reason}`);
      fetcher.kind = 'tcp';
      this.sendHost(r).catch((err: unknown) => {
        const e = err instanceof LlmError ? err : new LlmError('LLM_ERR_KV_TRANSFER', String(err));
        this.refuse(r, e.code, `bootstrap room ${r.room}: ${e.message}`);
        this.settle(r, e);
      });
      return;
    }
    // pulled: the decode side has the pages in its own pool; unlock ours, then tell it they are released
    r.fetcher = null;
    this.settle(r);
    writeFrame(fetcher.socket, { type: 'released', room: r.room.toString() });
    fetcher.socket.end();
  }
}
