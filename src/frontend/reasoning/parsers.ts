// Reasoning parsers (`--dyn-reasoning-parser`): split a choice's text stream into the model's reasoning
// (`reasoning_content`) and its answer (`content`). Each is an incremental state machine over text pieces as the
// detokenizer hands them out: it returns at once whatever cannot be the start of a marker, holds back only a tail
// that could still become one, and finds markers split across pieces.
import { findMarker, heldBackLength } from '../text-markers.js';

export interface ReasoningDelta {
  reasoning: string;
  content: string;
}

export interface ReasoningParser {
  push(text: string): ReasoningDelta;
  /** The stream ended: whatever was held back goes out where it stood. */
  end(): ReasoningDelta;
}

/** A pair of tags around the reasoning ("<think>" ... "</think>"). `startsInReasoning`: the chat template already
 * opened the block (DeepSeek-R1 ends its prompt with "<think>\n"), so the output is reasoning until the end tag; an
 * opening tag the model writes anyway is dropped. */
class TaggedReasoningParser implements ReasoningParser {
  private buffer = '';
  private inReasoning: boolean;
  private atStart = true; // nothing but whitespace seen yet

  constructor(private readonly open: string, private readonly close: string, startsInReasoning: boolean) {
    this.inReasoning = startsInReasoning;
  }

  push(text: string): ReasoningDelta {
    this.buffer += text;
    return this.drain(false);
  }

  end(): ReasoningDelta {
    return this.drain(true);
  }

  private drain(final: boolean): ReasoningDelta {
    const out: ReasoningDelta = { reasoning: '', content: '' };
    const put = (s: string) => {
      if (s === '') return;
      if (this.inReasoning) out.reasoning += s;
      else out.content += s;
    };
    for (;;) {
      // in reasoning only the closing tag matters, except an opening tag at the very start (dropped)
      const markers = this.inReasoning ? (this.atStart ? [this.open, this.close] : [this.close]) : [this.open];
      const found = findMarker(this.buffer, markers);
      if (found === null) {
        const keep = final ? 0 : heldBackLength(this.buffer, markers);
        const free = this.buffer.slice(0, this.buffer.length - keep);
        // leading whitespace could still precede an opening tag to drop: hold it while at the start
        if (this.atStart && this.inReasoning && !final && free.trim() === '') return out;
        if (free.trim() !== '') this.atStart = false;
        put(free);
        this.buffer = this.buffer.slice(free.length);
        return out;
      }
      const before = this.buffer.slice(0, found.index);
      if (found.marker === this.open && this.inReasoning) {
        // an opening tag after only whitespace at the start: the template opened the block already
        if (before.trim() !== '') put(before);
      } else {
        put(before);
        this.inReasoning = found.marker === this.open;
      }
      this.atStart = false;
      this.buffer = this.buffer.slice(found.index + found.marker.length);
    }
  }
}

// gpt-oss "harmony" messages: <|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>
// ...<|return|>. The analysis channel is reasoning, every other channel content; headers and markers are dropped.
const HARMONY_MESSAGE = '<|message|>';
const HARMONY_HEADER_OPENERS = ['<|channel|>', '<|start|>', '<|end|>', '<|return|>', '<|call|>'];

class HarmonyReasoningParser implements ReasoningParser {
  private buffer = '';
  private inHeader = false;
  private header = '';
  private channel = 'final'; // text before any header is the answer of a model that writes no channels

  push(text: string): ReasoningDelta {
    this.buffer += text;
    return this.drain(false);
  }

  end(): ReasoningDelta {
    return this.drain(true);
  }

  private drain(final: boolean): ReasoningDelta {
    const out: ReasoningDelta = { reasoning: '', content: '' };
    for (;;) {
      if (this.inHeader) {
        const found = findMarker(this.buffer, [HARMONY_MESSAGE]);
        if (found === null) {
          // a header is a role and a channel name: it waits whole for its <|message|>
          if (final) this.buffer = '';
          return out;
        }
        this.header += this.buffer.slice(0, found.index);
        const channel = /<\|channel\|>\s*([A-Za-z0-9_]+)/.exec(this.header)?.[1];
        if (channel !== undefined) this.channel = channel;
        this.header = '';
        this.inHeader = false;
        this.buffer = this.buffer.slice(found.index + found.marker.length);
        continue;
      }
      const found = findMarker(this.buffer, HARMONY_HEADER_OPENERS);
      const upTo = found === null ? this.buffer.length - (final ? 0 : heldBackLength(this.buffer, HARMONY_HEADER_OPENERS)) : found.index;
      const body = this.buffer.slice(0, upTo);
      if (this.channel === 'analysis') out.reasoning += body;
      else out.content += body;
      if (found === null) {
        this.buffer = this.buffer.slice(upTo);
        return out;
      }
      this.inHeader = true;
      this.header = found.marker; // keeps "<|channel|>" for the channel name
      this.buffer = this.buffer.slice(found.index + found.marker.length);
    }
  }
}

interface ReasoningParserSpec {
  create(): ReasoningParser;
  /** Its markers' texts: where one is a special token, the text it reads keeps that token. */
  markers: readonly string[];
}

const think = (startsInReasoning: boolean): ReasoningParserSpec => ({
  create: () => new TaggedReasoningParser('<think>', '</think>', startsInReasoning),
  markers: ['<think>', '</think>'],
});

/** The parsers this frontend implements, by the names Dynamo uses (src/config/dynamo-parsers.ts lists them all). */
const REASONING_PARSERS: Readonly<Record<string, ReasoningParserSpec>> = {
  basic: think(false),
  qwen3: think(false),
  deepseek_r1: think(true),
  step3: think(true),
  nemotron_deci: think(false),
  nemotron_nano: think(false),
  kimi: { create: () => new TaggedReasoningParser('◁think▷', '◁/think▷', false), markers: ['◁think▷', '◁/think▷'] },
  mistral: { create: () => new TaggedReasoningParser('[THINK]', '[/THINK]', false), markers: ['[THINK]', '[/THINK]'] },
  gpt_oss: { create: () => new HarmonyReasoningParser(), markers: [HARMONY_MESSAGE, ...HARMONY_HEADER_OPENERS, '<|constrain|>'] },
};

/** The spec of a reasoning parser by name, or null for a name this frontend does not implement. */
export function reasoningParser(name: string): ReasoningParserSpec | null {
  return Object.hasOwn(REASONING_PARSERS, name) ? (REASONING_PARSERS[name] as ReasoningParserSpec) : null;
}

export const IMPLEMENTED_REASONING_PARSERS: readonly string[] = Object.keys(REASONING_PARSERS);
