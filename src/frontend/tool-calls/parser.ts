// Tool-call parsers (`--dyn-tool-call-parser`): find the calls a model writes in its text stream and hand them out
// as calls, the rest as content. An incremental state machine over text pieces: text that cannot be the start of a
// call marker goes out at once, a tail that could still become one is held back, and a marker split across pieces
// is still found. A call's section is held whole until it closes (its arguments parse only then); a section that
// does not read as calls goes out as the text it was.
import { findMarker, heldBackLength } from '../text-markers.js';
import {
  parseJsonSection,
  parseLlama3Section,
  parseMistralSection,
  parsePythonicSection,
  parseQwen3CoderSection,
  qwen3CoderParameters,
  type ParameterTypes,
  type ParsedToolCall,
} from './formats.js';

export type { ParsedToolCall, ParameterTypes } from './formats.js';

/** A piece of the calls so far: the first piece of call `index` names its function; later ones add to its
 * arguments (JSON text, in order). A call read whole comes as one piece. */
export interface ToolCallPiece {
  index: number;
  name?: string;
  arguments: string;
}

export interface ToolCallDelta {
  content: string;
  calls: ToolCallPiece[];
}

export interface ToolCallParser {
  push(text: string): ToolCallDelta;
  /** The stream ended: an unclosed section is read as it stands, held-back text goes out. */
  end(): ToolCallDelta;
}

interface SectionFormat {
  /** Markers that open a section; the section runs to `close` (or to the end of the stream when null). */
  open: readonly string[];
  close: string | null;
  /** A section also opens when the output's first non-blank character is this (formats written bare at the start). */
  leading: string | null;
  /** Reads one section's text (without its markers). */
  parse(body: string, types: ParameterTypes): ParsedToolCall[] | null;
  /** For formats whose calls can go out before their section closes: how to read one so far. */
  streamer: ((types: ParameterTypes) => ArgumentStreamer) | null;
  /** Its markers' texts: where one is a special token, the text it reads keeps that token. */
  markers: readonly string[];
}

/** Reads one call from its section's text so far. What `progress` says must only grow: each answer's arguments are a
 * prefix of the next one's and of `finish`'s. */
interface ArgumentStreamer {
  /** The call's name once its head is complete, and the arguments that are certain so far (JSON text, unfinished). */
  progress(body: string): { name: string; arguments: string } | null;
  /** The whole arguments, once the section closed (after `progress` named the call). */
  finish(body: string): string;
}

// {"name": "NAME", "arguments": (up to the object that is the value): a call whose arguments can stream
const JSON_CALL_HEAD = /^\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)/;

/** One {"name": ..., "arguments": {...}} object: the arguments are the model's own text after the head, holding back
 * a tail of "}" and blanks (the object's own closing brace is among them, and which one shows only at the close).
 * A body that does not parse in the end still ends the call: what went out cannot be taken back. */
const jsonObjectStreamer: ArgumentStreamer = {
  progress(body) {
    const head = JSON_CALL_HEAD.exec(body);
    if (head === null) return null;
    const args = body.slice(head[0].length);
    return { name: JSON.parse(`"${head[1] as string}"`) as string, arguments: args.slice(0, args.length - (/[\s}]*$/.exec(args)?.[0].length ?? 0)) };
  },
  finish(body) {
    const head = JSON_CALL_HEAD.exec(body) as RegExpExecArray;
    return body.slice(head[0].length).trimEnd().replace(/\}$/, '').trimEnd();
  },
};

/** Qwen3-Coder XML: the name at <function=NAME>, then each parameter as its </parameter> closes. */
const qwen3CoderStreamer = (types: ParameterTypes): ArgumentStreamer => {
  const read = (body: string) => {
    const head = /^\s*<function=([^>\s]+)>/.exec(body);
    if (head === null) return null;
    const name = head[1] as string;
    const fields = qwen3CoderParameters(body.slice(head[0].length).split('</function>')[0] as string, types.get(name)).map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`);
    return { name, arguments: `{${fields.join(', ')}` };
  };
  return {
    progress: read,
    finish: (body) => `${(read(body) as { arguments: string }).arguments}}`,
  };
};

interface OpenSection {
  opener: string;
  body: string;
  /** The call going out as it comes: its index, how much of its arguments went out. */
  streaming: { index: number; sent: number } | null;
}

class SectionToolCallParser implements ToolCallParser {
  private buffer = '';
  private section: OpenSection | null = null;
  private atStart: boolean;
  private calls = 0;
  private readonly streamer: ArgumentStreamer | null;

  constructor(private readonly format: SectionFormat, private readonly types: ParameterTypes) {
    this.atStart = format.leading !== null;
    this.streamer = format.streamer?.(types) ?? null;
  }

  push(text: string): ToolCallDelta {
    this.buffer += text;
    return this.drain(false);
  }

  end(): ToolCallDelta {
    return this.drain(true);
  }

  private drain(final: boolean): ToolCallDelta {
    const out: ToolCallDelta = { content: '', calls: [] };
    for (;;) {
      if (this.section !== null) {
        const section = this.section;
        const close = this.format.close;
        const found = close === null ? null : findMarker(this.buffer, [close]);
        if (found === null && !final) {
          // the section waits for its close (kept out of the buffer so the scan stays linear)
          const keep = close === null ? 0 : heldBackLength(this.buffer, [close]);
          section.body += this.buffer.slice(0, this.buffer.length - keep);
          this.buffer = this.buffer.slice(this.buffer.length - keep);
          this.streamArguments(section, out);
          return out;
        }
        const end = found === null ? this.buffer.length : found.index;
        section.body += this.buffer.slice(0, end);
        this.buffer = this.buffer.slice(found === null ? end : end + found.marker.length);
        this.section = null;
        this.closeSection(section, found?.marker ?? '', out);
        if (found === null) return out;
        continue;
      }
      if (this.atStart) {
        const first = this.buffer.search(/\S/);
        if (first === -1) {
          if (!final) return out; // blank so far: the bare call could still follow
        } else if (this.buffer[first] === this.format.leading) {
          this.atStart = false;
          out.content += this.buffer.slice(0, first);
          this.buffer = this.buffer.slice(first);
          this.section = { opener: '', body: '', streaming: null };
          continue;
        }
        this.atStart = false;
      }
      const found = findMarker(this.buffer, this.format.open);
      if (found === null) {
        const keep = final ? 0 : heldBackLength(this.buffer, this.format.open);
        out.content += this.buffer.slice(0, this.buffer.length - keep);
        this.buffer = this.buffer.slice(this.buffer.length - keep);
        return out;
      }
      out.content += this.buffer.slice(0, found.index);
      this.buffer = this.buffer.slice(found.index + found.marker.length);
      this.section = { opener: found.marker, body: '', streaming: null };
    }
  }

  /** Hands out a call as soon as its format's streamer names it, then more of its arguments as they become certain. */
  private streamArguments(section: OpenSection, out: ToolCallDelta): void {
    if (this.streamer === null) return;
    const now = this.streamer.progress(section.body);
    if (now === null) return;
    if (section.streaming === null) {
      section.streaming = { index: this.calls++, sent: now.arguments.length };
      out.calls.push({ index: section.streaming.index, name: now.name, arguments: now.arguments });
    } else if (now.arguments.length > section.streaming.sent) {
      out.calls.push({ index: section.streaming.index, arguments: now.arguments.slice(section.streaming.sent) });
      section.streaming.sent = now.arguments.length;
    }
  }

  private closeSection(section: OpenSection, closer: string, out: ToolCallDelta): void {
    if (section.streaming !== null && this.streamer !== null) {
      // the call went out already: the rest of its arguments
      const args = this.streamer.finish(section.body);
      if (args.length > section.streaming.sent) out.calls.push({ index: section.streaming.index, arguments: args.slice(section.streaming.sent) });
      return;
    }
    const calls = this.format.parse(section.body, this.types);
    if (calls === null) {
      out.content += section.opener + section.body + closer;
      return;
    }
    for (const call of calls) out.calls.push({ index: this.calls++, name: call.name, arguments: call.arguments });
  }
}

const TOOL_CALL_FORMATS: Readonly<Record<string, SectionFormat>> = {
  // <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen 2.5 / Qwen3, Hermes)
  hermes: { open: ['<tool_call>'], close: '</tool_call>', leading: null, parse: parseJsonSection, streamer: () => jsonObjectStreamer, markers: ['<tool_call>', '</tool_call>'] },
  // <tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>
  qwen3_coder: { open: ['<tool_call>'], close: '</tool_call>', leading: null, parse: parseQwen3CoderSection, streamer: qwen3CoderStreamer, markers: ['<tool_call>', '</tool_call>'] },
  // <|python_tag|>{"name": ..., "parameters": {...}}, or the JSON bare at the start of the output
  llama3_json: { open: ['<|python_tag|>'], close: null, leading: '{', parse: parseLlama3Section, streamer: null, markers: ['<|python_tag|>'] },
  // [TOOL_CALLS][{"name": ..., "arguments": {...}}] or [TOOL_CALLS]name[ARGS]{...}
  mistral: { open: ['[TOOL_CALLS]'], close: null, leading: null, parse: parseMistralSection, streamer: null, markers: ['[TOOL_CALLS]', '[ARGS]'] },
  // [get_weather(city="Paris")] as the whole output
  pythonic: { open: [], close: null, leading: '[', parse: parsePythonicSection, streamer: null, markers: [] },
  // <TOOLCALL>[{"name": ..., "arguments": {...}}]</TOOLCALL>
  nemotron_deci: { open: ['<TOOLCALL>'], close: '</TOOLCALL>', leading: null, parse: parseJsonSection, streamer: null, markers: ['<TOOLCALL>', '</TOOLCALL>'] },
  // <tool_calls>[{"name": ..., "arguments": {...}}]</tool_calls>
  jamba: { open: ['<tool_calls>'], close: '</tool_calls>', leading: null, parse: parseJsonSection, streamer: null, markers: ['<tool_calls>', '</tool_calls>'] },
};

export interface ToolCallParserSpec {
  create(types: ParameterTypes): ToolCallParser;
  markers: readonly string[];
}

/** The spec of a tool-call parser by name, or null for a name this frontend does not implement. */
export function toolCallParser(name: string): ToolCallParserSpec | null {
  if (!Object.hasOwn(TOOL_CALL_FORMATS, name)) return null;
  const format = TOOL_CALL_FORMATS[name] as SectionFormat;
  return { create: (types) => new SectionToolCallParser(format, types), markers: format.markers };
}

export const IMPLEMENTED_TOOL_CALL_PARSERS: readonly string[] = Object.keys(TOOL_CALL_FORMATS);
