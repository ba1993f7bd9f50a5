// The Qwen2-VL image processor (src/multimodal): decoding with sharp, smart resize, Pillow's bicubic resize bit for
// bit, rescale/normalise and the patch order, against fixtures made by Pillow + numpy following transformers'
// processor (bench/multimodal/make-processor-fixtures.py): the resized pixels and the patch tensors are equal to the
// byte. Also the image sources' limits and refusals (data: URLs, local files, http(s) with size and time bounds).
import t from 'tap';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';
import { parsePreprocessorConfig, processImage, smartResize } from '../src/multimodal/image-processor.js';
import { resizeBicubic } from '../src/multimodal/pil-resample.js';
import { DEFAULT_IMAGE_FETCH_POLICY, decodeImage, loadImage, type ImageFetchPolicy } from '../src/multimodal/image-source.js';

const DIR = fileURLToPath(new URL('./fixtures/multimodal/', import.meta.url));
interface Case {
  image: string;
  overrides: { min_pixels?: number; max_pixels?: number };
  resized: [number, number];
  resized_sha256: string;
  grid_thw: [number, number, number];
  shape: [number, number];
  patches_sha256: string;
  patches_head: number[];
}
const { cases } = JSON.parse(readFileSync(join(DIR, 'processor-expected.json'), 'utf8')) as { cases: Case[] };
const sha = (bytes: ArrayBufferView) => createHash('sha256').update(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength)).digest('hex');

for (const c of cases) {
  t.test(`${c.image} ${JSON.stringify(c.overrides)}: Pillow's pixels and the reference patches, to the byte`, async (t) => {
    const config = parsePreprocessorConfig({ ...c.overrides });
    const image = await decodeImage(readFileSync(join(DIR, c.image)), DEFAULT_IMAGE_FETCH_POLICY, c.image);
    const [h, w] = smartResize(image.height, image.width, 28, config.minPixels, config.maxPixels);
    t.same([h, w], c.resized, 'smart resize');
    t.equal(sha(resizeBicubic(image, w, h).data), c.resized_sha256, 'resized pixels equal Pillow\'s');
    const out = processImage(image, config);
    t.same(out.gridThw, c.grid_thw);
    t.same(out.shape, c.shape);
    t.equal(out.tokens, (c.grid_thw[1] * c.grid_thw[2]) / 4, 'one placeholder token per 2x2 merged patches');
    t.same(Array.from(out.pixelValues.subarray(0, c.patches_head.length)), c.patches_head.map(Math.fround));
    t.equal(sha(out.pixelValues), c.patches_sha256, 'patches equal the reference float32 bytes');
  });
}

t.test('smart resize follows the reference rules: halves round to even, area bounds, extreme aspect refused', async (t) => {
  t.same(smartResize(42, 42, 28, 56 * 56, 28 * 28 * 1280), [56, 56], '42/28 = 1.5 rounds to 2; then the minimum area');
  t.same(smartResize(70, 70 * 4, 28, 1, 1e9), [56, 280], '70/28 = 2.5 rounds to 2 (even), 280/28 = 10');
  t.same(smartResize(10000, 10000, 28, 3136, 1003520), [980, 980], 'shrunk within the maximum area');
  t.throws(() => smartResize(10, 2100, 28, 3136, 1e7), { code: 'LLM_ERR_BAD_REQUEST', message: /aspect ratio must be below 200/ });
});

t.test('preprocessor_config.json: newer size fields, defaults, and wrong fields named', async (t) => {
  t.match(parsePreprocessorConfig({ size: { shortest_edge: 100, longest_edge: 5000 } }), { minPixels: 100, maxPixels: 5000, patchSize: 14, mergeSize: 2 });
  t.match(parsePreprocessorConfig({ min_pixels: 1, max_pixels: 2, size: { shortest_edge: 100, longest_edge: 5000 } }), { minPixels: 1, maxPixels: 2 });
  t.throws(() => parsePreprocessorConfig({ patch_size: 0 }, 'm/preprocessor_config.json'), { code: 'LLM_ERR_CONFIG', message: /m\/preprocessor_config.json: patch_size must be a positive integer, got 0/ });
  t.throws(() => parsePreprocessorConfig({ image_mean: [1, 2] }), { message: /image_mean must be three numbers/ });
  t.throws(() => parsePreprocessorConfig({ min_pixels: 10, max_pixels: 5 }), { message: /min_pixels 10 is above max_pixels 5/ });
});

t.test('image sources: data: URLs, local files under an allowed folder, http(s) within size and time, clear refusals', async (t) => {
  const png = readFileSync(join(DIR, 'noise-97x61.png'));
  const dataUrl = `data:image/png;base64,${png.toString('base64')}`;
  t.match(await loadImage(dataUrl, DEFAULT_IMAGE_FETCH_POLICY, 'image 0'), { width: 97, height: 61, channels: 3 });
  const policy: ImageFetchPolicy = { ...DEFAULT_IMAGE_FETCH_POLICY, allowDataUrls: false, maxBytes: 50_000, timeoutMs: 500 };
  await t.rejects(loadImage(dataUrl, policy, 'image 0'), { code: 'LLM_ERR_BAD_REQUEST', message: /image 0: data: URLs are not accepted/ });
  const file = pathToFileURL(join(DIR, 'noise-97x61.png')).href;
  await t.rejects(loadImage(file, policy, 'image 1'), { message: /image 1: local files are not accepted/ });
  t.match(await loadImage(file, { ...policy, localMediaRoots: [DIR] }, 'image 1'), { width: 97 });
  await t.rejects(loadImage(file, { ...policy, localMediaRoots: [join(DIR, 'elsewhere')] }, 'image 1'), { message: /outside the folders local images may come from/ });
  await t.rejects(loadImage(join(dirname(DIR), '..', 'multimodal-processor.test.ts'), { ...policy, localMediaRoots: [DIR] }, 'image 1'), { message: /outside/ }, 'no way out of the folder');

  const server = createServer((req, res) => {
    if (req.url === '/ok.png') return void res.end(png);
    if (req.url === '/big.png') return void res.end(Buffer.alloc(60_000));
    if (req.url === '/slow.png') return void setTimeout(() => res.end(png), 2000);
    if (req.url === '/garbage.png') return void res.end(Buffer.from('not an image at all'));
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => void server.close());
  server.unref();
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  t.match(await loadImage(`${base}/ok.png`, policy, 'image 2'), { width: 97, height: 61 });
  await t.rejects(loadImage(`${base}/big.png`, policy, 'image 2'), { message: /image 2: the image at .* is 60000 bytes, more than the 50000 allowed/ });
  await t.rejects(loadImage(`${base}/slow.png`, policy, 'image 2'), { message: /did not answer within 500 ms/ });
  await t.rejects(loadImage(`${base}/missing.png`, policy, 'image 2'), { message: /answered HTTP 404/ });
  await t.rejects(loadImage(`${base}/garbage.png`, policy, 'image 2'), { message: /image 2: cannot decode the image/ });
  await t.rejects(loadImage('http://127.0.0.1:1/x.png', policy, 'image 3'), { message: /image 3: http:\/\/127.0.0.1:1\/x.png cannot be fetched/ });
  await t.rejects(loadImage('ftp://example/x.png', policy, 'image 4'), { message: /is not an http\(s\), data: or file: URL/ });
  await t.rejects(decodeImage(png, { maxPixels: 1000 }, 'image 5'), { message: /image 5: the image has more than 1000 pixels/ });
});
