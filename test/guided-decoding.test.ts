// Grammar-constrained decoding (src/guided): the per-sequence token bitmask of the step descriptor, applied by the
// CPU engine before sampling (and checked at the addon boundary); many JSON schemas, regexes and choices run through
// the real engine (stories260K) with greedy and random sampling, every output parsed and validated with ajv; and the
// OpenAI surface (response_format, guided_*) driven by the OpenAI SDK against the frontend over a real Supervisor.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import OpenAI from 'openai';
import { decodeStep, packFor, packStep } from '../src/engine/step.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { SamplingParams } from '../src/engine/types.js';
import { LlmError } from '../src/errors.js';
import { GrammarCompilers, grammarSpecOf, type GrammarSpec } from '../src/guided/guides.js';
import { GrammarThread } from '../actors/grammar.js';
import { Scheduler, engineExecutor, type GuideVerdict, type RequestOutput, type TokenGuide } from '../src/scheduler/scheduler.js';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { StaticModelDirectory, type ServedModel } from '../src/frontend/models.js';
import type { GuidedDecoding } from '../src/protocol/request.js';
import { Supervisor } from '../src/supervisor.js';
import { loadTokenizer } from '../src/tokenizer/index.js';

const ajv = new Ajv({ strict: false });
const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));
const EOS = 2;
const spec = await loadModelSpec(MODEL);
const tokenizer = loadTokenizer(MODEL);
const V = spec.vocabSize;
const WORDS = Math.ceil(V / 32);
const greedy: SamplingParams = { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 };
const random = (seed: number): SamplingParams => ({ temperature: 1, topP: 1, topK: -1, minP: 0, seed, logprobs: -1 });

const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize: 16, numPages: 256, memFractionStatic: 0.5, maxBatchTokens: 512, maxSeqsPerStep: 16, threads: 1 });
t.teardown(() => engine.close());
const prompt = tokenizer.encode('Once upon a time', { addSpecialTokens: true });

function maskOf(allowed: readonly number[]): Int32Array {
  const m = new Int32Array(WORDS);
  for (const id of allowed) m[id >> 5] |= 1 << (id & 31);
  return m;
}

t.test('engine: a token bitmask confines every draw and the returned logits; the addon checks it', async (t) => {
  const allowed = [5, 77, 300, V - 1];
  const pages = Array.from({ length: Math.ceil(prompt.length / 16) }, (_, i) => i);
  for (const sampling of [greedy, random(1), random(2), { ...random(3), topK: 2 }, { ...random(4), logprobs: 3 }]) {
    const r = engine.step(packFor(engine, [{ tokenIds: prompt, startPos: 0, pages, sample: true, sampling, outputIndex: 0, tokenMask: maskOf(allowed) }], { returnLogits: true }));
    t.ok(allowed.includes(r.tokens[0]), `temperature ${sampling.temperature}: token ${r.tokens[0]} is allowed`);
    const logits = r.logits!;
    let finiteOutside = 0;
    for (let id = 0; id < V; id++) if (!allowed.includes(id) && logits[id] !== -Infinity) finiteOutside++;
    t.equal(finiteOutside, 0, 'every other logit is -inf');
    t.ok(allowed.every((id) => Number.isFinite(logits[id])), 'allowed logits stay finite');
    if (sampling.logprobs > 0) t.ok(Number.isFinite(r.logprobs[0]) && r.logprobs[0] <= 0, 'the logprob is renormalised over the allowed ids');
  }
  // One masked and one free sequence in a step: the mask is the first one's only.
  const two = engine.step(packFor(engine, [
    { tokenIds: prompt, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0, tokenMask: maskOf([9]) },
    { tokenIds: prompt, startPos: 0, pages: pages.map((p) => p + 32), sample: true, sampling: greedy, outputIndex: 0 },
  ]));
  const free = engine.step(packFor(engine, [{ tokenIds: prompt, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0 }]));
  t.equal(two.tokens[0], 9);
  t.equal(two.tokens[1], free.tokens[0], 'the unmasked sequence samples as without masks');

  const desc = packFor(engine, [{ tokenIds: prompt, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0, tokenMask: maskOf(allowed) }]);
  t.same(Array.from(decodeStep(desc).seqs[0].tokenMask!), Array.from(maskOf(allowed)), 'decodeStep reads the mask back');

  const refused = (desc: Int32Array, pattern: RegExp, what: string) => {
    let error: unknown = null;
    try {
      engine.step(desc);
    } catch (err) {
      error = err;
    }
    t.ok(error instanceof LlmError && error.code === 'LLM_ERR_STEP_INVALID' && pattern.test(error.message), `${what}: ${String(error)}`);
  };
  refused(packFor(engine, [{ tokenIds: prompt, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0, tokenMask: new Int32Array(WORDS) }]),
    /seq 0: token bitmask row 0 allows no token/, 'a mask allowing nothing');
  const beyond = new Int32Array(WORDS);
  if (V % 32) beyond[WORDS - 1] = ~((1 << (V % 32)) - 1); // only ids >= vocab
  if (V % 32) refused(packFor(engine, [{ tokenIds: prompt, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0, tokenMask: beyond }]), /allows no token/, 'a mask allowing only ids past the vocabulary');
  refused(packStep([{ tokenIds: prompt, startPos: 0, pages, sample: true, sampling: greedy, outputIndex: 0, tokenMask: new Int32Array(WORDS + 1).fill(-1) }], 16),
    /header\.maskWords \d+ != \d+/, 'a mask of the wrong width');
  t.throws(() => packFor(engine, [{ tokenIds: prompt, startPos: 0, pages, sample: false, sampling: greedy, outputIndex: 0, tokenMask: maskOf(allowed) }]),
    /tokenMask needs a draw/, 'the packer refuses a mask without a draw');
});

/** Runs guided requests through the scheduler over the engine; resolves with each one's text and finish reason. */
async function runGuided(sched: Scheduler, grammars: { guide(spec: GrammarSpec): Promise<TokenGuide> }, guided: GuidedDecoding, sampling: SamplingParams, id: string) {
  const guide = await grammars.guide(grammarSpecOf(guided)!);
  const tokens: number[] = [];
  const last = await new Promise<RequestOutput>((resolve) =>
    sched.submit(
      { id, tokenIds: prompt, maxTokens: 400, minTokens: 0, ignoreEos: false, eosTokenIds: [EOS], stopTokenIds: [], sampling },
      (o) => {
        tokens.push(...o.tokenIds);
        if (o.finishReason) resolve(o);
      },
      guide,
    ),
  );
  return { text: tokenizer.decode(tokens), finishReason: last.finishReason, error: last.error };
}

const SCHEMAS: Record<string, unknown>[] = [
  { type: 'object', properties: { name: { type: 'string', maxLength: 12 }, age: { type: 'integer', minimum: 0, maximum: 120 } }, required: ['name', 'age'] },
  { type: 'object', properties: { user: { type: 'object', properties: { id: { type: 'integer', minimum: -50, maximum: 50 }, tags: { type: 'array', items: { enum: ['a', 'b', 'c'] }, maxItems: 3 } }, required: ['id', 'tags'] } }, required: ['user'] },
  { type: 'array', items: { type: 'boolean' }, minItems: 1, maxItems: 5 },
  { type: 'object', properties: { color: { enum: ['red', 'green', 'blue'] } }, required: ['color'] },
  { type: 'object', properties: { x: { type: 'number', minimum: -10, maximum: 10 }, y: { type: 'integer', minimum: -100, maximum: 100 } }, required: ['x', 'y'] },
  { type: 'object', properties: { code: { type: 'string', pattern: '^[A-Z]{3}-[0-9]{2}$' } }, required: ['code'] },
  { type: 'object', properties: { ok: { type: 'boolean' }, kind: { const: 'story' } }, required: ['ok', 'kind'] },
  { type: 'object', properties: { v: { anyOf: [{ type: 'integer', minimum: 0, maximum: 999 }, { type: 'string', maxLength: 5 }] } }, required: ['v'] },
  { type: 'object', properties: { a: { type: 'integer', minimum: 0, maximum: 5 }, b: { type: 'string', maxLength: 4 } }, required: ['a'] },
  { type: 'string', enum: ['cat', 'dog', 'a big bird'] },
  { type: 'array', items: { type: 'object', properties: { k: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['k'] }, minItems: 1, maxItems: 3 },
  { type: 'object', properties: { note: { type: ['string', 'null'], maxLength: 8 }, n: { type: 'integer', minimum: 0, maximum: 3 } }, required: ['note', 'n'] },
];

t.test('scheduler + engine: every output parses and validates against its schema; regex and choice outputs match', async (t) => {
  const sched = new Scheduler(engineExecutor(engine), {
    maxRunningRequests: 16, chunkedPrefillSize: 64, maxPrefillTokens: 512, maxBatchTokens: 512, maxSeqsPerStep: 16, enableOverlap: true, enablePrefixCache: true,
  });
  sched.start();
  t.teardown(() => sched.stop());
  const grammars = GrammarCompilers.create(tokenizer, V);
  const samplings = [greedy, random(11), random(12)];
  // All at once: guided requests share steps with each other.
  const runs = SCHEMAS.flatMap((schema, i) => samplings.map((sampling, j) => ({ schema, i, j, done: runGuided(sched, grammars, { json: schema }, sampling, `schema-${i}-${j}`) })));
  for (const { schema, i, j, done } of runs) {
    const { text, finishReason } = await done;
    const what = `schema ${i}, sampling ${j}: ${JSON.stringify(text)}`;
    t.equal(finishReason, 'stop', `${what} ends where the grammar does`);
    let value: unknown;
    t.doesNotThrow(() => (value = JSON.parse(text)), `${what} parses`);
    t.ok(ajv.validate(schema, value), `${what} validates${ajv.errors ? ': ' + ajv.errorsText() : ''}`);
  }
  for (const sampling of samplings) {
    const obj = await runGuided(sched, grammars, { json: { type: 'object' } }, { ...sampling, topK: 5 }, `object-${sampling.seed}`);
    if (obj.finishReason === 'stop') t.type(JSON.parse(obj.text), 'object', 'json_object: an object');
    const re = await runGuided(sched, grammars, { regex: '[a-z]{1,8} (cat|dog) [0-9]{2}' }, sampling, `regex-${sampling.seed}`);
    t.match(re.text, /^[a-z]{1,8} (cat|dog) [0-9]{2}$/, `regex: ${JSON.stringify(re.text)}`);
    t.equal(re.finishReason, 'stop');
    const choice = await runGuided(sched, grammars, { choice: ['happy', 'sad', 'very angry'] }, sampling, `choice-${sampling.seed}`);
    t.ok(['happy', 'sad', 'very angry'].includes(choice.text), `choice: ${JSON.stringify(choice.text)}`);
  }
  const tagged = await runGuided(sched, grammars, {
    structural_tag: { type: 'structural_tag', format: { type: 'sequence', elements: [{ type: 'const_string', value: '<answer>' }, { type: 'regex', pattern: '[a-z]{2,5}!' }] } },
  }, random(5), 'structural-tag');
  t.match(tagged.text, /^<answer>[a-z]{2,5}!$/, `structural_tag: ${JSON.stringify(tagged.text)}`);
  for (const [guided, field] of [
    [{ json: '{"type": 5}' }, 'sampling_options.guided_decoding.json'],
    [{ json: 'not json' }, 'sampling_options.guided_decoding.json'],
    [{ regex: '(ab' }, 'sampling_options.guided_decoding.regex'],
    [{ grammar: 'root ::= (' }, 'sampling_options.guided_decoding.grammar'],
  ] as const) {
    const error = await (async () => grammars.guide(grammarSpecOf(guided)!))().then(() => null, (err: unknown) => err);
    t.ok(error instanceof LlmError && error.code === 'LLM_ERR_BAD_REQUEST' && error.message.startsWith(field), `${JSON.stringify(guided)} is refused naming ${field}: ${String(error)}`);
  }
  const after = await runGuided(sched, grammars, { choice: ['yes', 'no'] }, greedy, 'after-refusals');
  t.ok(['yes', 'no'].includes(after.text), 'grammars compile again after refusals (a fresh xgrammar instance)');
  sched.checkIntegrity();
});

/** A guide over a fixed token set that ends after `length` tokens, or whose mask fails at token `failAt`. */
class ScriptedGuide implements TokenGuide {
  mask: Int32Array | null;
  accepted: number[] = [];
  disposed = false;
  constructor(
    private readonly allowed: number[],
    private readonly length: number,
    private readonly failAt = -1,
  ) {
    this.mask = maskOf(allowed);
  }
  async accept(token: number): Promise<GuideVerdict> {
    if (!this.allowed.includes(token)) return 'rejected';
    this.accepted.push(token);
    this.mask = null;
    if (this.accepted.length === this.length) return 'end';
    await Promise.resolve();
    if (this.accepted.length === this.failAt) throw new LlmError('LLM_ERR_INTERNAL', 'scripted mask failure');
    this.mask = maskOf(this.allowed);
    return 'next';
  }
  dispose(): void {
    this.disposed = true;
  }
}

t.test('scheduler: guided requests end where the grammar does, a failing guide ends only its request, guides are disposed', async (t) => {
  const sched = new Scheduler(engineExecutor(engine), {
    maxRunningRequests: 8, chunkedPrefillSize: 64, maxPrefillTokens: 512, maxBatchTokens: 512, maxSeqsPerStep: 8, enableOverlap: true, enablePrefixCache: true,
  });
  sched.start();
  t.teardown(() => sched.stop());
  const run = (id: string, guide: TokenGuide | null, maxTokens = 30) =>
    new Promise<{ tokens: number[]; last: RequestOutput }>((resolve) => {
      const tokens: number[] = [];
      sched.submit(
        { id, tokenIds: prompt, maxTokens, minTokens: 0, ignoreEos: true, eosTokenIds: [EOS], stopTokenIds: [], sampling: random(7) },
        (o) => {
          tokens.push(...o.tokenIds);
          if (o.finishReason) resolve({ tokens, last: o });
        },
        guide,
      );
    });
  const ends = new ScriptedGuide([40, 41, 42], 7);
  const fails = new ScriptedGuide([50, 51], 20, 3);
  const long = new ScriptedGuide([60, 61, 62, 63], 100);
  const [a, b, c, free] = await Promise.all([run('ends', ends), run('fails', fails), run('long', long, 12), run('free', null, 12)]);
  t.equal(a.last.finishReason, 'stop');
  t.same(a.tokens, ends.accepted, 'every token went through the guide');
  t.equal(a.tokens.length, 7);
  t.ok(a.tokens.every((x) => [40, 41, 42].includes(x)));
  t.equal(b.last.finishReason, 'error');
  t.match(b.last.error?.message ?? '', /scripted mask failure/);
  t.equal(b.tokens.length, 3);
  t.equal(c.last.finishReason, 'length', 'max_tokens still ends a guided request');
  t.ok(c.tokens.every((x) => [60, 61, 62, 63].includes(x)));
  t.equal(free.tokens.length, 12);
  t.ok([ends, fails, long].every((g) => g.disposed), 'the scheduler disposed of every guide');
  const refused = new ScriptedGuide([1], 1);
  t.throws(() => sched.submit({ id: 'x', tokenIds: [], maxTokens: 1, minTokens: 0, ignoreEos: false, eosTokenIds: [], stopTokenIds: [], sampling: greedy }, () => {}, refused));
  t.ok(refused.disposed, 'a refused request disposes of its guide too');
  sched.checkIntegrity();
});

t.test('grammar thread: guides computed in another thread drive the scheduler; refusals name the field; close fails what is pending', async (t) => {
  const thread = new GrammarThread({ tokenizer: { modelPath: MODEL, tokenizerPath: MODEL }, vocabSize: V });
  t.teardown(() => thread.close());
  const sched = new Scheduler(engineExecutor(engine), {
    maxRunningRequests: 8, chunkedPrefillSize: 64, maxPrefillTokens: 512, maxBatchTokens: 512, maxSeqsPerStep: 8, enableOverlap: true, enablePrefixCache: true,
  });
  sched.start();
  t.teardown(() => sched.stop());
  const runs = SCHEMAS.slice(0, 6).map((schema, i) => ({ schema, done: runGuided(sched, thread, { json: schema }, random(20 + i), `thread-${i}`) }));
  for (const { schema, done } of runs) {
    const { text, finishReason } = await done;
    t.equal(finishReason, 'stop');
    t.ok(ajv.validate(schema, JSON.parse(text)), `validates: ${text}`);
  }
  const bad = await thread.guide(grammarSpecOf({ regex: '(x' })!).then(() => null, (e: unknown) => e);
  t.ok(bad instanceof LlmError && bad.code === 'LLM_ERR_BAD_REQUEST' && /^sampling_options\.guided_decoding\.regex: /.test(bad.message), String(bad));
  const guide = await thread.guide(grammarSpecOf({ choice: ['ab', 'cd'] })!);
  t.ok(guide.mask && guide.mask.some((w) => w !== 0), 'a first mask arrives with the guide');
  const pending = guide.accept(tokenizer.encode('ab', { addSpecialTokens: false })[0]);
  thread.close();
  const closed = await pending.then(() => null, (e: unknown) => e);
  t.ok(closed instanceof LlmError && closed.code === 'LLM_ERR_SHUTDOWN', `pending accept fails at close: ${String(closed)}`);
  const again = await thread.guide(grammarSpecOf({ choice: ['yes'] })!);
  t.ok(again.mask, 'a closed thread starts afresh at the next guide');
  again.dispose();
});

t.test('OpenAI SDK: response_format and guided_* through the frontend and a worker', async (t) => {
  const sup = await Supervisor.start({ modelPath: MODEL, device: 'cpu', cpuThreads: 1, numPages: 128, maxRunningRequests: 8, chunkedPrefillSize: 64 });
  t.teardown(() => sup.stop());
  const model: ServedModel = {
    name: 'stories', tokenizer, contextLength: 512, created: 1,
    generate: (req, { signal }) => sup.generate(req, { signal }),
  };
  const server = await OpenAiServer.listen({ models: new StaticModelDirectory([model]), host: '127.0.0.1', port: 0 });
  t.teardown(() => server.close());
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${server.port}/v1`, apiKey: 'none', maxRetries: 0 });
  const schema = SCHEMAS[0];

  const chat = await client.chat.completions.create({
    model: 'stories', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 200, temperature: 0,
    response_format: { type: 'json_schema', json_schema: { name: 'person', schema, strict: true } },
  });
  const content = chat.choices[0].message.content!;
  t.equal(chat.choices[0].finish_reason, 'stop');
  t.ok(ajv.validate(schema, JSON.parse(content)), `chat json_schema: ${content}`);

  const stream = await client.completions.create({
    model: 'stories', prompt: 'Once upon a time', max_tokens: 200, temperature: 1, seed: 5, stream: true,
    response_format: { type: 'json_schema', json_schema: { name: 'x', schema: SCHEMAS[1] } },
  } as OpenAI.CompletionCreateParamsStreaming);
  let streamed = '';
  for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? '';
  t.ok(ajv.validate(SCHEMAS[1], JSON.parse(streamed)), `streamed completion json_schema: ${streamed}`);

  const regex = await client.completions.create({ model: 'stories', prompt: 'Once upon a time', max_tokens: 50, temperature: 0, guided_regex: '[A-Z][a-z]{2,6}!' } as OpenAI.CompletionCreateParamsNonStreaming);
  t.match(regex.choices[0].text, /^[A-Z][a-z]{2,6}!$/, `guided_regex: ${regex.choices[0].text}`);
  const choice = await client.completions.create({ model: 'stories', prompt: 'The dog was', max_tokens: 50, temperature: 1, seed: 3, guided_choice: ['big', 'small'] } as OpenAI.CompletionCreateParamsNonStreaming);
  t.ok(['big', 'small'].includes(choice.choices[0].text), `guided_choice: ${choice.choices[0].text}`);
  const json = await client.completions.create({ model: 'stories', prompt: 'Once', max_tokens: 100, temperature: 0, guided_json: SCHEMAS[3] } as OpenAI.CompletionCreateParamsNonStreaming);
  t.ok(ajv.validate(SCHEMAS[3], JSON.parse(json.choices[0].text)), `guided_json: ${json.choices[0].text}`);

  const refusal = async (body: Record<string, unknown>, param: string, message: RegExp) => {
    const err = await client.completions.create({ model: 'stories', prompt: 'x', max_tokens: 5, ...body } as OpenAI.CompletionCreateParamsNonStreaming).then(
      () => null,
      (e: unknown) => e,
    );
    t.ok(err instanceof OpenAI.BadRequestError, `${JSON.stringify(body)}: 400`);
    const e = err as InstanceType<typeof OpenAI.BadRequestError>;
    t.equal(e.param, param);
    t.match(e.message, message);
  };
  await refusal({ response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 5 } } } }, 'response_format', /response_format\.json_schema\.schema: the grammar does not compile/);
  await refusal({ response_format: { type: 'json_schema', json_schema: { name: 'x' } } }, 'response_format', /needs its schema/);
  await refusal({ response_format: { type: 'yaml' } }, 'response_format', /response_format\.type/);
  await refusal({ guided_regex: '[a-' }, 'guided_regex', /guided_regex: the grammar does not compile/);
  await refusal({ guided_regex: 'a+', guided_choice: ['a'] }, 'guided_choice', /at most one/);
});
