// One choice's output as the client gets it: the text stream (detokenized, stop strings applied), then the model's
// reasoning split off (`--dyn-reasoning-parser`), then its tool calls parsed out of the answer
// (`--dyn-tool-call-parser`). Which parsers run for a request: the reasoning parser whenever the model has one;
// the tool-call parser only when the request lists tools and its tool_choice is not "none".
import { randomUUID } from 'node:crypto';
import type { ChatMessage, Tokenizer } from '../tokenizer/index.js';
import { IMPLEMENTED_REASONING_PARSERS, reasoningParser, type ReasoningParser } from './reasoning/parsers.js';
import { IMPLEMENTED_TOOL_CALL_PARSERS, toolCallParser, type ParameterTypes, type ToolCallParser, type ToolCallPiece } from './tool-calls/parser.js';
import { TextStream } from './text-stream.js';

export interface ToolDefinition {
  type: string;
  function: { name: string; parameters?: Record<string, unknown> | null | undefined };
}

/** A tool call as the OpenAI chat API writes it in `message.tool_calls`. */
export interface ToolCallOut {
  index: number;
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** A piece of a streamed tool call (`delta.tool_calls[i]`): the first of a call has its id, type and name, later ones
 * only more of its arguments. */
export interface ToolCallDeltaOut {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface ChoiceOutputDelta {
  content: string;
  reasoning: string;
  toolCalls: ToolCallDeltaOut[];
  stopped: string | null;
}

export interface ChoiceParsers {
  reasoning: { create(): ReasoningParser; markers: readonly string[] } | null;
  toolCalls: { create(types: ParameterTypes): ToolCallParser; markers: readonly string[]; types: ParameterTypes } | null;
}

export const NO_PARSERS: ChoiceParsers = { reasoning: null, toolCalls: null };

/** The parsers one chat request runs, from the model's parser names (unknown names were reported when the model was
 * registered, and parse nothing) and the request's tools. */
export function chatParsers(
  model: { toolCallParser?: string | null; reasoningParser?: string | null },
  tools: readonly ToolDefinition[] | undefined,
  toolChoice: unknown,
): ChoiceParsers {
  const reasoning = model.reasoningParser ? reasoningParser(model.reasoningParser) : null;
  const toolSpec = model.toolCallParser && tools !== undefined && tools.length > 0 && toolChoice !== 'none' ? toolCallParser(model.toolCallParser) : null;
  return { reasoning, toolCalls: toolSpec === null ? null : { ...toolSpec, types: parameterTypes(tools ?? []) } };
}

/** What a model's parser names leave undone here: Dynamo knows more names than this frontend implements; a model
 * with one of those is served, and its reasoning or tool calls stay in the content. */
export function unimplementedParsers(model: { toolCallParser?: string | null; reasoningParser?: string | null }): string[] {
  const lines: string[] = [];
  if (model.toolCallParser && toolCallParser(model.toolCallParser) === null) {
    lines.push(`tool-call parser "${model.toolCallParser}" is not implemented by this frontend (it has ${IMPLEMENTED_TOOL_CALL_PARSERS.join(', ')}); tool calls stay in the content`);
  }
  if (model.reasoningParser && reasoningParser(model.reasoningParser) === null) {
    lines.push(`reasoning parser "${model.reasoningParser}" is not implemented by this frontend (it has ${IMPLEMENTED_REASONING_PARSERS.join(', ')}); reasoning stays in the content`);
  }
  return lines;
}

const specialTextsOf = new WeakMap<Tokenizer, string[]>();

/** The first special token's text in an earlier turn's tool calls (names or arguments), with the message's index.
 * The chat template writes those calls itself, so unlike message contents they cannot be kept as plain text: a
 * "<|im_end|>" there would become the control token. */
export function specialTextInToolCalls(messages: readonly ChatMessage[], tokenizer: Tokenizer): { index: number; text: string } | null {
  let specials = specialTextsOf.get(tokenizer);
  if (specials === undefined) {
    specials = [...tokenizer.specialTokenIds].filter((id) => id < tokenizer.vocabSize).map((id) => tokenizer.tokenText(id)).filter((t) => t !== '');
    specialTextsOf.set(tokenizer, specials);
  }
  for (const [index, m] of messages.entries()) {
    for (const call of m.tool_calls ?? []) {
      for (const text of [call.function.name, call.function.arguments, call.id]) {
        const hit = specials.find((s) => text.includes(s));
        if (hit !== undefined) return { index, text: hit };
      }
    }
  }
  return null;
}

const markerIdsOf = new WeakMap<Tokenizer, Map<string, number>>();

/** The special tokens whose text is one of these markers. */
function markerTokenIds(tokenizer: Tokenizer, markers: readonly string[]): ReadonlySet<number> {
  if (markers.length === 0) return new Set();
  let byText = markerIdsOf.get(tokenizer);
  if (byText === undefined) {
    byText = new Map([...tokenizer.specialTokenIds].filter((id) => id < tokenizer.vocabSize).map((id) => [tokenizer.tokenText(id), id]));
    markerIdsOf.set(tokenizer, byText);
  }
  const ids = new Set<number>();
  for (const m of markers) {
    const id = byText.get(m);
    if (id !== undefined) ids.add(id);
  }
  return ids;
}

/** Each function's declared parameter types (for formats that write values as bare text). */
function parameterTypes(tools: readonly ToolDefinition[]): ParameterTypes {
  const out = new Map<string, Map<string, string>>();
  for (const tool of tools) {
    const props = tool.function.parameters?.['properties'];
    const types = new Map<string, string>();
    if (typeof props === 'object' && props !== null) {
      for (const [name, schema] of Object.entries(props as Record<string, unknown>)) {
        const type = typeof schema === 'object' && schema !== null ? (schema as Record<string, unknown>)['type'] : undefined;
        if (typeof type === 'string') types.set(name, type);
      }
    }
    out.set(tool.function.name, types);
  }
  return out;
}

export class ChoiceOutput {
  private readonly text: TextStream;
  /** Which tokens read as text here (logprobs' token strings follow the same rule, so they join to the text). */
  readonly detokenizerOptions: { skipSpecialTokens: boolean; keepTokenIds: ReadonlySet<number> };
  private readonly reasoning: ReasoningParser | null;
  private readonly tools: ToolCallParser | null;
  private readonly calls: ToolCallOut[] = [];

  constructor(
    tokenizer: Tokenizer,
    options: { stop: readonly string[]; includeStopStr: boolean; skipSpecialTokens: boolean },
    parsers: ChoiceParsers,
  ) {
    // a parser whose markers are special tokens (gpt-oss channels, Mistral's [TOOL_CALLS]) reads the text with those
    // tokens, and drops them itself; other special tokens (EOS) stay out as asked
    this.detokenizerOptions = {
      skipSpecialTokens: options.skipSpecialTokens,
      keepTokenIds: markerTokenIds(tokenizer, [...(parsers.reasoning?.markers ?? []), ...(parsers.toolCalls?.markers ?? [])]),
    };
    this.text = new TextStream(tokenizer, { ...options, ...this.detokenizerOptions });
    this.reasoning = parsers.reasoning?.create() ?? null;
    this.tools = parsers.toolCalls?.create(parsers.toolCalls.types) ?? null;
  }

  /** Whether a reasoning parser runs (the response then carries `reasoning_content`). */
  get parsesReasoning(): boolean {
    return this.reasoning !== null;
  }

  /** The tool calls so far, whole. */
  get toolCalls(): readonly ToolCallOut[] {
    return this.calls;
  }

  push(ids: readonly number[]): ChoiceOutputDelta {
    const delta = this.text.push(ids);
    // a stop string ends the text: the parsers end with it
    return this.parse(delta.text, delta.stopped !== null || this.text.finished, delta.stopped);
  }

  end(): ChoiceOutputDelta {
    return this.parse(this.text.end().text, true, null);
  }

  private parse(text: string, final: boolean, stopped: string | null): ChoiceOutputDelta {
    const out: ChoiceOutputDelta = { content: '', reasoning: '', toolCalls: [], stopped };
    let answer = text;
    if (this.reasoning !== null) {
      const r = this.reasoning.push(text);
      const tail = final ? this.reasoning.end() : { reasoning: '', content: '' };
      out.reasoning = r.reasoning + tail.reasoning;
      answer = r.content + tail.content;
    }
    if (this.tools === null) {
      out.content = answer;
      return out;
    }
    const t = this.tools.push(answer);
    const tail = final ? this.tools.end() : { content: '', calls: [] };
    out.content = t.content + tail.content;
    out.toolCalls = [...t.calls, ...tail.calls].map((piece) => this.toolCallPiece(piece));
    return out;
  }

  private toolCallPiece(piece: ToolCallPiece): ToolCallDeltaOut {
    if (piece.name !== undefined) {
      const call: ToolCallOut = { index: piece.index, id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}`, type: 'function', function: { name: piece.name, arguments: piece.arguments } };
      this.calls[piece.index] = call;
      return { index: call.index, id: call.id, type: 'function', function: { name: piece.name, arguments: piece.arguments } };
    }
    const call = this.calls[piece.index] as ToolCallOut;
    call.function.arguments += piece.arguments;
    return { index: piece.index, function: { arguments: piece.arguments } };
  }
}
