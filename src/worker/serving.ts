// What the worker's endpoint runs for a request, one entry per serving mode, chosen once at start: the aggregated
// worker generates over the core its data-parallel router picks (one core for --dp-size 1); prefill and decode workers serve their side of the disaggregated hand-off through
// the KV transfer their topology started (src/topology, src/disagg). The endpoint handler itself (metrics,
// cancellation, shutdown) is the same for every mode.
import type { ServingMode } from '../config/schema.js';
import type { DisaggGenerateOptions, DisaggService } from '../disagg/service.js';
import type { KvPort } from '../disagg/port.js';
import { LlmError } from '../errors.js';
import { PreprocessedRequestSchema } from '../protocol/request.js';
import type { EmbeddingResponse, LlmResponseChunk, PrefillBootstrapChunk } from '../protocol/response.js';
import type { TextModeChunk } from './text-mode.js';
import { parseWire } from '../protocol/validate.js';

/** A request accepted by the mode (its body checked where the mode checks it), ready to run. */
export type AcceptedRequest = (options: DisaggGenerateOptions) => AsyncIterable<LlmResponseChunk | PrefillBootstrapChunk | EmbeddingResponse | TextModeChunk>;

export interface ModeServing {
  /** Takes a request body off the wire; throws LLM_ERR_BAD_REQUEST for a body the mode checks up front. */
  accept(raw: unknown): AcceptedRequest;
}

/** The running topology's nodes a mode serves over. */
export interface ModeServingDeps {
  /** Core 0's KV port (a disaggregated worker has one core). */
  core: KvPort;
  /** Picks the core (data-parallel group) of each request and streams it there. */
  router: Pick<KvPort, 'generate'>;
  /** The KV sender (prefill) or receiver (decode); null when aggregated. */
  kvTransfer: DisaggService | null;
}

function disaggregated({ kvTransfer }: ModeServingDeps): ModeServing {
  if (!kvTransfer) throw new LlmError('LLM_ERR_INTERNAL', 'a disaggregated worker started without its KV transfer');
  return { accept: (raw) => (options) => kvTransfer.generate(raw, options) };
}

export const SERVING_MODES: { readonly [M in ServingMode]: (deps: ModeServingDeps) => ModeServing } = {
  aggregated: ({ router }) => ({
    accept: (raw) => {
      const request = parseWire(PreprocessedRequestSchema, raw, 'request');
      return (options) => router.generate(request, options);
    },
  }),
  // the disaggregated request bodies are checked by the side that serves them (prefill takes the legacy wrapper too)
  prefill: disaggregated,
  decode: disaggregated,
};
