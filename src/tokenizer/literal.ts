// User text is literal: a special token's text typed by a user ("x</s>y") stays text, never the control token.
// Only the chat template writes control tokens. A chat prompt is the template's rendering of the messages; the
// spans of it that are message contents are encoded as literal text, the rest (the template's markers) as usual.
import { LlmError } from '../errors.js';
import type { ChatMessage } from './types.js';

/** [start, end) of a piece of text that is literal (no special tokens). */
export type LiteralSpan = readonly [number, number];

/** Whether [start, end) overlaps one of the spans. */
export function overlapsLiteral(spans: readonly LiteralSpan[], start: number, end: number): boolean {
  for (const [s, e] of spans) if (start < e && s < end) return true;
  return false;
}

/** Where each message's content sits in the rendered chat prompt, found in order (templates write the messages
 * in order; one that moves a message, e.g. a system prompt, is searched for from the start). A content the template
 * changed (trimmed, split) is searched for trimmed; one still not found is refused if it holds a special token's
 * text, since it could not be kept literal, and otherwise needs no span. */
export function chatContentSpans(
  rendered: string,
  messages: readonly ChatMessage[],
  specialIn: (text: string) => string | null,
): LiteralSpan[] {
  const spans: LiteralSpan[] = [];
  let from = 0;
  messages.forEach((m, i) => {
    if (m.content === '') return;
    for (const text of [m.content, m.content.trim()]) {
      if (text === '') continue;
      let at = rendered.indexOf(text, from);
      if (at === -1) at = rendered.indexOf(text);
      if (at !== -1) {
        spans.push([at, at + text.length]);
        from = Math.max(from, at + text.length);
        return;
      }
    }
    const special = specialIn(m.content);
    if (special !== null) {
      throw new LlmError('LLM_ERR_BAD_REQUEST', `messages[${i}].content holds the special token text "${special}" and the chat template rewrites the message, so it cannot be kept as plain text`);
    }
  });
  return spans;
}
