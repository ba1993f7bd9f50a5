// One rank of a test tensor-parallel group (tp-ranks.ts): opens its engine in this worker_thread, as the rank
// actor does in production, then runs each call the main thread sends and answers with the result or the coded error.
import { parentPort, workerData } from 'node:worker_threads';
import { openEngine } from '../../src/engine/engine.js';
import { toErrorPayload } from '../../src/errors.js';
import type { Engine, EngineOptions, ModelSpec } from '../../src/engine/types.js';
import type { RankCall, RankReply } from './tp-ranks.js';

const { spec, options } = workerData as { spec: ModelSpec; options: EngineOptions };
const port = parentPort;
if (!port) throw new Error('tp-rank-worker runs inside a worker_thread');
const rank = options.tp?.rank ?? 0;

function answer(fn: () => unknown): RankReply {
  try {
    return { ok: true, value: fn() };
  } catch (err) {
    return { ok: false, error: toErrorPayload(err, rank) };
  }
}

let engine: Engine | undefined;
port.postMessage(answer(() => void (engine = openEngine(spec, options))));
port.on('message', (call: RankCall) => {
  const live = (): Engine => {
    if (!engine) throw new Error(`rank ${rank}: the engine did not open`);
    return engine;
  };
  switch (call.op) {
    case 'step':
      port.postMessage(answer(() => live().step(call.step, call.multimodal)));
      break;
    case 'embed':
      port.postMessage(answer(() => live().embed([call.tokenIds], { pooling: 'mean', normalize: true })[0]));
      break;
    case 'exportPages':
      port.postMessage(answer(() => live().exportPages(call.pages)));
      break;
    case 'importPages':
      port.postMessage(answer(() => live().importPages(call.pages, call.data)));
      break;
    case 'kvInfo':
      port.postMessage(answer(() => live().kv));
      break;
    case 'close':
      port.postMessage(answer(() => engine?.close()));
      port.close();
      break;
  }
});
