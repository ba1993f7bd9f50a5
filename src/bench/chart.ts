// The PNG chart of a concurrency sweep, drawn pixel by pixel: three panels (throughput, TTFT, TPOT) against
// concurrency on a log scale, with axes, tick labels in the built-in bitmap font, and a legend per panel.
import { PNG } from 'pngjs';
import { GLYPH_ADVANCE, GLYPH_HEIGHT, glyph, textWidth } from './font.js';
import type { RunSummary } from './results.js';

export const CHART_WIDTH = 1200;
export const CHART_HEIGHT = 420;

type Rgb = readonly [number, number, number];
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [225, 225, 225];
const SERIES_COLORS: readonly Rgb[] = [[31, 119, 180], [255, 127, 14]];

class Canvas {
  readonly png: PNG;

  constructor(readonly width: number, readonly height: number) {
    this.png = new PNG({ width, height });
    this.fillRect(0, 0, width, height, WHITE);
  }

  pixel(x: number, y: number, c: Rgb): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const i = (y * this.width + x) * 4;
    this.png.data[i] = c[0];
    this.png.data[i + 1] = c[1];
    this.png.data[i + 2] = c[2];
    this.png.data[i + 3] = 255;
  }

  fillRect(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let yy = Math.round(y); yy < Math.round(y + h); yy++) for (let xx = Math.round(x); xx < Math.round(x + w); xx++) this.pixel(xx, yy, c);
  }

  /** A straight line `thickness` pixels wide (square brush stepped along the longer axis). */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, thickness = 1): void {
    const steps = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
    const half = (thickness - 1) / 2;
    for (let s = 0; s <= steps; s++) {
      const x = x0 + ((x1 - x0) * s) / steps;
      const y = y0 + ((y1 - y0) * s) / steps;
      this.fillRect(x - half, y - half, thickness, thickness, c);
    }
  }

  text(x: number, y: number, text: string, c: Rgb, scale = 1): void {
    for (const [k, ch] of [...text].entries()) {
      const rows = glyph(ch);
      for (let r = 0; r < rows.length; r++) {
        for (let col = 0; col < rows[r].length; col++) {
          if (rows[r][col] === '#') this.fillRect(x + (k * GLYPH_ADVANCE + col) * scale, y + r * scale, scale, scale, c);
        }
      }
    }
  }
}

/** 1, 2 or 5 times a power of ten, at least `x`. */
function niceStep(x: number): number {
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** Compact tick label: 0.25, 12, 350, 1.5K, 20K. */
function tickLabel(v: number): string {
  if (v >= 1000) return `${+(v / 1000).toFixed(v >= 10000 ? 0 : 1)}K`;
  if (v >= 10 || v === 0) return String(Math.round(v));
  return String(+v.toFixed(v >= 1 ? 1 : 3));
}

export interface SweepPoint {
  concurrency: number;
  summary: RunSummary;
}

interface Series {
  name: string;
  values: (number | null)[];
}

interface Panel {
  title: string;
  series: Series[];
}

function drawPanel(cv: Canvas, left: number, width: number, panel: Panel, xs: number[]): void {
  const plot = { x: left + 64, y: 58, w: width - 64 - 20, h: CHART_HEIGHT - 58 - 50 };
  cv.text(left + 12, 10, panel.title, INK, 2);
  let lx = plot.x;
  for (const [k, s] of panel.series.entries()) {
    const color = SERIES_COLORS[k % SERIES_COLORS.length];
    cv.fillRect(lx, 36, 14, 7, color);
    cv.text(lx + 18, 36, s.name, INK);
    lx += 18 + textWidth(s.name, 1) + 16;
  }

  const finite = panel.series.flatMap((s) => s.values).filter((v): v is number => v !== null && Number.isFinite(v));
  const top = Math.max(...finite, 0);
  const step = niceStep(top > 0 ? (top * 1.05) / 5 : 1);
  const yMax = step * Math.max(1, Math.ceil((top * 1.05) / step));
  const yPix = (v: number) => plot.y + plot.h - (v / yMax) * plot.h;

  // x: log2 of concurrency, so 1, 4, 16, 64, 256 are evenly spaced; a single point sits in the middle
  const logs = xs.map((x) => Math.log2(x));
  const lo = Math.min(...logs);
  const hi = Math.max(...logs);
  const xPix = (x: number) => (hi === lo ? plot.x + plot.w / 2 : plot.x + 12 + ((Math.log2(x) - lo) / (hi - lo)) * (plot.w - 24));

  for (let v = 0; v <= yMax + step / 2; v += step) {
    const y = Math.round(yPix(v));
    cv.line(plot.x, y, plot.x + plot.w, y, GRID);
    cv.line(plot.x - 4, y, plot.x, y, INK);
    const label = tickLabel(v);
    cv.text(plot.x - 8 - textWidth(label, 1), y - Math.floor(GLYPH_HEIGHT / 2), label, INK);
  }
  for (const x of xs) {
    const px = Math.round(xPix(x));
    cv.line(px, plot.y + plot.h, px, plot.y + plot.h + 4, INK);
    const label = String(x);
    cv.text(px - Math.floor(textWidth(label, 1) / 2), plot.y + plot.h + 9, label, INK);
  }
  cv.line(plot.x, plot.y, plot.x, plot.y + plot.h, INK);
  cv.line(plot.x, plot.y + plot.h, plot.x + plot.w, plot.y + plot.h, INK);
  const xTitle = 'CONCURRENCY';
  cv.text(plot.x + Math.floor((plot.w - textWidth(xTitle, 1)) / 2), plot.y + plot.h + 28, xTitle, INK);

  for (const [k, s] of panel.series.entries()) {
    const color = SERIES_COLORS[k % SERIES_COLORS.length];
    let prev: [number, number] | null = null;
    for (const [i, v] of s.values.entries()) {
      if (v === null || !Number.isFinite(v)) {
        prev = null;
        continue;
      }
      const p: [number, number] = [xPix(xs[i]), yPix(v)];
      if (prev) cv.line(prev[0], prev[1], p[0], p[1], color, 2);
      cv.fillRect(p[0] - 3, p[1] - 3, 7, 7, color);
      prev = p;
    }
  }
}

/** PNG bytes of the sweep chart; points are drawn in ascending concurrency. */
export function sweepChartPng(points: readonly SweepPoint[]): Buffer {
  const sorted = [...points].sort((a, b) => a.concurrency - b.concurrency);
  const xs = sorted.map((p) => p.concurrency);
  const pick = (f: (s: RunSummary) => number | null | undefined) => sorted.map((p) => f(p.summary) ?? null);
  const panels: Panel[] = [
    { title: 'THROUGHPUT (TOK/S)', series: [{ name: 'OUTPUT', values: pick((s) => (s.completed ? s.outputThroughput : null)) }, { name: 'TOTAL', values: pick((s) => (s.completed ? s.totalThroughput : null)) }] },
    { title: 'TTFT (MS)', series: [{ name: 'P50', values: pick((s) => s.ttftMs?.p50) }, { name: 'P99', values: pick((s) => s.ttftMs?.p99) }] },
    { title: 'TPOT (MS)', series: [{ name: 'P50', values: pick((s) => s.tpotMs?.p50) }, { name: 'P99', values: pick((s) => s.tpotMs?.p99) }] },
  ];
  const cv = new Canvas(CHART_WIDTH, CHART_HEIGHT);
  const panelWidth = CHART_WIDTH / panels.length;
  panels.forEach((panel, k) => drawPanel(cv, k * panelWidth, panelWidth, panel, xs));
  return PNG.sync.write(cv.png);
}
