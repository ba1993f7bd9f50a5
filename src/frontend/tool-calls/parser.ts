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
  type ParameterTypes,
  type ParsedToolCall,
} from './formats.js';

export type { ParsedToolCall, ParameterTypes } from './formats.js';

export interface ToolCallDelta {
  content: string;
  calls: ParsedToolCall[];
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
  /** Its markers are special tokens: the text it reads must keep them. */
  needsSpecialTokens: boolean;
}

class SectionToolCallParser implements ToolCallParser {
  private buffer = '';
  private section: { opener: string; body: string } | null = null;
  private atStart: boolean;

  constructor(private readonly format: SectionFormat, private readonly types: ParameterTypes) {
    this.atStart = format.leading !== null;
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
        const close = this.format.close;
        const found = close === null ? null : findMarker(this.buffer, [close]);
        if (found === null && !final) {
          // the section waits whole for its close (kept out of the buffer so the scan stays linear)
          const keep = close === null ? 0 : heldBackLength(this.buffer, [close]);
          this.section.body += this.buffer.slice(0, this.buffer.length - keep);
          this.buffer = this.buffer.slice(this.buffer.length - keep);
          return out;
        }
        const end = found === null ? this.buffer.length : found.index;
        const body = this.section.body + this.buffer.slice(0, end);
        const calls = this.format.parse(body, this.types);
        if (calls !== null) out.calls.push(...calls);
        else out.content += this.section.opener + body + (found === null ? '' : found.marker);
        this.buffer = this.buffer.slice(found === null ? end : end + found.marker.length);
        this.section = null;
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
          this.section = { opener: '', body: '' };
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
      this.section = { opener: found.marker, body: '' };
    }
  }
}

const TOOL_CALL_FORMATS: Readonly<Record<string, SectionFormat>> = {
  // <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen 2.5 / Qwen3, Hermes)
  hermes: { open: ['<tool_call>'], close: '</tool_call>', leading: null, parse: parseJsonSection, needsSpecialTokens: false },
  // <tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>
  qwen3_coder: { open: ['<tool_call>'], close: '</tool_call>', leading: null, parse: parseQwen3CoderSection, needsSpecialTokens: false },
  // <|python_tag|>{"name": ..., "parameters": {...}}, or the JSON bare at the start of the output
  llama3_json: { open: ['<|python_tag|>'], close: null, leading: '{', parse: parseLlama3Section, needsSpecialTokens: true },
  // [TOOL_CALLS][{"name": ..., "arguments": {...}}] or [TOOL_CALLS]name[ARGS]{...}
  mistral: { open: ['[TOOL_CALLS]'], close: null, leading: null, parse: parseMistralSection, needsSpecialTokens: true },
  // [get_weather(city="Paris")] as the whole output
  pythonic: { open: [], close: null, leading: '[', parse: parsePythonicSection, needsSpecialTokens: false },
  // <TOOLCALL>[{"name": ..., "arguments": {...}}]</TOOLCALL>
  nemotron_deci: { open: ['<TOOLCALL>'], close: '</TOOLCALL>', leading: null, parse: parseJsonSection, needsSpecialTokens: false },
  // <tool_calls>[{"name": ..., "arguments": {...}}]</tool_calls>
  jamba: { open: ['<tool_calls>'], close: '</tool_calls>', leading: null, parse: parseJsonSection, needsSpecialTokens: false },
};

export interface ToolCallParserSpec {
  create(types: ParameterTypes): ToolCallParser;
  needsSpecialTokens: boolean;
}

/** The spec of a tool-call parser by name, or null for a name this frontend does not implement. */
export function toolCallParser(name: string): ToolCallParserSpec | null {
  if (!Object.hasOwn(TOOL_CALL_FORMATS, name)) return null;
  const format = TOOL_CALL_FORMATS[name] as SectionFormat;
  return { create: (types) => new SectionToolCallParser(format, types), needsSpecialTokens: format.needsSpecialTokens };
}

export const IMPLEMENTED_TOOL_CALL_PARSERS: readonly string[] = Object.keys(TOOL_CALL_FORMATS);
