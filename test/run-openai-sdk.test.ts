// `dynamo-sglang run` on the bundled stories260K, driven by the official OpenAI SDK: completion logprobs whose
// tokens join to the text with cumulative offsets, chat logprobs, models.retrieve (and its 404), and the worker's
// --dyn-reasoning-parser reaching the frontend through the model card (deepseek_r1: the output is reasoning until a
// "</think>" this model never writes).
import t from 'tap';
import OpenAI from 'openai';
import { startCli } from './helpers/cli-process.js';

t.test('run, through the OpenAI SDK', async (t) => {
  const p = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--device', 'cpu', '--dyn-reasoning-parser', 'deepseek_r1']);
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+\/v1)/);
  const client = new OpenAI({ baseURL: url, apiKey: 'unused', maxRetries: 0 });

  t.match(await client.models.retrieve('stories260K'), { id: 'stories260K', object: 'model' });
  const missing = await client.models.retrieve('gpt-4').catch((e: unknown) => e);
  t.ok(missing instanceof OpenAI.NotFoundError, 'an unknown model id is a 404');

  const c = await client.completions.create({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 24, temperature: 0, logprobs: 2 });
  const lp = c.choices[0]!.logprobs!;
  t.ok(c.choices[0]!.text.startsWith(', there was a little'), c.choices[0]!.text);
  t.equal(lp.tokens!.join(''), c.choices[0]!.text, 'tokens join to the text');
  t.same(lp.text_offset!.slice(0, 5), [0, 1, 7, 11, 13], 'offsets of ", there was a little"');
  t.equal(lp.top_logprobs!.length, 24);
  t.equal(c.choices[0]!.finish_reason, 'length');

  const chat = await client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0, logprobs: true, top_logprobs: 1 });
  const msg = chat.choices[0]!.message as OpenAI.Chat.Completions.ChatCompletionMessage & { reasoning_content?: string | null };
  t.equal(msg.content, '', 'deepseek_r1: no "</think>", so no answer yet');
  t.ok((msg.reasoning_content ?? '').length > 10, `reasoning_content: ${msg.reasoning_content}`);
  const tokens = chat.choices[0]!.logprobs!.content!;
  t.equal(tokens.map((x) => x.token).join(''), msg.reasoning_content, 'chat logprob tokens join to the generated text');
  for (const x of tokens) t.equal(Buffer.from(x.bytes!).toString('utf8'), x.token, `token ${JSON.stringify(x.token)} matches its bytes`);

  const s = await client.chat.completions.create({ model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0, stream: true });
  let reasoning = '';
  let finish: string | null = null;
  for await (const chunk of s) {
    reasoning += (chunk.choices[0]?.delta as { reasoning_content?: string } | undefined)?.reasoning_content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  t.equal(reasoning, msg.reasoning_content, 'streamed reasoning equals the whole body\'s');
  t.equal(finish, 'length');

  p.kill('SIGTERM');
  t.equal((await p.exited).code, 0, `exit code (stderr: ${p.stderr()})`);
});
