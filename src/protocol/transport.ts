// JSON messages of the request planes (reference §10.1, §10.3). The byte framing (length prefixes, TwoPartMessage)
// belongs to the runtime; this module fixes what goes inside the header and body parts.
import { Type, type StaticDecode, type TSchema } from '@sinclair/typebox';
import { isErrorCode, LlmError, type ErrorCode } from '../errors.js';
import { JsonObject, Nullable, U64 } from './common.js';
import { parseJsonExact, stringifyJsonExact } from './json.js';
import { parseWire } from './validate.js';

/** Header keys the TCP request frame carries (a JSON map<string,string>), besides trace headers. */
export const RequestHeader = {
  requestId: 'request-id',
  frontendSendTsNs: 'x-frontend-send-ts-ns',
  endpointPath: 'x-endpoint-path',
} as const;

export const RequestHeadersSchema = Type.Record(Type.String(), Type.String(), {
  $id: 'RequestHeaders',
  title: 'RequestHeaders',
});
export type RequestHeaders = StaticDecode<typeof RequestHeadersSchema>;

export const StreamTypeSchema = Type.Union([Type.Literal('request'), Type.Literal('response')], { title: 'StreamType' });

/** The caller's response server as encoded (as a JSON string) in `connection_info.info`. */
export const TcpConnectionInfoSchema = Type.Object(
  {
    address: Type.String({ description: 'ip:port of the caller response server' }),
    subject: Type.String({ description: 'uuid that the worker echoes in its handshake' }),
    context: Type.String({ description: 'request id' }),
    stream_type: StreamTypeSchema,
  },
  { $id: 'TcpConnectionInfo', title: 'TcpConnectionInfo' },
);
export type TcpConnectionInfo = StaticDecode<typeof TcpConnectionInfoSchema>;

export const ConnectionInfoSchema = Type.Object(
  {
    transport: Type.Literal('tcp_server'),
    info: Type.String({ description: 'JSON text of TcpConnectionInfo' }),
  },
  { $id: 'ConnectionInfo', title: 'ConnectionInfo' },
);
export type ConnectionInfo = StaticDecode<typeof ConnectionInfoSchema>;

/** Header part of a request TwoPartMessage; the body part is the request JSON. */
export const RequestControlMessageSchema = Type.Object(
  {
    id: Type.String(),
    request_type: Type.Literal('single_in'),
    response_type: Type.Literal('many_out'),
    connection_info: ConnectionInfoSchema,
    frontend_send_ts_ns: Type.Optional(Nullable(U64({ description: 'nanoseconds since the Unix epoch' }))),
  },
  { $id: 'RequestControlMessage', title: 'RequestControlMessage' },
);
export type RequestControlMessage = StaticDecode<typeof RequestControlMessageSchema>;

/** First message on a call-home connection (header only). */
export const CallHomeHandshakeSchema = Type.Object(
  { subject: Type.String(), stream_type: Type.Literal('response') },
  { $id: 'CallHomeHandshake', title: 'CallHomeHandshake' },
);
export type CallHomeHandshake = StaticDecode<typeof CallHomeHandshakeSchema>;

/** Second message (header only): `{"error": null}`, or an error after which nothing follows. */
export const ResponsePrologueSchema = Type.Object(
  { error: Nullable(Type.String()) },
  { $id: 'ResponsePrologue', title: 'ResponsePrologue' },
);
export type ResponsePrologue = StaticDecode<typeof ResponsePrologueSchema>;

/** Annotated<T>: what the runtime wraps each handler output in. Absent fields are omitted, never null. */
export function AnnotatedOf<T extends TSchema>(data: T, title = 'Annotated') {
  return Type.Object(
    {
      data: Type.Optional(data),
      id: Type.Optional(Type.String()),
      event: Type.Optional(Type.String()),
      comment: Type.Optional(Type.Array(Type.String())),
      error: Type.Optional(Type.Union([Type.String(), JsonObject()])),
    },
    { title },
  );
}

export const AnnotatedSchema = Type.Object(AnnotatedOf(Type.Unknown()).properties, {
  $id: 'Annotated',
  title: 'Annotated',
});
export type Annotated = StaticDecode<typeof AnnotatedSchema>;

/** Body-only data frame `{"data": Annotated, "complete_final": false}`, and the final `{"complete_final": true}`. */
export const StreamFrameSchema = Type.Object(
  { data: Type.Optional(AnnotatedSchema), complete_final: Type.Boolean() },
  { $id: 'StreamFrame', title: 'StreamFrame' },
);
export type StreamFrame = StaticDecode<typeof StreamFrameSchema>;

/** Header-only control messages: caller → worker "stop" / "kill"; worker → caller "sentinel" on normal closure. */
export const ControlMessageSchema = Type.Union([Type.Literal('stop'), Type.Literal('kill'), Type.Literal('sentinel')], {
  $id: 'ControlMessage',
  title: 'ControlMessage',
});
export type ControlMessage = StaticDecode<typeof ControlMessageSchema>;

/** The header part of any message on a call-home socket, once parsed. */
export const CallHomeHeaderSchema = Type.Union([CallHomeHandshakeSchema, ResponsePrologueSchema, ControlMessageSchema], {
  title: 'CallHomeHeader',
});

// ---------------------------------------------------------------------------------------------------------------
// helpers

/** `connection_info` for a request whose responses should call home to `info.address`. */
export function makeConnectionInfo(info: TcpConnectionInfo): ConnectionInfo {
  return { transport: 'tcp_server', info: JSON.stringify(info) };
}

/** Reads the JSON string inside `connection_info.info`. */
export function readConnectionInfo(ci: ConnectionInfo, what = 'connection_info.info'): TcpConnectionInfo {
  let inner: unknown;
  try {
    inner = JSON.parse(ci.info);
  } catch (err) {
    throw new LlmError('LLM_ERR_PROTOCOL', `${what}: not valid JSON (${(err as Error).message})`);
  }
  return parseWire(TcpConnectionInfoSchema, inner, what, 'LLM_ERR_PROTOCOL');
}

/** JSON bytes of a wire message; bigint fields as exact integer literals. */
export function encodeWireJson(value: unknown): Uint8Array {
  return Buffer.from(stringifyJsonExact(value), 'utf8');
}

/** Parses JSON bytes (exactly, see json.ts) and checks them against `schema`; errors are LLM_ERR_PROTOCOL. */
export function decodeWireJson<T extends TSchema>(schema: T, bytes: Uint8Array, what: string): StaticDecode<T> {
  let json: unknown;
  try {
    json = parseJsonExact(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new LlmError('LLM_ERR_PROTOCOL', `${what}: not valid JSON (${(err as Error).message})`);
  }
  return parseWire(schema, json, what, 'LLM_ERR_PROTOCOL');
}

// ---------------------------------------------------------------------------------------------------------------
// error items (runtime/request-plane/ingress.ts says why they look like this)

/** The text of an error item: `LLM_ERR_*: message`. */
export function errorItemText(code: ErrorCode, message: string): string {
  return `${code}: ${message}`;
}

/** Reads an error item back: the code from a leading `LLM_ERR_*: ` (else LLM_ERR_INTERNAL) and the message. An
 * `error` object of our earlier form, `{code, message}`, is still understood. */
export function errorFromItem(annotated: Annotated): LlmError {
  const legacy = annotated.error;
  if (legacy !== undefined && typeof legacy === 'object') {
    const code = legacy.code;
    const message = typeof legacy.message === 'string' ? legacy.message : JSON.stringify(legacy);
    return new LlmError(isErrorCode(code) ? code : 'LLM_ERR_INTERNAL', message);
  }
  const text = typeof legacy === 'string' ? legacy : (annotated.comment ?? []).join(', ') || 'worker error';
  const m = /^(LLM_ERR_[A-Z0-9_]+): ([\s\S]*)$/.exec(text);
  if (m && isErrorCode(m[1])) return new LlmError(m[1], m[2]);
  return new LlmError('LLM_ERR_INTERNAL', text);
}
