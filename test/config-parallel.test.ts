// checkTensorParallel: --tp-size refused at start, naming the numbers, when the devices or the model do not fit it.
import t, { type Test } from 'tap';
import { LlmError } from '../src/errors.js';
import { checkTensorParallel, type TensorParallelShape } from '../src/config/parallel.js';

// Qwen3-0.6B: 16 query heads, 8 KV heads, FFN 3072, vocabulary 151936
const QWEN3: TensorParallelShape = { numHeads: 16, numKvHeads: 8, intermediateSize: 3072, vocabSize: 151936 };

function refused(t: Test, fn: () => void, message: string): void {
  try {
    fn();
    t.fail(`expected LLM_ERR_CONFIG: ${message}`);
  } catch (err) {
    t.ok(err instanceof LlmError, 'an LlmError');
    t.equal((err as LlmError).code, 'LLM_ERR_CONFIG');
    t.equal((err as Error).message, message);
  }
}

t.test('sizes that fit', async (t) => {
  for (const tp of [1, 2, 4, 8]) t.doesNotThrow(() => checkTensorParallel(tp, 0, QWEN3, 8), `tp ${tp} on 8 GPUs`);
  t.doesNotThrow(() => checkTensorParallel(2, 6, QWEN3, 8), 'devices 6..7');
  t.doesNotThrow(() => checkTensorParallel(16, 0, QWEN3, null), 'CPU: no device count; 8 KV heads replicated on 16 ranks');
  t.doesNotThrow(() => checkTensorParallel(4, 0, { ...QWEN3, numKvHeads: 2 }, null), '2 KV heads, each on 2 of 4 ranks');
  t.doesNotThrow(() => checkTensorParallel(1, 0, { numHeads: 5, numKvHeads: 3, intermediateSize: 7, vocabSize: 1 }, 1), 'TP 1 fits anything');
});

t.test('more ranks than devices from base-gpu-id', async (t) => {
  refused(t, () => checkTensorParallel(4, 0, QWEN3, 2), '--tp-size 4 with --base-gpu-id 0 needs CUDA devices 0..3; 2 present');
  refused(t, () => checkTensorParallel(2, 1, QWEN3, 2), '--tp-size 2 with --base-gpu-id 1 needs CUDA devices 1..2; 2 present');
  refused(t, () => checkTensorParallel(1, 3, QWEN3, 2), '--tp-size 1 with --base-gpu-id 3 needs CUDA device 3; 2 present');
  refused(t, () => checkTensorParallel(1, 0, QWEN3, 0), '--tp-size 1 with --base-gpu-id 0 needs CUDA device 0; 0 present');
  t.doesNotThrow(() => checkTensorParallel(4, 0, QWEN3, 2, 2), 'across two nodes, 2 of 4 ranks per node: 2 devices suffice');
  refused(t, () => checkTensorParallel(4, 1, QWEN3, 2, 2), '--tp-size 4 (2 of its ranks on this node) with --base-gpu-id 1 needs CUDA devices 1..2; 2 present');
});

t.test('model dimensions that do not split', async (t) => {
  refused(t, () => checkTensorParallel(3, 0, QWEN3, null), "--tp-size 3 does not divide the model's 16 attention heads");
  refused(t, () => checkTensorParallel(4, 0, { ...QWEN3, numHeads: 12, numKvHeads: 6 }, null),
    "--tp-size 4: the model's 6 KV heads can be neither split across 4 ranks (6 is not a multiple of 4) nor replicated on them (4 is not a multiple of 6)");
  refused(t, () => checkTensorParallel(4, 0, { ...QWEN3, intermediateSize: 3070 }, null), "--tp-size 4 does not divide the model's FFN size 3070");
  refused(t, () => checkTensorParallel(4, 0, { ...QWEN3, vocabSize: 5 }, null), "--tp-size 4: the model's vocabulary of 5 tokens leaves no rows for the last rank (2 per rank)");
  t.doesNotThrow(() => checkTensorParallel(4, 0, { ...QWEN3, vocabSize: 7 }, null), 'vocabulary 7 on 4 ranks: 2, 2, 2, 1');
});

t.test('settings that are not counts', async (t) => {
  refused(t, () => checkTensorParallel(0, 0, QWEN3, null), '--tp-size 0: expected an integer >= 1');
  refused(t, () => checkTensorParallel(2, -1, QWEN3, null), '--base-gpu-id -1: expected an integer >= 0');
});
