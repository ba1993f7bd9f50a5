// Reasoning parsers over every chunking of their input: one split at every point, every character alone, and the
// whole at once must give the same reasoning and content, and text that cannot start a marker is never held back.
import t from 'tap';
import { reasoningParser, type ReasoningDelta } from '../src/frontend/reasoning/parsers.js';

function chunkings(text: string): string[][] {
  const out: string[][] = [[text], [...text]];
  for (let i = 1; i < text.length; i++) out.push([text.slice(0, i), text.slice(i)]);
  return out;
}

function run(name: string, pieces: readonly string[]): ReasoningDelta {
  const p = reasoningParser(name)!.create();
  const all: ReasoningDelta = { reasoning: '', content: '' };
  for (const piece of [...pieces.map((x) => p.push(x)), p.end()]) {
    all.reasoning += piece.reasoning;
    all.content += piece.content;
  }
  return all;
}

const cases: [string, string, ReasoningDelta][] = [
  ['qwen3', '<think>\nLet me see.\n</think>\n\nThe answer is 4.', { reasoning: '\nLet me see.\n', content: '\n\nThe answer is 4.' }],
  ['qwen3', 'No thinking here, 2 < 3.', { reasoning: '', content: 'No thinking here, 2 < 3.' }],
  ['qwen3', '<think>unfinished', { reasoning: 'unfinished', content: '' }],
  ['deepseek_r1', 'Hmm, 2+2.\n</think>\n4', { reasoning: 'Hmm, 2+2.\n', content: '\n4' }],
  ['deepseek_r1', '  <think>Hmm.</think>4', { reasoning: 'Hmm.', content: '4' }],
  ['deepseek_r1', 'only thoughts <thin', { reasoning: 'only thoughts <thin', content: '' }],
  ['basic', 'a<think>b</think>c', { reasoning: 'b', content: 'ac' }],
  ['mistral', '[THINK]x[/THINK]y', { reasoning: 'x', content: 'y' }],
  ['kimi', '◁think▷x◁/think▷y', { reasoning: 'x', content: 'y' }],
  ['gpt_oss', '<|channel|>analysis<|message|>Think <|hard|>.<|end|><|start|>assistant<|channel|>final<|message|>Answer.<|return|>',
    { reasoning: 'Think <|hard|>.', content: 'Answer.' }],
  ['gpt_oss', 'Plain answer.', { reasoning: '', content: 'Plain answer.' }],
];

t.test('every chunking gives the same split', async (t) => {
  for (const [name, text, want] of cases) {
    for (const pieces of chunkings(text)) t.same(run(name, pieces), want, `${name} ${JSON.stringify(pieces)}`);
  }
});

t.test('text that cannot start a marker goes out at once', async (t) => {
  const p = reasoningParser('qwen3')!.create();
  t.same(p.push('Hello wor'), { reasoning: '', content: 'Hello wor' });
  t.same(p.push('ld <th'), { reasoning: '', content: 'ld ' }, 'a possible marker start is held');
  t.same(p.push('ink>x'), { reasoning: 'x', content: '' });
  t.same(p.push('y</thi'), { reasoning: 'y', content: '' });
  t.same(p.push('nk>z'), { reasoning: '', content: 'z' });
  const r1 = reasoningParser('deepseek_r1')!.create();
  t.same(r1.push('Thinking'), { reasoning: 'Thinking', content: '' });
});

t.test('unknown names', async (t) => {
  t.equal(reasoningParser('nope'), null);
  t.equal(reasoningParser('toString'), null);
  t.ok(reasoningParser('gpt_oss')!.markers.includes('<|channel|>'));
});
