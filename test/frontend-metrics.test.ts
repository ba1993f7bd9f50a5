// The frontend's /metrics after real requests: the reference frontend's dynamo_frontend_* families, labels and
// buckets (requests by model, endpoint, request type, status and error type; inflight and queued back at 0; TTFT,
// ITL, request duration, input and output sequence tokens).
import t from 'tap';
import { logBuckets } from '../src/frontend/frontend-metrics.js';
import { startCli } from './helpers/cli-process.js';

/** The value of one sample line `name{labels} value` (labels in the exposition's order). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{ ]+(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const have = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) return Number(m[2]);
  }
  return undefined;
}

t.test('buckets are the reference frontend\'s log-spaced ones', async (t) => {
  t.same(logBuckets(1, 512, 10), [0, 2, 4, 8, 16, 32, 64, 130, 260, 510], 'request duration (the max rounded too)');
  const ttft = logBuckets(0.001, 480, 18);
  t.equal(ttft.length, 18);
  t.equal(ttft[0], 0);
  t.equal(ttft.at(-1), 480);
  t.ok(ttft.every((b, i) => i === 0 || b > ttft[i - 1]!), 'increasing');
  t.same(logBuckets(0.001, 2, 13).slice(0, 4), [0, 0.0019, 0.0035, 0.0067], 'ITL, 2 significant figures');
});

t.test('/metrics after completions, a streamed chat and an unknown model', async (t) => {
  const p = startCli(['run', '--http-port', '0', '--device', 'cpu']);
  t.teardown(() => p.kill('SIGKILL'));
  const [, url] = await p.waitFor(/serving "stories260K" at (http:\/\/[0-9.:]+)\/v1/);
  const post = (path: string, body: unknown) =>
    fetch(`${url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  const unary = (await (await post('/v1/completions', { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 12, temperature: 0 })).json()) as { usage: { prompt_tokens: number; completion_tokens: number } };
  const streamed = await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
  const events = (await streamed.text()).split('\n\n').filter((e) => e.startsWith('data: {'));
  const chatUsage = (JSON.parse(events.at(-1)!.slice(6)) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
  t.equal((await post('/v1/completions', { model: 'no-such-model', prompt: 'x' })).status, 404);

  const r = await fetch(`${url}/metrics`);
  t.equal(r.status, 200);
  t.match(r.headers.get('content-type'), /^text\/plain/);
  const text = await r.text();
  const model = { model: 'stories260K' };
  t.equal(sample(text, 'dynamo_frontend_requests_total', { ...model, endpoint: 'completions', request_type: 'unary', status: 'success', error_type: 'none' }), 1);
  t.equal(sample(text, 'dynamo_frontend_requests_total', { ...model, endpoint: 'chat_completions', request_type: 'stream', status: 'success', error_type: 'none' }), 1);
  t.equal(sample(text, 'dynamo_frontend_requests_total', { model: 'no-such-model', endpoint: 'completions', request_type: 'unary', status: 'error', error_type: 'not_found' }), 1);
  t.equal(sample(text, 'dynamo_frontend_inflight_requests', model), 0);
  t.equal(sample(text, 'dynamo_frontend_queued_requests', model), 0);
  t.equal(sample(text, 'dynamo_frontend_time_to_first_token_seconds_count', model), 2);
  t.equal(sample(text, 'dynamo_frontend_request_duration_seconds_count', model), 2);
  t.equal(sample(text, 'dynamo_frontend_inter_token_latency_seconds_count', model)! > 0, true, 'inter-token latencies observed');
  t.equal(sample(text, 'dynamo_frontend_input_sequence_tokens_sum', model), unary.usage.prompt_tokens + chatUsage.prompt_tokens);
  t.equal(sample(text, 'dynamo_frontend_output_sequence_tokens_sum', model), unary.usage.completion_tokens + chatUsage.completion_tokens);
  t.equal(sample(text, 'dynamo_frontend_output_tokens_total', model), unary.usage.completion_tokens + chatUsage.completion_tokens);
  t.equal(sample(text, 'dynamo_frontend_request_duration_seconds_bucket', { ...model, le: '510' }), 2, 'the reference\'s request-duration buckets');
  t.equal(sample(text, 'dynamo_frontend_time_to_first_token_seconds_bucket', { ...model, le: '480' }), 2, 'the reference\'s TTFT buckets');
  p.kill('SIGTERM');
  await p.exited;
});
