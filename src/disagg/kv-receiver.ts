// The decode side of a KV hand-off: fetch a room's KV pages from the prefill worker's bootstrap server (the
// service then imports them as a cached prefix, ./prefix.ts).
import { connect, type Socket } from 'node:net';
import { LlmError, isErrorCode } from '../errors.js';
import { FrameReader, writeFrame, type PagesFrame } from './frames.js';
import { checkLayouts, type KvLayout } from './layout.js';

export interface FetchKvOptions {
  host: string;
  port: number;
  room: bigint;
  layout: KvLayout;
  timeoutMs: number;
  signal?: AbortSignal;
}

export interface FetchedKv {
  header: PagesFrame;
  data: Uint8Array;
}

/** Fetches a room's pages. Fails with LLM_ERR_KV_TRANSFER when the prefill side refuses or goes away mid-way,
 * LLM_ERR_TIMEOUT after timeoutMs, LLM_ERR_CANCELLED when the signal aborts (closing the connection tells the
 * prefill side to release the pages). */
export function fetchKv(o: FetchKvOptions): Promise<FetchedKv> {
  const server = `${o.host}:${o.port}`;
  const what = `KV pages of bootstrap room ${o.room} from the prefill worker at ${server}`;
  return new Promise<FetchedKv>((resolve, reject) => {
    if (o.signal?.aborted) return reject(new LlmError('LLM_ERR_CANCELLED', `request cancelled before fetching the ${what}`));
    const socket: Socket = connect({ host: o.host.replace(/^\[|\]$/g, ''), port: o.port });
    const reader = new FrameReader(`prefill worker ${server}`);
    let settled = false;
    const finish = (err: LlmError | null, value?: FetchedKv) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(value!);
    };
    const timer = setTimeout(
      () => finish(new LlmError('LLM_ERR_TIMEOUT', `the ${what} did not arrive within ${o.timeoutMs / 1000} s (--kv-transfer-timeout); ${reader.pendingBytes} bytes received`)),
      o.timeoutMs,
    );
    const onAbort = () => finish(new LlmError('LLM_ERR_CANCELLED', `request cancelled while waiting for the ${what}`));
    o.signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('connect', () => writeFrame(socket, { type: 'fetch', room: o.room.toString(), layout: o.layout }));
    socket.on('data', (chunk) => {
      try {
        for (const f of reader.push(chunk)) {
          const h = f.header;
          if (h.type === 'error') {
            finish(new LlmError(isErrorCode(h.code) && h.code !== 'LLM_ERR_INTERNAL' ? h.code : 'LLM_ERR_KV_TRANSFER', `prefill worker at ${server}: ${h.message}`));
          } else if (h.type === 'pages') {
            if (h.room !== o.room.toString()) throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent room ${h.room}, asked for ${o.room}`);
            checkLayouts(h.layout, o.layout, `bootstrap room ${o.room}: prefill worker ${server} vs this decode worker`);
            const expected = h.page_count * o.layout.bytesPerPage;
            if (f.body.length !== expected || h.token_ids.length !== h.page_count * o.layout.pageSize) {
              throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent ${f.body.length} bytes and ${h.token_ids.length} tokens for ${h.page_count} pages (expected ${expected} bytes, ${h.page_count * o.layout.pageSize} tokens)`);
            }
            finish(null, { header: h, data: f.body });
          } else {
            throw new LlmError('LLM_ERR_PROTOCOL', `prefill worker at ${server} sent a ${h.type} frame`);
          }
        }
      } catch (err) {
        finish(err instanceof LlmError ? err : new LlmError('LLM_ERR_PROTOCOL', String(err)));
      }
    });
    socket.on('error', (err) => finish(new LlmError('LLM_ERR_KV_TRANSFER', `fetching the ${what}: ${err.message}`)));
    socket.on('close', () =>
      finish(new LlmError('LLM_ERR_KV_TRANSFER', `the prefill worker at ${server} closed the connection before the ${what} arrived (${reader.pendingBytes} bytes received)`)),
    );
  });
}
