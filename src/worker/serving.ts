// What the worker's endpoint runs for a request, one entry per serving mode, chosen once at start: the aggregated
// worker generates over its core; prefill and decode workers serve their side of the disaggregated hand-off
// (src/disagg). The endpoint handler itself (metrics, cancellation, shutdown) is the same for every mode.
import type { ServingMode, WorkerConfig } from '../config/schema.js';
import { DisaggService, type DisaggGenerateOptions } from '../disagg/service.js';
import type { KvPort } from '../disagg/port.js';
import { PreprocessedRequestSchema } from '../protocol/request.js';
import type { LlmResponseChunk, PrefillBootstrapChunk } from '../protocol/response.js';
import { parseWire } from '../protocol/validate.js';
import type { Discovery } from '../runtime/discovery/index.js';

/** A request accepted by the mode (its body checked where the mode checks it), ready to run. */
export type AcceptedRequest = (options: DisaggGenerateOptions) => AsyncIterable<LlmResponseChunk | PrefillBootstrapChunk>;

export interface ModeServing {
  /** Takes a request body off the wire; throws LLM_ERR_BAD_REQUEST for a body the mode checks up front. */
  accept(raw: unknown): AcceptedRequest;
  /** The disaggregated service of a prefill or decode worker (null when aggregated). */
  readonly disagg: DisaggService | null;
}

export interface ModeServingDeps {
  config: WorkerConfig;
  core: KvPort;
  discovery: Discovery;
  log: (line: string) => void;
}

async function disaggregated(deps: ModeServingDeps): Promise<ModeServing> {
  const disagg = await DisaggService.start(deps);
  return { disagg, accept: (raw) => (options) => disagg.generate(raw, options) };
}

export const SERVING_MODES: { readonly [M in ServingMode]: (deps: ModeServingDeps) => Promise<ModeServing> } = {
  aggregated: async ({ core }) => ({
    disagg: null,
    accept: (raw) => {
      const request = parseWire(PreprocessedRequestSchema, raw, 'request');
      return (options) => core.generate(request, options);
    },
  }),
  // the disaggregated request bodies are checked by the side that serves them (prefill takes the legacy wrapper too)
  prefill: disaggregated,
  decode: disaggregated,
};
