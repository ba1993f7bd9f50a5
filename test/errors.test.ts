import t from 'tap';
import { LlmError, toErrorPayload } from '../src/errors.js';

t.test('coded errors survive a round trip as payloads', async (t) => {
  const e = new LlmError('LLM_ERR_STEP_INVALID', 'page 9 out of range', { rank: 1 });
  const back = LlmError.fromPayload(JSON.parse(JSON.stringify(e.toPayload())));
  t.equal(back.code, 'LLM_ERR_STEP_INVALID');
  t.equal(back.rank, 1);
  t.same(toErrorPayload(new Error('x')), { code: 'LLM_ERR_INTERNAL', message: 'x' });
  t.same(toErrorPayload(Object.assign(new Error('y'), { code: 'LLM_ERR_DEVICE' }), 0), { code: 'LLM_ERR_DEVICE', message: 'y', rank: 0 });
});
