// OpenAI /v1/embeddings: the body goes to an embedding worker as it is (its card says ModelInput.Text and
// ModelType.Embedding: the worker tokenizes, batches, truncates and applies `dimensions`, reference §2.4), and its one
// response comes back as OpenAI's, with the vectors as float lists or, for encoding_format "base64", as base64 of
// their little-endian float32 bytes.
import type { ServerResponse } from 'node:http';
import { LlmError } from '../errors.js';
import type { EmbeddingRequest } from '../protocol/request.js';
import { EmbeddingResponseSchema, type EmbeddingResponse, type LlmResponseChunk } from '../protocol/response.js';
import { errorFromItem } from '../protocol/transport.js';
import { parseWire } from '../protocol/validate.js';
import type { EndpointClient } from '../runtime/client.js';
import { candidateInstances } from './model-instances.js';
import type { Tokenizer } from '../tokenizer/index.js';
import type { TokenizerSource } from '../../actors/tokenizer.js';
import type { ServedModel } from './models.js';

/** A model served by embedding workers. */
export interface EmbeddingService {
  embed(body: EmbeddingRequest, signal: AbortSignal): Promise<EmbeddingResponse>;
}

export function servesEmbeddings(m: ServedModel): m is ServedModel & EmbeddingService {
  return typeof (m as Partial<EmbeddingService>).embed === 'function';
}

/** An embedding model found in discovery: /v1/embeddings only. */
export class DiscoveredEmbeddingModel implements ServedModel, EmbeddingService {
  readonly created = Math.floor(Date.now() / 1000);

  constructor(
    readonly name: string,
    readonly tokenizer: Tokenizer,
    readonly tokenizerSource: TokenizerSource,
    readonly contextLength: number,
    private readonly client: () => Promise<EndpointClient>,
    /** The endpoint's instances whose card names this model: the only ones its requests may go to. */
    private readonly instances: ReadonlySet<bigint>,
  ) {}

  private next = 0;

  async *generate(): AsyncIterable<LlmResponseChunk> {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `model "${this.name}" is an embedding model: use /v1/embeddings`);
  }

  async embed(body: EmbeddingRequest, signal: AbortSignal): Promise<EmbeddingResponse> {
    const client = await this.client();
    const candidates = await candidateInstances(client, this.instances, this.name, signal);
    if (candidates.length === 0) throw new LlmError('LLM_ERR_CANCELLED', 'the client went away');
    const instanceId = candidates[this.next++ % Math.max(1, candidates.length)];
    const stream = await client.generate(body, { signal, routing: { instanceId } });
    for await (const annotated of stream) {
      if (annotated.event === 'error' || annotated.error !== undefined) throw errorFromItem(annotated);
      if (annotated.data === undefined) continue;
      return parseWire(EmbeddingResponseSchema, annotated.data, 'embedding response', 'LLM_ERR_PROTOCOL');
    }
    if (signal.aborted) throw new LlmError('LLM_ERR_CANCELLED', 'the client went away');
    throw new LlmError('LLM_ERR_PROTOCOL', `the worker serving "${this.name}" ended its response without embeddings`);
  }
}

const ENCODING_FORMATS = ['float', 'base64'] as const;

/** Little-endian float32 bytes of the vector, base64 (what OpenAI returns for encoding_format "base64"). */
export function base64Embedding(v: readonly number[]): string {
  const f = Float32Array.from(v);
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength).toString('base64');
}

/** Serves one /v1/embeddings request (the body already checked against its schema). */
export async function serveEmbeddings(body: EmbeddingRequest, model: ServedModel, res: ServerResponse, signal: AbortSignal): Promise<void> {
  if (!servesEmbeddings(model)) {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `model "${model.name}" does not serve embeddings (it is a generation model: use /v1/completions or /v1/chat/completions)`);
  }
  const format = body.encoding_format ?? 'float';
  if (!(ENCODING_FORMATS as readonly string[]).includes(format)) {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `Invalid value for 'encoding_format': '${format}'. Supported values are: 'float' and 'base64'.`);
  }
  const out = await model.embed(body, signal);
  if (signal.aborted) return;
  const data = out.data.map((d) => ({ object: d.object, index: d.index, embedding: format === 'base64' ? base64Embedding(d.embedding) : d.embedding }));
  const text = JSON.stringify({ object: 'list', data, model: body.model, usage: out.usage });
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
