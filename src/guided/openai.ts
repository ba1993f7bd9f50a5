// The OpenAI surface of guided decoding: `response_format` (json_object, json_schema; text is no constraint) and the
// vLLM/SGLang-style extensions `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`, mapped to the
// PreprocessedRequest's sampling_options.guided_decoding (reference §2.1). The frontend checks the grammar itself
// (xgrammar, without a vocabulary) so that a bad schema or regex is a 400 naming the request field, before any
// tokenizing or routing; the worker compiles it against the model's vocabulary.
import { LlmError } from '../errors.js';
import type { GuidedDecoding } from '../protocol/request.js';
import { grammarSpecOf, type GrammarSpec } from './guides.js';
import { loadXgrammar, type XgrammarInstance } from './xgrammar.js';

/** The request fields this maps (both OpenAI bodies carry them; src/protocol/openai.ts types them). */
export interface OpenAiGuidedFields {
  response_format?: { type: string; json_schema?: { name?: string | null; schema?: unknown; strict?: boolean | null } | null } | null;
  guided_json?: unknown;
  guided_regex?: string | null;
  guided_choice?: string[] | null;
  guided_grammar?: string | null;
}

/** A guided-decoding field the request got wrong; `param` names it (the 400's `param`). */
export class GuidedFieldError extends LlmError {
  constructor(
    readonly param: string,
    message: string,
  ) {
    super('LLM_ERR_BAD_REQUEST', message);
  }
}

const present = (v: unknown) => v !== undefined && v !== null;

/** The guided_decoding the body asks for, or null. At most one of response_format (other than text) and the guided_*
 * fields may be set. Throws GuidedFieldError. */
export function guidedDecodingOf(body: OpenAiGuidedFields): { guided: GuidedDecoding; param: string } | null {
  const asked: { param: string; guided: GuidedDecoding }[] = [];
  const rf = body.response_format;
  if (present(rf) && rf!.type !== 'text') {
    if (rf!.type === 'json_object') asked.push({ param: 'response_format', guided: { json: { type: 'object' } } });
    else if (rf!.type === 'json_schema') {
      const schema = rf!.json_schema?.schema;
      if (!present(schema)) throw new GuidedFieldError('response_format', 'response_format.json_schema.schema: a json_schema response format needs its schema');
      asked.push({ param: 'response_format', guided: { json: schema } });
    } else {
      throw new GuidedFieldError('response_format', `response_format.type: "${rf!.type}" is not one of text, json_object, json_schema`);
    }
  }
  if (present(body.guided_json)) asked.push({ param: 'guided_json', guided: { json: body.guided_json } });
  if (present(body.guided_regex)) asked.push({ param: 'guided_regex', guided: { regex: body.guided_regex } });
  if (present(body.guided_choice)) asked.push({ param: 'guided_choice', guided: { choice: body.guided_choice } });
  if (present(body.guided_grammar)) asked.push({ param: 'guided_grammar', guided: { grammar: body.guided_grammar } });
  if (asked.length > 1) throw new GuidedFieldError(asked[1].param, `${asked.map((a) => a.param).join(' and ')}: set at most one of response_format and the guided_* fields`);
  return asked[0] ?? null;
}

let checker: XgrammarInstance | null = null;

/** Checks that the grammar compiles (no vocabulary needed); throws GuidedFieldError naming `param`. */
export async function checkGuided(guided: GuidedDecoding, param: string): Promise<void> {
  let spec: GrammarSpec | null;
  try {
    spec = grammarSpecOf(guided, param);
  } catch (err) {
    throw new GuidedFieldError(param, (err as Error).message);
  }
  if (!spec) return;
  checker ??= loadXgrammar();
  const { xg } = checker;
  try {
    switch (spec.kind) {
      case 'json_schema':
        (await xg.Grammar.fromJSONSchema(spec.schema)).dispose();
        return;
      case 'json_object':
        return;
      case 'regex':
        (await xg.Grammar.fromStructuralTag({ type: 'structural_tag', format: { type: 'regex', pattern: spec.pattern } })).dispose();
        return;
      case 'choice':
        return;
      case 'grammar':
        (await xg.Grammar.fromEBNF(spec.ebnf)).dispose();
        return;
      case 'structural_tag':
        (await xg.Grammar.fromStructuralTag(spec.tag)).dispose();
        return;
    }
  } catch (err) {
    const why = checker.takeMessages() || (err as Error).message;
    checker = null; // a refusal aborts the instance (xgrammar.ts)
    const field = param === 'response_format' ? 'response_format.json_schema.schema' : param;
    throw new GuidedFieldError(param, `${field}: the grammar does not compile: ${why}`);
  }
}
