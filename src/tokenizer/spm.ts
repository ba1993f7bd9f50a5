// The SentencePiece-style vocabulary stored in a GGUF file (tokenizer.ggml.model "llama": tokens, scores,
// token types). Encoding follows llama.cpp's SPM tokenizer: optional leading space, spaces as "▁", UTF-8
// characters as initial symbols, then repeatedly merge the adjacent pair whose joined text is the
// highest-scoring vocabulary entry (leftmost on ties); symbols left outside the vocabulary fall back to
// <0xXX> byte tokens. Control and user-defined tokens written literally in the text are matched first.

import { LlmError } from '../errors.js';
import { ggufArray, ggufString } from '../engine/gguf.js';
import type { GgufFile } from '../engine/gguf.js';
import { ChatTemplate } from './chat-template.js';
import type { ChatMessage, ChatTemplateOptions, DecodeOptions, EncodeOptions, Tokenizer } from './types.js';
import { tokensText } from './text.js';
import { chatContentSpans, overlapsLiteral, type LiteralSpan } from './literal.js';

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
export const enum SpmTokenType {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
}

const SPACE_MARK = '\u2581'; // ▁
const UNKNOWN_TEXT = '\u2585'; // what llama.cpp prints for an unknown token

interface Bigram {
  left: number;
  right: number;
  score: number;
  size: number; // byte length of the joined text: stale entries are recognised by a changed size
}

/** Max-heap on score, then on smaller left index (leftmost first on ties). */
class BigramQueue {
  private readonly items: Bigram[] = [];

  get size(): number {
    return this.items.length;
  }

  private before(a: Bigram, b: Bigram): boolean {
    return a.score > b.score || (a.score === b.score && a.left < b.left);
  }

  push(b: Bigram): void {
    const a = this.items;
    a.push(b);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.before(a[i] as Bigram, a[p] as Bigram)) break;
      [a[i], a[p]] = [a[p] as Bigram, a[i] as Bigram];
      i = p;
    }
  }

  pop(): Bigram {
    const a = this.items;
    const top = a[0] as Bigram;
    const last = a.pop() as Bigram;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && this.before(a[l] as Bigram, a[m] as Bigram)) m = l;
        if (r < a.length && this.before(a[r] as Bigram, a[m] as Bigram)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m] as Bigram, a[i] as Bigram];
        i = m;
      }
    }
    return top;
  }
}

export class SpmTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly specialTokenIds: ReadonlySet<number>;
  readonly hasChatTemplate: boolean;
  private readonly tokens: string[];
  private readonly scores: Float32Array;
  private readonly types: Uint8Array;
  private readonly idByText = new Map<string, number>();
  private readonly byteIds = new Int32Array(256).fill(-1);
  private readonly bytesCache: Uint8Array[];
  private readonly unkId: number | null;
  private readonly addBos: boolean;
  private readonly addEos: boolean;
  private readonly addSpacePrefix: boolean;
  /** Control/user-defined tokens matched literally in input text, by first character, longest first. */
  private readonly literalTokens = new Map<string, { text: string; id: number; control: boolean }[]>();
  private readonly chatTemplate: ChatTemplate | null;

  constructor(
    spec: {
      tokens: string[];
      scores: ArrayLike<number>;
      types: ArrayLike<number>;
      bosTokenId: number | null;
      eosTokenId: number | null;
      unkTokenId: number | null;
      addBos: boolean;
      addEos: boolean;
      addSpacePrefix: boolean;
      chatTemplate: string | null;
    },
    private readonly where: string,
  ) {
    const n = spec.tokens.length;
    if (spec.scores.length !== n || spec.types.length !== n) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where}: ${n} tokens but ${spec.scores.length} scores and ${spec.types.length} token types`);
    }
    for (const [key, id] of [['bos', spec.bosTokenId], ['eos', spec.eosTokenId], ['unknown', spec.unkTokenId]] as const) {
      if (id !== null && (id < 0 || id >= n)) throw new LlmError('LLM_ERR_TOKENIZER', `${where}: ${key} token id ${id} is outside the vocabulary of ${n}`);
    }
    this.vocabSize = n;
    this.tokens = spec.tokens;
    this.scores = Float32Array.from(spec.scores);
    this.types = Uint8Array.from(spec.types);
    this.bosTokenId = spec.bosTokenId;
    this.eosTokenIds = spec.eosTokenId === null ? [] : [spec.eosTokenId];
    this.unkId = spec.unkTokenId;
    this.addBos = spec.addBos;
    this.addEos = spec.addEos;
    this.addSpacePrefix = spec.addSpacePrefix;
    const special = new Set<number>();
    const literal: { text: string; id: number; control: boolean }[] = [];
    for (let id = 0; id < n; id++) {
      const text = spec.tokens[id] as string;
      const type = this.types[id];
      // First occurrence wins, as llama.cpp's token_to_id map does.
      if (!this.idByText.has(text)) this.idByText.set(text, id);
      if (type === SpmTokenType.Byte) {
        const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
        if (m === null) throw new LlmError('LLM_ERR_TOKENIZER', `${where}: byte token ${id} is ${JSON.stringify(text)}, not <0xXX>`);
        this.byteIds[parseInt(m[1] as string, 16)] = id;
      }
      if (type === SpmTokenType.Control) special.add(id);
      if ((type === SpmTokenType.Control || type === SpmTokenType.UserDefined) && text.length > 0) literal.push({ text, id, control: type === SpmTokenType.Control });
    }
    this.specialTokenIds = special;
    for (const t of literal.sort((a, b) => b.text.length - a.text.length)) {
      const first = t.text[0] as string;
      const list = this.literalTokens.get(first);
      if (list === undefined) this.literalTokens.set(first, [t]);
      else list.push(t);
    }
    this.bytesCache = new Array<Uint8Array>(n);
    const bosText = this.bosTokenId === null ? '' : (this.tokens[this.bosTokenId] as string);
    const eosText = spec.eosTokenId === null ? '' : (this.tokens[spec.eosTokenId] as string);
    this.chatTemplate = spec.chatTemplate === null ? null : new ChatTemplate(spec.chatTemplate, { bos_token: bosText, eos_token: eosText }, where);
    this.hasChatTemplate = this.chatTemplate !== null;
  }

  /** Builds the tokenizer from a GGUF file's tokenizer.ggml.* metadata. */
  static fromGguf(g: GgufFile): SpmTokenizer {
    const where = `GGUF file ${g.path}`;
    const model = ggufString(g, 'tokenizer.ggml.model');
    if (model !== 'llama') {
      throw new LlmError(
        'LLM_ERR_TOKENIZER',
        `${where}: tokenizer.ggml.model ${JSON.stringify(model ?? null)} is not supported (supported: llama SentencePiece); pass an HF tokenizer.json with --tokenizer-path`,
      );
    }
    const tokens = ggufArray(g, 'tokenizer.ggml.tokens');
    if (tokens === undefined || !tokens.every((t) => typeof t === 'string')) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where}: tokenizer.ggml.tokens is missing or not a list of strings`);
    }
    const scores = ggufArray(g, 'tokenizer.ggml.scores') ?? tokens.map(() => 0);
    const types = ggufArray(g, 'tokenizer.ggml.token_type') ?? tokens.map(() => SpmTokenType.Normal);
    if (!scores.every((s) => typeof s === 'number') || !types.every((s) => typeof s === 'number')) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where}: tokenizer.ggml.scores/token_type must be numeric lists`);
    }
    const id = (key: string): number | null => {
      const v = g.metadata.get(key);
      return typeof v === 'number' && v >= 0 && v < tokens.length ? v : null;
    };
    const flag = (key: string, fallback: boolean): boolean => {
      const v = g.metadata.get(key);
      return typeof v === 'boolean' ? v : fallback;
    };
    return new SpmTokenizer(
      {
        tokens: tokens as string[],
        scores: scores as number[],
        types: types as number[],
        bosTokenId: id('tokenizer.ggml.bos_token_id'),
        eosTokenId: id('tokenizer.ggml.eos_token_id'),
        unkTokenId: id('tokenizer.ggml.unknown_token_id'),
        addBos: flag('tokenizer.ggml.add_bos_token', true),
        addEos: flag('tokenizer.ggml.add_eos_token', false),
        addSpacePrefix: flag('tokenizer.ggml.add_space_prefix', true),
        chatTemplate: ggufString(g, 'tokenizer.chat_template') ?? null,
      },
      where,
    );
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.encodeSpans(text, options.addSpecialTokens ?? true, options.parseSpecialTokens === false ? [[0, text.length]] : []);
  }

  encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions): number[] {
    const rendered = this.applyChatTemplate(messages, options);
    return this.encodeSpans(rendered, false, chatContentSpans(rendered, messages, (t) => this.controlTextIn(t)));
  }

  /** The first control token's text found in `text`, or null. */
  private controlTextIn(text: string): string | null {
    for (let i = 0; i < text.length; i++) {
      const hit = this.literalTokens.get(text[i] as string)?.find((t) => t.control && text.startsWith(t.text, i));
      if (hit !== undefined) return hit.text;
    }
    return null;
  }

  /** Encodes text in which control tokens' text inside `literal` spans stays text (user-defined tokens, which
   * are vocabulary pieces rather than controls, still match there). */
  private encodeSpans(text: string, addSpecial: boolean, literal: readonly LiteralSpan[]): number[] {
    const out: number[] = [];
    if (addSpecial && this.addBos && this.bosTokenId !== null) out.push(this.bosTokenId);
    let prevSpecial = true; // the first raw fragment gets the space prefix, as does one right after a special token
    for (const frag of this.splitLiterals(text, literal)) {
      if (typeof frag === 'number') {
        out.push(frag);
        prevSpecial = true;
      } else {
        this.encodeRaw(this.addSpacePrefix && prevSpecial ? ' ' + frag : frag, out);
        prevSpecial = false;
      }
    }
    if (addSpecial && this.addEos && this.eosTokenIds[0] !== undefined) out.push(this.eosTokenIds[0]);
    return out;
  }

  /** Splits text into raw fragments and ids of control/user-defined tokens written literally. */
  private splitLiterals(text: string, literal: readonly LiteralSpan[]): (string | number)[] {
    const out: (string | number)[] = [];
    let start = 0;
    let i = 0;
    while (i < text.length) {
      const hit = this.literalTokens
        .get(text[i] as string)
        ?.find((t) => text.startsWith(t.text, i) && !(t.control && overlapsLiteral(literal, i, i + t.text.length)));
      if (hit === undefined) {
        i++;
        continue;
      }
      if (i > start) out.push(text.slice(start, i));
      out.push(hit.id);
      i += hit.text.length;
      start = i;
    }
    if (start < text.length) out.push(text.slice(start));
    return out;
  }

  private encodeRaw(raw: string, out: number[]): void {
    const text = raw.replaceAll(' ', SPACE_MARK);
    // Symbols are UTF-8 characters (code points), kept as a doubly linked list over `text`.
    const chars = Array.from(text);
    const n = chars.length;
    if (n === 0) return;
    const start = new Int32Array(n);
    const len = new Int32Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    let pos = 0;
    for (let i = 0; i < n; i++) {
      start[i] = pos;
      len[i] = (chars[i] as string).length;
      pos += len[i] as number;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const queue = new BigramQueue();
    const tryAdd = (left: number, right: number): void => {
      if (left < 0 || right < 0) return;
      const joined = text.slice(start[left], (start[right] as number) + (len[right] as number));
      const id = this.idByText.get(joined);
      if (id === undefined) return;
      queue.push({ left, right, score: this.scores[id] as number, size: joined.length });
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    while (queue.size > 0) {
      const b = queue.pop();
      const l = b.left;
      const r = b.right;
      // Skip entries made stale by an earlier merge of either side.
      if (len[l] === 0 || len[r] === 0 || (len[l] as number) + (len[r] as number) !== b.size) continue;
      len[l] = (len[l] as number) + (len[r] as number);
      len[r] = 0;
      next[l] = next[r] as number;
      if (next[r] !== -1) prev[next[r] as number] = l;
      tryAdd(prev[l] as number, l);
      tryAdd(l, next[l] as number);
    }
    for (let i = 0; i !== -1; i = next[i] as number) {
      const piece = text.slice(start[i], (start[i] as number) + (len[i] as number));
      const id = this.idByText.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      for (const byte of Buffer.from(piece, 'utf8')) {
        const byteId = this.byteIds[byte] as number;
        if (byteId >= 0) out.push(byteId);
        else if (this.unkId !== null) out.push(this.unkId);
        else throw new LlmError('LLM_ERR_TOKENIZER', `${this.where}: no token for byte 0x${byte.toString(16)} and no unknown token`);
      }
    }
  }

  tokenText(id: number): string {
    const t = this.tokens[id];
    if (t === undefined) throw new LlmError('LLM_ERR_TOKENIZER', `token id ${id} is outside the vocabulary (size ${this.vocabSize})`);
    return t;
  }

  tokenBytes(id: number): Uint8Array {
    const cached = this.bytesCache[id];
    if (cached !== undefined) return cached;
    const text = this.tokenText(id);
    let bytes: Uint8Array;
    switch (this.types[id]) {
      case SpmTokenType.Byte:
        bytes = Uint8Array.of(parseInt(text.slice(3, 5), 16));
        break;
      case SpmTokenType.Unused:
        bytes = new Uint8Array(0);
        break;
      case SpmTokenType.Unknown:
        bytes = Buffer.from(UNKNOWN_TEXT, 'utf8');
        break;
      case SpmTokenType.Control: // shown only when special tokens are not skipped
      case SpmTokenType.UserDefined:
        bytes = Buffer.from(text, 'utf8');
        break;
      default:
        bytes = Buffer.from(text.replaceAll(SPACE_MARK, ' '), 'utf8');
    }
    this.bytesCache[id] = bytes;
    return bytes;
  }

  /** Decodes a whole sequence; like SentencePiece, the space added in front of the text is removed again. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const text = tokensText(this, ids, options.skipSpecialTokens ?? true);
    return this.addSpacePrefix && text.startsWith(' ') ? text.slice(1) : text;
  }

  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string {
    if (this.chatTemplate === null) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${this.where} has no chat template (tokenizer.chat_template); use a plain prompt`);
    }
    return this.chatTemplate.render(messages, options);
  }
}
