import t, { type Test } from 'tap';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Value } from '@sinclair/typebox/value';
import { LlmError } from '../src/errors.js';
import { finalizeConfig, resolveConfig } from '../src/config/resolve.js';
import { WORKER_FLAGS, WorkerConfigSchema } from '../src/config/schema.js';

const dir = mkdtempSync(join(tmpdir(), 'dsg-config-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const repo = new URL('..', import.meta.url).pathname;

function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

const M = ['--model-path', 'm'];
const resolve = (argv: string[], env: NodeJS.ProcessEnv = {}) => resolveConfig(argv, env, { cwd: dir });

/** Asserts a usage error whose message contains every fragment. */
function usage(t: Tap, argv: string[], env: NodeJS.ProcessEnv, ...fragments: string[]): void {
  try {
    resolve(argv, env);
    t.fail(`expected a usage error for ${argv.join(' ')}`);
  } catch (err) {
    t.ok(err instanceof LlmError, 'an LlmError');
    t.equal((err as LlmError).code, 'LLM_ERR_USAGE');
    for (const f of fragments) t.match((err as Error).message, f);
  }
}
type Tap = Test;

t.test('defaults', async (t) => {
  const c = resolve(M);
  t.ok(Value.Check(WorkerConfigSchema, c), 'satisfies its own schema');
  t.equal(c.servingMode, 'aggregated');
  t.equal(c.workerKind, 'llm');
  t.same(c.endpoint, { namespace: 'dynamo', component: 'backend', endpoint: 'generate' });
  t.equal(c.servedModelName, 'm');
  t.equal(c.tokenizerPath, 'm');
  t.equal(c.discoveryBackend, 'etcd');
  t.equal(c.requestPlane, 'tcp');
  t.equal(c.eventPlane, 'nats');
  t.equal(c.systemPort, -1);
  t.equal(c.disaggregationBootstrapPort, null);
  t.equal(c.healthCheckEnabled, false);
  t.equal(c.canaryWaitTimeSecs, 10);
  t.equal(c.healthCheckRequestTimeoutSecs, 3);
  t.equal(c.gracefulShutdownGracePeriodSecs, 5);
  t.same(c.etcdEndpoints, ['http://localhost:2379']);
  t.equal(c.fileKvRoot, join(tmpdir(), 'dynamo_store_kv'));
  t.equal(resolve(M, { TMPDIR: '/scratch' }).fileKvRoot, '/scratch/dynamo_store_kv');
  t.same(c.endpointTypes, ['chat', 'completions']);
  t.equal(c.enableLocalIndexer, true);
  t.equal(c.useKvEvents, false);
  t.same([c.tpSize, c.baseGpuId, c.disableRadixCache], [1, 0, false]);
});

t.test('tensor parallel, first GPU and radix cache flags', async (t) => {
  const c = resolve([...M, '--tp', '4', '--base-gpu-id', '2', '--disable-radix-cache']);
  t.same([c.tpSize, c.baseGpuId, c.disableRadixCache], [4, 2, true]);
  const e = resolve(M, { DYN_SGL_TP_SIZE: '2', DYN_SGL_BASE_GPU_ID: '1', DYN_SGL_DISABLE_RADIX_CACHE: 'true' });
  t.same([e.tpSize, e.baseGpuId, e.disableRadixCache], [2, 1, true]);
  const y = resolve(['--config', file('tp.yaml', 'model-path: m\ntp-size: 2\nbase-gpu-id: 6\ndisable-radix-cache: true\n')]);
  t.same([y.tpSize, y.baseGpuId, y.disableRadixCache], [2, 6, true]);
  usage(t, [...M, '--base-gpu-id', '-1'], {}, '--base-gpu-id: expected an integer >= 0, got "-1"');
});

t.test('precedence: flag > env > YAML > default, for several keys', async (t) => {
  const yaml = file('prec.yaml', 'model-path: from-yaml\npage-size: 32\nnamespace: yamlns\nrequest-plane: http\nsystem-port: 7000\nhealth-check-enabled: true\n');
  const env = { DYN_SGL_PAGE_SIZE: '64', DYN_NAMESPACE: 'envns', DYN_SYSTEM_PORT: '7001' };
  // default only
  t.equal(resolve(M).pageSize, 16);
  // YAML over default
  const y = resolve(['--config', yaml]);
  t.same([y.modelPath, y.pageSize, y.namespace, y.requestPlane, y.systemPort, y.healthCheckEnabled], ['from-yaml', 32, 'yamlns', 'http', 7000, true]);
  t.equal(y.configFile, yaml);
  // env over YAML
  const e = resolve(['--config', yaml], env);
  t.same([e.pageSize, e.namespace, e.requestPlane, e.systemPort], [64, 'envns', 'http', 7001]);
  t.equal(e.endpoint.namespace, 'envns', 'default endpoint follows the namespace');
  // flag over env
  const f = resolve(['--config', yaml, '--page-size', '8', '--namespace=flagns', '--request-plane', 'nats', '--system-port', '-1', '--no-health-check-enabled', '--model-path', 'flag-model'], env);
  t.same([f.modelPath, f.pageSize, f.namespace, f.requestPlane, f.systemPort, f.healthCheckEnabled], ['flag-model', 8, 'flagns', 'nats', -1, false]);
  // ETCD_ENDPOINTS / NATS_SERVER / DYN_FILE_KV / DYN_TCP_RPC_*
  const r = resolve(M, { ETCD_ENDPOINTS: 'http://a:1, http://b:2', NATS_SERVER: 'nats://n:4', DYN_FILE_KV: '/kv', DYN_TCP_RPC_HOST: '10.1.1.1', DYN_TCP_RPC_PORT: '9999' });
  t.same([r.etcdEndpoints, r.natsServer, r.fileKvRoot, r.tcpRpcHost, r.tcpRpcPort], [['http://a:1', 'http://b:2'], 'nats://n:4', '/kv', '10.1.1.1', 9999]);
  // a repeated flag: last one wins, like argparse
  t.equal(resolve([...M, '--tp-size', '2', '--tp', '4']).tpSize, 4);
});

t.test('both spellings', async (t) => {
  t.equal(resolve([...M, '--store-kv', 'file']).discoveryBackend, 'file');
  t.equal(resolve(M, { DYN_STORE_KV: 'mem' }).discoveryBackend, 'mem');
  t.equal(resolve([...M, '--discovery-backend', 'mem', '--store-kv', 'mem']).discoveryBackend, 'mem', 'agreeing spellings');
  t.equal(resolve([...M, '--store-kv', 'file'], { DYN_DISCOVERY_BACKEND: 'mem' }).discoveryBackend, 'file', 'flag beats env across spellings');
  usage(t, [...M, '--store-kv', 'file', '--discovery-backend', 'mem'], {}, '--discovery-backend mem contradicts --store-kv file');

  const p = resolve([...M, '--disagg-mode', 'prefill']);
  t.equal(p.servingMode, 'prefill');
  t.same(p.endpoint, { namespace: 'dynamo', component: 'prefill', endpoint: 'generate' });
  t.equal(resolve([...M, '--disaggregation-mode', 'decode']).servingMode, 'decode');
  t.equal(resolve([...M, '--disaggregation-mode', 'null']).servingMode, 'aggregated');
  t.equal(resolve([...M, '--disaggregation-mode', 'prefill', '--disagg-mode', 'prefill']).servingMode, 'prefill');
  t.equal(resolve([...M, '--disagg-mode', 'prefill'], { DYN_SGL_DISAGGREGATION_MODE: 'decode' }).servingMode, 'prefill');
  usage(t, [...M, '--disagg-mode', 'prefill', '--disaggregation-mode', 'decode'], {}, 'contradicts', '--disagg-mode prefill', '--disaggregation-mode decode');
  usage(t, M, { DYN_DISAGG_MODE: 'prefill', DYN_SGL_DISAGGREGATION_MODE: 'null' }, 'DYN_SGL_DISAGGREGATION_MODE=null contradicts DYN_DISAGG_MODE=prefill');
  usage(t, [...M, '--disagg-mode', 'null'], {}, '--disagg-mode: expected one of "prefill", "decode", got "null"');

  t.same(resolve([...M, '--component-name', 'worker']).endpoint, { namespace: 'dynamo', component: 'worker', endpoint: 'generate' });
  t.same(resolve([...M, '--endpoint', 'dyn://ns1.comp.ep']).endpoint, { namespace: 'ns1', component: 'comp', endpoint: 'ep' });
  t.equal(resolve([...M, '--endpoint', 'ns1.comp.ep']).namespace, 'ns1', 'scheme optional');
  t.same(resolve([...M, '--endpoint', 'dyn://dynamo.worker.x', '--component-name', 'worker']).endpoint.component, 'worker');
  usage(t, [...M, '--endpoint', 'dyn://dynamo.a.generate', '--component-name', 'b'], {}, '--component-name b contradicts --endpoint dyn://dynamo.a.generate');
  usage(t, [...M, '--endpoint', 'dyn://x.a.generate', '--namespace', 'y'], {}, '--namespace y contradicts');
  t.equal(resolve([...M, '--tp', '2']).tpSize, 2);
  t.equal(resolve([...M, '--random-seed', '7']).seed, 7);
  t.same(resolve([...M, '--dyn-endpoint-types', 'chat']).endpointTypes, ['chat']);
});

t.test('endpoint and namespace rules', async (t) => {
  for (const bad of ['dyn://a.b', 'a.b.c.d', 'dyn://a..c', 'http://a.b.c']) {
    usage(t, [...M, '--endpoint', bad], {}, `--endpoint: expected dyn://namespace.component.endpoint`, JSON.stringify(bad));
  }
  const s = resolve(M, { DYN_NAMESPACE_WORKER_SUFFIX: 'w7' });
  t.equal(s.namespace, 'dynamo-w7');
  t.same(s.endpoint, { namespace: 'dynamo-w7', component: 'backend', endpoint: 'generate' });
  t.equal(resolve([...M, '--multimodal-encode-worker']).endpoint.component, 'encoder');
  t.equal(resolve([...M, '--embedding-worker']).endpoint.component, 'backend');
  t.equal(resolve([...M, '--multimodal-worker', '--disaggregation-mode', 'prefill']).endpoint.component, 'prefill');
  usage(t, [...M, '--namespace', 'a.b'], {}, '--namespace: expected a non-empty name', '"a.b"');
});

t.test('booleans: negation and env words', async (t) => {
  t.equal(resolve([...M, '--enable-metrics']).enableMetrics, true);
  t.equal(resolve([...M, '--enable-metrics=false']).enableMetrics, false);
  t.equal(resolve([...M, '--no-exclude-tools-when-tool-choice-none']).excludeToolsWhenToolChoiceNone, false);
  t.equal(resolve([...M, '--no-enable-metrics'], { DYN_SGL_ENABLE_METRICS: 'true' }).enableMetrics, false);
  for (const w of ['true', 'TRUE', '1', 'yes', 'On']) t.equal(resolve(M, { DYN_HEALTH_CHECK_ENABLED: w }).healthCheckEnabled, true, w);
  for (const w of ['false', 'False', '0', 'NO', 'off']) t.equal(resolve(M, { DYN_DURABLE_KV_EVENTS: w }).durableKvEvents, false, w);
  t.equal(resolve(M, { DYN_DURABLE_KV_EVENTS: 'yes' }).enableLocalIndexer, false);
  t.equal(resolve([...M, '--disagg-mode', 'decode']).enableLocalIndexer, false);
  usage(t, M, { DYN_HEALTH_CHECK_ENABLED: 'maybe' }, 'DYN_HEALTH_CHECK_ENABLED: expected true/1/yes/on or false/0/no/off, got "maybe"');
  usage(t, [...M, '--no-enable-metrics=1'], {}, '--no-enable-metrics takes no value');
});

t.test('unknown flags, bad and missing values', async (t) => {
  usage(t, [...M, '--pag-size', '4'], {}, 'unknown flag --pag-size; did you mean --page-size?');
  usage(t, [...M, '--nnode', '2'], {}, 'did you mean --nnodes?');
  usage(t, [...M, '--disagg', 'prefill'], {}, 'did you mean --disagg-mode?');
  usage(t, [...M, '--zzzzzzzzzzzzzzzzzz'], {}, 'unknown flag --zzzzzzzzzzzzzzzzzz; see --help');
  usage(t, [...M, '-x'], {}, 'unknown option -x');
  usage(t, [...M, 'stray'], {}, 'unexpected argument "stray"');
  usage(t, [...M, '--page-size'], {}, '--page-size: missing value; expected an integer >= 1');
  usage(t, [...M, '--page-size', '--tp', '2'], {}, '--page-size: missing value');
  usage(t, [...M, '--page-size', 'x'], {}, '--page-size: expected an integer >= 1, got "x"');
  usage(t, [...M, '--page-size', '0'], {}, '--page-size: expected an integer >= 1, got "0"');
  usage(t, [...M, '--tp-size', '0'], {}, '--tp-size: expected an integer >= 1, got "0"');
  usage(t, [...M, '--tp', '1.5'], {}, '--tp: expected an integer >= 1, got "1.5"');
  usage(t, [...M, '--dp-size', '-1'], {}, '--dp-size: expected an integer >= 1, got "-1"');
  usage(t, [...M, '--mem-fraction-static', '0'], {}, '--mem-fraction-static: expected a number in (0, 1], got "0"');
  usage(t, [...M, '--mem-fraction-static', '1.01'], {}, 'got "1.01"');
  t.equal(resolve([...M, '--mem-fraction-static', '1']).memFractionStatic, 1);
  usage(t, [...M, '--request-plane', 'grpc'], {}, '--request-plane: expected one of "tcp", "http", "nats", got "grpc"');
  usage(t, [...M, '--event-plane', 'kafka'], {}, 'one of "nats", "zmq"');
  usage(t, [...M, '--device', 'tpu'], {}, '--device: expected one of "cpu", "cuda", "auto", got "tpu"');
  usage(t, [...M, '--disaggregation-transfer-backend', 'nixl'], {}, 'nixl and mooncake are not implemented', 'got "nixl"');
  usage(t, [...M, '--endpoint-types', 'chat,images'], {}, '--endpoint-types: expected a comma-separated list of items, each one of "chat", "completions"');
  usage(t, [...M, '--system-port', '70000'], {}, '--system-port: expected -1 (off), 0 (OS-assigned) or a port 1..65535, got "70000"');
  usage(t, [...M, '--chunked-prefill-size', '0'], {}, '-1 (no chunking) or an integer >= 1');
  t.equal(resolve([...M, '--chunked-prefill-size', '-1']).chunkedPrefillSize, -1);
  usage(t, [...M, '--dist-init-addr', 'leader'], {}, '--dist-init-addr: expected HOST:PORT');
  usage(t, [...M, '--canary-wait-time', '0'], {}, '--canary-wait-time: expected a number > 0');
  usage(t, M, { DYN_SYSTEM_PORT: 'abc' }, 'DYN_SYSTEM_PORT: expected', 'got "abc"');
  usage(t, [], {}, 'missing --model-path');
});

t.test('JSON-valued flags', async (t) => {
  const k = resolve([...M, '--kv-events-config', '{"publisher":"zmq","topic":"kv-events","endpoint":"tcp://*:5557"}']);
  t.equal(k.useKvEvents, true);
  t.equal(k.kvEventsConfig?.topic, 'kv-events');
  t.equal(k.kvEventsConfig?.buffer_steps, 10000, 'SGLang default filled in');
  t.equal(resolve([...M, '--kv-events-config', '{"publisher":"null"}']).useKvEvents, false);
  t.equal(resolve([...M, '--kv-events-config', '{}']).kvEventsConfig?.publisher, 'null');
  usage(t, [...M, '--kv-events-config', '{"publisher":"kafka"}'], {}, '--kv-events-config: key "publisher": expected one of "null", "zmq", got "kafka"');
  usage(t, [...M, '--kv-events-config', '{"publisher":"zmq","port":1}'], {}, 'key "port": unknown key');
  usage(t, [...M, '--kv-events-config', '{"endpoint":"localhost:5557"}'], {}, 'key "endpoint"');
  usage(t, [...M, '--kv-events-config', '{publisher'], {}, '--kv-events-config: expected a JSON object', 'invalid JSON');

  const payload = { token_ids: [1], stop_conditions: { max_tokens: 1 } };
  t.same(resolve(M, { DYN_HEALTH_CHECK_PAYLOAD: JSON.stringify(payload) }).healthCheckPayload, payload);
  file('payload.json', JSON.stringify(payload));
  t.same(resolve(M, { DYN_HEALTH_CHECK_PAYLOAD: '@payload.json' }).healthCheckPayload, payload, '@file relative to cwd');
  usage(t, M, { DYN_HEALTH_CHECK_PAYLOAD: '[1,2]' }, 'DYN_HEALTH_CHECK_PAYLOAD: expected a JSON object');
  usage(t, M, { DYN_HEALTH_CHECK_PAYLOAD: '@missing.json' }, 'DYN_HEALTH_CHECK_PAYLOAD: cannot read', 'missing.json');
});

t.test('custom jinja template: expansion and existence', async (t) => {
  const tpl = file('chat.jinja', '{{ messages }}');
  t.equal(resolve([...M, '--custom-jinja-template', '$TPL_DIR/chat.jinja'], { TPL_DIR: dir }).customJinjaTemplate, tpl);
  t.equal(resolve([...M, '--custom-jinja-template', '${TPL_DIR}/chat.jinja'], { TPL_DIR: dir }).customJinjaTemplate, tpl);
  t.equal(resolve([...M, '--custom-jinja-template', '~/chat.jinja'], { HOME: dir }).customJinjaTemplate, tpl);
  t.equal(resolve([...M, '--custom-jinja-template', 'chat.jinja']).customJinjaTemplate, tpl, 'relative to cwd');
  usage(t, [...M, '--custom-jinja-template', '~/nope.jinja'], { HOME: dir }, 'Custom Jinja template file not found', join(dir, 'nope.jinja'));
  usage(t, [...M, '--custom-jinja-template', '.'], {}, 'Custom Jinja template file not found');
});

t.test('contradictory flags are refused with the reason', async (t) => {
  usage(t, [...M, '--embedding-worker', '--disagg-mode', 'decode'], {}, '--embedding-worker cannot be combined with --disagg-mode decode', 'no prefill/decode split');
  usage(t, [...M, '--embedding-worker', '--disaggregation-mode', 'prefill'], {}, '--embedding-worker cannot be combined with --disaggregation-mode prefill');
  usage(t, [...M, '--multimodal-encode-worker', '--embedding-worker'], {}, 'cannot be combined', 'exactly one role');
  usage(t, [...M, '--multimodal-worker', '--embedding-worker'], {}, 'exactly one role');
  usage(t, [...M, '--multimodal-encode-worker', '--disagg-mode', 'prefill'], {}, '--multimodal-encode-worker cannot be combined with --disagg-mode prefill');
  usage(t, M, { DYN_SGL_EMBEDDING_WORKER: '1', DYN_DISAGG_MODE: 'decode' }, 'DYN_SGL_EMBEDDING_WORKER=true cannot be combined with DYN_DISAGG_MODE=decode');
  usage(t, [...M, '--nnodes', '2', '--node-rank', '2', '--dist-init-addr', 'h:1'], {}, '--node-rank 2 must be less than --nnodes 2');
  usage(t, [...M, '--node-rank', '1'], {}, '--node-rank 1 must be less than --nnodes 1');
  usage(t, [...M, '--nnodes', '2', '--tp', '2'], {}, '--nnodes 2 needs --dist-init-addr');
  usage(t, [...M, '--nnodes', '2', '--tp', '3', '--dist-init-addr', 'h:1'], {}, '--tp 3 is not a multiple of --nnodes 2');
  t.equal(resolve([...M, '--multimodal-worker', '--disagg-mode', 'decode']).workerKind, 'multimodal-worker');
});

t.test('YAML errors name the file and the key', async (t) => {
  const wrongType = file('worker.yaml', 'model-path: m\npage-size: "x"\n');
  usage(t, ['--config', wrongType], {}, `${wrongType}: key "page-size": expected an integer >= 1, got "x"`);
  usage(t, ['--config', file('w2.yaml', 'model-path: m\npage-size: 1.5\n')], {}, 'key "page-size": expected an integer >= 1, got 1.5');
  usage(t, ['--config', file('w3.yaml', 'model-path: m\npage-sise: 4\n')], {}, 'unknown key "page-sise"; did you mean "page-size"?');
  usage(t, ['--config', file('w4.yaml', 'model-path: m\nenable-metrics: maybe\n')], {}, 'key "enable-metrics": expected true/1/yes/on');
  usage(t, ['--config', file('w5.yaml', 'model-path: m\nkv-events-config:\n  publisher: kafka\n')], {}, 'w5.yaml: key "kv-events-config": key "publisher": expected one of "null", "zmq"');
  usage(t, ['--config', file('w6.yaml', 'model-path: [\n')], {}, 'w6.yaml: invalid YAML');
  usage(t, ['--config', file('w7.yaml', '- a\n- b\n')], {}, 'w7.yaml: expected a mapping of flag names to values, got a list');
  usage(t, ['--config', join(dir, 'absent.yaml')], {}, 'absent.yaml: cannot read the --config file');
  usage(t, ['--config', file('w8.yaml', 'config: other.yaml\n')], {}, 'key "config" cannot be used inside a --config file');
  usage(t, ['--config', file('w9.yaml', 'model-path: m\ntp: 2\ntp-size: 2\n')], {}, 'keys "tp" and "tp-size" set the same flag --tp-size');
  usage(t, ['--config', file('w10.yaml', 'model-path: m\nno-enable-metrics: true\n')], {}, 'unknown key "no-enable-metrics"; did you mean "enable-metrics"?');
  usage(t, ['--config', file('w11.yaml', 'model-path: m\nstore-kv: file\ndiscovery-backend: mem\n')], {}, 'contradicts');
  // relative --config is found from cwd
  file('rel.yaml', 'model-path: rel\nendpoint-types: [chat]\n');
  const r = resolve(['--config', 'rel.yaml']);
  t.same([r.modelPath, r.endpointTypes], ['rel', ['chat']]);
  t.equal(resolve(['--config', file('empty.yaml', ''), ...M]).modelPath, 'm', 'an empty YAML file is no values');
});

t.test('the result is deeply frozen', async (t) => {
  const c = resolve([...M, '--kv-events-config', '{"publisher":"zmq"}']);
  t.ok(Object.isFrozen(c));
  t.ok(Object.isFrozen(c.endpoint));
  t.ok(Object.isFrozen(c.etcdEndpoints));
  t.ok(Object.isFrozen(c.kvEventsConfig));
  t.throws(() => {
    (c as { pageSize: number }).pageSize = 1;
  }, TypeError);
});

t.test('finalizeConfig picks a bootstrap port only when none was given', async (t) => {
  const c = await finalizeConfig(resolve(M));
  t.type(c.disaggregationBootstrapPort, 'number');
  t.ok((c.disaggregationBootstrapPort as number) > 0);
  t.ok(Object.isFrozen(c) && Object.isFrozen(c.endpoint));
  const given = resolve([...M, '--disaggregation-bootstrap-port', '12345']);
  t.equal(await finalizeConfig(given), given);
  usage(t, [...M, '--disaggregation-bootstrap-port', '0'], {}, '--disaggregation-bootstrap-port: expected a port number 1..65535');
});

t.test('every example YAML in config/ resolves to the mode it is named for', async (t) => {
  const expected: Record<string, { mode: string; kind: string; endpoint: string; nodeRank?: number; dpSize?: number }> = {
    'aggregated.yaml': { mode: 'aggregated', kind: 'llm', endpoint: 'dynamo.backend.generate' },
    'prefill.yaml': { mode: 'prefill', kind: 'llm', endpoint: 'dynamo.prefill.generate' },
    'decode.yaml': { mode: 'decode', kind: 'llm', endpoint: 'dynamo.backend.generate' },
    'embedding.yaml': { mode: 'aggregated', kind: 'embedding', endpoint: 'dynamo.backend.generate' },
    'multimodal-encode.yaml': { mode: 'aggregated', kind: 'multimodal-encode', endpoint: 'dynamo.encoder.generate' },
    'multimodal-worker.yaml': { mode: 'aggregated', kind: 'multimodal-worker', endpoint: 'dynamo.backend.generate' },
    'multinode-leader.yaml': { mode: 'aggregated', kind: 'llm', endpoint: 'dynamo.backend.generate', nodeRank: 0 },
    'multinode-follower.yaml': { mode: 'aggregated', kind: 'llm', endpoint: 'dynamo.backend.generate', nodeRank: 1 },
    'tensor-parallel.yaml': { mode: 'aggregated', kind: 'llm', endpoint: 'dynamo.backend.generate' },
    'data-parallel.yaml': { mode: 'aggregated', kind: 'llm', endpoint: 'dynamo.backend.generate', dpSize: 2 },
  };
  const present = readdirSync(join(repo, 'config')).filter((f) => f.endsWith('.yaml')).sort();
  t.same(present, Object.keys(expected).sort(), 'one example per mode, no others');
  for (const [name, want] of Object.entries(expected)) {
    const c = resolveConfig(['--config', join(repo, 'config', name)], {}, { cwd: repo });
    const e = c.endpoint;
    t.equal(c.servingMode, want.mode, `${name} mode`);
    t.equal(c.workerKind, want.kind, `${name} kind`);
    t.equal(`${e.namespace}.${e.component}.${e.endpoint}`, want.endpoint, `${name} endpoint`);
    if (want.nodeRank !== undefined) t.same([c.nodeRank, c.nnodes, c.tpSize], [want.nodeRank, 2, 2], `${name} topology`);
    if (want.dpSize !== undefined) t.equal(c.dpSize, want.dpSize, `${name} data-parallel groups`);
    t.ok(Value.Check(WorkerConfigSchema, c), `${name} satisfies the schema`);
  }
});

t.test('the flag table is consistent', async (t) => {
  const envs = WORKER_FLAGS.flatMap((f) => (f.env ? [f.env] : []));
  t.equal(new Set(envs).size, envs.length, 'no env var is shared by two flags');
  for (const f of WORKER_FLAGS) t.ok(f.help.length > 10, `--${f.name} has help`);
});
