// Draining response streams in tests.
import type { LlmResponseChunk } from '../../src/protocol/response.js';

/** Every item of an async stream, in order. */
export async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of it) out.push(item);
  return out;
}

/** The token ids a response stream carried, in order, and its last chunk. */
export async function streamTokens(it: AsyncIterable<LlmResponseChunk>): Promise<{ ids: number[]; last: LlmResponseChunk }> {
  const chunks = await collect(it);
  return { ids: chunks.flatMap((c) => c.token_ids), last: chunks[chunks.length - 1] };
}
