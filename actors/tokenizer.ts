// The tokenizer actor: a piscina pool of worker_threads that encode, decode and apply chat templates, so long
// prompts never stall the thread that schedules steps. This module is both the pool's task (default export, run in
// each pool thread with the tokenizer loaded once per thread) and the main side's TokenizerPool. Errors come back
// as coded payloads (a thrown error would lose its code crossing the thread).
import { Piscina } from 'piscina';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';
import { loadTokenizer, type ChatMessage, type ChatTemplateOptions, type Tokenizer } from '../src/tokenizer/index.js';
import { unreachable } from './messages.js';
import { siblingModule, workerModuleFile } from './worker.js';

/** The tokenizer actor's inbox: one task per call. */
export type TokenizerTask = { source: TokenizerSource } & (
  | { kind: 'encode'; text: string; addSpecialTokens: boolean }
  | { kind: 'decode'; ids: number[]; skipSpecialTokens: boolean }
  | { kind: 'chat'; messages: ChatMessage[]; options: ChatTemplateOptions; addSpecialTokens: boolean }
);

export type TokenizerReply =
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
        return { ok: true, kind: 'ids', ids: tok.encode(task.text, { addSpecialTokens: task.addSpecialTokens }) };
      case 'decode':
        return { ok: true, kind: 'text', text: tok.decode(task.ids, { skipSpecialTokens: task.skipSpecialTokens }) };
      case 'chat': {
        const prompt = tok.applyChatTemplate(task.messages, task.options);
        return { ok: true, kind: 'ids', ids: tok.encode(prompt, { addSpecialTokens: task.addSpecialTokens }) };
      }
      default:
        return unreachable(task);
    }
  } catch (err) {
    const p = toErrorPayload(err);
    return { ok: false, error: p.code === 'LLM_ERR_INTERNAL' ? { ...p, code: 'LLM_ERR_TOKENIZER' } : p };
  }
}

// ---- main side

export class TokenizerPool {
  private readonly pool: Piscina;
  private readonly source: TokenizerSource;

  constructor(source: TokenizerSource, options: { threads?: number } = {}) {
    this.source = source;
    const threads = options.threads ?? 2;
    this.pool = new Piscina({ filename: workerModuleFile(siblingModule(import.meta.url, 'tokenizer')), minThreads: 1, maxThreads: threads });
  }

  async encode(text: string, addSpecialTokens = true): Promise<number[]> {
    return this.ids(await this.run({ source: this.source, kind: 'encode', text, addSpecialTokens }));
  }

  async decode(ids: number[], skipSpecialTokens = true): Promise<string> {
    const r = await this.run({ source: this.source, kind: 'decode', ids, skipSpecialTokens });
    if (r.kind !== 'text') throw new LlmError('LLM_ERR_INTERNAL', 'tokenizer pool answered decode with ids');
    return r.text;
  }

  /** Applies the model's chat template and encodes the result. */
  async encodeChat(messages: ChatMessage[], options: ChatTemplateOptions = {}): Promise<number[]> {
    // The template writes BOS itself where the model wants one.
    return this.ids(await this.run({ source: this.source, kind: 'chat', messages, options, addSpecialTokens: false }));
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
    if (r.kind !== 'ids') throw new LlmError('LLM_ERR_INTERNAL', 'tokenizer pool answered with text where ids were due');
    return r.ids;
  }
}
