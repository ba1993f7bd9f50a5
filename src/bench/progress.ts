// Progress on stderr: a redrawn bar on a terminal, a plain line every 10% (and at the end) otherwise, so logs
// of a CI run stay readable.

export interface ProgressSink {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

export class Progress {
  private done = 0;
  private failed = 0;
  private lastDecile = 0;
  private readonly started = performance.now();

  constructor(private readonly out: ProgressSink | null, private readonly label: string, private readonly total: number) {
    this.draw();
  }

  tick(ok: boolean): void {
    this.done++;
    if (!ok) this.failed++;
    this.draw();
  }

  finish(): void {
    if (this.out?.isTTY) this.out.write('\n');
  }

  private draw(): void {
    if (!this.out) return;
    const elapsed = ((performance.now() - this.started) / 1000).toFixed(1);
    const failed = this.failed ? `, ${this.failed} failed` : '';
    const counts = `${this.done}/${this.total}${failed}, ${elapsed} s`;
    if (this.out.isTTY) {
      const width = Math.max(10, Math.min(40, (this.out.columns ?? 80) - this.label.length - counts.length - 6));
      const filled = this.total === 0 ? width : Math.round((this.done / this.total) * width);
      this.out.write(`\r\x1b[2K${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${counts}`);
      return;
    }
    const decile = this.total === 0 ? 10 : Math.floor((this.done / this.total) * 10);
    if (this.done > 0 && decile !== this.lastDecile) {
      this.lastDecile = decile;
      this.out.write(`${this.label}: ${counts}\n`);
    }
  }
}
