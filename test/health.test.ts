import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { healthCheckPayload } from '../src/protocol/health.js';
import {
  CanaryHealthCheck,
  effectiveHealthCheckPayload,
  HealthRegistry,
  healthRegistryOptionsFromEnv,
  parseHealthCheckPayloadSpec,
  type HealthProbe,
} from '../src/runtime/health.js';
import { SystemServer } from '../src/runtime/system-server.js';

const EP = 'generate';

/** A probe whose behaviour the test switches: 'ok' yields one chunk, 'hang' never answers, 'throw', 'error-chunk'. */
function scriptedProbe() {
  const state = { mode: 'ok' as 'ok' | 'hang' | 'throw' | 'error-chunk', calls: [] as Record<string, unknown>[], aborted: 0 };
  const probe: HealthProbe = async function* (payload, signal) {
    state.calls.push(payload);
    if (state.mode === 'throw') throw new Error('engine is gone');
    if (state.mode === 'error-chunk') {
      yield { event: 'error', error: { message: 'boom' } };
      return;
    }
    if (state.mode === 'hang') {
      await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve(), { once: true }));
      state.aborted++;
      return;
    }
    yield { data: { token_ids: [5], finish_reason: 'length' } };
  };
  return { state, probe };
}

async function until(cond: () => boolean, ms = 2000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (cond()) return true;
    await sleep(5);
  }
  return cond();
}

t.test('/health and /live: worker status without an endpoint list', async (t) => {
  const health = new HealthRegistry();
  const server = await SystemServer.start({ port: 0, host: '127.0.0.1', health });
  t.teardown(() => server!.close());
  let res = await fetch(server!.url('/health'));
  t.equal(res.status, 503, 'notready at start (DYN_SYSTEM_STARTING_HEALTH_STATUS default)');
  const body = (await res.json()) as Record<string, unknown>;
  t.same(Object.keys(body), ['endpoints', 'status', 'uptime'], 'reference body shape');
  t.match(body, { endpoints: {}, status: 'notready', uptime: { secs: Number, nanos: Number } });
  t.equal((await fetch(server!.url('/live'))).status, 503, '/live answers like /health');

  const changes: string[] = [];
  health.on('change', (s) => changes.push(s.status));
  health.setSystemStatus('ready');
  res = await fetch(server!.url('/health'));
  t.equal(res.status, 200);
  t.match(await res.json(), { status: 'ready' });
  health.setEndpointStatus(EP, 'notready');
  res = await fetch(server!.url('/live'));
  t.equal(res.status, 200, 'endpoints not listed in DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS do not decide');
  t.match(await res.json(), { status: 'ready', endpoints: { [EP]: 'notready' } });
  health.setSystemStatus('notready');
  t.same(changes, ['ready', 'ready', 'notready']);
  t.equal(new HealthRegistry({ startingStatus: 'ready' }).snapshot().status, 'ready');
  t.equal(new HealthRegistry('ready').snapshot().status, 'ready', 'status shorthand');
});

t.test('/health with DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS follows the listed endpoints', async (t) => {
  const health = new HealthRegistry(healthRegistryOptionsFromEnv({ DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS: '["generate"]' }));
  const server = await SystemServer.start({ port: 0, host: '127.0.0.1', health });
  t.teardown(() => server!.close());
  let res = await fetch(server!.url('/health'));
  t.equal(res.status, 503);
  t.match(await res.json(), { endpoints: { generate: 'notready' }, status: 'notready' }, 'listed endpoint not served yet');
  health.setSystemStatus('ready');
  t.equal((await fetch(server!.url('/health'))).status, 503, 'the worker status alone does not decide');
  health.setEndpointStatus('generate', 'ready');
  health.setEndpointStatus('load_metrics', 'ready');
  res = await fetch(server!.url('/health'));
  t.equal(res.status, 200);
  t.same((await res.json() as { endpoints: unknown }).endpoints, { generate: 'ready', load_metrics: 'ready' });
  health.setEndpointStatus('generate', 'notready');
  t.equal((await fetch(server!.url('/health'))).status, 503, 'a failed canary makes the worker notready');
  health.removeEndpoint('generate');
  t.equal((await fetch(server!.url('/health'))).status, 503, 'an unregistered endpoint is notready');
  const custom = await SystemServer.start({ port: 0, host: '127.0.0.1', health: new HealthRegistry({ startingStatus: 'ready' }), healthPath: '/healthz', livePath: '/livez' });
  t.teardown(() => custom!.close());
  t.equal((await fetch(custom!.url('/healthz'))).status, 200);
  t.equal((await fetch(custom!.url('/livez'))).status, 200);
  t.equal((await fetch(custom!.url('/health'))).status, 404);

  t.same(healthRegistryOptionsFromEnv({ DYN_SYSTEM_STARTING_HEALTH_STATUS: 'ready' }), { startingStatus: 'ready' });
  t.same(healthRegistryOptionsFromEnv({}), {});
  t.throws(() => healthRegistryOptionsFromEnv({ DYN_SYSTEM_STARTING_HEALTH_STATUS: 'healthy' }), {
    code: 'LLM_ERR_CONFIG', message: 'DYN_SYSTEM_STARTING_HEALTH_STATUS "healthy": expected ready or notready',
  });
  t.throws(() => healthRegistryOptionsFromEnv({ DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS: 'generate' }), {
    code: 'LLM_ERR_CONFIG', message: /DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS generate: expected a JSON list/,
  });
});

t.test('canary: idle endpoint gets the payload, healthy; hang times out; errors; recovery', async (t) => {
  const registry = new HealthRegistry({ useEndpointHealthStatus: [EP] });
  const { state, probe } = scriptedProbe();
  const payload = healthCheckPayload({ bos: 1 }) as Record<string, unknown>;
  const canary = new CanaryHealthCheck({ endpoint: EP, payload, probe, registry, canaryWaitMs: 40, timeoutMs: 60 });
  t.teardown(() => canary.stop());
  canary.start();
  t.ok(await until(() => registry.endpointStatus(EP) === 'ready'), 'first canary after the wait marks the endpoint ready');
  t.same(state.calls[0], payload, 'the endpoint health payload is sent');

  state.mode = 'hang';
  const started = Date.now();
  t.ok(await until(() => registry.endpointStatus(EP) === 'notready'), 'a hanging canary marks it notready');
  t.ok(Date.now() - started >= 60, 'not before the timeout');
  t.ok(await until(() => state.aborted >= 1), 'the probe saw its abort signal');
  t.equal(registry.snapshot().status, 'notready', 'the worker is notready with its endpoint');

  state.mode = 'ok';
  t.ok(await until(() => registry.endpointStatus(EP) === 'ready'), 'a later canary succeeds: ready again');

  state.mode = 'throw';
  t.ok(await until(() => registry.endpointStatus(EP) === 'notready'), 'a throwing probe: notready');
  const r = await canary.checkNow();
  t.same(r, { healthy: false, reason: 'engine is gone' });
  state.mode = 'error-chunk';
  const e = await canary.checkNow();
  t.equal(e.healthy, false);
  t.match(e.reason, /error event/);
  state.mode = 'ok';
  t.same(await canary.checkNow(), { healthy: true });
  t.equal(registry.endpointStatus(EP), 'ready');
});

t.test('canary: traffic postpones canaries while ready, not while notready', async (t) => {
  const registry = new HealthRegistry({ useEndpointHealthStatus: [EP] });
  const { state, probe } = scriptedProbe();
  const canary = new CanaryHealthCheck({ endpoint: EP, payload: { token_ids: [1] }, probe, registry, canaryWaitMs: 120, timeoutMs: 50 });
  t.teardown(() => canary.stop());
  canary.start();
  t.same(await canary.checkNow(), { healthy: true });
  const before = state.calls.length;
  for (let i = 0; i < 8; i++) {
    await sleep(40);
    canary.noteActivity();
  }
  t.equal(state.calls.length, before, 'no canary while requests keep arriving');
  t.ok(await until(() => state.calls.length > before, 1000), 'a canary once traffic stops');

  state.mode = 'throw';
  await canary.checkNow();
  t.equal(registry.endpointStatus(EP), 'notready');
  const failing = state.calls.length;
  for (let i = 0; i < 8; i++) {
    await sleep(40);
    canary.noteActivity();
  }
  t.ok(state.calls.length > failing, 'canaries continue through traffic while notready');
});

t.test('canary: stop aborts a canary in flight and records nothing', async (t) => {
  const registry = new HealthRegistry({ useEndpointHealthStatus: [EP] });
  const { state, probe } = scriptedProbe();
  state.mode = 'hang';
  const canary = new CanaryHealthCheck({ endpoint: EP, payload: {}, probe, registry, canaryWaitMs: 1000, timeoutMs: 5000 });
  canary.start();
  const inflight = canary.checkNow();
  await sleep(20);
  const t0 = Date.now();
  await canary.stop();
  await inflight;
  t.ok(Date.now() - t0 < 500, 'stop returns promptly');
  t.equal(registry.endpointStatus(EP), undefined, 'a stopped canary does not mark the endpoint');
  t.ok(await until(() => state.aborted === 1));
  t.throws(() => new CanaryHealthCheck({ endpoint: EP, payload: {}, probe, registry, canaryWaitMs: 0 }), { code: 'LLM_ERR_CONFIG' });
});

t.test('DYN_HEALTH_CHECK_PAYLOAD: JSON text, @file, non-objects refused', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'health-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const def = healthCheckPayload() as Record<string, unknown>;
  t.same(parseHealthCheckPayloadSpec('{"token_ids":[2],"stop_conditions":{"max_tokens":1}}'), { token_ids: [2], stop_conditions: { max_tokens: 1 } });
  const file = join(dir, 'payload.json');
  writeFileSync(file, '{"prompt":"ping"}');
  t.same(parseHealthCheckPayloadSpec(`@${file}`), { prompt: 'ping' });
  for (const [spec, got] of [['[1,2]', 'an array'], ['3', 'number'], ['null', 'null'], ['"x"', 'string']] as const) {
    t.throws(() => parseHealthCheckPayloadSpec(spec), {
      code: 'LLM_ERR_CONFIG',
      message: `DYN_HEALTH_CHECK_PAYLOAD: the health-check payload must be a JSON object, got ${got}`,
    });
  }
  writeFileSync(join(dir, 'arr.json'), '[]');
  t.throws(() => parseHealthCheckPayloadSpec(`@${join(dir, 'arr.json')}`), { code: 'LLM_ERR_CONFIG', message: /file .*arr\.json: the health-check payload must be a JSON object, got an array/ });
  t.throws(() => parseHealthCheckPayloadSpec('{"a":'), { code: 'LLM_ERR_CONFIG', message: /DYN_HEALTH_CHECK_PAYLOAD: not valid JSON/ });
  t.throws(() => parseHealthCheckPayloadSpec(`@${join(dir, 'missing.json')}`), { code: 'LLM_ERR_CONFIG', message: /missing\.json: cannot read \(ENOENT\)/ });

  t.same(effectiveHealthCheckPayload(def, null), def, 'no override: the default');
  t.same(effectiveHealthCheckPayload(def, { x: 1 }), { x: 1 }, 'a parsed override replaces the default');
  const saved = process.env['DYN_HEALTH_CHECK_PAYLOAD'];
  t.teardown(() => {
    if (saved === undefined) delete process.env['DYN_HEALTH_CHECK_PAYLOAD'];
    else process.env['DYN_HEALTH_CHECK_PAYLOAD'] = saved;
  });
  process.env['DYN_HEALTH_CHECK_PAYLOAD'] = `@${file}`;
  t.same(effectiveHealthCheckPayload(def), { prompt: 'ping' }, 'read from the environment');
  delete process.env['DYN_HEALTH_CHECK_PAYLOAD'];
  t.same(effectiveHealthCheckPayload(def), def);

  // The override is what the canary sends.
  const registry = new HealthRegistry({ useEndpointHealthStatus: [EP] });
  const { state, probe } = scriptedProbe();
  const canary = new CanaryHealthCheck({ endpoint: EP, payload: effectiveHealthCheckPayload(def, `@${file}`), probe, registry, canaryWaitMs: 1000 });
  t.same(await canary.checkNow(), { healthy: true });
  t.same(state.calls[0], { prompt: 'ping' });
});
