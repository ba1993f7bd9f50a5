// SGLang's server flags and the Dynamo 0.8 flags on `start`: every SGLang flag of the table parses, the honoured
// ones change the resolved configuration, the unused ones are reported in the one start-up line, bad values are
// usage errors (exit 2) that name the flag and what it takes.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { LlmError } from '../src/errors.js';
import { resolveConfig, WORKER_FLAG_INDEX } from '../src/config/resolve.js';
import { WORKER_FLAGS, WorkerConfigSchema } from '../src/config/schema.js';
import { SGLANG_SERVER_FLAGS, type SglangFlag } from '../src/config/sglang-flags.js';
import { DYN_REASONING_PARSERS, DYN_TOOL_CALL_PARSERS } from '../src/config/dynamo-parsers.js';
import { main } from '../src/cli/main.js';
import { resolveSupervisorConfig } from '../src/config/supervisor.js';

const dir = mkdtempSync(join(tmpdir(), 'dsg-sglang-flags-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const M = ['--model-path', 'm'];
const resolve = (argv: string[], env: NodeJS.ProcessEnv = {}) => resolveConfig([...M, ...argv], env, { cwd: dir });

function usage(t: Test, argv: string[], ...fragments: string[]): void {
  try {
    resolve(argv);
    t.fail(`expected a usage error for ${argv.join(' ')}`);
  } catch (err) {
    t.equal((err as LlmError).code, 'LLM_ERR_USAGE', argv.join(' '));
    for (const f of fragments) t.match((err as Error).message, f);
  }
}

/** A value SGLang would take for the flag, as argv words (none for a bool). */
function sampleArgs(f: SglangFlag): string[] {
  const v = f.value;
  switch (v.kind) {
    case 'bool':
      return [];
    case 'int':
      return [String(v.choices?.[0] ?? 3)];
    case 'float':
      return ['0.5'];
    case 'string':
      return [v.choices?.[0] ?? 'x'];
    case 'list':
      return v.choices ? v.choices.slice(0, 2) : v.item === 'string' ? ['a', 'b'] : ['1', '2'];
    case 'json':
      return [v.shape === 'list' ? '[1,2]' : '{"a":1}'];
  }
}

t.test('every SGLang server flag of the table is accepted, in every spelling', async (t) => {
  t.ok(SGLANG_SERVER_FLAGS.length > 300, `${SGLANG_SERVER_FLAGS.length} flags`);
  for (const f of SGLANG_SERVER_FLAGS) {
    // honoured ones are checked below; this one is refused (rules test)
    if (f.use === 'honoured' || f.name === 'schedule-low-priority-values-first') continue;
    for (const spelling of [f.name, ...(f.aliases ?? [])]) {
      const c = resolve([`--${spelling}`, ...sampleArgs(f)]);
      if (f.use === 'unused') t.equal(c.unusedFlags.length, 1, `--${spelling} is reported`);
      else t.same(c.unusedFlags, [], `--${spelling} asks for what the worker does anyway`);
    }
  }
});

t.test('the honoured SGLang flags are spellings of worker flags', async (t) => {
  for (const f of SGLANG_SERVER_FLAGS) {
    if (f.use !== 'honoured') continue;
    const worker = WORKER_FLAGS.find((w) => w.name === f.by);
    t.ok(worker, `--${f.name} is carried by --${f.by}`);
    for (const spelling of [f.name, ...(f.aliases ?? [])]) t.equal(WORKER_FLAG_INDEX.lookup(spelling)?.spec, worker, `--${spelling} = --${f.by}`);
  }
});

t.test('honoured SGLang spellings change the configuration', async (t) => {
  const c = resolve(['--model', 'org/model', '--tensor-parallel-size', '2', '--data-parallel-size', '1', '--context-length', '2048',
    '--page-size', '32', '--mem-fraction-static', '0.6', '--chunked-prefill-size', '-1', '--max-running-requests', '7', '--random-seed', '5',
    '--disable-radix-cache', '--base-gpu-id', '2', '--enable-metrics', '--log-level', 'warning', '--is-embedding']);
  t.equal(c.modelPath, 'org/model', '--model is --model-path');
  t.same([c.tpSize, c.dpSize, c.contextLength, c.pageSize, c.memFractionStatic, c.chunkedPrefillSize, c.maxRunningRequests, c.seed],
    [2, 1, 2048, 32, 0.6, -1, 7, 5]);
  t.same([c.disableRadixCache, c.baseGpuId, c.enableMetrics, c.logLevel, c.workerKind], [true, 2, true, 'warn', 'embedding']);
  t.same(c.unusedFlags, [], 'nothing honoured is reported as unused');
  t.equal(resolve(['--dp', '1', '--tp', '1']).tpSize, 1);
  const m = resolve(['--bucket-time-to-first-token', '0.1', '1', '10', '--bucket-e2e-request-latency', '1,5', '--collect-tokens-histogram']);
  t.same([m.bucketTimeToFirstToken, m.bucketInterTokenLatency, m.bucketE2eRequestLatency, m.collectTokensHistogram], [[0.1, 1, 10], null, [1, 5], true]);
  t.same(resolve([], { DYN_SGL_BUCKET_INTER_TOKEN_LATENCY: '0.01 0.1' }).bucketInterTokenLatency, [0.01, 0.1], 'env var');
  usage(t, ['--bucket-inter-token-latency', '0.1', '0.05'], '--bucket-inter-token-latency', 'strictly increasing');
  usage(t, ['--bucket-e2e-request-latency', 'soon'], '--bucket-e2e-request-latency', 'increasing numbers');
  const pool = resolve(['--max-total-tokens', '100', '--page-size', '16']);
  t.equal(pool.maxTotalTokens, 100);
  t.equal(resolveSupervisorConfig(pool).numPages, 7, '--max-total-tokens sizes the KV pool in whole pages');
  t.equal(resolveSupervisorConfig(resolve([])).numPages, null, 'else the engine sizes it from memory');
  t.equal(resolve(['--nccl-init-addr', 'h:5', '--nnodes', '2', '--tp', '2']).distInitAddr, 'h:5');
  t.ok(Value.Check(WorkerConfigSchema, c));
});

t.test('unused flags are reported as given, command line over the --config file', async (t) => {
  const yaml = join(dir, 'w.yaml');
  writeFileSync(yaml, 'trust-remote-code: true\nhost: 10.0.0.1\nkv-cache-dtype: fp8_e4m3\npage-size: 8\n');
  const c = resolve(['--config', yaml, '--host', '0.0.0.0', '--port', '30000', '--cuda-graph-bs', '1', '2', '4', '--skip-tokenizer-init']);
  t.equal(c.pageSize, 8, 'the file still sets worker flags');
  t.same(c.unusedFlags, [
    '--host 0.0.0.0',
    '--port 30000',
    '--cuda-graph-bs 1 2 4',
    `${yaml}: key "trust-remote-code" = true`,
    `${yaml}: key "kv-cache-dtype" = fp8_e4m3`,
  ]);
  t.same(resolve([]).unusedFlags, [], 'none given, none reported');
    t.same(resolve(['--use-sglang-tokenizer']).unusedFlags, [], 'text mode is served (test/worker-text-mode.test.ts), not reported as unused');
});

t.test('bad values of SGLang flags are usage errors naming the flag and what it takes', async (t) => {
  usage(t, ['--dtype', 'fp7'], '--dtype', '"bfloat16"', '"fp7"');
  usage(t, ['--kv-cache-dtype', 'int3'], '--kv-cache-dtype', 'fp8_e4m3');
  usage(t, ['--port', 'http'], '--port', 'an integer');
  usage(t, ['--watchdog-timeout', 'soon'], '--watchdog-timeout', 'a number');
  usage(t, ['--quantization'], '--quantization: missing value', 'awq');
  usage(t, ['--log-requests-level', '7'], '--log-requests-level', '0, 1, 2, 3');
  usage(t, ['--cuda-graph-bs', '1', 'x'], '--cuda-graph-bs', 'integers');
  usage(t, ['--lora-target-modules', 'q_proj', 'nope'], '--lora-target-modules', 'q_proj');
  usage(t, ['--mm-process-config', '[1]'], '--mm-process-config');
  usage(t, ['--trust-remote-code=perhaps'], '--trust-remote-code');
  usage(t, ['--host'], '--host: missing value');
});

t.test('rules the reference applies to SGLang flags', async (t) => {
  usage(t, ['--tool-call-parser', 'qwen25', '--dyn-tool-call-parser', 'hermes'], '--tool-call-parser qwen25', '--dyn-tool-call-parser');
  usage(t, ['--reasoning-parser', 'qwen3', '--dyn-reasoning-parser', 'qwen3'], '--reasoning-parser qwen3', '--dyn-reasoning-parser');
  t.same(resolve(['--tool-call-parser', 'qwen25']).unusedFlags, ['--tool-call-parser qwen25'], "SGLang's own parser alone is not used");
  usage(t, ['--schedule-low-priority-values-first'], 'higher priority value');
  const template = join(dir, 't.jinja');
  writeFileSync(template, '{{ messages }}');
  usage(t, ['--use-sglang-tokenizer', '--custom-jinja-template', template], '--use-sglang-tokenizer', '--custom-jinja-template');
});

t.test('--dyn-tool-call-parser and --dyn-reasoning-parser take only the reference parser names', async (t) => {
  for (const name of DYN_TOOL_CALL_PARSERS) t.equal(resolve(['--dyn-tool-call-parser', name]).dynToolCallParser, name);
  for (const name of DYN_REASONING_PARSERS) t.equal(resolve(['--dyn-reasoning-parser', name]).dynReasoningParser, name);
  t.equal(resolve([], { DYN_TOOL_CALL_PARSER: 'hermes' }).dynToolCallParser, 'hermes', 'env var');
  usage(t, ['--dyn-tool-call-parser', 'qwen25x'], '--dyn-tool-call-parser', '"hermes"', '"qwen25x"');
  usage(t, ['--dyn-reasoning-parser', 'deepseek-r1'], '--dyn-reasoning-parser', '"deepseek_r1"', '"deepseek-r1"');
});

t.test('the Dynamo 0.8 flags', async (t) => {
  t.equal(resolve([]).migrationLimit, 0);
  t.equal(resolve(['--migration-limit', '3']).migrationLimit, 3);
  t.equal(resolve([], { DYN_MIGRATION_LIMIT: '2' }).migrationLimit, 2);
  usage(t, ['--migration-limit', '-1'], '--migration-limit', '>= 0');

  t.equal(resolve([]).enableLocalIndexer, true, 'on by default');
  t.equal(resolve(['--enable-local-indexer', 'false']).enableLocalIndexer, false, '0.8 spelling: a value after the flag');
  t.equal(resolve(['--no-enable-local-indexer']).enableLocalIndexer, false);
  t.equal(resolve(['--durable-kv-events', '--enable-local-indexer=false']).enableLocalIndexer, false);
  t.equal(resolve(['--durable-kv-events']).enableLocalIndexer, false, 'durable events replace it');
  t.equal(resolve([], { DYN_LOCAL_INDEXER: 'false' }).enableLocalIndexer, false, 'env var');
  t.equal(resolve(['--enable-local-indexer', '--disaggregation-mode', 'decode']).enableLocalIndexer, false, 'never in decode mode');
  usage(t, ['--enable-local-indexer', 'true', '--durable-kv-events'], '--enable-local-indexer', '--durable-kv-events');

  const p = resolve(['--multimodal-processor']);
  t.same([p.workerKind, p.endpoint.component], ['multimodal-processor', 'processor']);
  usage(t, ['--multimodal-processor', '--disaggregation-mode', 'decode'], '--multimodal-processor', 'decode');
  usage(t, ['--multimodal-processor', '--multimodal-worker'], 'exactly one role');

  t.equal(resolve(['--use-sglang-tokenizer']).useSglangTokenizer, true);
});

t.test('--config-key reads one section of the --config file', async (t) => {
  const yaml = join(dir, 'disagg.yaml');
  writeFileSync(yaml, 'prefill:\n  disaggregation-mode: prefill\n  page-size: 32\ndecode:\n  disaggregation-mode: decode\n  host: 0.0.0.0\nbroken: 3\n');
  const prefill = resolve(['--config', yaml, '--config-key', 'prefill']);
  t.same([prefill.servingMode, prefill.pageSize, prefill.configKey], ['prefill', 32, 'prefill']);
  const decode = resolve(['--config', yaml, '--config-key', 'decode']);
  t.same([decode.servingMode, decode.pageSize], ['decode', 16]);
  t.same(decode.unusedFlags, [`${yaml} [decode]: key "host" = 0.0.0.0`]);
  usage(t, ['--config', yaml, '--config-key', 'encode'], 'no section "encode"', '"prefill", "decode", "broken"');
  usage(t, ['--config', yaml, '--config-key', 'broken'], 'section "broken"', 'mapping');
  usage(t, ['--config-key', 'prefill'], '--config-key prefill needs --config');
  const nested = join(dir, 'nested.yaml');
  writeFileSync(nested, 'config-key: prefill\n');
  usage(t, ['--config', nested], 'key "config-key" cannot be used inside a --config file');
});

t.test('start: one line names the accepted-but-unused flags; a bad value exits 2', async (t) => {
  const written: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    written.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  let code: number;
  let bad: number;
  try {
    // the model does not exist: the worker stops right after the line (exit 1)
    code = await main(['start', '--model-path', join(dir, 'no-such-model'), '--host', '0.0.0.0', '--trust-remote-code', '--tp-size', '1']);
    bad = await main(['start', '--model-path', 'm', '--load-format', 'zip']);
  } finally {
    process.stderr.write = write;
  }
  const lines = written.join('').split('\n').filter((l) => l !== '');
  const line = lines.filter((l) => l.includes('accepted and not used')).map((l) => l.replace(/^.* WARN worker: /, ''));
  t.same(line, ['accepted and not used by this worker: --host 0.0.0.0, --trust-remote-code (see start --help)']);
  t.equal(code, 1, 'then the missing model stops it');
  t.equal(bad, 2, 'a wrong value exits 2');
  t.match(lines.at(-1), /--load-format: expected one of .*"gms".* got "zip"/);
});
