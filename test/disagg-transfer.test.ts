// Transfer-backend selection (--disaggregation-transfer-backend auto | tcp | cuda-ipc): unknown values and modes
// the worker's backend cannot serve are refused naming the flag; the prefill side's pick per fetch (same node,
// both cuda) and its refusals name the reason; a CPU decode worker with auto transfers over tcp. The GPU test
// (two cuda workers in one process: the IPC open of one's own pool fails there, so auto falls back to tcp cleanly)
// skips with its reason where the CUDA backend is not built or no GPU is visible.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { compiledBackends } from '../src/engine/addon.js';
import { LlmError } from '../src/errors.js';
import { startWorker } from '../src/worker/worker.js';
import { checkTransferMode, decodeOffer, pickTransfer, sameNode, thisNode, type PrefillSide } from '../src/disagg/transfer.js';

const MODEL = fileURLToPath(new URL('../models/stories260K.gguf', import.meta.url));

async function config(extra: string[]) {
  return finalizeConfig(
    resolveConfig(
      ['--model-path', MODEL, '--served-model-name', 'stories260K', '--device', 'cpu', '--cpu-threads', '1', '--mem-fraction-static', '0.01',
        '--tcp-rpc-host', '127.0.0.1', '--discovery-backend', 'mem', '--namespace', 'xfer', '--graceful-shutdown-grace-period', '0.5', ...extra],
      {},
    ),
  );
}

t.test('flag values: auto is the default, unknown values are refused naming the flag', async (t) => {
  t.equal((await config([])).disaggregationTransferBackend, 'auto');
  t.equal((await config(['--disaggregation-transfer-backend', 'cuda-ipc'])).disaggregationTransferBackend, 'cuda-ipc');
  await t.rejects(config(['--disaggregation-transfer-backend', 'rdma']), { code: 'LLM_ERR_USAGE', message: /--disaggregation-transfer-backend: expected one of auto, tcp, nccl, cuda-ipc, fake .*got "rdma"/ });
});

t.test('a cpu worker asked for cuda-ipc (or nccl) refuses to start, naming the flag', async (t) => {
  for (const mode of ['prefill', 'decode']) {
    await t.rejects(startWorker(await config(['--disaggregation-mode', mode, '--disaggregation-transfer-backend', 'cuda-ipc']), { log: () => undefined }), {
      code: 'LLM_ERR_CONFIG',
      message: new RegExp(`--disaggregation-transfer-backend cuda-ipc moves KV pages GPU to GPU, but this ${mode} worker runs the cpu backend`),
    });
  }
  await t.rejects(startWorker(await config(['--disaggregation-mode', 'decode', '--disaggregation-transfer-backend', 'nccl']), { log: () => undefined }), {
    code: 'LLM_ERR_CONFIG',
    message: /--disaggregation-transfer-backend nccl: the NCCL transfer is not available in this build/,
  });
  t.throws(() => checkTransferMode('cuda-ipc', 'cpu', 'decode'), LlmError);
  t.doesNotThrow(() => checkTransferMode('auto', 'cpu', 'decode'));
  t.doesNotThrow(() => checkTransferMode('cuda-ipc', 'cuda', 'prefill'));
});

t.test('what the decode side offers and what the prefill side picks', async (t) => {
  const here = thisNode();
  const elsewhere = { hostname: 'other-host', boot_id: 'b0' };
  t.ok(sameNode(here, { ...here }) || here.boot_id === '', 'a node is itself (where it has a boot id)');
  t.notOk(sameNode(here, elsewhere));
  t.same(decodeOffer('auto', 'cuda', true), ['cuda-ipc', 'tcp']);
  t.same(decodeOffer('auto', 'cuda', false), ['tcp'], 'a prefill worker whose pool could not be opened gets tcp');
  t.same(decodeOffer('auto', 'cpu', true), ['tcp']);
  t.same(decodeOffer('tcp', 'cuda', true), ['tcp']);
  t.same(decodeOffer('cuda-ipc', 'cuda', true), ['cuda-ipc']);

  const gpu: PrefillSide = { mode: 'auto', backend: 'cuda', node: { hostname: 'h', boot_id: 'b1' }, ipcReady: true };
  const sameBox = { hostname: 'h', boot_id: 'b1' };
  t.equal(pickTransfer(gpu, ['cuda-ipc', 'tcp'], sameBox), 'cuda-ipc');
  t.equal(pickTransfer(gpu, ['cuda-ipc', 'tcp'], { hostname: 'h', boot_id: 'b2' }), 'tcp', 'same hostname, another boot: tcp');
  t.equal(pickTransfer({ ...gpu, backend: 'cpu', ipcReady: false }, ['cuda-ipc', 'tcp'], sameBox), 'tcp');
  t.equal(pickTransfer({ ...gpu, mode: 'tcp' }, ['cuda-ipc', 'tcp'], sameBox), 'tcp');
  t.equal(pickTransfer(gpu, ['tcp'], sameBox), 'tcp');
  t.throws(() => pickTransfer(gpu, ['cuda-ipc'], { hostname: 'x', boot_id: 'b9' }), {
    code: 'LLM_ERR_KV_TRANSFER',
    message: /no KV transfer both sides can use \(decode offers cuda-ipc\): cuda-ipc: the prefill worker is on h \(boot id b1\), the decode worker on x \(boot id b9\)/,
  });
  t.throws(() => pickTransfer({ ...gpu, backend: 'cpu' }, ['cuda-ipc'], sameBox), { message: /cuda-ipc: this prefill worker runs the cpu backend/ });
  t.throws(() => pickTransfer({ ...gpu, mode: 'cuda-ipc' }, ['tcp'], sameBox), { message: /tcp: this prefill worker runs with --disaggregation-transfer-backend cuda-ipc/ });
  t.throws(() => pickTransfer({ ...gpu, ipcReady: false }, ['cuda-ipc'], sameBox), { message: /could not export its KV pool/ });
});

t.test('the cpu engine refuses the GPU-to-GPU ops with a coded error', async (t) => {
  const { openEngine } = await import('../src/engine/engine.js');
  const { loadModelSpec } = await import('../src/engine/model.js');
  const engine = openEngine(await loadModelSpec(MODEL), { backend: 'cpu', deviceId: 0, pageSize: 4, numPages: 8, memFractionStatic: 0.01, maxBatchTokens: 64, maxSeqsPerStep: 4, threads: 1 });
  t.teardown(() => engine.close());
  const notSupported = { code: 'LLM_ERR_KV_TRANSFER', message: /GPU-to-GPU KV transfer \(cuda-ipc\) is not supported by backend cpu/ };
  t.throws(() => engine.kvIpcExport!(), notSupported);
  t.throws(() => engine.kvIpcOpen!({ handle: new Uint8Array(64), tensors: 10, tensorStrideElems: 4096, rowElems: 32, pageSize: 4, pciBusId: '' }), notSupported);
  t.throws(() => engine.kvIpcPull!(1, [0], 0, [0], 4), notSupported);
});

const cuda = compiledBackends().includes('cuda');
t.test('two cuda workers in one process: auto gives the aggregated output', { skip: cuda ? false : 'native addon built without the CUDA backend (no CUDA toolkit with cuBLAS at build time)' }, async (t) => {
  const { DiscoveredModels } = await import('../src/frontend/discovered-models.js');
  const { Discovery } = await import('../src/runtime/discovery/index.js');
  const gpuArgs = ['--device', 'cuda', '--mem-fraction-static', '0.2', '--page-size', '16'];
  let agg;
  try {
    agg = await startWorker(await config(['--namespace', 'xg-agg', ...gpuArgs]), { log: () => undefined });
  } catch (err) {
    if (err instanceof LlmError && err.code === 'LLM_ERR_NO_DEVICE') {
      t.comment(`skipped: no CUDA device: ${err.message}`);
      return;
    }
    throw err;
  }
  const prefill = await startWorker(await config(['--namespace', 'xg', '--disaggregation-mode', 'prefill', ...gpuArgs]), { log: () => undefined });
  const decode = await startWorker(await config(['--namespace', 'xg', '--disaggregation-mode', 'decode', ...gpuArgs]), { log: () => undefined });
  const discovery = await Discovery.open({ backend: 'mem' });
  const aggModels = await DiscoveredModels.create({ discovery, namespace: 'xg-agg' });
  const disModels = await DiscoveredModels.create({ discovery, namespace: 'xg' });
  t.teardown(async () => {
    await aggModels.close();
    await disModels.close();
    await discovery.close();
    for (const w of [decode, prefill, agg]) await w.shutdown();
  });
  const aggModel = await aggModels.waitFor('stories260K', 5000);
  const disModel = await disModels.waitFor('stories260K', 5000);
  const signal = new AbortController().signal;
  for (const len of [5, 17, 40]) {
    const p = [1, ...Array.from({ length: len }, (_, i) => 3 + ((i * 37) % 400))];
    const req = { token_ids: p, stop_conditions: { max_tokens: 8 }, sampling_options: { temperature: 0 }, eos_token_ids: [2] };
    const collect = async (s: AsyncIterable<{ token_ids: number[] }>) => {
      const out: number[] = [];
      for await (const c of s) out.push(...c.token_ids);
      return out;
    };
    t.same(await collect(disModel.generate(req, { signal })), await collect(aggModel.generate(req, { signal })), `${p.length} prompt tokens`);
  }
  t.equal(prefill.disagg!.sender!.pending.rooms, 0);
});
