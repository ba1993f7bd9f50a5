// One rank of a cross-process tensor-parallel group, as its own process (forked by tp-tcp.test.ts with advanced
// serialization): opens its engine (joining the group over TCP), answers {opened} or the coded error, then on 'go'
// runs decodeRun and answers with its tokens and logits, or the coded error of the step that failed.
import { openEngine } from '../../src/engine/engine.js';
import { toErrorPayload, type ErrorPayload } from '../../src/errors.js';
import type { Engine, EngineOptions, ModelSpec } from '../../src/engine/types.js';
import { decodeRun, type DecodeRun } from './tp-tcp-decode.js';

export type TcpRankReply =
  | { what: 'opened' }
  | { what: 'done'; run: DecodeRun }
  | { what: 'failed'; error: ErrorPayload };

const { spec, options } = JSON.parse(process.argv[2]) as { spec: ModelSpec; options: EngineOptions };
const send = (m: TcpRankReply): void => void process.send?.(m);
const rank = options.tp?.rank ?? 0;

let engine: Engine | undefined;
try {
  engine = openEngine(spec, options);
  send({ what: 'opened' });
} catch (err) {
  send({ what: 'failed', error: toErrorPayload(err, rank) });
  process.disconnect();
}
process.on('message', (m: unknown) => {
  if (m !== 'go' || !engine) return process.disconnect();
  try {
    send({ what: 'done', run: decodeRun(engine, options.pageSize) });
  } catch (err) {
    send({ what: 'failed', error: toErrorPayload(err, rank) });
  }
  process.disconnect();
});
