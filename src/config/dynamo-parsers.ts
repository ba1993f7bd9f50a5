// The tool-call and reasoning parser names Dynamo's frontend knows (its Rust parser registries, lib/parsers, as of
// the 0.8 release line). --dyn-tool-call-parser and --dyn-reasoning-parser take only these: the worker publishes the
// name in its model card and the frontend looks it up, so a name it does not know would fail every request instead
// of failing at start.

export const DYN_TOOL_CALL_PARSERS = [
  'default', 'hermes', 'nemotron_deci', 'llama3_json', 'mistral', 'phi4', 'pythonic', 'harmony',
  'deepseek_v3', 'deepseek_v3_1', 'deepseek_v3_2', 'qwen3_coder', 'jamba',
] as const;

export const DYN_REASONING_PARSERS = [
  'basic', 'deepseek_r1', 'gpt_oss', 'qwen3', 'nemotron_deci', 'nemotron_nano', 'kimi', 'kimi_k25', 'step3', 'mistral', 'granite',
] as const;
