// Exact JSON for 64-bit integers. JSON.parse turns 18446744073709551615 into a lossy double; Dynamo writes u64 fields
// (instance_id, bootstrap_room, ...) as bare number literals, so we read integer literals outside the safe range as
// bigint, and write bigints back as bare literals. Texts without a 16+ digit run take the plain JSON.parse path.
import { randomBytes } from 'node:crypto';

const LONG_DIGITS = /\d{16,}/;

/** JSON.parse, except that integer literals outside Number's safe range become bigint. */
export function parseJsonExact(text: string): unknown {
  if (!LONG_DIGITS.test(text)) return JSON.parse(text);
  const marker = `\u0001u64:${randomBytes(6).toString('hex')}:`;
  let out = '';
  let copiedUpTo = 0;
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      i++;
      while (i < n) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) i += 2;
        else if (d === 0x22) break;
        else i++;
      }
      i++;
      continue;
    }
    if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) {
      let j = i + 1;
      while (j < n && /[0-9.eE+-]/.test(text[j]!)) j++;
      const literal = text.slice(i, j);
      if (/^-?\d+$/.test(literal) && !Number.isSafeInteger(Number(literal))) {
        out += text.slice(copiedUpTo, i) + JSON.stringify(marker + literal);
        copiedUpTo = j;
      }
      i = j;
      continue;
    }
    i++;
  }
  if (copiedUpTo === 0) return JSON.parse(text);
  out += text.slice(copiedUpTo);
  return JSON.parse(out, (_key, value: unknown) =>
    typeof value === 'string' && value.startsWith(marker) ? BigInt(value.slice(marker.length)) : value,
  );
}

/** JSON.stringify that writes bigint values as bare integer literals (exact), not as an error. */
export function stringifyJsonExact(value: unknown, space?: number): string {
  let sawBigInt = false;
  const marker = `@u64:${randomBytes(6).toString('hex')}:`;
  const text = JSON.stringify(
    value,
    (_key, v: unknown) => {
      if (typeof v !== 'bigint') return v;
      sawBigInt = true;
      return marker + v.toString();
    },
    space,
  );
  if (!sawBigInt) return text;
  return text.replace(new RegExp(`"${marker}(-?\\d+)"`, 'g'), '$1');
}
