import t, { type Test } from 'tap';
import { Type } from '@sinclair/typebox';
import { closest, editDistance, parseCommandLine, renderHelp, type FlagSpec } from '../src/cli/args.js';
import { LlmError } from '../src/errors.js';

const specs: FlagSpec[] = [
  { name: 'prompt', kind: 'string', schema: Type.String({ minLength: 1 }), help: 'Prompt text.' },
  { name: 'max-tokens', aliases: ['n'], kind: 'int', valueName: 'N', schema: Type.Integer({ minimum: 1 }), default: 16, env: 'GEN_MAX_TOKENS', help: 'Tokens to generate.' },
  { name: 'temperature', kind: 'number', schema: Type.Number({ minimum: 0 }), default: 0, help: 'Sampling temperature.' },
  { name: 'stream', kind: 'bool', schema: Type.Boolean(), default: true, help: 'Stream tokens.' },
  { name: 'stop', kind: 'list', schema: Type.Array(Type.String()), help: 'Stop strings.' },
];

function usage(t: Test, f: () => unknown, text: string): void {
  try {
    f();
    t.fail(`expected a usage error: ${text}`);
  } catch (err) {
    t.ok(err instanceof LlmError && err.code === 'LLM_ERR_USAGE', 'a usage error');
    t.match((err as Error).message, text);
  }
}

t.test('values: flag > env > default, with aliases, negation and positionals', async (t) => {
  const a = parseCommandLine(['--prompt', 'hi', '--n=4', '--no-stream', '--stop', 'a,b', 'file.gguf'], specs, { env: { GEN_MAX_TOKENS: '9' }, maxPositionals: 1 });
  t.same(a.values, { prompt: 'hi', 'max-tokens': 4, temperature: 0, stream: false, stop: ['a', 'b'] });
  t.same(a.positionals, ['file.gguf']);
  t.equal(parseCommandLine([], specs, { env: { GEN_MAX_TOKENS: '9' } }).values['max-tokens'], 9);
  t.equal(parseCommandLine([], specs, { env: {} }).values.prompt, undefined);
  t.equal(parseCommandLine(['--help'], specs, { env: {} }).help, true);
  t.same(parseCommandLine(['--', '--prompt'], specs, { env: {}, maxPositionals: 1 }).positionals, ['--prompt']);
});

t.test('errors name the flag, the value and what is allowed', async (t) => {
  usage(t, () => parseCommandLine(['--max-token', '3'], specs, { env: {} }), 'unknown flag --max-token; did you mean --max-tokens?');
  usage(t, () => parseCommandLine(['--temperature', '-1'], specs, { env: {} }), '--temperature: expected a number >= 0, got "-1"');
  usage(t, () => parseCommandLine(['--temperature'], specs, { env: {} }), '--temperature: missing value; expected a number >= 0');
  usage(t, () => parseCommandLine([], specs, { env: { GEN_MAX_TOKENS: 'lots' } }), 'GEN_MAX_TOKENS: expected an integer >= 1, got "lots"');
  usage(t, () => parseCommandLine(['x'], specs, { env: {} }), 'unexpected argument "x"');
  usage(t, () => parseCommandLine(['--stream=perhaps'], specs, { env: {} }), '--stream: expected true/1/yes/on or false/0/no/off, got "perhaps"');
});

t.test('suggestions and help', async (t) => {
  t.equal(editDistance('kitten', 'sitting'), 3);
  t.equal(closest('strem', ['stream', 'stop']), 'stream');
  t.equal(closest('qqqqqqqqqqqq', ['stream', 'stop']), undefined);
  t.equal(closest('foo', ['tp', 'dp-size', 'model-path']), undefined, 'a short unrelated word suggests nothing');
  t.equal(closest('modle-path', ['tp', 'model-path']), 'model-path');
  const help = renderHelp('dynamo-sglang generate [flags] MODEL', 'Generates text.', [{ title: 'Flags', flags: specs }]);
  for (const s of ['--prompt', '--max-tokens, --n N', 'env GEN_MAX_TOKENS', '--stream, --no-stream', 'expects an integer >= 1']) t.match(help, s);
});
