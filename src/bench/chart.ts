// The benchmark chart as SVG (and PNG rendered from it by resvg): a title block (model, input/output lengths,
// card, date, commit), then three panels against the load (concurrency, request rate or trace time scale), one
// coloured series per benchmark run so several runs overlay for comparison, p50 solid and p99 dashed.
import { Resvg } from '@resvg/resvg-js';
import { LlmError } from '../errors.js';
import type { BenchResults, LoadShape, RunSummary } from './results.js';

export const CHART_WIDTH = 1200;
export const CHART_HEIGHT = 560;
const TITLE_HEIGHT = 110;
const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
const FONT = 'DejaVu Sans, Arial, Helvetica, sans-serif';

/** One benchmark result file (or the run just finished) and its name in the legend. */
export interface ChartRun {
  label: string;
  results: BenchResults;
}

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** 1, 2 or 5 times a power of ten, at least `x`. */
function niceStep(x: number): number {
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

function tickLabel(v: number): string {
  if (v >= 1000) return `${+(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
  if (v >= 10 || v === 0) return String(Math.round(v));
  return String(+v.toFixed(v >= 1 ? 1 : 3));
}

type LoadAxis = 'concurrency' | 'request rate (req/s)' | 'trace time scale';

function loadAxis(load: LoadShape): LoadAxis {
  if (load.traceTimeScale !== undefined) return 'trace time scale';
  return load.requestRate !== null ? 'request rate (req/s)' : 'concurrency';
}

function loadX(load: LoadShape, numPrompts: number): number {
  if (load.traceTimeScale !== undefined) return load.traceTimeScale;
  return load.requestRate ?? load.concurrency ?? numPrompts;
}

interface Metric {
  title: string;
  p50: (s: RunSummary) => number | null;
  p99: ((s: RunSummary) => number | null) | null;
}

function panelsFor(embeddings: boolean): Metric[] {
  if (embeddings) {
    return [
      { title: 'Requests / s', p50: (s) => (s.completed ? s.requestThroughput : null), p99: null },
      { title: 'Latency p50, p99 (ms)', p50: (s) => s.e2eMs?.p50 ?? null, p99: (s) => s.e2eMs?.p99 ?? null },
      { title: 'Input tokens / s', p50: (s) => (s.completed ? s.totalThroughput : null), p99: null },
    ];
  }
  return [
    { title: 'Output tokens / s', p50: (s) => (s.completed ? s.outputThroughput : null), p99: null },
    { title: 'TTFT p50, p99 (ms)', p50: (s) => s.ttftMs?.p50 ?? null, p99: (s) => s.ttftMs?.p99 ?? null },
    { title: 'ITL p50, p99 (ms)', p50: (s) => s.itlMs?.p50 ?? null, p99: (s) => s.itlMs?.p99 ?? null },
  ];
}

function lengths(r: BenchResults): string {
  const c = r.config;
  if (c.dataset !== 'random') return `${c.dataset} dataset ${c.datasetPath ?? ''}`.trim();
  const range = (l: { len: number; ratio: number }) => (l.ratio < 1 ? `${Math.max(1, Math.floor(l.len * l.ratio))}-${l.len}` : String(l.len));
  return c.endpoint === 'embeddings' ? `input ${range(c.input)} tokens` : `input ${range(c.input)} / output ${range(c.output)} tokens`;
}

/** What a run is, in one line: model, lengths, card, date, commit. */
export function describeRun(r: BenchResults): string {
  return [
    `model ${r.config.model}`,
    lengths(r),
    `card ${r.card ?? 'not given'}`,
    r.date.slice(0, 16).replace('T', ' '),
    `commit ${r.commit ?? 'unknown'}`,
  ].join(' · ');
}

function panelSvg(x0: number, width: number, metric: Metric, runs: readonly ChartRun[], axis: LoadAxis): string {
  const plot = { x: x0 + 70, y: TITLE_HEIGHT + 40, w: width - 70 - 24, h: CHART_HEIGHT - TITLE_HEIGHT - 40 - 60 };
  const out: string[] = [`<text x="${x0 + 16}" y="${TITLE_HEIGHT + 22}" font-size="16" font-weight="bold">${esc(metric.title)}</text>`];
  const points = runs.map((r) => r.results.runs.map((p) => ({
    x: loadX(p.load, r.results.config.numPrompts),
    p50: metric.p50(p.summary),
    p99: metric.p99 ? metric.p99(p.summary) : null,
  })).sort((a, b) => a.x - b.x));
  const xs = [...new Set(points.flat().map((p) => p.x))].sort((a, b) => a - b);
  const values = points.flat().flatMap((p) => [p.p50, p.p99]).filter((v): v is number => v !== null && Number.isFinite(v));
  const top = Math.max(...values, 0);
  const step = niceStep(top > 0 ? (top * 1.05) / 5 : 1);
  const yMax = step * Math.max(1, Math.ceil((top * 1.05) / step));
  const yPix = (v: number) => plot.y + plot.h - (v / yMax) * plot.h;
  const logs = xs.map((x) => Math.log2(x));
  const lo = Math.min(...logs);
  const hi = Math.max(...logs);
  const xPix = (x: number) => (hi === lo ? plot.x + plot.w / 2 : plot.x + 14 + ((Math.log2(x) - lo) / (hi - lo)) * (plot.w - 28));

  for (let v = 0; v <= yMax + step / 2; v += step) {
    const y = yPix(v).toFixed(1);
    out.push(`<line x1="${plot.x}" y1="${y}" x2="${plot.x + plot.w}" y2="${y}" stroke="#e3e3e3"/>`);
    out.push(`<text x="${plot.x - 8}" y="${y}" font-size="12" text-anchor="end" dominant-baseline="middle">${tickLabel(v)}</text>`);
  }
  for (const x of xs) {
    const px = xPix(x).toFixed(1);
    out.push(`<line x1="${px}" y1="${plot.y + plot.h}" x2="${px}" y2="${plot.y + plot.h + 5}" stroke="#333"/>`);
    out.push(`<text x="${px}" y="${plot.y + plot.h + 20}" font-size="12" text-anchor="middle">${tickLabel(x)}</text>`);
  }
  out.push(`<path d="M${plot.x} ${plot.y}V${plot.y + plot.h}H${plot.x + plot.w}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${plot.x + plot.w / 2}" y="${plot.y + plot.h + 42}" font-size="13" text-anchor="middle">${esc(axis)}</text>`);

  for (const [k, run] of runs.entries()) {
    const color = COLORS[k % COLORS.length];
    const series: string[] = [];
    for (const [which, dash] of [['p50', ''], ['p99', ' stroke-dasharray="6 4"']] as const) {
      const pts = points[k].filter((p) => p[which] !== null && Number.isFinite(p[which])).map((p) => [xPix(p.x), yPix(p[which] as number)]);
      if (pts.length === 0) continue;
      series.push(`<polyline points="${pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ')}" fill="none" stroke="${color}" stroke-width="2"${dash}/>`);
      for (const [x, y] of pts) series.push(`<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3.5" fill="${which === 'p50' ? color : '#fff'}" stroke="${color}"/>`);
    }
    out.push(`<g class="series" data-run="${esc(run.label)}">${series.join('')}</g>`);
  }
  return out.join('\n');
}

/** The SVG document of one or more benchmark runs overlaid. */
export function benchChartSvg(runs: readonly ChartRun[]): string {
  if (runs.length === 0) throw new LlmError('LLM_ERR_CONFIG', 'a chart needs at least one benchmark run');
  const axes = new Set(runs.flatMap((r) => r.results.runs.map((p) => loadAxis(p.load))));
  if (axes.size > 1) throw new LlmError('LLM_ERR_CONFIG', `cannot overlay runs whose load is measured differently (${[...axes].join(', ')}): compare concurrency with concurrency, request rate with request rate`);
  const embeddings = runs.map((r) => r.results.config.endpoint === 'embeddings');
  if (embeddings.some((e) => e !== embeddings[0])) throw new LlmError('LLM_ERR_CONFIG', 'cannot overlay an embeddings benchmark with a generation benchmark');
  const axis = [...axes][0];
  const first = runs[0].results;
  const models = [...new Set(runs.map((r) => r.results.config.model))];
  const title = `dynamo-sglang bench: ${models.join(' vs ')} (/v1/${first.config.endpoint === 'chat' ? 'chat/completions' : first.config.endpoint})`;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${CHART_WIDTH}" height="${CHART_HEIGHT}" viewBox="0 0 ${CHART_WIDTH} ${CHART_HEIGHT}" font-family="${FONT}" fill="#222">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="16" y="28" font-size="20" font-weight="bold">${esc(title)}</text>`,
  ];
  // legend: one line per run, saying what it is
  const legendRows = runs.slice(0, 4);
  for (const [k, run] of legendRows.entries()) {
    const y = 52 + k * 18;
    parts.push(`<rect x="16" y="${y - 10}" width="14" height="10" fill="${COLORS[k % COLORS.length]}"/>`);
    parts.push(`<text x="36" y="${y}" font-size="13"><tspan font-weight="bold">${esc(run.label)}</tspan>: ${esc(describeRun(run.results))}</text>`);
  }
  if (runs.length > legendRows.length) {
    const rest = runs.slice(legendRows.length).map((r, k) => `<tspan fill="${COLORS[(k + legendRows.length) % COLORS.length]}">■</tspan> ${esc(r.label)}`).join('  ');
    parts.push(`<text x="16" y="${52 + 4 * 18}" font-size="13">${rest}</text>`);
  }
  const panels = panelsFor(embeddings[0]);
  const panelWidth = CHART_WIDTH / panels.length;
  panels.forEach((m, k) => parts.push(panelSvg(k * panelWidth, panelWidth, m, runs, axis)));
  parts.push(`<text x="${CHART_WIDTH - 16}" y="${CHART_HEIGHT - 8}" font-size="11" text-anchor="end" fill="#666">solid: p50 · dashed: p99</text>`);
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

/** PNG bytes of an SVG chart, rendered with the system's fonts. */
export function svgToPng(svg: string): Buffer {
  const resvg = new Resvg(svg, { font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' }, background: '#ffffff' });
  return resvg.render().asPng();
}
