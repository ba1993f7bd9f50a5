// What the OpenAI layer needs to know about a model it serves. A ServedModel hides where the work runs: the
// in-process supervisor for `dynamo-sglang run`, or a routed endpoint client over discovery for `frontend`.
import type { LlmResponseChunk } from '../protocol/response.js';
import type { PreprocessedRequest } from '../protocol/request.js';
import type { Tokenizer } from '../tokenizer/index.js';
import type { TokenizerSource } from '../../actors/tokenizer.js';

export interface GenerateOptions {
  signal: AbortSignal;
}

export interface ServedModel {
  readonly name: string;
  /** On this thread: detokenization of streamed tokens, vocabulary size, EOS and special ids. */
  readonly tokenizer: Tokenizer;
  /** Where the frontend's tokenizer pool loads the same tokenizer to encode prompts and render chat templates.
   * A model without one (an in-memory tokenizer, as tests build) has its prompts encoded on this thread. */
  readonly tokenizerSource?: TokenizerSource;
  readonly contextLength: number;
  readonly created: number; // unix seconds, reported by /v1/models
  /** The worker's --dyn-tool-call-parser / --dyn-reasoning-parser (its card's runtime_config): how the frontend
   * finds tool calls and reasoning in the model's text (src/frontend/chat-output.ts). */
  readonly toolCallParser?: string | null;
  readonly reasoningParser?: string | null;
  /** Whether tool_choice "none" also keeps the tools out of the chat template (default true). */
  readonly excludeToolsWhenToolChoiceNone?: boolean;
  generate(request: PreprocessedRequest, options: GenerateOptions): AsyncIterable<LlmResponseChunk>;
}

export interface ModelDirectory {
  list(): readonly ServedModel[];
  get(name: string): ServedModel | undefined;
}

/** A fixed set of models (the all-in-one `run`, tests). */
export class StaticModelDirectory implements ModelDirectory {
  private readonly byName: Map<string, ServedModel>;

  constructor(models: readonly ServedModel[]) {
    this.byName = new Map(models.map((m) => [m.name, m]));
  }

  list(): readonly ServedModel[] {
    return [...this.byName.values()];
  }

  get(name: string): ServedModel | undefined {
    return this.byName.get(name);
  }
}
