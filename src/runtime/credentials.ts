// TLS and credentials for the two services a deployment talks to, etcd and NATS (issue 22), read once from the
// URL and the environment into one options type per service. Secrets never reach a message or a log line:
// everything shown uses `redactUrl` and names files, not their contents.
//
// etcd (the reference's ETCD_* environment): ETCD_AUTH_USERNAME + ETCD_AUTH_PASSWORD (etcd's own auth),
//   ETCD_AUTH_CA (PEM CA that signs the server's certificate), ETCD_AUTH_CLIENT_CERT + ETCD_AUTH_CLIENT_KEY (client
//   certificate, for etcd's --client-cert-auth). Any of the TLS files switches the endpoints to https.
// NATS: user and password or a token in the URL (`nats://user:pass@host:4222`, `nats://token@host:4222`), or
//   NATS_AUTH_USERNAME + NATS_AUTH_PASSWORD, NATS_AUTH_TOKEN, NATS_AUTH_NKEY (a seed file), NATS_AUTH_CREDENTIALS_FILE
//   (a .creds file); TLS with a `tls://` URL or any of NATS_TLS_CA_FILE, NATS_TLS_CERT_FILE + NATS_TLS_KEY_FILE.
//   With TLS the server's certificate must verify (against NATS_TLS_CA_FILE, else the system CAs) and a server
//   that offers no TLS is refused.
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { credsAuthenticator, nkeyAuthenticator, type Authenticator, type ConnectionOptions } from 'nats';
import type { IOptions } from 'etcd3';
import { LlmError } from '../errors.js';

/** `scheme://user:***@host` (a password, or a lone token, replaced); text that is not a URL comes back unchanged. */
export function redactUrl(text: string): string {
  return text.replace(/^([a-z][a-z0-9+.-]*:\/\/)([^@/]*)@/i, (_m, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    return colon < 0 ? `${scheme}***@` : `${scheme}${userinfo.slice(0, colon)}:***@`;
  });
}

/** Every secret this process was given, for scrubbing third-party error text before it is shown. */
function scrub(text: string, secrets: ReadonlyArray<string | undefined>): string {
  let out = text;
  for (const s of secrets) if (s !== undefined && s.length >= 3) out = out.split(s).join('***');
  return out;
}

function readPem(path: string, setting: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new LlmError('LLM_ERR_CONFIG', `${setting} ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function nonEmpty(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const v = env[name];
  return v === undefined || v === '' ? undefined : v;
}

// ---------------------------------------------------------------------------------------------------------------
// NATS

export interface NatsConnectSettings {
  /** What nats.connect takes: servers without userinfo, auth, TLS. */
  options: ConnectionOptions;
  /** The server URL with its password redacted, for messages. */
  display: string;
  /** Secrets to scrub from error text. */
  secrets: string[];
}

/** The NATS connection options for `url` and the NATS_AUTH_* / NATS_TLS_* environment. */
export function natsConnectSettings(url: string, env: NodeJS.ProcessEnv = process.env): NatsConnectSettings {
  const display = redactUrl(url);
  let parsed: URL;
  try {
    parsed = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? url : `nats://${url}`);
  } catch {
    throw new LlmError('LLM_ERR_CONFIG', `NATS server "${display}" is not a URL (expected nats://host:4222 or tls://host:4222)`);
  }
  const scheme = parsed.protocol.replace(/:$/, '').toLowerCase();
  if (!['nats', 'tls', 'tcp'].includes(scheme)) {
    throw new LlmError('LLM_ERR_CONFIG', `NATS server "${display}": scheme ${scheme}:// is not supported (nats:// or tls://)`);
  }
  const options: ConnectionOptions = { servers: `${parsed.hostname.includes(':') ? `[${parsed.hostname}]` : parsed.hostname}:${parsed.port || '4222'}` };
  const secrets: string[] = [];
  const urlUser = decodeURIComponent(parsed.username);
  const urlPass = decodeURIComponent(parsed.password);
  const envUser = nonEmpty(env, 'NATS_AUTH_USERNAME');
  const envPass = nonEmpty(env, 'NATS_AUTH_PASSWORD');
  const token = nonEmpty(env, 'NATS_AUTH_TOKEN');
  const nkeyFile = nonEmpty(env, 'NATS_AUTH_NKEY');
  const credsFile = nonEmpty(env, 'NATS_AUTH_CREDENTIALS_FILE');
  const chosen = [urlUser !== '' && 'credentials in the URL', envUser !== undefined && 'NATS_AUTH_USERNAME', token !== undefined && 'NATS_AUTH_TOKEN',
    nkeyFile !== undefined && 'NATS_AUTH_NKEY', credsFile !== undefined && 'NATS_AUTH_CREDENTIALS_FILE'].filter((x): x is string => x !== false);
  if (chosen.length > 1) throw new LlmError('LLM_ERR_CONFIG', `NATS server ${display}: give one way to authenticate, not ${chosen.join(' and ')}`);
  if (urlUser !== '') {
    if (parsed.password === '') {
      options.token = urlUser;
      secrets.push(urlUser);
    } else {
      options.user = urlUser;
      options.pass = urlPass;
      secrets.push(urlPass);
    }
  } else if (envUser !== undefined) {
    if (envPass === undefined) throw new LlmError('LLM_ERR_CONFIG', 'NATS_AUTH_USERNAME is set without NATS_AUTH_PASSWORD');
    options.user = envUser;
    options.pass = envPass;
    secrets.push(envPass);
  } else if (token !== undefined) {
    options.token = token;
    secrets.push(token);
  } else if (nkeyFile !== undefined) {
    const seed = readPem(nkeyFile, 'NATS_AUTH_NKEY').toString('utf8').trim();
    if (!/^SU[A-Z2-7]+$/.test(seed)) throw new LlmError('LLM_ERR_CONFIG', `NATS_AUTH_NKEY ${nkeyFile}: expected a user nkey seed (a line starting with SU)`);
    const authenticator: Authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
    options.authenticator = authenticator;
  } else if (credsFile !== undefined) {
    options.authenticator = credsAuthenticator(new Uint8Array(readPem(credsFile, 'NATS_AUTH_CREDENTIALS_FILE')));
  }
  const ca = nonEmpty(env, 'NATS_TLS_CA_FILE');
  const cert = nonEmpty(env, 'NATS_TLS_CERT_FILE');
  const key = nonEmpty(env, 'NATS_TLS_KEY_FILE');
  if ((cert === undefined) !== (key === undefined)) throw new LlmError('LLM_ERR_CONFIG', 'NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE go together');
  if (scheme === 'tls' || ca !== undefined || cert !== undefined) {
    // an object (even empty) makes nats.js require TLS and verify the server (rejectUnauthorized)
    options.tls = {
      ...(ca !== undefined ? { ca: readPem(ca, 'NATS_TLS_CA_FILE').toString('utf8') } : {}),
      ...(cert !== undefined && key !== undefined ? { cert: readPem(cert, 'NATS_TLS_CERT_FILE').toString('utf8'), key: readPem(key, 'NATS_TLS_KEY_FILE').toString('utf8') } : {}),
    };
  }
  return { options, display, secrets };
}

/** A NATS connect failure as text a person can act on, with no secret in it. */
export function describeNatsConnectError(settings: NatsConnectSettings, err: unknown): string {
  const e = err as { code?: string; message?: string };
  let text = e.message ?? String(err);
  if (settings.options.tls !== undefined && e.code === 'SERVER_OPT_NA') {
    text = `the server offers no TLS (is it a plaintext server?): ${text}`;
  } else if (/self[- ]signed|unable to verify|certificate/i.test(text)) {
    text = `the server's TLS certificate does not verify against ${settings.options.tls !== undefined && 'ca' in (settings.options.tls ?? {}) ? 'NATS_TLS_CA_FILE' : 'the system CAs'}: ${text}`;
  }
  return scrub(`${text}${e.code !== undefined && !text.includes(e.code) ? ` (${e.code})` : ''}`, settings.secrets);
}

// ---------------------------------------------------------------------------------------------------------------
// etcd

export interface EtcdClientSettings {
  /** Hosts with the scheme TLS needs. */
  hosts: string[];
  auth?: IOptions['auth'];
  credentials?: IOptions['credentials'];
  secrets: string[];
}

/** etcd client options for `endpoints` and the ETCD_AUTH_* environment. */
export function etcdClientSettings(endpoints: readonly string[], env: NodeJS.ProcessEnv = process.env): EtcdClientSettings {
  const user = nonEmpty(env, 'ETCD_AUTH_USERNAME');
  const password = nonEmpty(env, 'ETCD_AUTH_PASSWORD');
  const ca = nonEmpty(env, 'ETCD_AUTH_CA');
  const cert = nonEmpty(env, 'ETCD_AUTH_CLIENT_CERT');
  const key = nonEmpty(env, 'ETCD_AUTH_CLIENT_KEY');
  if ((user === undefined) !== (password === undefined)) throw new LlmError('LLM_ERR_CONFIG', 'ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD go together');
  if ((cert === undefined) !== (key === undefined)) throw new LlmError('LLM_ERR_CONFIG', 'ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY go together');
  const tls = ca !== undefined || cert !== undefined || endpoints.some((e) => /^https:\/\//i.test(e));
  const hosts = endpoints.map((e) => {
    if (/^https?:\/\//i.test(e)) {
      if (tls && /^http:\/\//i.test(e)) throw new LlmError('LLM_ERR_CONFIG', `etcd endpoint ${redactUrl(e)} is http:// but TLS is configured (ETCD_AUTH_CA / ETCD_AUTH_CLIENT_CERT or another https:// endpoint)`);
      return e;
    }
    return `${tls ? 'https' : 'http'}://${e}`;
  });
  const settings: EtcdClientSettings = { hosts, secrets: password === undefined ? [] : [password] };
  if (user !== undefined && password !== undefined) settings.auth = { username: user, password };
  if (tls) {
    settings.credentials = {
      // without ETCD_AUTH_CA the system CAs verify the server
      rootCertificate: ca !== undefined ? readPem(ca, 'ETCD_AUTH_CA') : Buffer.from(rootCertificates.join('\n')),
      ...(cert !== undefined && key !== undefined ? { certChain: readPem(cert, 'ETCD_AUTH_CLIENT_CERT'), privateKey: readPem(key, 'ETCD_AUTH_CLIENT_KEY') } : {}),
    };
  }
  return settings;
}

/** Third-party error text with the etcd password removed. */
export function scrubEtcdError(settings: EtcdClientSettings, text: string): string {
  return scrub(text, settings.secrets);
}
