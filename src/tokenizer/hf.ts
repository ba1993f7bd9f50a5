// HF tokenizer.json (+ tokenizer_config.json) through @lenml/tokenizers (a port of transformers.js's tokenizers)
// for encoding. Decoding goes through token bytes — byte-level BPE (GPT-2 byte↔unicode table) or
// SentencePiece-style (▁ and <0xXX> byte fallback) — so whole-sequence and incremental decoding agree.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TokenizerLoader } from '@lenml/tokenizers';
import { LlmError } from '../errors.js';
import { ChatTemplate } from './chat-template.js';
import type { ChatMessage, ChatTemplateOptions, DecodeOptions, EncodeOptions, Tokenizer } from './types.js';

type Json = Record<string, unknown>;
type LoadedTokenizer = ReturnType<typeof TokenizerLoader.fromPreTrained>;

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
      if (t['special'] === true) special.add(id);
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
    let inner: LoadedTokenizer;
    try {
      inner = TokenizerLoader.fromPreTrained({ tokenizerJSON: tokenizerJson, tokenizerConfig: config } as Parameters<typeof TokenizerLoader.fromPreTrained>[0]);
    } catch (err) {
      throw new LlmError('LLM_ERR_TOKENIZER', `tokenizer ${file} could not be loaded: ${(err as Error).message}`);
    }
    return new HfTokenizer(inner, tokenizerJson, config, `tokenizer ${file}`);
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    return this.inner.encode(text, { add_special_tokens: options.addSpecialTokens ?? true });
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
    const skip = options.skipSpecialTokens ?? true;
    const parts: Uint8Array[] = [];
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i] as number;
      if (skip && this.specialTokenIds.has(id)) continue;
      parts.push(this.tokenBytes(id));
    }
    const text = Buffer.concat(parts).toString('utf8');
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
