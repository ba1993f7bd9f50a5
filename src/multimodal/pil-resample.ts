// Bicubic resampling of 8-bit images with the exact arithmetic of Pillow's Image.resize(BICUBIC) (the one Hugging
// Face's image processors call): separable two-pass convolution, the Keys cubic (a = -0.5) widened by the scale when
// shrinking (antialiasing), coefficients per output pixel normalised to sum 1 and rounded to 22-bit fixed point,
// sums rounded and clipped to 0..255 after each pass (horizontal first, over only the rows the vertical pass reads).
// Matching it bit for bit matters: one unit of a pixel is 1/255/std ~ 0.015 after normalisation, far beyond the 1e-3
// a vision tower's inputs are checked to.

const PRECISION_BITS = 32 - 8 - 2;
const ONE_HALF = 1 << (PRECISION_BITS - 1);
const SCALE = 2 ** PRECISION_BITS;
const BICUBIC_SUPPORT = 2;

function bicubic(x: number): number {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

/** Per output pixel: the first input pixel it reads, how many, and their fixed-point weights (ksize apart). */
interface Coefficients {
  ksize: number;
  first: Int32Array;
  count: Int32Array;
  weights: Int32Array;
}

function coefficients(inSize: number, outSize: number): Coefficients {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = BICUBIC_SUPPORT * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1 / filterScale; // Pillow multiplies by the reciprocal: the same last bits
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let sum = 0;
    for (let x = 0; x < xmax; x++) {
      w[x] = bicubic((x + xmin - center + 0.5) * ss);
      sum += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = sum !== 0 ? w[x] / sum : w[x];
      // C's (int) cast after adding +-0.5: rounds half away from zero
      weights[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * SCALE) : Math.trunc(0.5 + k * SCALE);
    }
    first[xx] = xmin;
    count[xx] = xmax;
  }
  return { ksize, first, count, weights };
}

function clip8(sum: number): number {
  if (sum >= SCALE * 256) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / SCALE);
}

/** An 8-bit image, `channels` interleaved values per pixel, rows top to bottom. */
export interface Image8 {
  width: number;
  height: number;
  channels: number;
  data: Uint8Array;
}

/** Image.resize((width, height), Image.BICUBIC) of Pillow, bit for bit. */
export function resizeBicubic(image: Image8, width: number, height: number): Image8 {
  const { channels } = image;
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new RangeError(`resize to ${width}x${height}: sizes must be positive integers`);
  }
  const horizontal = coefficients(image.width, width);
  const vertical = coefficients(image.height, height);
  let source = image;
  let rowShift = 0;
  if (width !== image.width) {
    // only the rows the vertical pass reads
    const firstRow = vertical.first[0];
    const lastRow = vertical.first[height - 1] + vertical.count[height - 1];
    const rows = height !== image.height ? lastRow - firstRow : image.height;
    const from = height !== image.height ? firstRow : 0;
    const out = new Uint8Array(width * rows * channels);
    const { ksize, first, count, weights } = horizontal;
    for (let y = 0; y < rows; y++) {
      const inRow = (y + from) * image.width * channels;
      for (let xx = 0; xx < width; xx++) {
        const k = xx * ksize;
        const x0 = first[xx];
        for (let c = 0; c < channels; c++) {
          let sum = ONE_HALF;
          for (let x = 0; x < count[xx]; x++) sum += image.data[inRow + (x0 + x) * channels + c] * weights[k + x];
          out[(y * width + xx) * channels + c] = clip8(sum);
        }
      }
    }
    source = { width, height: rows, channels, data: out };
    rowShift = from;
  }
  if (height === image.height) return source;
  const out = new Uint8Array(width * height * channels);
  const { ksize, first, count, weights } = vertical;
  for (let yy = 0; yy < height; yy++) {
    const k = yy * ksize;
    const y0 = first[yy] - rowShift;
    for (let xx = 0; xx < width; xx++) {
      for (let c = 0; c < channels; c++) {
        let sum = ONE_HALF;
        for (let y = 0; y < count[yy]; y++) sum += source.data[((y0 + y) * width + xx) * channels + c] * weights[k + y];
        out[(yy * width + xx) * channels + c] = clip8(sum);
      }
    }
  }
  return { width, height, channels, data: out };
}
