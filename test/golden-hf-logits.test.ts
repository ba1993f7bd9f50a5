// Our CPU engine's logits against HF transformers (float32, eager attention) on tiny random checkpoints written
// by make-model: test/fixtures/hf/<model>/ (bench/reference/make-hf-fixtures.ts) and
// test/fixtures/hf-logits/<model>.json (bench/reference/hf_logits.py, run on the GPU machine's CPU).
// One batch mixes the sequences: prefills of different lengths (one split into two chunks) run in the same
// steps as other sequences' decode tokens; 8 teacher-forced decode steps each; page sizes 1 and 16 with
// scattered page tables.
import t from 'tap';
import { packFor } from '../src/engine/step.js';
import { existsSync, readFileSync } from 'node:fs';
import { addonPath } from '../src/engine/addon.js';
import { openEngine } from '../src/engine/engine.js';
import { loadModelSpec } from '../src/engine/model.js';
import type { SeqStep } from '../src/engine/types.js';

const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;
const MODELS = ['qwen3-tiny', 'qwen2-tiny', 'llama-tiny', 'llama-tiny-rope-llama3'];
const MAX_REL_ERR = 1e-3;

interface Reference {
  vocab_size: number;
  transformers: string;
  sequences: { token_ids: number[]; prompt_len: number; steps: number }[];
  logits_f32_base64: string;
}

interface SeqPlan {
  ids: number[];
  promptLen: number;
  firstStep: number; // the step at which its prefill starts
  chunks: number[]; // prefill chunk sizes
  pages: number[]; // its page table
  refRows: Float32Array[]; // reference logits: prefill end, then each decode step
}

const greedy = { temperature: 0, topP: 1, topK: -1, minP: 0, seed: null, logprobs: -1 };
const built = existsSync(addonPath());

for (const name of MODELS) {
  t.test(`${name}: logits match HF transformers`, { skip: built ? false : `native addon not built (${addonPath()})` }, async (t) => {
    const ref = JSON.parse(readFileSync(`${FIXTURES}hf-logits/${name}.json`, 'utf8')) as Reference;
    const spec = await loadModelSpec(`${FIXTURES}hf/${name}`);
    t.equal(spec.vocabSize, ref.vocab_size);
    const all = Buffer.from(ref.logits_f32_base64, 'base64');
    const floats = new Float32Array(all.buffer, all.byteOffset, all.byteLength / 4);
    const V = ref.vocab_size;
    // Rows are stored sequence after sequence: first row of sequence i.
    const firstRow = ref.sequences.map((_, i) => ref.sequences.slice(0, i).reduce((n, s) => n + s.steps, 0));

    for (const pageSize of [1, 16]) {
      const plans: SeqPlan[] = ref.sequences.map((s, i) => {
        const rows: Float32Array[] = [];
        for (let k = 0; k < s.steps; k++) rows.push(floats.subarray((firstRow[i]! + k) * V, (firstRow[i]! + k + 1) * V));
        return {
          ids: s.token_ids,
          promptLen: s.prompt_len,
          firstStep: i === 2 ? 1 : 0,
          chunks: i === 1 ? [10, s.prompt_len - 10] : [s.prompt_len],
          pages: [],
          refRows: rows,
        };
      });
      // Scattered page tables: sequence i owns pages i, i+3, i+6, ... in reverse order.
      const pagesPerSeq = Math.max(...plans.map((p) => Math.ceil(p.ids.length / pageSize)));
      plans.forEach((p, i) => {
        p.pages = Array.from({ length: pagesPerSeq }, (_, k) => i + 3 * k).reverse();
      });
      const engine = openEngine(spec, { backend: 'cpu', deviceId: 0, pageSize, numPages: 3 * pagesPerSeq, memFractionStatic: 0.5, maxBatchTokens: 64, maxSeqsPerStep: 4 });
      try {
        // Per sequence: a list of work items (prefill chunks, then single decode tokens).
        const work = plans.map((p) => {
          const items: { start: number; len: number; sample: boolean }[] = [];
          let pos = 0;
          p.chunks.forEach((len, k) => {
            items.push({ start: pos, len, sample: k === p.chunks.length - 1 });
            pos += len;
          });
          for (let k = 0; k < p.refRows.length - 1; k++) items.push({ start: p.promptLen + k, len: 1, sample: true });
          return items;
        });
        const sampled = plans.map(() => 0);
        let worst = 0;
        for (let step = 0; work.some((w) => w.length > 0); step++) {
          const batch: SeqStep[] = [];
          const owners: number[] = [];
          plans.forEach((p, i) => {
            if (step < p.firstStep || work[i]!.length === 0) return;
            const item = work[i]!.shift()!;
            batch.push({
              tokenIds: p.ids.slice(item.start, item.start + item.len),
              startPos: item.start,
              pages: p.pages.slice(0, Math.ceil((item.start + item.len) / pageSize)),
              sample: item.sample,
              sampling: greedy,
              outputIndex: sampled[i]!,
            });
            owners.push(item.sample ? i : -1);
          });
          const r = engine.step(packFor(engine, batch, { returnLogits: true }));
          t.ok(r.logits !== undefined && r.logits.length === batch.length * V, 'logits returned');
          owners.forEach((i, b) => {
            if (i < 0) return;
            const want = plans[i]!.refRows[sampled[i]!]!;
            const got = r.logits!.subarray(b * V, (b + 1) * V);
            let maxDiff = 0;
            let maxRef = 0;
            for (let v = 0; v < V; v++) {
              maxDiff = Math.max(maxDiff, Math.abs(got[v]! - want[v]!));
              maxRef = Math.max(maxRef, Math.abs(want[v]!));
            }
            const rel = maxDiff / maxRef;
            worst = Math.max(worst, rel);
            if (!(rel < MAX_REL_ERR)) t.fail(`page ${pageSize} seq ${i} step ${sampled[i]}: relative error ${rel.toExponential(2)}`);
            sampled[i]!++;
          });
        }
        t.same(sampled, plans.map((p) => p.refRows.length), 'every reference row compared');
        t.ok(worst < MAX_REL_ERR, `page size ${pageSize}: worst relative error ${worst.toExponential(2)} < ${MAX_REL_ERR} (transformers ${ref.transformers})`);
      } finally {
        engine.close();
      }
    }
  });
}
