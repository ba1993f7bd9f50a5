// What the OpenAI layer needs to know about a model it serves. A ServedModel hides where the work runs: the
// in-process supervisor for `dynamo-sglang run`, or a routed endpoint client over discovery for `frontend`.
import type { LlmResponseChunk } from '../protocol/response.js';
import type { PreprocessedRequest } from '../protocol/request.js';
import type { Tokenizer } from '../tokenizer/index.js';

export interface GenerateOptions {
  signal: AbortSignal;
}

export interface ServedModel {
  readonly name: string;
  readonly tokenizer: Tokenizer;
  readonly contextLength: number;
  readonly created: number; // unix seconds, reported by /v1/models
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
