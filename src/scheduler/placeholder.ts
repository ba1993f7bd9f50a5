// Token feedback for overlap scheduling. With overlap on, the scheduler submits step N+1 while step N still runs,
// so a decode input that is step N's sampled token is not known yet: the step carries a placeholder instead,
// -(1 + row), naming the sequence row of step N that samples it. The executor runs steps strictly in order: an
// engine with pipelined steps takes placeholders as they are (Engine.stepBegin resolves them on the device, so step
// N+1 is begun before N ends); for any other engine the executor resolves them here from the previous step's output
// tokens just before the engine runs the step. Either way one that cannot be resolved fails the step.
import { LlmError } from '../errors.js';
import type { SeqStep } from '../engine/types.js';

/** The token word that stands for what the previous step samples in sequence row `row`. */
export function placeholderFor(row: number): number {
  return -1 - row;
}

/** The step with every placeholder replaced by the previous step's sampled token (`previous`: that step's
 * StepResult.tokens, null when no step ran before). Sequences without placeholders are passed through as they are.
 * Throws LLM_ERR_STEP_INVALID for a placeholder naming a row the previous step did not sample. */
export function resolvePlaceholders(seqs: readonly SeqStep[], previous: Int32Array | null): readonly SeqStep[] {
  let out: SeqStep[] | null = null;
  for (let s = 0; s < seqs.length; s++) {
    const ids = seqs[s].tokenIds;
    let resolved: Int32Array | null = null;
    for (let i = 0; i < ids.length; i++) {
      const tok = ids[i];
      if (tok >= 0) continue;
      const row = -1 - tok;
      const value = previous && row < previous.length ? previous[row] : -1;
      if (!(value >= 0)) {
        throw new LlmError(
          'LLM_ERR_STEP_INVALID',
          `seq ${s}: token placeholder ${tok} at index ${i} names row ${row} of the previous step, which ` +
            (previous ? `had ${previous.length} rows and sampled no token there` : 'did not run'),
        );
      }
      resolved ??= Int32Array.from(ids);
      resolved[i] = value;
    }
    if (resolved) {
      out ??= seqs.slice();
      out[s] = { ...seqs[s], tokenIds: resolved };
    }
  }
  return out ?? seqs;
}
