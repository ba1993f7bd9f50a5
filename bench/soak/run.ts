// The long fault soak as a benchmark: `node --import tsx bench/soak/run.ts [--requests 10000] [--concurrency 16]
// [--seed 1] [--json FILE]`. Prints the figures as Markdown (for bench/RESULTS.md) and exits 1 when a response was
// lost, wrong or hung, a hostile request was not refused with a 4xx, or KV pages stayed in use.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_DEPLOYMENT, formatReport, runSoak } from './soak.js';

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '10000' },
    concurrency: { type: 'string', default: '16' },
    seed: { type: 'string', default: '1' },
    'deadline-ms': { type: 'string', default: '120000' },
    'disconnect-share': { type: 'string', default: '0.15' },
    'stream-delay-ms': { type: 'string', default: String(DEFAULT_DEPLOYMENT.streamDelayMs) },
    json: { type: 'string' },
  },
});

function count(name: keyof typeof values, min: number): number {
  const n = Number(values[name]);
  if (!Number.isFinite(n) || n < min) throw new Error(`--${name} "${values[name]}": expected a number >= ${min}`);
  return n;
}

// through process.exit, so the deployment's exit hook kills its processes
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(130));

const report = await runSoak({
  requests: count('requests', 10),
  concurrency: count('concurrency', 1),
  seed: count('seed', 0),
  deadlineMs: count('deadline-ms', 1000),
  disconnectShare: count('disconnect-share', 0),
  deployment: { ...DEFAULT_DEPLOYMENT, streamDelayMs: count('stream-delay-ms', 0) },
  progress: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
});
if (values.json) writeFileSync(values.json, JSON.stringify(report, null, 2));
process.stdout.write(`${formatReport(report)}\n\nDuration ${report.durationS} s.\n`);
for (const line of [...report.lost, ...report.wrong, ...report.hung, ...report.hostileNotRefused]) process.stdout.write(`- ${line}\n`);
const leaked = report.workers.some((w) => !Number.isNaN(w.kvUsedTokensAfter) && w.kvUsedTokensAfter > w.kvUsedTokensBefore);
process.exitCode = report.lost.length + report.wrong.length + report.hung.length + report.hostileNotRefused.length > 0 || leaked ? 1 : 0;
