// The workers a discovered model may use: the instances of its endpoint whose model card names it (two models may
// register on one endpoint). Both generation and embedding models pick among these.
import { LlmError } from '../errors.js';
import type { InstanceRecord } from '../protocol/discovery.js';
import type { EndpointClient } from '../runtime/client.js';

/** How long a request waits for a worker of its model to appear in discovery before a 503. */
export const WAIT_FOR_INSTANCES_MS = 1000;

/** The ids of `records` in `own`, in discovery order. */
export function ownInstances(records: readonly InstanceRecord[], own: ReadonlySet<bigint>): bigint[] {
  return records.filter((r) => own.has(r.instance_id)).map((r) => r.instance_id);
}

/**
 * The model's workers to try: those up; else those marked down (a mark is no ban: worth one more try); else, when
 * discovery lists none, whatever appears within `timeoutMs` (LLM_ERR_DISCOVERY, a 503, if nothing does).
 */
export async function candidateInstances(client: EndpointClient, own: ReadonlySet<bigint>, model: string, signal: AbortSignal, timeoutMs = WAIT_FOR_INSTANCES_MS): Promise<bigint[]> {
  const up = ownInstances(client.available(), own);
  if (up.length > 0) return up;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ids = ownInstances(client.instances(), own);
    if (ids.length > 0 || signal.aborted) return ids;
    if (Date.now() >= deadline) {
      throw new LlmError('LLM_ERR_DISCOVERY', `model "${model}": no worker serving it is in discovery on ${client.name} (waited ${timeoutMs} ms)`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
