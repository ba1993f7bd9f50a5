import t from 'tap';
import { configureLogging, levelFor, logger, parseLogSpec } from '../src/runtime/log.js';

t.test('DYN_LOG syntax: default level, per-target overrides, Rust-style paths, bad levels named', async (t) => {
  const spec = parseLogSpec('warn,frontend=debug,dynamo_runtime::discovery=trace');
  t.equal(spec.level, 'warn');
  t.equal(levelFor(spec, 'frontend.router'), 'debug');
  t.equal(levelFor(spec, 'frontendish'), 'warn');
  t.equal(levelFor(spec, 'runtime.discovery.etcd'), 'trace');
  t.equal(levelFor(spec, 'worker'), 'warn');
  t.equal(parseLogSpec('info,dynamo_runtime=trace').level, 'info');
  t.throws(() => parseLogSpec('info,x=loud', '--log-level'), /--log-level: "x=loud" has level "loud"/);
  t.throws(() => parseLogSpec('=debug'), /names no target/);
});

t.test('records are filtered per target and written as human lines or JSON lines', async (t) => {
  const lines: string[] = [];
  const destination = { write: (line: string) => lines.push(line) };
  configureLogging({ spec: 'warn,frontend=debug', jsonl: true, destination });
  logger('frontend.router').debug('routed', { worker: 7 });
  logger('worker').info('dropped');
  logger('worker').error('died', { rank: 1 });
  t.equal(lines.length, 2);
  const first = JSON.parse(lines[0]!) as Record<string, unknown>;
  t.match(first, { level: 'DEBUG', target: 'frontend.router', message: 'routed', worker: 7 });
  t.match(String(first['time']), /^\d{4}-\d\d-\d\dT/);
  lines.length = 0;
  configureLogging({ spec: 'info', jsonl: false, destination });
  logger('worker').info('started', { model: 'a b' });
  t.match(lines[0], /^\d{4}-\d\d-\d\dT\S+ +INFO worker: started model="a b"\n$/);
  t.notOk(logger('worker').isEnabled('debug'));
});
