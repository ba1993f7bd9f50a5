// HF tokenizer.json (+ tokenizer_config.json) through @lenml/tokenizers (a port of transformers.js's tokenizers)
// for encoding. Decoding goes through token bytes — byte-level BPE (GPT-2 byte↔unicode table) or
// SentencePiece-style (▁ and <0xXX> byte fallback) — so whole-sequence and incremental decoding agree.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TokenizerLoader } from '@lenml/tokenizers';
import { LlmError } from '../errors.js';
import { ggufArray, ggufString } from '../engine/gguf.js';
import type { GgufFile } from '../engine/gguf.js';
import { ChatTemplate } from './chat-template.js';
import type { ChatMessage, ChatTemplateOptions, DecodeOptions, EncodeOptions, Tokenizer } from './types.js';
import { tokensText } from './text.js';
import { chatContentSpans, overlapsLiteral, type LiteralSpan } from './literal.js';

type Json = Record<string, unknown>;
type LoadedTokenizer = ReturnType<typeof TokenizerLoader.fromPreTrained>;

/** The library's added-token matching, which runs before pre-tokenizing: swapped for one without the special
 * tokens while user text is encoded (the library has no split_special_tokens option). */
interface AddedTokenMatching {
  added_tokens_splitter: { split(text: string): string[] };
  added_tokens_map: Map<string, unknown>;
}

/** GPT-2's byte → printable unicode table, inverted: char code → byte. */
function byteLevelDecoderTable(): Map<number, number> {
  const printable: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) printable.push(b);
  for (let b = 0xa1; b <= 0xac; b++) printable.push(b);
  for (let b = 0xae; b <= 0xff; b++) printable.push(b);
  const table = new Map<number, number>();
  for (const b of printable) table.set(b, b);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    if (!printable.includes(b)) table.set(256 + extra++, b);
  }
  return table;
}

// Pre-tokenizer split patterns of the GGUF `tokenizer.ggml.pre` names we support (as in the HF tokenizer.json
// files of those model families).
const GGUF_PRE_TOKENIZER_REGEX: Readonly<Record<string, string>> = {
  qwen2: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  'llama-bpe': "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
};

type DecodeStyle = 'byte-level' | 'sentencepiece' | 'plain';

function decoderTypes(decoder: unknown): string[] {
  if (decoder === null || typeof decoder !== 'object') return [];
  const d = decoder as Json;
  const inner = Array.isArray(d['decoders']) ? (d['decoders'] as unknown[]).flatMap(decoderTypes) : [];
  return typeof d['type'] === 'string' ? [d['type'], ...inner] : inner;
}

function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v !== null && typeof v === 'object' && typeof (v as Json)['content'] === 'string') return (v as Json)['content'] as string;
  return null;
}

export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  readonly specialTokenIds: ReadonlySet<number>;
  readonly hasChatTemplate: boolean;
  private readonly idToText: string[];
  private readonly addedIds: Set<number>;
  private readonly style: DecodeStyle;
  private readonly stripLeadingSpace: boolean;
  private readonly byteTable = byteLevelDecoderTable();
  private readonly bytesCache: Uint8Array[];
  private readonly chatTemplate: ChatTemplate | null;
  /** BOS the tokenizer itself does not add but the model expects (GGUF add_bos_token with a BPE vocabulary). */
  private readonly prependBos: boolean;
  /** Special tokens' texts by first character, longest first, with their ids. */
  private readonly specialTexts = new Map<string, { text: string; id: number }[]>();
  private plainMatching: AddedTokenMatching | null = null;

  private constructor(
    private readonly inner: LoadedTokenizer,
    tokenizerJson: Json,
    config: Json,
    private readonly where: string,
  ) {
    const model = tokenizerJson['model'] as Json | undefined;
    const vocab = model?.['vocab'];
    if (vocab === null || typeof vocab !== 'object' || Array.isArray(vocab)) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where}: tokenizer.json model.vocab is not a token→id object (unsupported model type ${String(model?.['type'])})`);
    }
    const idToText: string[] = [];
    for (const [text, id] of Object.entries(vocab as Record<string, number>)) idToText[id] = text;
    this.addedIds = new Set();
    const special = new Set<number>();
    const added = Array.isArray(tokenizerJson['added_tokens']) ? (tokenizerJson['added_tokens'] as Json[]) : [];
    for (const t of added) {
      const id = t['id'] as number;
      idToText[id] = t['content'] as string;
      this.addedIds.add(id);
      if (t['special'] === true) {
        special.add(id);
        const text = t['content'] as string;
        if (text.length > 0) {
          const list = this.specialTexts.get(text[0] as string) ?? [];
          list.push({ text, id });
          list.sort((a, b) => b.text.length - a.text.length);
          this.specialTexts.set(text[0] as string, list);
        }
      }
    }
    this.idToText = idToText;
    this.vocabSize = idToText.length;
    this.specialTokenIds = special;
    this.bytesCache = new Array<Uint8Array>(this.vocabSize);

    const types = decoderTypes(tokenizerJson['decoder']);
    if (types.includes('ByteLevel')) this.style = 'byte-level';
    else if (types.includes('ByteFallback') || types.includes('Metaspace') || model?.['byte_fallback'] === true) this.style = 'sentencepiece';
    else this.style = 'plain';
    this.stripLeadingSpace = types.includes('Strip') || (types.includes('Metaspace') && this.style === 'sentencepiece');

    const idOf = (key: string): number | null => {
      const content = tokenContent(config[key]);
      if (content === null) return null;
      const id = idToText.indexOf(content);
      return id >= 0 ? id : null;
    };
    this.bosTokenId = idOf('bos_token');
    const eos = idOf('eos_token');
    this.eosTokenIds = eos === null ? [] : [eos];
    const template = config['chat_template'];
    const source = typeof template === 'string' ? template : Array.isArray(template) ? tokenContentFromNamed(template) : null;
    this.chatTemplate = source === null
      ? null
      : new ChatTemplate(source, { bos_token: tokenContent(config['bos_token']) ?? '', eos_token: tokenContent(config['eos_token']) ?? '' }, where);
    this.hasChatTemplate = this.chatTemplate !== null;
    this.prependBos = config['gguf_add_bos_token'] === true && this.bosTokenId !== null;
  }

  private static fromObjects(tokenizerJson: Json, config: Json, where: string): HfTokenizer {
    let inner: LoadedTokenizer;
    try {
      inner = TokenizerLoader.fromPreTrained({ tokenizerJSON: tokenizerJson, tokenizerConfig: config } as Parameters<typeof TokenizerLoader.fromPreTrained>[0]);
    } catch (err) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where} could not be loaded: ${(err as Error).message}`);
    }
    return new HfTokenizer(inner, tokenizerJson, config, where);
  }

  /**
   * A GGUF byte-level BPE vocabulary (tokenizer.ggml.model "gpt2", as llama.cpp's converter writes Qwen and
   * Llama-3 tokenizers), rebuilt as the equivalent tokenizer.json.
   */
  static fromGgufBpe(g: GgufFile): HfTokenizer {
    const where = `GGUF file ${g.path}`;
    const pre = ggufString(g, 'tokenizer.ggml.pre') ?? 'default';
    const pattern = GGUF_PRE_TOKENIZER_REGEX[pre];
    if (pattern === undefined) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where}: tokenizer.ggml.pre ${JSON.stringify(pre)} is not supported (supported: ${Object.keys(GGUF_PRE_TOKENIZER_REGEX).join(', ')})`);
    }
    const tokens = ggufArray(g, 'tokenizer.ggml.tokens');
    const types = ggufArray(g, 'tokenizer.ggml.token_type');
    const merges = ggufArray(g, 'tokenizer.ggml.merges');
    if (tokens === undefined || types === undefined || merges === undefined || types.length !== tokens.length) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${where}: tokenizer.ggml.tokens/token_type/merges missing or of different lengths`);
    }
    const vocab: Record<string, number> = {};
    const added: Json[] = [];
    tokens.forEach((tok, id) => {
      const type = types[id];
      if (type === 1) vocab[String(tok)] = id; // normal
      else if (type === 3 || type === 4) {
        added.push({ id, content: String(tok), single_word: false, lstrip: false, rstrip: false, normalized: false, special: type === 3 });
      }
    });
    const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
    const tokenizerJson: Json = {
      version: '1.0',
      added_tokens: added,
      normalizer: { type: 'NFC' },
      pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false }, byteLevel] },
      post_processor: byteLevel,
      decoder: byteLevel,
      model: {
        type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false,
        byte_fallback: false, ignore_merges: false, vocab, merges: merges.map((m) => String(m).split(' ')),
      },
    };
    const content = (key: string): string | null => {
      const v = g.metadata.get(key);
      return typeof v === 'number' && tokens[v] !== undefined ? String(tokens[v]) : null;
    };
    const addBos = g.metadata.get('tokenizer.ggml.add_bos_token');
    const config: Json = {
      bos_token: content('tokenizer.ggml.bos_token_id'),
      eos_token: content('tokenizer.ggml.eos_token_id'),
      chat_template: ggufString(g, 'tokenizer.chat_template') ?? null,
      gguf_add_bos_token: addBos === true,
    };
    return HfTokenizer.fromObjects(tokenizerJson, config, where);
  }

  /**
   * Loads tokenizer.json and tokenizer_config.json from a directory (or a tokenizer.json path whose directory
   * holds the config). A chat_template.jinja file beside them overrides the config's template, as in
   * transformers.
   */
  static fromPath(path: string): HfTokenizer {
    const file = path.endsWith('.json') ? path : join(path, 'tokenizer.json');
    const dir = path.endsWith('.json') ? join(path, '..') : path;
    if (!existsSync(file)) throw new LlmError('LLM_ERR_TOKENIZER', `no tokenizer.json at ${file}`);
    const tokenizerJson = readJsonObject(file);
    const configFile = join(dir, 'tokenizer_config.json');
    const config = existsSync(configFile) ? readJsonObject(configFile) : {};
    const templateFile = join(dir, 'chat_template.jinja');
    if (existsSync(templateFile)) config['chat_template'] = readFileSync(templateFile, 'utf8');
    return HfTokenizer.fromObjects(tokenizerJson, config, `tokenizer ${file}`);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.encodeSpans(text, options.addSpecialTokens ?? true, options.parseSpecialTokens === false ? [[0, text.length]] : []);
  }

  encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions): number[] {
    const rendered = this.applyChatTemplate(messages, options);
    return this.encodeSpans(rendered, false, chatContentSpans(rendered, messages, (t) => this.specialAt(t, 0, t.length, [])?.text ?? null));
  }

  /** The first special token whose text starts in text[from, to) outside the literal spans, with its position. */
  private specialAt(text: string, from: number, to: number, literal: readonly LiteralSpan[]): { text: string; id: number; at: number } | null {
    for (let i = from; i < to; i++) {
      const hit = this.specialTexts.get(text[i] as string)?.find((t) => text.startsWith(t.text, i) && !overlapsLiteral(literal, i, i + t.text.length));
      if (hit !== undefined) return { ...hit, at: i };
    }
    return null;
  }

  private encodeSpans(text: string, addSpecial: boolean, literal: readonly LiteralSpan[]): number[] {
    const userTypedSpecial = literal.some(([s, e]) => this.specialAt(text, s, e, []) !== null);
    let ids: number[];
    if (!userTypedSpecial) {
      ids = this.inner.encode(text, { add_special_tokens: addSpecial });
    } else {
      // Split where the library would, at special tokens, but only those outside the literal spans; encode the
      // pieces with no special token matching, as the library encodes the text between added tokens.
      ids = addSpecial ? this.inner.encode('', { add_special_tokens: true }) : [];
      let start = 0;
      for (let hit = this.specialAt(text, 0, text.length, literal); hit !== null; hit = this.specialAt(text, start, text.length, literal)) {
        if (hit.at > start) ids.push(...this.encodePlain(text.slice(start, hit.at)));
        ids.push(hit.id);
        start = hit.at + hit.text.length;
      }
      if (start < text.length) ids.push(...this.encodePlain(text.slice(start)));
    }
    return addSpecial && this.prependBos && ids[0] !== this.bosTokenId ? [this.bosTokenId as number, ...ids] : ids;
  }

  /** Text with no special token matching (non-special added tokens still match, as in HF's split_special_tokens). */
  private encodePlain(text: string): number[] {
    const matching = this.inner as unknown as AddedTokenMatching;
    if (this.plainMatching === null) {
      const Splitter = matching.added_tokens_splitter.constructor as new (tokens: string[]) => AddedTokenMatching['added_tokens_splitter'];
      const specials = new Set([...this.specialTexts.values()].flat().map((t) => t.text));
      const plain = new Map([...matching.added_tokens_map].filter(([content]) => !specials.has(content)));
      this.plainMatching = { added_tokens_splitter: new Splitter([...plain.keys()]), added_tokens_map: plain };
    }
    const saved = { added_tokens_splitter: matching.added_tokens_splitter, added_tokens_map: matching.added_tokens_map };
    matching.added_tokens_splitter = this.plainMatching.added_tokens_splitter;
    matching.added_tokens_map = this.plainMatching.added_tokens_map;
    try {
      return this.inner.encode(text, { add_special_tokens: false });
    } finally {
      matching.added_tokens_splitter = saved.added_tokens_splitter;
      matching.added_tokens_map = saved.added_tokens_map;
    }
  }

  tokenText(id: number): string {
    const t = this.idToText[id];
    if (t === undefined) throw new LlmError('LLM_ERR_TOKENIZER', `token id ${id} is outside the vocabulary (size ${this.vocabSize}) of ${this.where}`);
    return t;
  }

  tokenBytes(id: number): Uint8Array {
    const cached = this.bytesCache[id];
    if (cached !== undefined) return cached;
    const text = this.tokenText(id);
    let bytes: Uint8Array;
    if (this.addedIds.has(id)) {
      bytes = Buffer.from(text, 'utf8');
    } else if (this.style === 'byte-level') {
      const out: number[] = [];
      for (const ch of text) {
        const b = this.byteTable.get(ch.codePointAt(0) as number);
        if (b === undefined) out.push(...Buffer.from(ch, 'utf8'));
        else out.push(b);
      }
      bytes = Uint8Array.from(out);
    } else if (this.style === 'sentencepiece') {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(text);
      bytes = m !== null ? Uint8Array.of(parseInt(m[1] as string, 16)) : Buffer.from(text.replaceAll('\u2581', ' '), 'utf8');
    } else {
      bytes = Buffer.from(text, 'utf8');
    }
    this.bytesCache[id] = bytes;
    return bytes;
  }

  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const text = tokensText(this, ids, options.skipSpecialTokens ?? true);
    return this.stripLeadingSpace && text.startsWith(' ') ? text.slice(1) : text;
  }

  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string {
    if (this.chatTemplate === null) {
      throw new LlmError('LLM_ERR_TOKENIZER', `${this.where} has no chat_template (tokenizer_config.json or chat_template.jinja)`);
    }
    return this.chatTemplate.render(messages, options);
  }
}

/** tokenizer_config.json may hold a list of named templates: use the one called "default". */
function tokenContentFromNamed(list: unknown[]): string | null {
  for (const t of list) {
    if (t !== null && typeof t === 'object' && (t as Json)['name'] === 'default' && typeof (t as Json)['template'] === 'string') {
      return (t as Json)['template'] as string;
    }
  }
  return null;
}

function readJsonObject(file: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new LlmError('LLM_ERR_TOKENIZER', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new LlmError('LLM_ERR_TOKENIZER', `${file} is not a JSON object`);
  return v as Json;
}
