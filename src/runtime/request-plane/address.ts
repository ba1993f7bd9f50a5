// Where the request planes listen and how their advertised addresses are read back.
import { networkInterfaces } from 'node:os';
import { LlmError } from '../../errors.js';

/**
 * Host the TCP plane (and the call-home response server) binds and advertises: `DYN_TCP_RPC_HOST`, else the first
 * non-loopback IPv4 address of this machine, else 127.0.0.1.
 */
export function resolveRpcHost(env: NodeJS.ProcessEnv = process.env): string {
  const configured = env.DYN_TCP_RPC_HOST?.trim();
  return configured ? configured : detectHostIp();
}

/** The first non-loopback IPv4 address of this machine, else 127.0.0.1. */
export function detectHostIp(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const a of addresses ?? []) {
      if (a.family === 'IPv4' && !a.internal) return a.address;
    }
  }
  return '127.0.0.1';
}

/** The address others should dial for a server bound to `bindHost` (a wildcard bind advertises this host's IP). */
export function advertisedHost(bindHost: string): string {
  return bindHost === '0.0.0.0' || bindHost === '::' ? detectHostIp() : bindHost;
}

/** `DYN_TCP_RPC_PORT` (0 or unset = OS-assigned). */
export function resolveRpcPort(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.DYN_TCP_RPC_PORT?.trim();
  if (!raw) return 0;
  const port = Number(raw);
  if (!/^\d+$/.test(raw) || port > 65535) {
    throw new LlmError('LLM_ERR_CONFIG', `DYN_TCP_RPC_PORT must be a port number 0..65535, got "${raw}"`);
  }
  return port;
}

export interface HostPort {
  host: string;
  port: number;
}

/** "host:port" or "[v6]:port" → parts; throws LLM_ERR_PROTOCOL naming the text when it is not one. */
export function parseHostPort(text: string, what: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:/\s]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 1 || port > 65535) throw new LlmError('LLM_ERR_PROTOCOL', `${what} "${text}": expected host:port`);
  return { host: m[1] ?? m[2], port };
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** A TCP transport address from discovery, `host:port/{endpoint}` (0.8) or `host:port/{instance_id:x}/{endpoint}`
 * (main), split at the first "/". */
export function parseTcpTransportAddress(address: string): { hostPort: string; path: string } {
  const slash = address.indexOf('/');
  if (slash <= 0 || slash === address.length - 1) {
    throw new LlmError('LLM_ERR_PROTOCOL', `TCP transport address "${address}": expected host:port/{endpoint} or host:port/{instance_id:x}/{endpoint}`);
  }
  const hostPort = address.slice(0, slash);
  parseHostPort(hostPort, 'TCP transport address host');
  return { hostPort, path: address.slice(slash + 1) };
}
