// The tokenizer contract shared by the GGUF SentencePiece vocabulary and HF tokenizer.json implementations.

export interface ChatMessage {
  role: string;
  content: string;
  /** An assistant turn's tool calls (OpenAI's shape; `arguments` is JSON text), for templates that render them. */
  tool_calls?: readonly { id: string; type: string; function: { name: string; arguments: string } }[];
  /** A tool turn's answer names the call it answers. */
  tool_call_id?: string;
}

export interface EncodeOptions {
  /** Add the model's special tokens (BOS for Llama-style vocabularies). Default true. */
  addSpecialTokens?: boolean;
  /** Turn special tokens' text found in `text` ("</s>", "<|im_end|>") into those tokens. Default true (for text
   * this program writes); false for user text, which stays text. */
  parseSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Leave out special/control tokens (BOS, EOS, chat markers). Default true. */
  skipSpecialTokens?: boolean;
}

export interface ChatTemplateOptions {
  /** Append the assistant turn opener so the model continues as the assistant. Default true. */
  addGenerationPrompt?: boolean;
  /** Extra variables for the template (e.g. Qwen3's enable_thinking). */
  extraContext?: Record<string, unknown>;
}

export interface Tokenizer {
  /** Number of token ids the tokenizer can produce (base vocabulary plus added tokens). */
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  /** Ids of special/control tokens (skipped by decode unless asked otherwise). */
  readonly specialTokenIds: ReadonlySet<number>;
  /** Whether a chat template is available for applyChatTemplate. */
  readonly hasChatTemplate: boolean;
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string;
  /** The raw bytes a token stands for in text (a special token's own text); the unit of incremental decoding. */
  tokenBytes(id: number): Uint8Array;
  /** The token's vocabulary string as stored (e.g. "▁the", "Ġthe", "<0x0A>"). */
  tokenText(id: number): string;
  applyChatTemplate(messages: readonly ChatMessage[], options?: ChatTemplateOptions): string;
  /** The ids of the chat template's rendering: its markers are special tokens, the messages' contents literal text
   * (a user's "<|im_end|>" stays text). No BOS beyond what the template writes. */
  encodeChat(messages: readonly ChatMessage[], options?: ChatTemplateOptions): number[];
}
