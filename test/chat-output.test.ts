// Which parsers a chat request runs, and what a model's parser names leave undone here.
import t from 'tap';
import { chatParsers, unimplementedParsers } from '../src/frontend/chat-output.js';

const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: { a: { type: 'string' } } } } }];

t.test('the tool-call parser runs only for requests with tools and tool_choice other than none', async (t) => {
  const model = { toolCallParser: 'hermes', reasoningParser: 'qwen3' };
  t.not(chatParsers(model, tools, undefined).toolCalls, null);
  t.not(chatParsers(model, tools, 'required').toolCalls, null);
  t.equal(chatParsers(model, tools, 'none').toolCalls, null);
  t.equal(chatParsers(model, undefined, undefined).toolCalls, null);
  t.equal(chatParsers(model, [], undefined).toolCalls, null);
  t.not(chatParsers(model, undefined, undefined).reasoning, null, 'reasoning: every request');
  t.same(chatParsers(model, tools, 'auto').toolCalls?.types.get('f'), new Map([['a', 'string']]), 'declared parameter types');
  t.same(chatParsers({}, tools, undefined), { reasoning: null, toolCalls: null }, 'a model without parsers');
});

t.test('names Dynamo knows that this frontend does not implement', async (t) => {
  t.same(unimplementedParsers({ toolCallParser: 'hermes', reasoningParser: 'deepseek_r1' }), []);
  const lines = unimplementedParsers({ toolCallParser: 'deepseek_v3', reasoningParser: 'granite' });
  t.equal(lines.length, 2);
  t.match(lines[0], /tool-call parser "deepseek_v3" is not implemented by this frontend \(it has hermes, .*\); tool calls stay in the content/);
  t.match(lines[1], /reasoning parser "granite" is not implemented/);
  t.same(unimplementedParsers({ toolCallParser: null, reasoningParser: null }), []);
});
