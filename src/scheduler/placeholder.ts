// Token feedback for overlap scheduling. With overlap on, the scheduler submits step N+1 while step N still runs,
// so a decode input that is step N's sampled token is not known yet: the step carries a placeholder instead,
// -(1 + row), naming the sequence row of step N that samples it. The executor runs steps strictly in order: an
// engine with pipelined steps takes placeholders as they are (Engine.stepBegin resolves them on the device, so step
// N+1 is begun before N ends); for any other engine the executor resolves them here, in the step descriptor, from the
// previous step's output tokens just before the engine runs the step. Either way one that cannot be resolved fails
// the step.
import { LlmError } from '../errors.js';
import type { StepDescriptor } from '../engine/types.js';
import { Header, SeqField, STEP_SEQ_WORDS } from '../engine/step.js';

/** The token word that stands for what the previous step samples in sequence row `row`. */
export function placeholderFor(row: number): number {
  return -1 - row;
}

/** Replaces, in place, every placeholder in the descriptor's tokens with the previous step's sampled token
 * (`previous`: that step's StepResult.tokens, null when no step ran before). Throws LLM_ERR_STEP_INVALID for a
 * placeholder naming a row the previous step did not sample. */
export function resolvePlaceholders(desc: StepDescriptor, previous: Int32Array | null): void {
  const numSeqs = desc[Header.numSeqs];
  const tokOff = desc[Header.tokensOffset];
  const seqOff = desc[Header.seqsOffset];
  for (let s = 0; s < numSeqs; s++) {
    const r = seqOff + s * STEP_SEQ_WORDS;
    const q0 = tokOff + desc[r + SeqField.qStart];
    const qLen = desc[r + SeqField.qLen];
    for (let i = 0; i < qLen; i++) {
      const tok = desc[q0 + i];
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
      desc[q0 + i] = value;
    }
  }
}
