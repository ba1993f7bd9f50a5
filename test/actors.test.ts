// The actor system on the real CPU engine: stories260K (a real trained tiny Llama) served by a rank worker_thread
// through the scheduler and the programmatic Supervisor API.
import t, { type Test } from 'tap';
import { Supervisor, type SupervisorConfig } from '../src/supervisor.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import { loadTokenizer } from '../src/tokenizer/index.js';
import { streamTokens } from './helpers/streams.js';

const MODEL = '/work/shared/models/stories260K.gguf';
const GOLDEN =
  ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it,';
const tokenizer = loadTokenizer(MODEL);

async function start(t: Test, extra: Partial<SupervisorConfig> = {}): Promise<Supervisor> {
  const sup = await Supervisor.start({ modelPath: MODEL, device: 'cpu', cpuThreads: 2, numPages: 512, maxRunningRequests: 64, chunkedPrefillSize: 64, ...extra });
  t.teardown(() => sup.stop());
  return sup;
}

const request = (tokenIds: number[], maxTokens: number): PreprocessedRequest => ({
  token_ids: tokenIds,
  stop_conditions: { max_tokens: maxTokens, ignore_eos: true },
  sampling_options: { temperature: 0 },
  eos_token_ids: [2],
});


function prompts(n: number): number[][] {
  let s = 12345;
  const r = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return Array.from({ length: n }, () => [1, ...Array.from({ length: 3 + Math.floor(r() * 60) }, () => 3 + Math.floor(r() * 509))]);
}

t.test('golden greedy continuation through the actors', async (t) => {
  const sup = await start(t);
  const once = tokenizer.encode('Once upon a time', { addSpecialTokens: true });
  const { ids, last } = await streamTokens(sup.generate(request(once, 40)));
  t.ok(tokenizer.decode(ids).startsWith(GOLDEN.slice(0, 100)), tokenizer.decode(ids));
  t.equal(last.finish_reason, 'length');
});

t.test('64 concurrent greedy requests produce what each produces alone; retraction under a tiny pool too', async (t) => {
  const ps = prompts(64);
  const solo = await start(t, { disableRadixCache: true, maxRunningRequests: 1 });
  const alone: number[][] = [];
  for (const p of ps) alone.push((await streamTokens(solo.generate(request(p, 24)))).ids);
  const sup = await start(t);
  const together = await Promise.all(ps.map((p) => streamTokens(sup.generate(request(p, 24)))));
  together.forEach((r, i) => t.same(r.ids, alone[i], `request ${i}`));
  await sup.scheduler.checkIntegrity();
  // 20 pages of 16 tokens cannot hold 64 sequences of up to 87 tokens at once: requests get retracted and resumed.
  const tiny = await start(t, { numPages: 20 });
  const squeezed = await Promise.all(ps.map((p) => streamTokens(tiny.generate(request(p, 24)))));
  squeezed.forEach((r, i) => t.same(r.ids, alone[i], `request ${i} (tiny pool)`));
  t.ok(tiny.scheduler.stats.retractions > 0, `retractions: ${tiny.scheduler.stats.retractions}`);
  await tiny.scheduler.checkIntegrity();
});

t.test('a repeated prompt reports cached tokens and skips their recompute', async (t) => {
  const sup = await start(t);
  const p = [1, ...Array.from({ length: 39 }, (_, i) => 3 + ((i * 37) % 500))];
  const first = await streamTokens(sup.generate(request(p, 8)));
  const before = sup.scheduler.stats.prefillTokens;
  const second = await streamTokens(sup.generate(request(p, 8)));
  t.same(second.ids, first.ids);
  t.same(second.last.completion_usage?.prompt_tokens_details, { cached_tokens: 32 });
  t.equal(sup.scheduler.stats.prefillTokens - before, 8, 'only the 8 uncached prompt tokens were prefilled');
});
