// Aggregates of one benchmark run: percentiles of TTFT, TPOT, ITL and E2E, and throughput over the run's wall time.
import type { Distribution, RequestRecord, RunSummary } from './results.js';

/** Linear interpolation between closest ranks (numpy's default), over sorted values. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 1) return sorted[0];
  const pos = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function distribution(values: readonly number[]): Distribution | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  const mean = sorted.reduce((s, v) => s + v, 0) / sorted.length;
  return { mean, p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), count: sorted.length };
}

const MAX_DISTINCT_ERRORS = 5;

/** `promptTokens[i]` is the local count for request i, used when the server sent no usage. */
export function summarize(records: readonly RequestRecord[], durationS: number, localPromptTokens: readonly (number | null)[]): RunSummary {
  const ok = records.filter((r) => r.ok);
  let totalInput = 0;
  let fromUsage = true;
  records.forEach((r, i) => {
    if (!r.ok) return;
    if (r.promptTokens !== null) totalInput += r.promptTokens;
    else {
      fromUsage = false;
      totalInput += localPromptTokens[i] ?? 0;
    }
  });
  const totalOutput = ok.reduce((s, r) => s + r.outputTokens, 0);
  const tpot = ok.filter((r) => r.outputTokens > 1 && r.ttftMs !== null).map((r) => ((r.e2eMs as number) - (r.ttftMs as number)) / (r.outputTokens - 1));
  const errors = new Map<string, number>();
  for (const r of records) if (!r.ok && r.error !== null) errors.set(r.error, (errors.get(r.error) ?? 0) + 1);
  return {
    completed: ok.length,
    failed: records.length - ok.length,
    durationS,
    requestThroughput: ok.length / durationS,
    outputThroughput: totalOutput / durationS,
    totalThroughput: (totalInput + totalOutput) / durationS,
    totalInputTokens: totalInput,
    totalOutputTokens: totalOutput,
    inputTokensFromUsage: fromUsage,
    ttftMs: distribution(ok.flatMap((r) => (r.ttftMs === null ? [] : [r.ttftMs]))),
    tpotMs: distribution(tpot),
    itlMs: distribution(ok.flatMap((r) => r.itlMs)),
    e2eMs: distribution(ok.map((r) => r.e2eMs as number)),
    errors: [...errors].slice(0, MAX_DISTINCT_ERRORS).map(([message, count]) => ({ message, count })),
  };
}
