// Building blocks shared by every wire schema: fixed-width integers, nullable/optional helpers.
//
// 64-bit values (instance ids, lease ids, block hashes, bootstrap rooms, event sequence numbers) are `bigint` in
// memory. On the wire they are plain integers: JSON number literals written and read exactly by json.ts, and msgpack
// uint64 (or any smaller int format) read with `useBigInt64`. The schemas accept a JSON/msgpack number or a bigint
// and decode to bigint, so a value above 2^53 never passes through a lossy double.
import { Type, type TSchema, type TUnion, type TInteger, type TBigInt, type TTransform } from '@sinclair/typebox';

export const U32_MAX = 0xffff_ffff;
export const U64_MAX = (1n << 64n) - 1n;

export type TU64 = TTransform<TUnion<[TInteger, TBigInt]>, bigint>;

/** Unsigned 64-bit integer: number or bigint on input, bigint after decoding. `format: "uint64"` marks it for the
 * JSON Schema generator, which writes it as `{type: "integer", minimum: 0, format: "uint64"}`. */
export function U64(options: { description?: string } = {}): TU64 {
  return Type.Transform(
    Type.Union([Type.Integer({ minimum: 0 }), Type.BigInt({ minimum: 0n, maximum: U64_MAX })], {
      format: 'uint64',
      ...options,
    }),
  )
    .Decode((v) => (typeof v === 'bigint' ? v : BigInt(v)))
    .Encode((v) => v);
}

export const U32 = (options: { description?: string } = {}) =>
  Type.Integer({ minimum: 0, maximum: U32_MAX, ...options });
export const U16 = (options: { description?: string } = {}) => Type.Integer({ minimum: 0, maximum: 0xffff, ...options });
export const I32 = (options: { description?: string } = {}) =>
  Type.Integer({ minimum: -0x8000_0000, maximum: 0x7fff_ffff, ...options });

/** A sampling seed: the engine's PRNG takes non-negative integers that a JSON number holds exactly. */
export const Seed = () => Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });

/** `T | null`. */
export const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()]);

/** A Rust `Option<T>` field as clients send it: absent, `null`, or a T. */
export const Opt = <T extends TSchema>(schema: T) => Type.Optional(Nullable(schema));

/** A JSON object whose keys we do not constrain (e.g. `extra_args`, `user_data`). */
export const JsonObject = (options: { description?: string } = {}) =>
  Type.Record(Type.String(), Type.Unknown(), options);
