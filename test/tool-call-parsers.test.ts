// Tool-call parsers over every chunking of their input (one split at every point, every character alone, the whole
// at once): the same calls and content each time, and text that cannot start a marker is never held back.
import t from 'tap';
import { toolCallParser, type ParsedToolCall } from '../src/frontend/tool-calls/parser.js';

interface ToolCallDelta {
  content: string;
  calls: ParsedToolCall[];
}

function chunkings(text: string): string[][] {
  const out: string[][] = [[text], [...text]];
  for (let i = 1; i < text.length; i++) out.push([text.slice(0, i), text.slice(i)]);
  return out;
}

const types = new Map([['get_weather', new Map([['city', 'string'], ['days', 'integer']])]]);

/** Content and whole calls (arguments compared as parsed JSON: streamed ones keep the model's own spacing). */
function run(name: string, pieces: readonly string[]): { content: string; calls: { name: string; arguments: unknown }[] } {
  const p = toolCallParser(name)!.create(types);
  let content = '';
  const calls: ParsedToolCall[] = [];
  for (const delta of [...pieces.map((x) => p.push(x)), p.end()]) {
    content += delta.content;
    for (const piece of delta.calls) {
      if (piece.name !== undefined) {
        if (piece.index !== calls.length) throw new Error(`call ${piece.index} starts out of order`);
        calls.push({ name: piece.name, arguments: piece.arguments });
      } else {
        calls[piece.index]!.arguments += piece.arguments;
      }
    }
  }
  return { content, calls: calls.map((c) => ({ name: c.name, arguments: JSON.parse(c.arguments) as unknown })) };
}

const parsed = (want: ToolCallDelta) => ({ content: want.content, calls: want.calls.map((c) => ({ name: c.name, arguments: JSON.parse(c.arguments) as unknown })) });

const weather = (city: string, days?: number): ParsedToolCall => ({ name: 'get_weather', arguments: JSON.stringify(days === undefined ? { city } : { city, days }) });

const cases: [string, string, ToolCallDelta][] = [
  ['hermes', 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>{"name":"get_weather","arguments":{"city":"Rome","days":2}}</tool_call>',
    { content: 'Let me check.\n\n', calls: [weather('Paris'), weather('Rome', 2)] }],
  ['hermes', 'No tools, a < b.', { content: 'No tools, a < b.', calls: [] }],
  ['hermes', '<tool_call>{not json}</tool_call>!', { content: '<tool_call>{not json}</tool_call>!', calls: [] }],
  ['hermes', 'cut <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}', { content: 'cut ', calls: [weather('Paris')] }],
  ['qwen3_coder', '<tool_call>\n<function=get_weather>\n<parameter=city>\n42\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>',
    { content: '', calls: [{ name: 'get_weather', arguments: JSON.stringify({ city: '42', days: 3 }) }] }],
  ['llama3_json', ' {"name": "get_weather", "parameters": {"city": "Paris"}}', { content: ' ', calls: [weather('Paris')] }],
  ['llama3_json', '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_weather", "parameters": {"city": "Oslo"}}',
    { content: '', calls: [weather('Paris'), weather('Oslo')] }],
  ['llama3_json', 'Sure {"a": 1}', { content: 'Sure {"a": 1}', calls: [] }],
  ['mistral', 'ok[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]', { content: 'ok', calls: [weather('Paris')] }],
  ['mistral', '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}', { content: '', calls: [weather('Paris'), weather('Oslo')] }],
  ['pythonic', '[get_weather(city="Paris", days=3), get_weather(city=\'Oslo\')]', { content: '', calls: [weather('Paris', 3), weather('Oslo')] }],
  ['pythonic', '[1, 2] is a list', { content: '[1, 2] is a list', calls: [] }],
  ['nemotron_deci', '<TOOLCALL>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</TOOLCALL>', { content: '', calls: [weather('Paris')] }],
  ['jamba', '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>', { content: '', calls: [weather('Paris')] }],
];

t.test('every chunking gives the same calls and content', async (t) => {
  for (const [name, text, want] of cases) {
    for (const pieces of chunkings(text)) t.same(run(name, pieces), parsed(want), `${name} ${JSON.stringify(pieces)}`);
  }
});

t.test('text that cannot start a marker goes out at once; hermes and qwen3_coder arguments stream', async (t) => {
  const p = toolCallParser('hermes')!.create(types);
  t.same(p.push('Hello <to'), { content: 'Hello ', calls: [] });
  t.same(p.push('day'), { content: '<today', calls: [] });
  t.same(p.push(' <tool_call>{"name": "get_weather", "argu'), { content: ' ', calls: [] });
  t.same(p.push('ments": {"ci'), { content: '', calls: [{ index: 0, name: 'get_weather', arguments: '{"ci' }] });
  t.same(p.push('ty": "Paris"}'), { content: '', calls: [{ index: 0, arguments: 'ty": "Paris"' }] }, 'a closing brace waits: it may be the object\'s');
  t.same(p.push('}</tool_'), { content: '', calls: [] });
  t.same(p.push('call> done'), { content: ' done', calls: [{ index: 0, arguments: '}' }] });
  const q = toolCallParser('qwen3_coder')!.create(types);
  t.same(q.push('<tool_call>\n<function=get_weather>\n<parameter=city>\nPar'), { content: '', calls: [{ index: 0, name: 'get_weather', arguments: '{' }] }, 'qwen3_coder: the name at once');
  t.same(q.push('is\n</parameter>\n<parameter=days>\n3'), { content: '', calls: [{ index: 0, arguments: '"city": "Paris"' }] }, 'then each parameter as it closes');
  t.same(q.push('\n</parameter>\n</function>\n</tool_call>'), { content: '', calls: [{ index: 0, arguments: ', "days": 3}' }] });
  const m = toolCallParser('mistral')!.create(types);
  t.same(m.push('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'), { content: '', calls: [] }, 'other formats: whole calls at the close');
  t.same(m.end(), { content: '', calls: [{ index: 0, name: 'get_weather', arguments: '{"city":"Paris"}' }] });
});

t.test('python literals', async (t) => {
  t.same(run('pythonic', ['[f(a=[1, 2.5], b={"k": None}, c=True, d="q\\"x")]']).calls, [{ name: 'f', arguments: { a: [1, 2.5], b: { k: null }, c: true, d: 'q"x' } }]);
  t.same(run('pythonic', ['[f()]']).calls, [{ name: 'f', arguments: {} }]);
});

t.test('unknown names', async (t) => {
  t.equal(toolCallParser('nope'), null);
  t.equal(toolCallParser('constructor'), null);
});
