// The Qwen2-VL / Qwen2.5-VL image processor, as the checkpoint's preprocessor_config.json describes it: smart resize
// (each side a multiple of patch_size x merge_size, the area between min_pixels and max_pixels, the aspect ratio
// kept), Pillow's bicubic resize (./pil-resample.ts, bit for bit), rescale to [0, 1], normalise by the mean and std,
// repeat a still image to temporal_patch_size frames, and cut it into patches in the order the vision tower reads:
// rows (t, h / merge, w / merge, merge row, merge column), columns (channel, frame, patch row, patch column).
// The image's token count in the prompt is grid_t * grid_h * grid_w / merge_size^2.
import { LlmError } from '../errors.js';
import { resizeBicubic, type Image8 } from './pil-resample.js';

export interface VisionPreprocessorConfig {
  patchSize: number;
  temporalPatchSize: number;
  mergeSize: number;
  minPixels: number;
  maxPixels: number;
  imageMean: [number, number, number];
  imageStd: [number, number, number];
  rescaleFactor: number;
  doResize: boolean;
  doRescale: boolean;
  doNormalize: boolean;
}

/** The processed image: patches [grid_t * grid_h * grid_w, 3 * temporal * patch^2] (float32, row-major) and its grid. */
export interface ProcessedImage {
  pixelValues: Float32Array;
  gridThw: [number, number, number];
  /** Rows of pixelValues and its row length. */
  shape: [number, number];
  /** Placeholder tokens the image takes in the prompt: grid_t * grid_h * grid_w / merge_size^2. */
  tokens: number;
}

// Qwen2-VL's defaults (the processor class's own, used where the config file leaves a field out)
const DEFAULTS: VisionPreprocessorConfig = {
  patchSize: 14,
  temporalPatchSize: 2,
  mergeSize: 2,
  minPixels: 56 * 56,
  maxPixels: 28 * 28 * 1280,
  imageMean: [0.48145466, 0.4578275, 0.40821073],
  imageStd: [0.26862954, 0.26130258, 0.27577711],
  rescaleFactor: 1 / 255,
  doResize: true,
  doRescale: true,
  doNormalize: true,
};

/** Reads preprocessor_config.json's fields (min_pixels/max_pixels, or size.shortest_edge/longest_edge as newer
 * transformers write them); a wrong field is named with the file. */
export function parsePreprocessorConfig(json: unknown, file = 'preprocessor_config.json'): VisionPreprocessorConfig {
  if (typeof json !== 'object' || json === null) throw new LlmError('LLM_ERR_CONFIG', `${file}: expected a JSON object`);
  const o = json as Record<string, unknown>;
  const size = (typeof o['size'] === 'object' && o['size'] !== null ? o['size'] : {}) as Record<string, unknown>;
  const positiveInt = (name: string, value: unknown, fallback: number): number => {
    if (value === undefined || value === null) return fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) throw new LlmError('LLM_ERR_CONFIG', `${file}: ${name} must be a positive integer, got ${JSON.stringify(value)}`);
    return value;
  };
  const triple = (name: string, value: unknown, fallback: [number, number, number]): [number, number, number] => {
    if (value === undefined || value === null) return fallback;
    if (!Array.isArray(value) || value.length !== 3 || !value.every((v) => typeof v === 'number' && Number.isFinite(v))) {
      throw new LlmError('LLM_ERR_CONFIG', `${file}: ${name} must be three numbers (R, G, B), got ${JSON.stringify(value)}`);
    }
    return [value[0], value[1], value[2]] as [number, number, number];
  };
  const flag = (name: string, fallback: boolean): boolean => (typeof o[name] === 'boolean' ? (o[name] as boolean) : fallback);
  const config: VisionPreprocessorConfig = {
    patchSize: positiveInt('patch_size', o['patch_size'], DEFAULTS.patchSize),
    temporalPatchSize: positiveInt('temporal_patch_size', o['temporal_patch_size'], DEFAULTS.temporalPatchSize),
    mergeSize: positiveInt('merge_size', o['merge_size'], DEFAULTS.mergeSize),
    minPixels: positiveInt('min_pixels', o['min_pixels'] ?? size['shortest_edge'], DEFAULTS.minPixels),
    maxPixels: positiveInt('max_pixels', o['max_pixels'] ?? size['longest_edge'], DEFAULTS.maxPixels),
    imageMean: triple('image_mean', o['image_mean'], DEFAULTS.imageMean),
    imageStd: triple('image_std', o['image_std'], DEFAULTS.imageStd),
    rescaleFactor: typeof o['rescale_factor'] === 'number' ? o['rescale_factor'] : DEFAULTS.rescaleFactor,
    doResize: flag('do_resize', true),
    doRescale: flag('do_rescale', true),
    doNormalize: flag('do_normalize', true),
  };
  if (config.imageStd.some((s) => s === 0)) throw new LlmError('LLM_ERR_CONFIG', `${file}: image_std has a zero`);
  if (config.minPixels > config.maxPixels) throw new LlmError('LLM_ERR_CONFIG', `${file}: min_pixels ${config.minPixels} is above max_pixels ${config.maxPixels}`);
  return config;
}

/** Python's round(): halves to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The size (height, width) an image is resized to: multiples of `factor`, area within [minPixels, maxPixels], the
 * aspect ratio as close as those allow. An image more than 200 times longer than wide (or the reverse) is refused. */
export function smartResize(height: number, width: number, factor: number, minPixels: number, maxPixels: number): [number, number] {
  if (Math.max(height, width) / Math.min(height, width) > 200) {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `an image of ${width}x${height} pixels: the aspect ratio must be below 200`);
  }
  let h = roundHalfEven(height / factor) * factor;
  let w = roundHalfEven(width / factor) * factor;
  if (h * w > maxPixels) {
    const beta = Math.sqrt((height * width) / maxPixels);
    h = Math.max(factor, Math.floor(height / beta / factor) * factor);
    w = Math.max(factor, Math.floor(width / beta / factor) * factor);
  } else if (h * w < minPixels) {
    const beta = Math.sqrt(minPixels / (height * width));
    h = Math.ceil((height * beta) / factor) * factor;
    w = Math.ceil((width * beta) / factor) * factor;
  }
  return [h, w];
}

/** Processes one RGB image (3 channels, 8 bits) into the vision tower's patches. */
export function processImage(image: Image8, config: VisionPreprocessorConfig): ProcessedImage {
  if (image.channels !== 3) throw new LlmError('LLM_ERR_INTERNAL', `processImage takes RGB images, got ${image.channels} channels`);
  const { patchSize: p, temporalPatchSize: tp, mergeSize: m } = config;
  const factor = p * m;
  let resized = image;
  if (config.doResize) {
    const [h, w] = smartResize(image.height, image.width, factor, config.minPixels, config.maxPixels);
    resized = h === image.height && w === image.width ? image : resizeBicubic(image, w, h);
  }
  const { width: W, height: H, data } = resized;
  if (W % factor !== 0 || H % factor !== 0) {
    throw new LlmError('LLM_ERR_BAD_REQUEST', `an image of ${W}x${H} pixels: without resizing, each side must be a multiple of ${factor}`);
  }
  // as the reference processor computes: x * rescale in float64 stored as float32, then (x - mean) / std in float32
  const mean = Float32Array.from(config.imageMean);
  const std = Float32Array.from(config.imageStd);
  const value = (c: number, y: number, x: number): number => {
    let v = data[(y * W + x) * 3 + c];
    if (config.doRescale) v = Math.fround(v * config.rescaleFactor);
    if (config.doNormalize) v = Math.fround(Math.fround(v - mean[c]) / std[c]);
    return v;
  };
  const gridT = 1; // one still image: its frame repeated to fill a temporal patch
  const gridH = H / p;
  const gridW = W / p;
  const rowLength = 3 * tp * p * p;
  const rows = gridT * gridH * gridW;
  const out = new Float32Array(rows * rowLength);
  let row = 0;
  for (let bh = 0; bh < gridH / m; bh++) {
    for (let bw = 0; bw < gridW / m; bw++) {
      for (let mh = 0; mh < m; mh++) {
        for (let mw = 0; mw < m; mw++) {
          const y0 = (bh * m + mh) * p;
          const x0 = (bw * m + mw) * p;
          let col = row * rowLength;
          for (let c = 0; c < 3; c++) {
            for (let f = 0; f < tp; f++) {
              for (let py = 0; py < p; py++) {
                for (let px = 0; px < p; px++) out[col++] = value(c, y0 + py, x0 + px);
              }
            }
          }
          row++;
        }
      }
    }
  }
  return { pixelValues: out, gridThw: [gridT, gridH, gridW], shape: [rows, rowLength], tokens: rows / (m * m) };
}
