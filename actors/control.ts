// Control calls between the supervisor and its actors (start, stop, snapshots, integrity checks, KV operations) go
// through comlink: each actor exposes one typed object on a MessagePort of its own (a MessageChannel made at spawn,
// apart from the per-step and per-output traffic, which stays hand-made), and the main side calls it through a
// typed proxy. Errors cross as coded payloads ({code, message, rank}) and are rethrown as LlmError on the caller's
// side: comlink's own error transfer keeps only message and stack.
import * as Comlink from 'comlink';
import type { MessagePort } from 'node:worker_threads';
import { LlmError, toErrorPayload, type ErrorPayload } from '../src/errors.js';

const originalThrow = Comlink.transferHandlers.get('throw')!;
Comlink.transferHandlers.set('throw', {
  canHandle: originalThrow.canHandle,
  serialize: ({ value }: { value: unknown }) => [toErrorPayload(value), []],
  deserialize: (payload: unknown) => {
    throw LlmError.fromPayload(payload as ErrorPayload);
  },
} as Comlink.TransferHandler<{ value: unknown }, ErrorPayload>);

/** A node MessagePort as comlink's endpoint (node ports have addEventListener, start and close). */
function endpoint(port: MessagePort): Comlink.Endpoint {
  return port as unknown as Comlink.Endpoint;
}

/** Serves `api` on port (the actor's side). */
export function serveControl<T extends object>(api: T, port: MessagePort): void {
  Comlink.expose(api, endpoint(port));
}

/** The typed proxy of an actor's control object (the supervisor's side). */
export type Control<T> = Comlink.Remote<T>;

export function controlOf<T>(port: MessagePort): Control<T> {
  return Comlink.wrap<T>(endpoint(port));
}

/** A result whose buffers move to the caller instead of being copied. */
export function transferred<T>(value: T, buffers: ArrayBuffer[]): T {
  return Comlink.transfer(value, buffers);
}
