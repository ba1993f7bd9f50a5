// Where a request's images come from and how they become RGB pixels: `image_url` as http(s) (bounded in bytes and
// time), a data: URL or a local file only where the deployment allows them, decoded by sharp (libvips) to 8-bit RGB
// the way Pillow's convert("RGB") does (alpha dropped, grey replicated, the first frame of an animation). Every
// refusal is a coded bad-request error naming the image and why; nothing here can block the event loop on a big
// input (the download is streamed against its limit, decoding runs on libuv's pool with a pixel-count limit).
import { readFile, realpath, stat } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { LlmError } from '../errors.js';
import type { Image8 } from './pil-resample.js';

export interface ImageFetchPolicy {
  /** Largest encoded image, in bytes (a download is cut off past it). */
  readonly maxBytes: number;
  /** Most pixels a decoded image may have (width x height). */
  readonly maxPixels: number;
  /** A download must finish within this. */
  readonly timeoutMs: number;
  /** Whether `data:` URLs are accepted. */
  readonly allowDataUrls: boolean;
  /** Folders `file:` URLs and paths may read from (after resolving links); none: local files are refused. */
  readonly localMediaRoots: readonly string[];
}

export const DEFAULT_IMAGE_FETCH_POLICY: ImageFetchPolicy = {
  maxBytes: 20 * 2 ** 20,
  maxPixels: 50_000_000,
  timeoutMs: 10_000,
  allowDataUrls: true,
  localMediaRoots: [],
};

const bad = (what: string, message: string): LlmError => new LlmError('LLM_ERR_BAD_REQUEST', `${what}: ${message}`);

function describe(url: string): string {
  return url.startsWith('data:') ? `${url.slice(0, Math.min(url.indexOf(',') + 1 || 30, 40))}...` : url.length > 200 ? `${url.slice(0, 200)}...` : url;
}

/** Fetches the encoded bytes of one image. `what` names it in errors (e.g. "messages[0].content[1].image_url"). */
export async function fetchImageBytes(url: string, policy: ImageFetchPolicy, what: string, signal?: AbortSignal): Promise<Buffer> {
  if (url.startsWith('data:')) {
    if (!policy.allowDataUrls) throw bad(what, 'data: URLs are not accepted by this deployment');
    const comma = url.indexOf(',');
    const header = url.slice(5, comma < 0 ? undefined : comma);
    if (comma < 0 || !/;base64$/i.test(header)) throw bad(what, 'a data: URL must be base64 (data:image/png;base64,...)');
    const payload = url.slice(comma + 1);
    if ((payload.length * 3) / 4 > policy.maxBytes) throw bad(what, `the image is larger than ${policy.maxBytes} bytes`);
    return Buffer.from(payload, 'base64');
  }
  if (/^https?:\/\//i.test(url)) return download(url, policy, what, signal);
  if (url.startsWith('file:') || isAbsolute(url)) return readLocal(url.startsWith('file:') ? fileURLToPath(url) : url, policy, what);
  throw bad(what, `"${describe(url)}" is not an http(s), data: or file: URL`);
}

async function download(url: string, policy: ImageFetchPolicy, what: string, signal?: AbortSignal): Promise<Buffer> {
  const timeout = AbortSignal.timeout(policy.timeoutMs);
  const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
  let res: Response;
  try {
    res = await fetch(url, { signal: combined, redirect: 'follow' });
  } catch (err) {
    if (timeout.aborted) throw bad(what, `${describe(url)} did not answer within ${policy.timeoutMs} ms`);
    if (signal?.aborted) throw new LlmError('LLM_ERR_CANCELLED', `${what}: the request was cancelled while its image downloaded`);
    throw bad(what, `${describe(url)} cannot be fetched: ${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}`);
  }
  if (res.status !== 200) {
    await res.body?.cancel().catch(() => undefined);
    throw bad(what, `${describe(url)} answered HTTP ${res.status}`);
  }
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > policy.maxBytes) {
    await res.body?.cancel().catch(() => undefined);
    throw bad(what, `the image at ${describe(url)} is ${declared} bytes, more than the ${policy.maxBytes} allowed`);
  }
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for await (const chunk of res.body ?? []) {
      total += chunk.byteLength;
      if (total > policy.maxBytes) throw bad(what, `the image at ${describe(url)} is more than the ${policy.maxBytes} bytes allowed`);
      chunks.push(chunk);
    }
  } catch (err) {
    await res.body?.cancel().catch(() => undefined);
    if (err instanceof LlmError) throw err;
    if (timeout.aborted) throw bad(what, `${describe(url)} did not finish within ${policy.timeoutMs} ms`);
    throw bad(what, `${describe(url)}: the download failed: ${(err as Error).message}`);
  }
  return Buffer.concat(chunks);
}

async function readLocal(path: string, policy: ImageFetchPolicy, what: string): Promise<Buffer> {
  if (policy.localMediaRoots.length === 0) throw bad(what, 'local files are not accepted by this deployment (see --allowed-local-media-path)');
  let real: string;
  try {
    real = await realpath(path);
  } catch {
    throw bad(what, `${path}: no such file`);
  }
  const inside = await Promise.all(policy.localMediaRoots.map(async (root) => {
    const rel = relative(await realpath(resolve(root)).catch(() => resolve(root)), real);
    return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
  }));
  if (!inside.some(Boolean)) throw bad(what, `${path} is outside the folders local images may come from`);
  const info = await stat(real);
  if (!info.isFile()) throw bad(what, `${path} is not a file`);
  if (info.size > policy.maxBytes) throw bad(what, `${path} is ${info.size} bytes, more than the ${policy.maxBytes} allowed`);
  return readFile(real);
}

/** Decodes an encoded image (PNG, JPEG, WebP, GIF, TIFF, AVIF...) to 8-bit RGB. */
export async function decodeImage(bytes: Buffer, policy: Pick<ImageFetchPolicy, 'maxPixels'>, what: string): Promise<Image8> {
  try {
    const { data, info } = await sharp(bytes, { limitInputPixels: policy.maxPixels, failOn: 'error' })
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { width: info.width, height: info.height, channels: 3, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  } catch (err) {
    const message = (err as Error).message;
    if (/pixel limit/i.test(message)) throw bad(what, `the image has more than ${policy.maxPixels} pixels`);
    throw bad(what, `cannot decode the image (${message.split('\n')[0]})`);
  }
}

/** Fetches and decodes one image. */
export async function loadImage(url: string, policy: ImageFetchPolicy, what: string, signal?: AbortSignal): Promise<Image8> {
  return decodeImage(await fetchImageBytes(url, policy, what, signal), policy, what);
}
