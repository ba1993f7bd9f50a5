// Turning a worker's description of its model (ModelDeploymentCard) into the card a Dynamo frontend accepts
// (WireModelCard, protocol/mdc.ts): the reference's slug, `migration_limit` always present, every file reference as
// `{path, checksum: "blake3:<hex>"}` hashed from the file itself, and no artifact variant the reference lacks.
// Discovery.registerModel runs every card through here, so whatever a worker builds, what lands in discovery
// decodes by the reference's rules.
import { readFile } from 'node:fs/promises';
import { LlmError } from '../errors.js';
import type { ModelDeploymentCard, WireCheckedFile, WireModelCard } from '../protocol/mdc.js';
import { blake3Hex } from './blake3.js';

/**
 * The reference's slug of a model name, as its card builder makes it (`Slug::from_string`, which is `Slug::slugify`,
 * in Dynamo 0.8.0 and later main alike): lowercase; every character other than a-z, 0-9, "-" and "_" becomes "_";
 * leading "_" are trimmed. "Qwen/Qwen3-0.6B" → "qwen_qwen3-0_6b".
 */
export function modelSlug(name: string): string {
  return [...name.toLowerCase()].map((c) => (/^[a-z0-9_-]$/.test(c) ? c : '_')).join('').replace(/^_+/, '');
}

/** `{path, checksum}` of a local file, hashed now; an already checked reference passes through. */
async function checkedFile(ref: string | { path: string; checksum: string }, what: string): Promise<WireCheckedFile> {
  if (typeof ref !== 'string') {
    if (!/^blake3:[0-9a-f]+$/.test(ref.checksum)) {
      throw new LlmError('LLM_ERR_PROTOCOL', `model card ${what} ${ref.path}: checksum "${ref.checksum}" is not blake3:<hex>`);
    }
    return { path: ref.path, checksum: ref.checksum };
  }
  let bytes: Buffer;
  try {
    bytes = await readFile(ref);
  } catch (err) {
    throw new LlmError('LLM_ERR_MODEL_NOT_FOUND', `model card ${what} ${ref}: cannot read it to compute its checksum (${(err as Error).message})`);
  }
  return { path: ref, checksum: `blake3:${blake3Hex(bytes)}` };
}

type Artifact = Record<string, string | { path: string; checksum: string }> | null | undefined;

/** One artifact field: the single `{variant: file}` entry; `gguf` (no such variant in the reference) is left out,
 * which a frontend reads as "no such file" (ours then loads the tokenizer from source_path). */
async function wireArtifact<V extends string>(artifact: Artifact, variant: V, what: string): Promise<Record<V, WireCheckedFile> | undefined> {
  if (artifact === null || artifact === undefined) return undefined;
  const entries = Object.entries(artifact);
  if (entries.length !== 1) throw new LlmError('LLM_ERR_PROTOCOL', `model card ${what}: expected exactly one variant, got ${entries.length}`);
  const [name, ref] = entries[0];
  if (name === 'gguf') return undefined;
  if (name !== variant) throw new LlmError('LLM_ERR_PROTOCOL', `model card ${what}: variant "${name}" is not one the reference knows (expected ${variant})`);
  return { [variant]: await checkedFile(ref, what) } as Record<V, WireCheckedFile>;
}

/** The wire form of `card` (reads and hashes the files it names). */
export async function wireModelCard(card: ModelDeploymentCard): Promise<WireModelCard> {
  const { model_info, tokenizer, prompt_formatter, gen_config, chat_template_file, migration_limit, slug: _slug, ...rest } = card;
  const modelInfo = await wireArtifact(model_info, 'hf_config_json', 'model_info');
  const tokenizerFile = await wireArtifact(tokenizer, 'hf_tokenizer_json', 'tokenizer');
  const formatter = await wireArtifact(prompt_formatter, 'hf_tokenizer_config_json', 'prompt_formatter');
  const generation = await wireArtifact(gen_config, 'hf_generation_config_json', 'gen_config');
  if (chat_template_file !== null && chat_template_file !== undefined) {
    throw new LlmError('LLM_ERR_PROTOCOL', 'model card chat_template_file: a separate chat template file is not published by this worker');
  }
  return {
    ...rest,
    slug: modelSlug(card.display_name),
    ...(modelInfo ? { model_info: modelInfo } : {}),
    ...(tokenizerFile ? { tokenizer: tokenizerFile } : {}),
    ...(formatter ? { prompt_formatter: formatter } : {}),
    ...(generation ? { gen_config: generation } : {}),
    migration_limit: migration_limit ?? 0,
  };
}
