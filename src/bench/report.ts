// The text report printed on stdout at the end: per load point a block of throughput and latency percentiles,
// and for a sweep one row per point underneath.
import type { BenchConfig, Distribution, LengthSpec, LoadShape, RunSummary } from './results.js';

export function describeLoad(load: LoadShape): string {
  if (load.traceTimeScale !== undefined) {
    return `trace replay at ${load.traceTimeScale}x recorded gaps${load.concurrency !== null ? `, at most ${load.concurrency} in flight` : ''}`;
  }
  if (load.requestRate !== null) {
    return `request rate ${load.requestRate} req/s (Poisson)${load.concurrency !== null ? `, at most ${load.concurrency} in flight` : ''}`;
  }
  return load.concurrency !== null ? `concurrency ${load.concurrency}` : 'all requests at once';
}

function fmt(value: number | undefined | null, digits = 2): string {
  return value === undefined || value === null || !Number.isFinite(value) ? '-' : value.toFixed(digits);
}

/** Left-aligned first column, right-aligned numbers. */
function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, c) => Math.max(h.length, ...rows.map((r) => r[c].length)));
  const line = (cells: string[]) => cells.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  ').trimEnd();
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

function latencyRow(name: string, d: Distribution | null): string[] {
  return [name, fmt(d?.mean), fmt(d?.p50), fmt(d?.p90), fmt(d?.p99)];
}

export function runBlock(load: LoadShape, s: RunSummary, interrupted: boolean): string {
  const out = [`== ${describeLoad(load)}${interrupted ? ' (interrupted)' : ''} ==`];
  out.push(`requests             ${s.completed} completed, ${s.failed} failed in ${s.durationS.toFixed(2)} s`);
  out.push(`input tokens         ${s.totalInputTokens}${s.inputTokensFromUsage ? '' : ' (partly local counts: the server sent no usage)'}`);
  out.push(`output tokens        ${s.totalOutputTokens}`);
  out.push(`request throughput   ${fmt(s.requestThroughput)} req/s`);
  out.push(`output throughput    ${fmt(s.outputThroughput)} tok/s`);
  out.push(`total throughput     ${fmt(s.totalThroughput)} tok/s`);
  out.push('');
  out.push(...table(['latency (ms)', 'mean', 'p50', 'p90', 'p99'], [
    latencyRow('TTFT', s.ttftMs),
    latencyRow('TPOT', s.tpotMs),
    latencyRow('ITL', s.itlMs),
    latencyRow('E2E', s.e2eMs),
  ]));
  if (s.errors.length) {
    out.push('', 'errors (first distinct messages):');
    for (const e of s.errors) out.push(`  ${e.count}x ${e.message}`);
  }
  return out.join('\n');
}

export function sweepTable(runs: readonly { load: LoadShape; summary: RunSummary }[]): string {
  const rows = runs.map(({ load, summary: s }) => [
    load.requestRate !== null ? `${load.requestRate}/s` : String(load.concurrency ?? 'all'),
    `${s.completed}/${s.failed}`,
    fmt(s.requestThroughput), fmt(s.outputThroughput, 1), fmt(s.totalThroughput, 1),
    fmt(s.ttftMs?.p50), fmt(s.ttftMs?.p99), fmt(s.tpotMs?.p50), fmt(s.tpotMs?.p99),
    fmt(s.itlMs?.p50), fmt(s.itlMs?.p99), fmt(s.e2eMs?.p50), fmt(s.e2eMs?.p99),
  ]);
  return table(['conc', 'ok/fail', 'req/s', 'out tok/s', 'tot tok/s', 'TTFT p50', 'TTFT p99', 'TPOT p50', 'TPOT p99', 'ITL p50', 'ITL p99', 'E2E p50', 'E2E p99'], rows).join('\n');
}

export function configLine(c: BenchConfig): string {
  const range = (l: LengthSpec) => (l.ratio < 1 ? `${Math.max(1, Math.floor(l.len * l.ratio))}..${l.len}` : String(l.len));
  const lens = `input ${range(c.input)} tokens, output ${range(c.output)}`;
  const prompt = `tokens counted by ${c.tokenizer ?? 'the server'}`;
  const path = c.endpoint === 'chat' ? 'chat/completions' : c.endpoint;
  const data = c.dataset === 'random' ? lens : `${c.dataset} ${c.datasetPath ?? ''}`.trim();
  return `model "${c.model}" at ${c.url} (/v1/${path}); ${c.numPrompts} prompts, ${data} (${prompt}); temperature ${c.temperature}, seed ${c.seed}${c.ignoreEos ? ', ignore_eos' : ''}, ${c.warmup} warm-up`;
}
