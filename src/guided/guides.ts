// Grammar-constrained decoding: compiles a request's guided_decoding (a JSON schema, any JSON, a regex, a choice
// among strings, an EBNF grammar) against the model's vocabulary with xgrammar, and gives the scheduler one
// TokenGuide per request: the token bitmask of its next draw, advanced by each token that lands.
//
// Vocabulary: xgrammar decodes token strings by vocab type: "byte_fallback" for SentencePiece vocabularies ("▁the",
// "<0x0A>"), "byte_level" for byte-level BPE ("Ġthe"). Special tokens are passed as empty strings, which xgrammar
// never allows in text; the EOS ids are its stop tokens, allowed only where the grammar may end.
import { LlmError } from '../errors.js';
import type { GuidedDecoding } from '../protocol/request.js';
import type { TokenGuide, GuideVerdict } from '../scheduler/request.js';
import type { Tokenizer } from '../tokenizer/types.js';
import type { CompiledGrammar, GrammarCompiler, GrammarMatcher } from '@mlc-ai/web-xgrammar';
import { loadXgrammar, type XgrammarInstance } from './xgrammar.js';


/** The one grammar a request asks for, and the request field that named it (for errors). */
export type GrammarSpec =
  | { kind: 'json_schema'; schema: string; field: string }
  | { kind: 'json_object'; field: string }
  | { kind: 'regex'; pattern: string; field: string }
  | { kind: 'choice'; choices: readonly string[]; field: string }
  | { kind: 'grammar'; ebnf: string; field: string }
  /** xgrammar's structural tag (JSON text), as SGLang takes it. */
  | { kind: 'structural_tag'; tag: string; field: string };

/** JSON output is compact (no indentation, `,` and `:` separators): fewer tokens, and no whitespace loops. */
const JSON_SEPARATORS: [string, string] = [',', ':'];
const JSON_OBJECT_SCHEMA = '{"type":"object"}';

/** The grammar of guided_decoding (its first set field of json, regex, choice, grammar, structural_tag), or null when
 * none is set (backend and whitespace_pattern are not used: xgrammar is the backend, JSON is compact).
 * Throws LLM_ERR_BAD_REQUEST for fields of the wrong shape. */
export function grammarSpecOf(g: GuidedDecoding | null | undefined, prefix = 'sampling_options.guided_decoding'): GrammarSpec | null {
  if (!g) return null;
  const bad = (field: string, m: string) => new LlmError('LLM_ERR_BAD_REQUEST', `${prefix}.${field}: ${m}`);
  if (g.json !== undefined && g.json !== null) {
    const field = `${prefix}.json`;
    if (typeof g.json === 'string') {
      try {
        JSON.parse(g.json);
      } catch (err) {
        throw bad('json', `not valid JSON (${(err as Error).message})`);
      }
      return { kind: 'json_schema', schema: g.json, field };
    }
    if (typeof g.json !== 'object' && typeof g.json !== 'boolean') throw bad('json', 'a JSON schema is an object (or its JSON text)');
    // {} and {"type": "object"} are what json_object asks for: any JSON object.
    if (isJsonObjectSchema(g.json)) return { kind: 'json_object', field };
    return { kind: 'json_schema', schema: JSON.stringify(g.json), field };
  }
  if (g.regex !== undefined && g.regex !== null) return { kind: 'regex', pattern: g.regex, field: `${prefix}.regex` };
  if (g.choice !== undefined && g.choice !== null) {
    if (g.choice.length === 0) throw bad('choice', 'needs at least one string');
    return { kind: 'choice', choices: g.choice, field: `${prefix}.choice` };
  }
  if (g.grammar !== undefined && g.grammar !== null) return { kind: 'grammar', ebnf: g.grammar, field: `${prefix}.grammar` };
  if (g.structural_tag !== undefined && g.structural_tag !== null) {
    const tag = g.structural_tag;
    if (typeof tag === 'string') {
      try {
        JSON.parse(tag);
      } catch (err) {
        throw bad('structural_tag', `not valid JSON (${(err as Error).message})`);
      }
      return { kind: 'structural_tag', tag, field: `${prefix}.structural_tag` };
    }
    if (typeof tag !== 'object' || Array.isArray(tag)) throw bad('structural_tag', 'a structural tag is an object (or its JSON text)');
    return { kind: 'structural_tag', tag: JSON.stringify(tag), field: `${prefix}.structural_tag` };
  }
  return null;
}

function isJsonObjectSchema(schema: unknown): boolean {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) return false;
  const keys = Object.keys(schema);
  return keys.length === 0 || (keys.length === 1 && (schema as { type?: unknown }).type === 'object');
}

/** An EBNF string literal for text (xgrammar's escapes). */
function ebnfLiteral(text: string): string {
  return JSON.stringify(text);
}

function vocabTypeOf(tokenizer: Tokenizer): 'byte_fallback' | 'byte_level' | 'raw' {
  let fallback = 0;
  let byteLevel = 0;
  for (let id = 0; id < tokenizer.vocabSize; id++) {
    const t = tokenizer.tokenText(id);
    if (/^<0x[0-9A-Fa-f]{2}>$/.test(t)) fallback++;
    else if (t.startsWith('Ġ') || t.startsWith('Ċ')) byteLevel++;
  }
  if (fallback >= 256) return 'byte_fallback';
  return byteLevel > 0 ? 'byte_level' : 'raw';
}

/** Compiles grammars for one model's vocabulary and makes guides from them. Not shared across threads. */
export class GrammarCompilers {
  private instance: XgrammarInstance | null = null;
  private compiler: GrammarCompiler | null = null;

  private constructor(
    private readonly vocab: string[],
    private readonly vocabType: string,
    private readonly vocabSize: number,
    private readonly stopIds: number[],
  ) {}

  /** vocabSize: the engine's logits width (may exceed the tokenizer's vocabulary: padding ids are never allowed). */
  static create(tokenizer: Tokenizer, vocabSize: number): GrammarCompilers {
    const vocab: string[] = [];
    for (let id = 0; id < tokenizer.vocabSize; id++) vocab.push(tokenizer.specialTokenIds.has(id) ? '' : tokenizer.tokenText(id));
    return new GrammarCompilers(vocab, vocabTypeOf(tokenizer), vocabSize, [...tokenizer.eosTokenIds]);
  }

  get maskWords(): number {
    return Math.ceil(this.vocabSize / 32);
  }

  private async compilerOf(): Promise<GrammarCompiler> {
    if (this.compiler) return this.compiler;
    const instance = loadXgrammar();
    const info = await instance.xg.TokenizerInfo.createTokenizerInfo(this.vocab, this.vocabType, false, this.vocabSize, this.stopIds);
    this.compiler = await instance.xg.GrammarCompiler.createGrammarCompiler(info, true);
    this.instance = instance;
    return this.compiler;
  }

  /** Compiles spec; a grammar xgrammar refuses is LLM_ERR_BAD_REQUEST naming spec.field (and the instance is
   * replaced, see xgrammar.ts). */
  async compile(spec: GrammarSpec): Promise<CompiledGrammar> {
    const compiler = await this.compilerOf();
    try {
      switch (spec.kind) {
        case 'json_schema':
          return await compiler.compileJSONSchema(spec.schema, false, -1, JSON_SEPARATORS, true);
        case 'json_object':
          // Not strict: an object may hold any properties (xgrammar's builtin JSON grammar allows unbounded whitespace,
          // which small models fill forever).
          return await compiler.compileJSONSchema(JSON_OBJECT_SCHEMA, false, -1, JSON_SEPARATORS, false);
        case 'regex':
          return await compiler.compileStructuralTag({ type: 'structural_tag', format: { type: 'regex', pattern: spec.pattern } });
        case 'choice':
          return await compiler.compileGrammar(`root ::= ${spec.choices.map(ebnfLiteral).join(' | ')}`);
        case 'grammar':
          return await compiler.compileGrammar(spec.ebnf);
        case 'structural_tag':
          return await compiler.compileStructuralTag(spec.tag);
      }
    } catch (err) {
      const why = this.instance?.takeMessages() || (err as Error).message;
      this.compiler = null;
      this.instance = null;
      throw new LlmError('LLM_ERR_BAD_REQUEST', `${spec.field}: the grammar does not compile: ${why}`);
    }
  }

  /** A guide at the start of the grammar, its first mask computed. */
  async guide(spec: GrammarSpec): Promise<TokenGuide> {
    const compiled = await this.compile(spec);
    const xg = this.instance!.xg;
    const matcher = await xg.GrammarMatcher.createGrammarMatcher(compiled);
    const mask = await matcher.getNextTokenBitmask();
    return new XgrammarGuide(matcher, mask, compiled);
  }
}

class XgrammarGuide implements TokenGuide {
  mask: Int32Array | null;
  private disposed = false;
  /** The next mask being computed: disposal waits for it (the matcher is in use until it settles). */
  private computing: Promise<void> | null = null;

  constructor(
    private readonly matcher: GrammarMatcher,
    mask: Int32Array,
    private readonly compiled: CompiledGrammar,
  ) {
    this.mask = mask;
  }

  accept(token: number): Promise<GuideVerdict> {
    if (this.disposed) return Promise.reject(new LlmError('LLM_ERR_INTERNAL', 'the guide was disposed of'));
    if (!this.matcher.acceptToken(token)) return Promise.resolve('rejected');
    this.mask = null;
    if (this.matcher.isTerminated()) return Promise.resolve('end');
    const computing = this.matcher.getNextTokenBitmask().then(
      (m): GuideVerdict => {
        if (!this.disposed) this.mask = m;
        return 'next';
      },
      (err: unknown) => {
        throw new LlmError('LLM_ERR_INTERNAL', `the grammar's next token mask failed: ${(err as Error).message ?? String(err)}`);
      },
    );
    this.computing = computing.then(
      () => void (this.computing = null),
      () => void (this.computing = null),
    );
    return computing;
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const release = () => {
      this.matcher.dispose();
      this.compiled.dispose();
    };
    if (this.computing) void this.computing.then(release);
    else release();
  }
}
