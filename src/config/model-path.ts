// --model-path as SGLang takes it: a local GGUF file or checkpoint directory, or a Hugging Face repo id (`org/name`)
// found in the local Hugging Face cache. Nothing is downloaded: a repo id that is not in the cache stays as given,
// and the model loader refuses it saying what a repo id needs. Cache layout (huggingface_hub): <hub>/models--<org>--<name>/refs/<revision> holds a commit
// hash, <hub>/models--<org>--<name>/snapshots/<commit>/ the files; <hub> is HF_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { LlmError } from '../errors.js';

/** `org/name` (optionally `org/name@revision`): Hugging Face's repo id characters, exactly one slash. */
const REPO_ID = /^([A-Za-z0-9][A-Za-z0-9._-]*)\/([A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9._/-]+))?$/;

export interface ResolvedModelPath {
  /** The local file or directory to load. */
  readonly path: string;
  /** The repo id when the path came from the Hugging Face cache (the default served model name). */
  readonly repoId: string | null;
}

/** The hub cache directory huggingface_hub uses under this environment. */
export function huggingFaceHubCache(env: NodeJS.ProcessEnv = process.env): string {
  if (env['HF_HUB_CACHE']) return env['HF_HUB_CACHE'];
  if (env['HF_HOME']) return join(env['HF_HOME'], 'hub');
  const cacheHome = env['XDG_CACHE_HOME'] || join(homedir(), '.cache');
  return join(cacheHome, 'huggingface', 'hub');
}

/** Resolves a --model-path value; `flag` names the setting in errors. Local paths pass through unchanged (a missing one
 * is reported by the model loader, which names the file it could not open). */
export function resolveModelPath(given: string, env: NodeJS.ProcessEnv = process.env, flag = '--model-path'): ResolvedModelPath {
  const m = REPO_ID.exec(given);
  // A path that exists, or is not shaped like a repo id (absolute, ./relative, a .gguf file), is the loader's to open.
  if (existsSync(given) || !m || given.toLowerCase().endsWith('.gguf')) return { path: given, repoId: null };
  const [, org, name, revision = 'main'] = m;
  const repoId = `${org}/${name}`;
  const hub = huggingFaceHubCache(env);
  const repoDir = join(hub, `models--${org}--${name}`);
  // Not cached: the path stays as given; the model loader reports it missing, with what a repo id needs.
  if (!isDirectory(repoDir)) return { path: given, repoId: null };
  const refFile = join(repoDir, 'refs', revision);
  let commit = revision;
  if (existsSync(refFile)) commit = readFileSync(refFile, 'utf8').trim();
  else if (revision === 'main') {
    // A cache filled with an explicit revision has no refs/main; one snapshot is unambiguous.
    const snapshots = isDirectory(join(repoDir, 'snapshots')) ? readdirSync(join(repoDir, 'snapshots')) : [];
    if (snapshots.length !== 1) {
      throw new LlmError('LLM_ERR_USAGE', `${flag} "${given}": the Hugging Face cache ${repoDir} has no ${refFile} and ${snapshots.length} snapshots to choose from; name one as ${repoId}@<commit>`);
    }
    commit = snapshots[0];
  }
  const snapshot = join(repoDir, 'snapshots', commit);
  if (!isDirectory(snapshot)) {
    throw new LlmError('LLM_ERR_USAGE', `${flag} "${given}": the Hugging Face cache ${repoDir} points ${revision} at ${commit}, which has no snapshot directory ${snapshot}`);
  }
  return { path: snapshot, repoId };
}

/** Why a --model-path that does not exist was not found, for the loader's error: what a repo id needs. */
export function missingModelReason(given: string): string {
  if (!REPO_ID.test(given) || given.toLowerCase().endsWith('.gguf')) return 'no such file or directory';
  return 'no such file or directory, and not in the local Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub, else ' +
    '~/.cache/huggingface/hub, as models--org--name/snapshots/<commit>); a repo id is served only from that cache, ' +
    'nothing is downloaded';
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
