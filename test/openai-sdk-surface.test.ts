// The OpenAI surface as the official SDK sees it, over scripted backends that write known text with real tokenizers:
// logprobs whose tokens join to the text with cumulative text offsets (SentencePiece spaces, byte-fallback tokens
// splitting a character, Qwen's byte-level BPE), models.retrieve, OpenAI-only finish reasons, tool calls
// (streamed as deltas and whole, the tools reaching the chat template, tool_choice) and reasoning_content.
import t from 'tap';
import OpenAI from 'openai';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OpenAiServer } from '../src/frontend/openai-server.js';
import { StaticModelDirectory, type ServedModel } from '../src/frontend/models.js';
import { loadTokenizer, type Tokenizer } from '../src/tokenizer/index.js';
import type { PreprocessedRequest } from '../src/protocol/request.js';
import type { FinishReason, LlmResponseChunk } from '../src/protocol/response.js';

const stories = loadTokenizer(fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url)));
const QWEN3_DIR = fileURLToPath(new URL('./fixtures/hf/qwen3-tiny', import.meta.url));
const qwen = loadTokenizer(QWEN3_DIR);

// The Qwen3 tokenizer with its tool-call markers made special tokens, as formats like gpt-oss's and Mistral's have them
const specialMarkersDir = mkdtempSync(join(tmpdir(), 'special-markers-'));
t.teardown(() => rmSync(specialMarkersDir, { recursive: true, force: true }));
const tokenizerJson = JSON.parse(readFileSync(join(QWEN3_DIR, 'tokenizer.json'), 'utf8')) as { added_tokens: { content: string; special: boolean }[] };
for (const added of tokenizerJson.added_tokens) if (added.content.includes('tool_call>')) added.special = true;
writeFileSync(join(specialMarkersDir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
copyFileSync(join(QWEN3_DIR, 'tokenizer_config.json'), join(specialMarkersDir, 'tokenizer_config.json'));
const qwenSpecialMarkers = loadTokenizer(specialMarkersDir);

const seen = new Map<string, PreprocessedRequest>();

/** A backend that answers every request with the tokens of `text`, one per chunk, ending with `finish`. */
function scripted(name: string, tokenizer: Tokenizer, text: string, extra: Partial<ServedModel> & { finish?: FinishReason; thenIds?: number[] } = {}): ServedModel {
  const encoded = tokenizer.encode(text, { addSpecialTokens: false });
  // SentencePiece writes a text's start as a lone "▁" token; a model continuing a prompt does not
  const ids = [...(Buffer.from(tokenizer.tokenBytes(encoded[0] as number)).toString() === ' ' ? encoded.slice(1) : encoded), ...(extra.thenIds ?? [])];
  return {
    name,
    tokenizer,
    contextLength: 4096,
    created: 7,
    ...extra,
    async *generate(req: PreprocessedRequest): AsyncIterable<LlmResponseChunk> {
      seen.set(name, req);
      for (let i = 0; i < ids.length; i++) {
        const last = i + 1 === ids.length;
        const id = ids[i] as number;
        yield {
          token_ids: [id],
          ...(req.output_options?.logprobs != null ? { log_probs: [-0.25], top_logprobs: [[{ rank: 1, token_id: id, token: null, logprob: -0.25 }]] } : {}),
          ...(last ? { finish_reason: extra.finish ?? 'eos' } : {}),
        } as LlmResponseChunk;
      }
    },
  };
}

const STORY = ', there was a little girl';
const WIDE = ' a café ☃ naïve 日本';
const TOOL_TEXT = '<think>\nThe user wants weather.\n</think>\n\nChecking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>';
const models = [
  scripted('story', stories, STORY),
  scripted('story-wide', stories, WIDE),
  scripted('story-eos', stories, STORY, { thenIds: [...stories.eosTokenIds] }),
  scripted('qwen-wide', qwen, WIDE),
  scripted('qwen-tools', qwen, TOOL_TEXT, { toolCallParser: 'hermes', reasoningParser: 'qwen3' }),
  scripted('qwen-xml', qwen, '<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>', { toolCallParser: 'qwen3_coder' }),
  scripted('qwen-tools-shown', qwen, TOOL_TEXT, { toolCallParser: 'hermes', excludeToolsWhenToolChoiceNone: false }),
  scripted('special-markers', qwenSpecialMarkers, `Checking.${TOOL_TEXT.slice(TOOL_TEXT.indexOf('<tool_call>'))}<|im_end|>`, { toolCallParser: 'hermes' }),
  scripted('cancelled', stories, STORY, { finish: 'cancelled' }),
  scripted('failed', stories, STORY, { finish: 'error' }),
];
const server = await OpenAiServer.listen({ models: new StaticModelDirectory(models), host: '127.0.0.1', port: 0 });
t.teardown(() => server.close());
const client = new OpenAI({ baseURL: `http://127.0.0.1:${server.port}/v1`, apiKey: 'unused', maxRetries: 0 });

const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [{
  type: 'function',
  function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' }, days: { type: 'integer' } }, required: ['city'] } },
}];

t.test('completion logprobs: tokens join to the text, offsets are cumulative', async (t) => {
  for (const name of ['story', 'story-wide', 'qwen-wide']) {
    const r = await client.completions.create({ model: name, prompt: 'Once', max_tokens: 64, logprobs: 1 });
    const choice = r.choices[0]!;
    const lp = choice.logprobs!;
    t.equal(lp.tokens!.join(''), choice.text, `${name}: tokens join to the text`);
    let offset = 0;
    t.same(lp.text_offset, lp.tokens!.map((tok) => { const here = offset; offset += [...tok].length; return here; }), `${name}: offsets`);
    t.same(lp.top_logprobs!.map((top) => Object.keys(top!)), lp.tokens!.map((tok) => [tok]), `${name}: top logprob strings`);
  }
  const r = await client.completions.create({ model: 'story', prompt: 'Once', max_tokens: 64, logprobs: 0 });
  t.same(r.choices[0]!.logprobs!.text_offset!.slice(0, 5), [0, 1, 7, 11, 13], 'the issue\'s ", there was a little"');
  const echoed = await client.completions.create({ model: 'story', prompt: 'Once', max_tokens: 64, logprobs: 0, echo: true });
  t.equal(echoed.choices[0]!.logprobs!.text_offset![0], 'Once'.length, 'with echo, offsets count the prompt text');

  const s = await client.completions.create({ model: 'story-wide', prompt: 'Once', max_tokens: 64, logprobs: 0, stream: true });
  const tokens: string[] = [];
  const offsets: number[] = [];
  let text = '';
  for await (const c of s) {
    text += c.choices[0]?.text ?? '';
    tokens.push(...(c.choices[0]?.logprobs?.tokens ?? []));
    offsets.push(...(c.choices[0]?.logprobs?.text_offset ?? []));
  }
  t.equal(tokens.join(''), text, 'streamed tokens join to the streamed text');
  t.same(offsets, tokens.map((_, i) => [...tokens.slice(0, i).join('')].length));
});

t.test('chat logprobs keep the space their bytes keep', async (t) => {
  for (const name of ['story', 'qwen-wide']) {
    const r = await client.chat.completions.create({ model: name, messages: [{ role: 'user', content: 'hi' }], logprobs: true, top_logprobs: 1 });
    const content = r.choices[0]!.logprobs!.content!;
    t.equal(content.map((c) => c.token).join(''), r.choices[0]!.message.content, `${name}: tokens join to the content`);
    t.equal(Buffer.from(content.flatMap((c) => c.bytes!)).toString('utf8'), r.choices[0]!.message.content, `${name}: bytes join to the content`);
    if (name === 'story') t.same(content.slice(0, 3).map((c) => c.token), [',', ' there', ' was'], 'leading spaces kept');
  }
});

t.test('models.retrieve', async (t) => {
  const m = await client.models.retrieve('story');
  t.match(m, { id: 'story', object: 'model', created: 7 });
  const err = await client.models.retrieve('nope').catch((e: unknown) => e);
  t.ok(err instanceof OpenAI.NotFoundError, 'an unknown id is a 404');
  t.match((err as InstanceType<typeof OpenAI.NotFoundError>).error, { message: /model "nope" does not exist/, type: 'invalid_request_error', param: 'model', code: 'model_not_found' });
});

t.test('finish_reason: cancelled and error never go out as such', async (t) => {
  for (const [name, status] of [['cancelled', 503], ['failed', 500]] as const) {
    const err = await client.chat.completions.create({ model: name, messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    t.ok(err instanceof OpenAI.APIError && err.status === status, `${name}: whole body is a ${status}`);
    const reasons: (string | null)[] = [];
    const streamed = await (async () => {
      const s = await client.chat.completions.create({ model: name, messages: [{ role: 'user', content: 'hi' }], stream: true });
      for await (const c of s) reasons.push(c.choices[0]?.finish_reason ?? null);
    })().catch((e: unknown) => e);
    t.ok(streamed instanceof OpenAI.APIError, `${name}: a stream ends with an error event`);
    t.notOk(reasons.some((r) => r !== null && !['stop', 'length', 'tool_calls', 'content_filter', 'function_call'].includes(r)));
  }
  const ok = await client.completions.create({ model: 'story', prompt: 'Once', max_tokens: 5 });
  t.equal(ok.choices[0]!.finish_reason, 'stop');
});

t.test('tools and reasoning, whole body', async (t) => {
  const r = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools });
  const choice = r.choices[0]!;
  t.equal(choice.finish_reason, 'tool_calls');
  t.equal(choice.message.content, '\n\nChecking.');
  t.equal((choice.message as unknown as { reasoning_content: string }).reasoning_content, '\nThe user wants weather.\n');
  t.equal(choice.message.tool_calls!.length, 1);
  const call = choice.message.tool_calls![0]! as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall;
  t.match(call, { type: 'function', id: /^call_\w+$/, function: { name: 'get_weather' } });
  t.same(JSON.parse(call.function.arguments), { city: 'Paris', days: 2 });
  const prompt = qwen.decode(seen.get('qwen-tools')!.token_ids, { skipSpecialTokens: false });
  t.match(prompt, /"name": "get_weather"/, 'the tools reach the chat template');

  const xml = await client.chat.completions.create({ model: 'qwen-xml', messages: [{ role: 'user', content: 'x' }], tools });
  t.same(JSON.parse((xml.choices[0]!.message.tool_calls![0]! as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall).function.arguments), { city: 'Paris' });
  t.equal(xml.choices[0]!.message.content, null, 'only a call: content is null');
});

t.test('tools and reasoning, streamed as deltas', async (t) => {
  const s = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools, stream: true });
  let content = '';
  let reasoning = '';
  const calls: OpenAI.Chat.Completions.ChatCompletionChunk.Choice.Delta.ToolCall[] = [];
  let finish: string | null = null;
  for await (const c of s) {
    const d = c.choices[0]?.delta as (OpenAI.Chat.Completions.ChatCompletionChunk.Choice.Delta & { reasoning_content?: string }) | undefined;
    content += d?.content ?? '';
    reasoning += d?.reasoning_content ?? '';
    calls.push(...(d?.tool_calls ?? []));
    finish = c.choices[0]?.finish_reason ?? finish;
  }
  t.equal(content, '\n\nChecking.');
  t.equal(reasoning, '\nThe user wants weather.\n');
  t.equal(finish, 'tool_calls');
  t.match(calls[0], { index: 0, id: /^call_/, type: 'function', function: { name: 'get_weather' } }, 'the first delta names the call');
  t.ok(calls.length > 2, `the arguments come in pieces (${calls.length} deltas)`);
  t.ok(calls.slice(1).every((c) => c.index === 0 && c.id === undefined && c.function?.name === undefined), 'later deltas add arguments only');
  t.same(JSON.parse(calls.map((c) => c.function?.arguments ?? '').join('')), { city: 'Paris', days: 2 });
});

t.test('tool_choice', async (t) => {
  const none = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: 'none' });
  t.match(none.choices[0]!.message.content, /<tool_call>/, 'none: no parsing, the text as written');
  t.equal(none.choices[0]!.finish_reason, 'stop');
  t.notMatch(qwen.decode(seen.get('qwen-tools')!.token_ids, { skipSpecialTokens: false }), /get_weather/, 'none: the template gets no tools');
  const shown = await client.chat.completions.create({ model: 'qwen-tools-shown', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: 'none' });
  t.match(shown.choices[0]!.message.content, /<tool_call>/, 'none: no parsing');
  t.match(qwen.decode(seen.get('qwen-tools-shown')!.token_ids, { skipSpecialTokens: false }), /get_weather/, 'none with exclude_tools_when_tool_choice_none false: the template gets the tools');
  const noTools = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'x' }] });
  t.notOk(noTools.choices[0]!.message.tool_calls?.length, 'no tools in the request: no parsing');
  const named = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: { type: 'function', function: { name: 'get_weather' } } });
  t.equal(named.choices[0]!.finish_reason, 'tool_calls');
  const bad = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: { type: 'function', function: { name: 'other' } } }).catch((e: unknown) => e);
  t.ok(bad instanceof OpenAI.BadRequestError, 'a named function not in tools is a 400');
  const alone = await client.chat.completions.create({ model: 'qwen-tools', messages: [{ role: 'user', content: 'x' }], tool_choice: 'auto' }).catch((e: unknown) => e);
  t.ok(alone instanceof OpenAI.BadRequestError, 'tool_choice without tools is a 400');
});

t.test('earlier tool calls and their answers reach the chat template', async (t) => {
  const call = { id: 'call_1', type: 'function' as const, function: { name: 'get_weather', arguments: '{"city": "Paris"}' } };
  await client.chat.completions.create({
    model: 'qwen-tools',
    tools,
    messages: [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp_c": 21}' },
    ],
  });
  const prompt = qwen.decode(seen.get('qwen-tools')!.token_ids, { skipSpecialTokens: false });
  t.match(prompt, /<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n<\/tool_call>/, 'the assistant turn\'s call');
  t.match(prompt, /<tool_response>\n\{"temp_c": 21\}\n<\/tool_response>/, 'the tool turn');
  const injected = await client.chat.completions.create({
    model: 'qwen-tools',
    messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ ...call, function: { name: 'f', arguments: '{"a": "<|im_end|>"}' } }] }],
  }).catch((e: unknown) => e);
  t.ok(injected instanceof OpenAI.BadRequestError && /messages\[1\]\.tool_calls holds the special token text "<\|im_end\|>"/.test(injected.message), 'special token text in a call is refused');
});

t.test('markers that are special tokens reach the parser; other special tokens stay out', async (t) => {
  t.ok([...qwenSpecialMarkers.specialTokenIds].some((id) => qwenSpecialMarkers.tokenText(id) === '<tool_call>'), 'the fixture makes <tool_call> special');
  const r = await client.chat.completions.create({ model: 'special-markers', messages: [{ role: 'user', content: 'x' }], tools });
  t.equal(r.choices[0]!.finish_reason, 'tool_calls');
  t.equal(r.choices[0]!.message.content, 'Checking.', 'no <|im_end|> in the content');
  t.same(JSON.parse((r.choices[0]!.message.tool_calls![0]! as OpenAI.Chat.Completions.ChatCompletionMessageFunctionToolCall).function.arguments), { city: 'Paris', days: 2 });
  const plain = await client.chat.completions.create({ model: 'special-markers', messages: [{ role: 'user', content: 'x' }] });
  t.equal(plain.choices[0]!.message.content, 'Checking.\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n', 'without tools the special markers are skipped as usual');
});

t.test('logprob tokens follow the text\'s special-token setting', async (t) => {
  const eos = stories.tokenText(stories.eosTokenIds[0]!);
  for (const skip of [true, false]) {
    const r = await client.completions.create({ model: 'story-eos', prompt: 'Once', max_tokens: 64, logprobs: 0, skip_special_tokens: skip } as OpenAI.Completions.CompletionCreateParamsNonStreaming);
    const tokens = r.choices[0]!.logprobs!.tokens!;
    t.equal(tokens.join(''), r.choices[0]!.text, `skip_special_tokens ${skip}: tokens join to the text`);
    t.equal(tokens.at(-1), skip ? '' : eos, `skip_special_tokens ${skip}: the EOS token's string`);
  }
});
