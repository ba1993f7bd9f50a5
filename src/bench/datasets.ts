// Datasets from files: ShareGPT conversations (the first human turn is the prompt, the gpt turn after it gives
// the output length in tokens) and request traces (JSONL, one request per line with a timestamp in ms and either
// input_length or prompt, plus output_length, as in Mooncake-style traces), replayed at the recorded times.
// Errors name the file and the entry (JSON index) or line (JSONL) that is wrong.
import { readFileSync } from 'node:fs';
import { LlmError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/index.js';
import { exactPrompt, type PromptSpec } from './prompts.js';
import { Rng } from './random.js';

function readText(path: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new LlmError('LLM_ERR_CONFIG', `${flag} ${path}: cannot read: ${(err as Error).message}`);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const HUMAN = new Set(['human', 'user']);
const GPT = new Set(['gpt', 'assistant', 'chatgpt', 'bard', 'model']);

/**
 * The first `count` usable conversations of a ShareGPT JSON file (an array of {conversations: [{from, value}]}).
 * A conversation whose first turn is not human, or that has no gpt answer after it, is skipped; an entry of the
 * wrong shape is an error naming the file and the entry.
 */
export function loadShareGpt(path: string, count: number, tokenizer: Tokenizer): PromptSpec[] {
  const where = `--dataset-path ${path}`;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readText(path, '--dataset-path'));
  } catch (err) {
    if (err instanceof LlmError) throw err;
    throw new LlmError('LLM_ERR_CONFIG', `${where}: not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(parsed)) throw new LlmError('LLM_ERR_CONFIG', `${where}: expected a ShareGPT JSON array of {"conversations": [...]}, got ${typeof parsed}`);
  const out: PromptSpec[] = [];
  for (const [i, entry] of parsed.entries()) {
    if (out.length >= count) break;
    const at = `${where}: entry ${i}`;
    if (!isRecord(entry) || !Array.isArray(entry['conversations'])) throw new LlmError('LLM_ERR_CONFIG', `${at}: expected an object with a "conversations" array`);
    const turns = entry['conversations'];
    for (const [k, turn] of turns.entries()) {
      if (!isRecord(turn) || typeof turn['from'] !== 'string' || typeof turn['value'] !== 'string') {
        throw new LlmError('LLM_ERR_CONFIG', `${at}, turn ${k}: expected {"from": string, "value": string}`);
      }
    }
    const turnsOk = turns as { from: string; value: string }[];
    if (turnsOk.length < 2 || !HUMAN.has(turnsOk[0].from) || !GPT.has(turnsOk[1].from)) continue;
    const prompt = turnsOk[0].value;
    const maxTokens = tokenizer.encode(turnsOk[1].value, { addSpecialTokens: false }).length;
    if (prompt === '' || maxTokens === 0) continue;
    out.push({ prompt, promptTokens: tokenizer.encode(prompt, { addSpecialTokens: false }).length, maxTokens, arrivalMs: null });
  }
  if (out.length === 0) throw new LlmError('LLM_ERR_CONFIG', `${where}: no conversation starts with a human turn answered by a gpt turn`);
  if (out.length < count) throw new LlmError('LLM_ERR_CONFIG', `${where}: only ${out.length} usable conversations, --num-prompts asks for ${count}`);
  return out;
}

/**
 * The first `count` requests of a JSONL trace: {"timestamp": ms, "input_length": n | "prompt": text,
 * "output_length": n}. Arrivals are the timestamps relative to the first, times `timeScale`. Prompts of a given
 * input_length are random text of exactly that many tokens (seeded).
 */
export function loadTrace(path: string, count: number, timeScale: number, tokenizer: Tokenizer, seed: number): PromptSpec[] {
  const where = `--dataset-path ${path}`;
  const lines = readText(path, '--dataset-path').split('\n');
  const rng = new Rng(seed);
  const out: PromptSpec[] = [];
  let first: number | null = null;
  let previous = -Infinity;
  for (const [i, raw] of lines.entries()) {
    if (out.length >= count) break;
    const line = raw.trim();
    if (line === '') continue;
    const at = `${where}:${i + 1}`;
    let entry: unknown;
    try {
      entry = JSON.parse(line);
    } catch (err) {
      throw new LlmError('LLM_ERR_CONFIG', `${at}: not JSON: ${(err as Error).message}`);
    }
    if (!isRecord(entry)) throw new LlmError('LLM_ERR_CONFIG', `${at}: expected a JSON object`);
    const ts = entry['timestamp'];
    if (typeof ts !== 'number' || !Number.isFinite(ts) || ts < 0) throw new LlmError('LLM_ERR_CONFIG', `${at}: "timestamp" must be a non-negative number of milliseconds`);
    if (ts < previous) throw new LlmError('LLM_ERR_CONFIG', `${at}: "timestamp" ${ts} is earlier than the line before (${previous}); a trace is in time order`);
    previous = ts;
    const outLen = entry['output_length'];
    if (!Number.isInteger(outLen) || (outLen as number) < 1) throw new LlmError('LLM_ERR_CONFIG', `${at}: "output_length" must be a positive integer`);
    const inLen = entry['input_length'];
    const text = entry['prompt'];
    let prompt: string;
    let promptTokens: number;
    if (typeof text === 'string' && text !== '') {
      prompt = text;
      promptTokens = tokenizer.encode(text, { addSpecialTokens: false }).length;
    } else if (Number.isInteger(inLen) && (inLen as number) >= 1) {
      const p = exactPrompt(inLen as number, tokenizer, rng);
      prompt = p.text;
      promptTokens = p.tokens;
    } else {
      throw new LlmError('LLM_ERR_CONFIG', `${at}: needs "input_length" (a positive integer) or "prompt" (non-empty text)`);
    }
    first ??= ts;
    out.push({ prompt, promptTokens, maxTokens: outLen as number, arrivalMs: (ts - first) * timeScale });
  }
  if (out.length === 0) throw new LlmError('LLM_ERR_CONFIG', `${where}: the trace has no requests`);
  if (out.length < count) throw new LlmError('LLM_ERR_CONFIG', `${where}: only ${out.length} requests, --num-prompts asks for ${count}`);
  return out;
}
