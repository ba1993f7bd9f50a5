// The tiny model, settings and prompts of the tensor-parallel tests that go through the Supervisor on the real CPU
// engine (tp-supervisor, multinode): make-model's qwen3-tiny (4 query heads, 2 KV heads: TP 2 splits the KV heads,
// TP 4 replicates them), a small KV pool, and three concurrent greedy prompts of different lengths.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Supervisor } from '../../actors/supervisor.js';
import type { SupervisorConfig } from '../../src/config/supervisor.js';
import { makeModel } from '../../src/engine/make-model.js';
import type { PreprocessedRequest } from '../../src/protocol/request.js';

export const PROMPTS = [[1, 7, 330, 12, 900, 4, 4, 61], [2, 500, 3], [9, 9, 9, 800, 14, 270, 33, 1000, 5, 41, 620, 7, 19, 23, 8, 70, 11, 2, 3]];

/** Writes the model into a fresh temp folder (removed by `teardown`); returns its folder and the base settings. */
export function tinyGroup(prefix: string, teardown: (fn: () => void) => void): { dir: string; modelPath: string; base: SupervisorConfig } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { dir: modelPath } = makeModel({ shape: 'qwen3-tiny', seed: 5, outDir: join(dir, 'model'), dtype: 'f32', std: 0.2 });
  const base: SupervisorConfig = {
    modelPath, device: 'cpu', pageSize: 4, numPages: 96, cpuThreads: 1, maxRunningRequests: 8, maxPrefillTokens: 64,
    chunkedPrefillSize: 16, stepTimeoutMs: 20_000, startTimeoutMs: 60_000,
  };
  return { dir, modelPath, base };
}

const request = (tokens: number[], maxTokens: number): PreprocessedRequest => ({
  token_ids: tokens, stop_conditions: { max_tokens: maxTokens, ignore_eos: true }, sampling_options: { temperature: 0 }, eos_token_ids: [],
});

/** The greedy tokens of one request, whole. */
export async function tokensOf(sup: Supervisor, tokens: number[], maxTokens: number): Promise<number[]> {
  const out: number[] = [];
  for await (const chunk of sup.generate(request(tokens, maxTokens))) out.push(...chunk.token_ids);
  return out;
}
