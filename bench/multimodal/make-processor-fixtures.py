#!/usr/bin/env python3
"""Fixtures for test/multimodal-processor.test.ts: a few PNG images (noise, gradients, RGBA, grey, odd sizes) and
what Pillow + numpy make of them the way the Qwen2-VL image processor of Hugging Face transformers does: convert to
RGB, smart resize, Image.resize(BICUBIC), rescale in float64 stored as float32, normalise in float32, repeat the frame
to the temporal patch, reshape/transpose into patches. Needs Pillow and numpy (Debian: python3-pil python3-numpy).
Run from the repository root: python3 bench/multimodal/make-processor-fixtures.py
(The comparison with transformers' own processor is bench/multimodal/hf-processor-check.py, on the GPU machine.)"""
import hashlib, json, math, os
import numpy as np
from PIL import Image

OUT = 'test/fixtures/multimodal'
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]

def smart_resize(h, w, factor, min_pixels, max_pixels):
    h_bar = round(h / factor) * factor
    w_bar = round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return h_bar, w_bar

def process(img, patch=14, temporal=2, merge=2, min_pixels=56 * 56, max_pixels=28 * 28 * 1280):
    img = img.convert('RGB')
    h, w = smart_resize(img.height, img.width, patch * merge, min_pixels, max_pixels)
    resized = img.resize((w, h), resample=Image.BICUBIC)
    arr = np.array(resized)  # H, W, 3 uint8
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    x = x.transpose(2, 0, 1)[np.newaxis]  # 1, C, H, W
    x = np.concatenate([x] + [x[-1:]] * (temporal - 1), axis=0)
    gt, gh, gw = x.shape[0] // temporal, h // patch, w // patch
    x = x.reshape(gt, temporal, 3, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    x = np.ascontiguousarray(x.reshape(gt * gh * gw, 3 * temporal * patch * patch), dtype=np.float32)
    return arr, x, [gt, gh, gw]

def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:240, 0:320]
    images = {
        'noise-97x61.png': Image.fromarray(rng.integers(0, 256, (61, 97, 3), dtype=np.uint8)),
        'gradient-320x240.png': Image.fromarray(np.stack([(xx * 255 // 319), (yy * 255 // 239), ((xx + yy) % 256)], -1).astype(np.uint8)
                                                ^ rng.integers(0, 8, (240, 320, 3), dtype=np.uint8)),
        'rgba-50x300.png': Image.fromarray(rng.integers(0, 256, (300, 50, 4), dtype=np.uint8), 'RGBA'),
        'grey-123x77.png': Image.fromarray(rng.integers(0, 256, (77, 123), dtype=np.uint8), 'L'),
    }
    cases = [
        ('noise-97x61.png', {}),
        ('gradient-320x240.png', {}),
        ('gradient-320x240.png', {'max_pixels': 12000}),  # a strong shrink: the filter widens (antialiasing)
        ('rgba-50x300.png', {}),
        ('grey-123x77.png', {'min_pixels': 20000}),
    ]
    for name, img in images.items():
        img.save(os.path.join(OUT, name))
    expected = []
    for name, overrides in cases:
        img = Image.open(os.path.join(OUT, name))
        arr, patches, grid = process(img, **overrides)
        expected.append({
            'image': name, 'overrides': overrides, 'resized': [arr.shape[0], arr.shape[1]],
            'resized_sha256': hashlib.sha256(arr.tobytes()).hexdigest(), 'grid_thw': grid, 'shape': list(patches.shape),
            'patches_sha256': hashlib.sha256(patches.tobytes()).hexdigest(),
            'patches_head': [float(v) for v in patches.reshape(-1)[:6]], 'patches_sum': float(patches.astype(np.float64).sum()),
        })
    with open(os.path.join(OUT, 'processor-expected.json'), 'w') as f:
        json.dump({'made_by': 'bench/multimodal/make-processor-fixtures.py', 'pillow': Image.__version__, 'cases': expected}, f, indent=1)
        f.write('\n')

main()
