// The tokenizer actor: a piscina pool of worker_threads that encode, decode and apply chat templates, so long
// prompts never stall the thread that schedules steps or serves HTTP. This module is both the pool's task (default
// export, run in each pool thread, which loads each tokenizer it is asked about once, by path, and keeps it) and
// the main side's TokenizerPool (one pool serves any number of tokenizers: every call names its source). Errors
// come back as coded payloads (a thrown error would lose its code crossing the thread).
import { Piscina } from 'piscina';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';
import { loadTokenizer, type ChatMessage, type ChatTemplateOptions, type Tokenizer } from '../src/tokenizer/index.js';
import { unreachable } from './messages.js';
import { ACTOR_EXEC_ARGV, siblingModule, workerModuleFile } from './worker.js';

/** The tokenizer actor's inbox: one task per call. */
export type TokenizerTask = { source: TokenizerSource } & (
  | { kind: 'encode'; text: string; addSpecialTokens: boolean; parseSpecialTokens: boolean }
  | { kind: 'decode'; ids: number[]; skipSpecialTokens: boolean }
  | { kind: 'chat'; messages: ChatMessage[]; options: ChatTemplateOptions }
  | { kind: 'load' }
);

export type TokenizerReply =
  | { ok: true; kind: 'loaded' }
  | { ok: true; kind: 'ids'; ids: number[] }
  | { ok: true; kind: 'text'; text: string }
  | { ok: false; error: ErrorPayload };

export interface TokenizerSource {
  modelPath: string;
  tokenizerPath?: string;
}

// ---- pool thread side

const loaded = new Map<string, Tokenizer>();

function tokenizerFor(source: TokenizerSource): Tokenizer {
  const key = `${source.modelPath}\u0000${source.tokenizerPath ?? ''}`;
  let tok = loaded.get(key);
  if (!tok) {
    tok = loadTokenizer(source.modelPath, source.tokenizerPath);
    loaded.set(key, tok);
  }
  return tok;
}

export default function runTokenizerTask(task: TokenizerTask): TokenizerReply {
  try {
    const tok = tokenizerFor(task.source);
    switch (task.kind) {
      case 'encode':
        return { ok: true, kind: 'ids', ids: tok.encode(task.text, { addSpecialTokens: task.addSpecialTokens, parseSpecialTokens: task.parseSpecialTokens }) };
      case 'decode':
        return { ok: true, kind: 'text', text: tok.decode(task.ids, { skipSpecialTokens: task.skipSpecialTokens }) };
      case 'chat':
        return { ok: true, kind: 'ids', ids: chatPromptIds(tok, task.messages, task.options) };
      case 'load':
        return { ok: true, kind: 'loaded' };
      default:
        return unreachable(task);
    }
  } catch (err) {
    const p = toErrorPayload(err);
    return { ok: false, error: p.code === 'LLM_ERR_INTERNAL' ? { ...p, code: 'LLM_ERR_TOKENIZER' } : p };
  }
}

/** Prompt ids for a chat: the model's chat template (which writes BOS itself where the model wants one), or for a
 * model without one (the bundled stories260K) the messages' text joined by newlines after BOS, so a plain language
 * model still continues the conversation. */
export function chatPromptIds(tok: Tokenizer, messages: ChatMessage[], options: ChatTemplateOptions): number[] {
  // Control tokens come only from the template: what users typed stays literal text.
  if (tok.hasChatTemplate) return tok.encodeChat(messages, options);
  return tok.encode(messages.map((m) => m.content).join('\n'), { addSpecialTokens: true, parseSpecialTokens: false });
}

// ---- main side

export class TokenizerPool {
  private readonly pool: Piscina;
  readonly threads: number;

  constructor(options: { threads?: number } = {}) {
    this.threads = options.threads ?? 2;
    // All threads start at once and stay: a thread that loads a tokenizer keeps it for the pool's life.
    this.pool = new Piscina({ filename: workerModuleFile(siblingModule(import.meta.url, 'tokenizer')), minThreads: this.threads, maxThreads: this.threads, execArgv: [...ACTOR_EXEC_ARGV] });
  }

  /** parseSpecialTokens false: special-token text in `text` stays literal (user input). */
  async encode(source: TokenizerSource, text: string, addSpecialTokens = true, parseSpecialTokens = true): Promise<number[]> {
    return this.ids(await this.run({ source, kind: 'encode', text, addSpecialTokens, parseSpecialTokens }));
  }

  async decode(source: TokenizerSource, ids: number[], skipSpecialTokens = true): Promise<string> {
    const r = await this.run({ source, kind: 'decode', ids, skipSpecialTokens });
    if (r.kind !== 'text') throw new LlmError('LLM_ERR_INTERNAL', `tokenizer pool answered decode with ${r.kind}`);
    return r.text;
  }

  /** Prompt ids for a chat (see chatPromptIds). */
  async encodeChat(source: TokenizerSource, messages: ChatMessage[], options: ChatTemplateOptions = {}): Promise<number[]> {
    return this.ids(await this.run({ source, kind: 'chat', messages, options }));
  }

  /** Loads the tokenizer in every thread ahead of the first request (a Qwen tokenizer takes seconds to load).
   * One task per thread, sent together: a thread busy loading takes no second one. */
  async load(source: TokenizerSource): Promise<void> {
    await Promise.all(Array.from({ length: this.threads }, () => this.run({ source, kind: 'load' })));
  }

  destroy(): Promise<void> {
    return this.pool.destroy();
  }

  private async run(task: TokenizerTask): Promise<Extract<TokenizerReply, { ok: true }>> {
    let reply: TokenizerReply;
    try {
      reply = (await this.pool.run(task)) as TokenizerReply;
    } catch (err) {
      throw new LlmError('LLM_ERR_ACTOR_CRASHED', `tokenizer pool thread failed: ${(err as Error).message}`);
    }
    if (!reply.ok) throw LlmError.fromPayload(reply.error);
    return reply;
  }

  private ids(r: Extract<TokenizerReply, { ok: true }>): number[] {
    if (r.kind !== 'ids') throw new LlmError('LLM_ERR_INTERNAL', `tokenizer pool answered with ${r.kind} where ids were due`);
    return r.ids;
  }
}
