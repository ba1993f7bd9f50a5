// Who may use a worker's request plane, and where its answers may go (issue 22: "the request plane serves only its
// own deployment").
//
// Reply addresses. Every request names the caller's response server (`connection_info` address, reference §10.3) and
// the worker connects out to it. Without a check, a hand-built frame turns the worker into a connector to anywhere.
// A reply address is allowed when its host is
//   - the IP the request came from (the TCP / HTTP peer), or
//   - an address of this machine while the peer is one too (a frontend on this host advertising its LAN IP while
//     dialling the worker on 127.0.0.1), or
//   - in DYN_REPLY_ADDRESS_ALLOW (comma-separated CIDRs, IPs or host names).
// The NATS plane has no peer IP (requests arrive through the NATS server), so only the allowlist applies there, and
// when none is set its requests are not checked: the NATS server's own credentials are its gate.
//
// Shared secret. With DYN_REQUEST_PLANE_SECRET (or DYN_REQUEST_PLANE_SECRET_FILE) every request carries the header
// `x-dyn-request-auth: v1.<unix ms>.<hex HMAC-SHA256(secret, "v1." + ms + "." + payload)>`. The payload holds the
// request id and the reply address, so a proof cannot be moved to another request or redirected; a proof older or
// newer than PROOF_WINDOW_MS is refused, and one already seen inside the window is refused as a replay. A
// per-connection nonce would need a greeting the reference's frame protocol has no room for (and NATS has no
// connection to the worker at all); the time window + replay cache give the same protection on every plane.
// The TCP plane carries headers only in the main wire profile; a 0.8 frame cannot carry the proof.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { LlmError } from '../../errors.js';
import { logger } from '../log.js';

const log = logger('runtime.request_plane');

export const AUTH_HEADER = 'x-dyn-request-auth';
/** How far a proof's timestamp may be from the worker's clock. */
export const PROOF_WINDOW_MS = 60_000;
/** Default bound on a reply stream waiting for its reader to take more bytes (DYN_REPLY_WRITE_TIMEOUT_MS). */
export const DEFAULT_REPLY_WRITE_TIMEOUT_MS = 30_000;

/** Reads the shared secret: DYN_REQUEST_PLANE_SECRET, else the file DYN_REQUEST_PLANE_SECRET_FILE names; null = off. */
export function requestPlaneSecretFromEnv(env: NodeJS.ProcessEnv = process.env): Buffer | null {
  const inline = env.DYN_REQUEST_PLANE_SECRET;
  const file = env.DYN_REQUEST_PLANE_SECRET_FILE;
  let text: string;
  let source: string;
  if (inline !== undefined && inline !== '') {
    text = inline;
    source = 'DYN_REQUEST_PLANE_SECRET';
  } else if (file !== undefined && file !== '') {
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new LlmError('LLM_ERR_CONFIG', `DYN_REQUEST_PLANE_SECRET_FILE ${file} cannot be read: ${(err as Error).message}`);
    }
    source = `DYN_REQUEST_PLANE_SECRET_FILE ${file}`;
  } else return null;
  const secret = text.trim();
  if (secret.length < 16) throw new LlmError('LLM_ERR_CONFIG', `${source}: the request-plane secret must be at least 16 characters`);
  return Buffer.from(secret, 'utf8');
}

function mac(secret: Buffer, stamp: string, payload: Buffer): Buffer {
  return createHmac('sha256', secret).update(`v1.${stamp}.`).update(payload).digest();
}

/** The proof header value for one request payload. */
export function signRequest(secret: Buffer, payload: Buffer, nowMs: number = Date.now()): string {
  const stamp = String(nowMs);
  return `v1.${stamp}.${mac(secret, stamp, payload).toString('hex')}`;
}

/** Checks proofs on the worker side; remembers the proofs of the last window to refuse replays. */
export class RequestVerifier {
  private readonly seen = new Map<string, number>();

  constructor(private readonly secret: Buffer) {}

  /** null when the proof is valid and fresh, else why not (no secret material in the text). */
  verify(payload: Buffer, headers: Record<string, string>, nowMs: number = Date.now()): string | null {
    const proof = headers[AUTH_HEADER];
    if (proof === undefined) return `no ${AUTH_HEADER} header (this worker requires the request-plane secret; a 0.8 TCP frame cannot carry it)`;
    const m = /^v1\.(\d{1,15})\.([0-9a-f]{64})$/.exec(proof);
    if (m === null) return `malformed ${AUTH_HEADER} header`;
    const stamp = Number(m[1]);
    if (Math.abs(nowMs - stamp) > PROOF_WINDOW_MS) return `${AUTH_HEADER} proof is ${Math.round((nowMs - stamp) / 1000)} s away from this worker's clock (window ${PROOF_WINDOW_MS / 1000} s)`;
    if (!timingSafeEqual(Buffer.from(m[2], 'hex'), mac(this.secret, m[1], payload))) return `${AUTH_HEADER} proof does not match (wrong secret or altered request)`;
    this.evict(nowMs);
    if (this.seen.has(m[2])) return `${AUTH_HEADER} proof was already used (replayed request)`;
    this.seen.set(m[2], stamp);
    return null;
  }

  private evict(nowMs: number): void {
    // insertion order ≈ time order; stop at the first proof still inside the window
    for (const [key, stamp] of this.seen) {
      if (nowMs - stamp <= PROOF_WINDOW_MS) break;
      this.seen.delete(key);
    }
  }
}

function unmapped(ip: string): string {
  return ip.startsWith('::ffff:') && isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip;
}

function localAddresses(): Set<string> {
  const out = new Set<string>(['127.0.0.1', '::1']);
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) out.add(a.address);
  return out;
}

/** The reply-address rule (see the file comment). */
export class ReplyAddressPolicy {
  private readonly blocks = new BlockList();
  private readonly names = new Set<string>();
  private readonly refusedLogged = new Set<string>();
  readonly hasAllowlist: boolean;

  /** `allow`: CIDRs (`10.0.0.0/8`, `fd00::/8`), IPs or host names. */
  constructor(allow: readonly string[] = []) {
    for (const raw of allow) {
      const entry = raw.trim();
      if (entry === '') continue;
      const slash = entry.indexOf('/');
      if (slash >= 0) {
        const net = entry.slice(0, slash);
        const bits = Number(entry.slice(slash + 1));
        const family = isIP(net);
        if (family === 0 || !/^\d{1,3}$/.test(entry.slice(slash + 1)) || bits > (family === 4 ? 32 : 128)) {
          throw new LlmError('LLM_ERR_CONFIG', `DYN_REPLY_ADDRESS_ALLOW entry "${entry}": expected a CIDR such as 10.0.0.0/8`);
        }
        this.blocks.addSubnet(net, bits, family === 4 ? 'ipv4' : 'ipv6');
      } else if (isIP(entry) !== 0) {
        this.blocks.addAddress(entry, isIP(entry) === 4 ? 'ipv4' : 'ipv6');
      } else if (/^[A-Za-z0-9.-]+$/.test(entry)) {
        this.names.add(entry.toLowerCase());
      } else {
        throw new LlmError('LLM_ERR_CONFIG', `DYN_REPLY_ADDRESS_ALLOW entry "${entry}": expected a CIDR, an IP address or a host name`);
      }
    }
    this.hasAllowlist = allow.some((e) => e.trim() !== '');
  }

  static fromEnv(env: NodeJS.ProcessEnv = process.env): ReplyAddressPolicy {
    return new ReplyAddressPolicy((env.DYN_REPLY_ADDRESS_ALLOW ?? '').split(','));
  }

  /**
   * null when the worker may connect to `replyHost` for a request from `peer` (undefined: no peer IP, the NATS
   * plane), else why not. A refused host is logged once.
   */
  check(replyHost: string, peer: string | undefined): string | null {
    const host = replyHost.toLowerCase() === 'localhost' ? '127.0.0.1' : unmapped(replyHost);
    if (this.allowed(host, peer === undefined ? undefined : unmapped(peer))) return null;
    const reason = peer === undefined
      ? `reply address host ${replyHost} is not in DYN_REPLY_ADDRESS_ALLOW`
      : `reply address host ${replyHost} is neither the requesting peer ${unmapped(peer)} nor in DYN_REPLY_ADDRESS_ALLOW`;
    const key = `${replyHost}|${peer ?? ''}`;
    if (!this.refusedLogged.has(key) && this.refusedLogged.size < 1024) {
      this.refusedLogged.add(key);
      log.warn('request refused: reply address not allowed', { replyHost, peer: peer ?? null });
    }
    return reason;
  }

  private allowed(host: string, peer: string | undefined): boolean {
    const family = isIP(host);
    if (family !== 0 && this.blocks.check(host, family === 4 ? 'ipv4' : 'ipv6')) return true;
    if (this.names.has(host.toLowerCase())) return true;
    if (peer === undefined) return !this.hasAllowlist;
    if (host === peer) return true;
    const local = localAddresses();
    return local.has(host) && local.has(peer);
  }
}

/** Mutual TLS on the TCP request plane (frontend → worker): this side's certificate and the CA that signs the peer's. */
export interface TcpPlaneTls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
}

/** DYN_TCP_RPC_TLS_CERT, DYN_TCP_RPC_TLS_KEY, DYN_TCP_RPC_TLS_CA (PEM files; all three or none); null = plaintext. */
export function tcpPlaneTlsFromEnv(env: NodeJS.ProcessEnv = process.env): TcpPlaneTls | null {
  const names = ['DYN_TCP_RPC_TLS_CERT', 'DYN_TCP_RPC_TLS_KEY', 'DYN_TCP_RPC_TLS_CA'] as const;
  const given = names.filter((n) => (env[n] ?? '') !== '');
  if (given.length === 0) return null;
  if (given.length !== names.length) throw new LlmError('LLM_ERR_CONFIG', `TCP request plane mTLS needs ${names.join(', ')} together; only ${given.join(', ')} set`);
  const read = (name: (typeof names)[number]): Buffer => {
    const path = env[name] as string;
    try {
      return readFileSync(path);
    } catch (err) {
      throw new LlmError('LLM_ERR_CONFIG', `${name} ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  return { cert: read('DYN_TCP_RPC_TLS_CERT'), key: read('DYN_TCP_RPC_TLS_KEY'), ca: read('DYN_TCP_RPC_TLS_CA') };
}

/** The request plane's trust settings, from the environment: secret, reply-address rule, reply write timeout. */
export interface RequestPlaneTrust {
  secret: Buffer | null;
  replyPolicy: ReplyAddressPolicy;
  replyWriteTimeoutMs: number;
}

export function requestPlaneTrustFromEnv(env: NodeJS.ProcessEnv = process.env): RequestPlaneTrust {
  const raw = env.DYN_REPLY_WRITE_TIMEOUT_MS?.trim();
  let replyWriteTimeoutMs = DEFAULT_REPLY_WRITE_TIMEOUT_MS;
  if (raw !== undefined && raw !== '') {
    replyWriteTimeoutMs = Number(raw);
    if (!/^\d+$/.test(raw) || replyWriteTimeoutMs <= 0) throw new LlmError('LLM_ERR_CONFIG', `DYN_REPLY_WRITE_TIMEOUT_MS must be a positive integer number of milliseconds, got "${raw}"`);
  }
  return { secret: requestPlaneSecretFromEnv(env), replyPolicy: ReplyAddressPolicy.fromEnv(env), replyWriteTimeoutMs };
}
