// Greedy outputs of two OpenAI-compatible servers for the same prompts (the aggregated worker's frontend and the
// disaggregated pair's): deterministic word prompts of growing length, temperature 0, a fixed max_tokens; writes
// how many are equal and where the others first differ.
//   node --import tsx bench/disagg/compare.ts --agg URL --dis URL --prompts 16 --max-tokens 32 --out FILE
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    agg: { type: 'string' },
    dis: { type: 'string' },
    prompts: { type: 'string', default: '16' },
    'max-tokens': { type: 'string', default: '32' },
    'max-words': { type: 'string', default: '1200' },
    out: { type: 'string' },
  },
});
if (!values.agg || !values.dis || !values.out) throw new Error('compare.ts: --agg URL --dis URL --out FILE are required');
const numPrompts = Number(values.prompts);
const maxTokens = Number(values['max-tokens']);
const maxWords = Number(values['max-words']);

const WORDS = 'the of and to in is was for on that with as by at from his her an were are which this be or had not first one their its new after who they have two been has more other all into than up over'.split(' ');

/** Prompt i: about maxWords * ((i + 1) / n)^2 words of a fixed LCG stream, so short and long prompts both appear. */
function prompt(i: number): string {
  const n = Math.max(3, Math.round(maxWords * ((i + 1) / numPrompts) ** 2));
  let x = 1000 + i * 7919;
  const out: string[] = [];
  for (let k = 0; k < n; k++) {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    out.push(WORDS[x % WORDS.length]);
  }
  return out.join(' ');
}

async function modelOf(url: string): Promise<string> {
  const r = (await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] };
  if (!r.data.length) throw new Error(`${url} lists no model`);
  return r.data[0].id;
}

async function complete(url: string, model: string, text: string): Promise<{ text: string; promptTokens: number | null }> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: text, max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: false }),
  });
  const body = (await res.json()) as { choices?: { text: string }[]; usage?: { prompt_tokens: number }; error?: unknown };
  if (!res.ok || !body.choices) throw new Error(`${url}: HTTP ${res.status} ${JSON.stringify(body.error ?? body)}`);
  return { text: body.choices[0].text, promptTokens: body.usage?.prompt_tokens ?? null };
}

const [aggModel, disModel] = await Promise.all([modelOf(values.agg), modelOf(values.dis)]);
const rows: { prompt: number; promptTokens: number | null; equal: boolean; firstDiff: number | null; agg: string; dis: string }[] = [];
for (let i = 0; i < numPrompts; i++) {
  const p = prompt(i);
  const [a, d] = await Promise.all([complete(values.agg, aggModel, p), complete(values.dis, disModel, p)]);
  let firstDiff: number | null = null;
  if (a.text !== d.text) {
    firstDiff = 0;
    while (a.text[firstDiff] === d.text[firstDiff]) firstDiff++;
  }
  rows.push({ prompt: i, promptTokens: a.promptTokens, equal: firstDiff === null, firstDiff, agg: a.text, dis: d.text });
  console.log(`prompt ${i} (${a.promptTokens ?? '?'} tokens): ${firstDiff === null ? 'equal' : `differs at character ${firstDiff}`}`);
}
const equal = rows.filter((r) => r.equal).length;
writeFileSync(values.out, JSON.stringify({ total: rows.length, equal, maxTokens, rows }, null, 1));
console.log(`${equal}/${rows.length} greedy outputs equal`);
