#!/usr/bin/env python3
"""Correctness fixtures of the Qwen2.5-VL engine path, made by transformers itself (for the GPU machine, where torch
and transformers are installed; nothing is downloaded: every piece is built from its config here).

Writes OUT (default test/fixtures/vl):
  model/                 a tiny random Qwen2.5-VL checkpoint saved by transformers in float32 (config.json,
                         model.safetensors, preprocessor_config.json) with the shape of make-model's qwen2.5-vl-tiny
                         and its vision token ids, so the engine loads it as it is (src/engine/model.ts)
  pixels-<image>.f32     transformers' processor pixel_values for each PNG of test/fixtures/multimodal ([N, 1176] f32)
  embeds-<image>.f32     the model's vision tower output for it ([N / 4, hidden] f32)
  expected.json          per image: size, grid_thw, pixel file, embeds file; per prompt: input_ids (the image
                         placeholder expanded), images used, transformers' M-RoPE position_ids [3][len] and
                         rope_deltas, float32 logits of the last prompt position, greedy ids (8 new tokens) and the
                         logits of each greedy step
Run from the repository root:  python3 bench/multimodal/make-vl-fixtures.py [OUT]
"""
import glob
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
import transformers
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

OUT = sys.argv[1] if len(sys.argv) > 1 else 'test/fixtures/vl'
IMAGES = 'test/fixtures/multimodal'
SEED = 20
# make-model's qwen2.5-vl-tiny (src/engine/make-model.ts): the Qwen tokenizer cut to 1024 BPE tokens, added tokens after
VOCAB, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, IM_START, IM_END, EOS = 1088, 1033, 1034, 1036, 1037, 1025, 1026, 1024
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112 * 4

torch.manual_seed(SEED)
device = 'cuda' if torch.cuda.is_available() else 'cpu'

text = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, rope_theta=1000000.0,
    rope_scaling={'type': 'mrope', 'rope_type': 'default', 'mrope_section': [2, 3, 3]}, tie_word_embeddings=False,
    use_sliding_window=False, bos_token_id=EOS, eos_token_id=IM_END,
)
vision = dict(
    depth=4, hidden_size=32, intermediate_size=48, num_heads=2, in_chans=3, out_hidden_size=64, patch_size=14,
    spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1, 3], hidden_act='silu',
    tokens_per_second=2,
)
ids = dict(image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
try:  # transformers 5: text fields in text_config
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
except TypeError:
    config = Qwen2_5_VLConfig(vision_config=vision, **text, **ids)
config._attn_implementation = 'eager'
model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
# Larger random weights than the init's 0.02, so attention and the rotary positions move the outputs visibly.
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() > 1:
            p.normal_(0.0, 0.1)
model = model.to(device).eval()
os.makedirs(os.path.join(OUT, 'model'), exist_ok=True)
model.save_pretrained(os.path.join(OUT, 'model'), safe_serialization=True)
processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2, merge_size=2)
processor.save_pretrained(os.path.join(OUT, 'model'))


def visual():
    for path in ('visual', 'model.visual'):
        obj = model
        try:
            for part in path.split('.'):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise SystemExit('no vision tower attribute on the model')


def tower_output(out):
    # transformers 5 returns a model output (pooler_output: the merged embeddings); 4.x the tensor itself
    if isinstance(out, torch.Tensor):
        return out
    for key in ('pooler_output', 'last_hidden_state'):
        v = getattr(out, key, None)
        if v is not None:
            return v
    raise SystemExit(f'unknown vision tower output {type(out)}')


images = {}
for path in sorted(glob.glob(os.path.join(IMAGES, '*.png'))):
    name = os.path.splitext(os.path.basename(path))[0]
    img = Image.open(path).convert('RGB')
    batch = processor(images=[img], return_tensors='pt')
    pv, grid = batch['pixel_values'].to(torch.float32), batch['image_grid_thw']
    with torch.no_grad():
        emb = tower_output(visual()(pv.to(device), grid_thw=grid.to(device))).float().cpu()
    pv.numpy().astype('<f4').tofile(os.path.join(OUT, f'pixels-{name}.f32'))
    emb.numpy().astype('<f4').tofile(os.path.join(OUT, f'embeds-{name}.f32'))
    images[name] = dict(file=os.path.basename(path), size=[img.width, img.height], grid_thw=grid[0].tolist(),
                        pixels=f'pixels-{name}.f32', pixel_shape=list(pv.shape), embeds=f'embeds-{name}.f32',
                        embeds_shape=list(emb.shape), image=(pv, grid))


def chat(parts):
    """Token ids of a one-turn ChatML prompt: text as fixed ids (any ids below 1024 are plain BPE tokens), images
    as <|vision_start|> + one <|image_pad|> per merged patch + <|vision_end|>."""
    out = [IM_START, 872, 198]  # <|im_start|>user\n
    for p in parts:
        if isinstance(p, str):
            grid = images[p]['grid_thw']
            out += [VISION_START] + [IMAGE_PAD] * (grid[0] * grid[1] * grid[2] // 4) + [VISION_END]
        else:
            out += p
    return out + [IM_END, 198, IM_START, 395, 380, 517, 198]  # <|im_end|>\n<|im_start|>assistant\n


names = list(images)
prompts = [
    dict(parts=[[383, 74, 19], names[0], [30, 451, 12]]),
    dict(parts=[names[1], [300, 301, 302, 303]]),
    dict(parts=[[90, 91], names[2], [92], names[3 % len(names)], [93, 94, 95]]),
]
results = []
for pr in prompts:
    input_ids = chat(pr['parts'])
    used = [p for p in pr['parts'] if isinstance(p, str)]
    pv = torch.cat([images[n]['image'][0] for n in used]).to(device)
    grid = torch.cat([images[n]['image'][1] for n in used]).to(device)
    ids_t = torch.tensor([input_ids], device=device)
    with torch.no_grad():
        rope = model.get_rope_index if hasattr(model, 'get_rope_index') else model.model.get_rope_index
        position_ids, deltas = rope(ids_t, grid, None, attention_mask=torch.ones_like(ids_t))
        logits = model(input_ids=ids_t, pixel_values=pv, image_grid_thw=grid).logits[0, -1].float().cpu()
        gen = model.generate(input_ids=ids_t, pixel_values=pv, image_grid_thw=grid, max_new_tokens=8, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=EOS)
    results.append(dict(
        input_ids=input_ids, images=used, position_ids=position_ids[:, 0].cpu().tolist(), rope_delta=int(deltas.flatten()[0]),
        last_logits=logits.tolist(), greedy_ids=gen.sequences[0, len(input_ids):].cpu().tolist(),
        step_logits=[l[0].float().cpu().tolist() for l in gen.logits],
    ))

for v in images.values():
    del v['image']
with open(os.path.join(OUT, 'expected.json'), 'w') as f:
    json.dump(dict(made_by='bench/multimodal/make-vl-fixtures.py', transformers=transformers.__version__, torch=torch.__version__,
                   device=device, seed=SEED, images=images, prompts=results), f)
print(f'wrote {OUT}: {len(images)} images, {len(results)} prompts (transformers {transformers.__version__}, {device})')
