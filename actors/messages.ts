// The vocabulary every actor shares: coded error payloads and exhaustiveness (engine summaries: src/engine/summary.ts).
// Each actor's own inbox union lives beside the actor; a step crosses threads as its packed descriptor (src/engine/step.ts).
export type { ErrorPayload } from '../src/errors.js';

/** Compile-time exhaustiveness for message switches. */
export function unreachable(x: never): never {
  throw new Error(`unhandled message ${JSON.stringify(x)}`);
}
