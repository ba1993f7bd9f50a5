// `dynamo-sglang run` as a user runs it: a real process serving the bundled stories260K over OpenAI HTTP, the
// golden text through /v1/completions, a streamed chat completion, and SIGTERM ending it with exit code 0.
import t from 'tap';
import { startCli } from './helpers/cli-process.js';

const GOLDEN =
  ', there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it,';

t.test('run serves the bundled model end to end', async (t) => {
  const p = startCli(['run', '--http-port', '0', '--http-host', '127.0.0.1', '--device', 'cpu']);
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/);
  t.match(p.stdout(), /curl http:\/\/127\.0\.0\.1:\d+\/v1\/completions/, 'prints a ready-to-paste curl');

  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  t.same(models.data.map((m) => m.id), ['stories260K']);

  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 64, temperature: 0 }),
  });
  t.equal(r.status, 200);
  const body = (await r.json()) as { choices: { text: string; finish_reason: string }[]; usage: { prompt_tokens: number; completion_tokens: number } };
  t.ok(body.choices[0].text.startsWith(GOLDEN), `golden text, got: ${body.choices[0].text}`);
  t.equal(body.usage.completion_tokens, 64);
  t.equal(body.choices[0].finish_reason, 'length');

  const s = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 12, temperature: 0, stream: true }),
  });
  const events = (await s.text()).split('\n\n').filter(Boolean);
  t.equal(events.at(-1), 'data: [DONE]');
  const content = events.slice(0, -1).map((e) => JSON.parse(e.slice(6))).map((c) => c.choices[0]?.delta?.content ?? '').join('');
  t.ok(content.length > 10, `streamed content: ${content}`);

  p.kill('SIGTERM');
  const exit = await p.exited;
  t.equal(exit.code, 0, `exit code (stderr: ${p.stderr()})`);
});
