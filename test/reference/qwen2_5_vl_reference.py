#!/usr/bin/env python3
"""Float64 numpy reference of the Qwen2.5-VL vision tower and of its M-RoPE language model, reading an HF checkpoint
directory (config.json + *.safetensors, hub or transformers 5 tensor names). Written from the model's definition
(transformers' modeling_qwen2_5_vl), independently of the engine: the engine's tests compare against it.

  vision:  python3 qwen2_5_vl_reference.py vision MODEL_DIR PIXELS.f32 T H W OUT.f64
           PIXELS.f32: [T*H*W, 3*2*14*14] float32 in the processor's patch order; OUT: [T*H*W/4, out_hidden] float64
  lm:      python3 qwen2_5_vl_reference.py lm MODEL_DIR REQUEST.json OUT.f64
           REQUEST.json: {"tokens": [...], "positions": [[t...], [h...], [w...]], "images": [{"embeds": FILE.f32,
           "rows": n}]} (image tokens take the embeddings in order); OUT: logits of every position [len, vocab]
"""
import json
import os
import struct
import sys

import numpy as np


def load_tensors(model_dir):
    out = {}
    for name in sorted(os.listdir(model_dir)):
        if not name.endswith('.safetensors'):
            continue
        with open(os.path.join(model_dir, name), 'rb') as f:
            raw = f.read()
        n = struct.unpack('<Q', raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for key, info in header.items():
            if key == '__metadata__':
                continue
            a, b = info['data_offsets']
            buf = raw[base + a:base + b]
            if info['dtype'] == 'F32':
                arr = np.frombuffer(buf, dtype='<f4')
            elif info['dtype'] == 'F16':
                arr = np.frombuffer(buf, dtype='<f2')
            elif info['dtype'] == 'BF16':
                arr = (np.frombuffer(buf, dtype='<u2').astype(np.uint32) << 16).view(np.float32)
            else:
                raise SystemExit(f'{key}: dtype {info["dtype"]} not handled')
            if key.startswith('model.language_model.'):
                key = 'model.' + key[len('model.language_model.'):]
            elif key.startswith('model.visual.'):
                key = 'visual.' + key[len('model.visual.'):]
            out[key] = arr.astype(np.float64).reshape(info['shape'])
    return out


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def gelu(x):
    from math import erf, sqrt
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def vision(cfg, W, pixels, t, h, w):
    vc = cfg['vision_config']
    hidden, heads, m = vc['hidden_size'], vc['num_heads'], vc['spatial_merge_size']
    hd = hidden // heads
    unit = m * m
    # patch embedding: Conv3d with kernel == stride over one patch == a dot product with the flattened kernel
    x = pixels @ W['visual.patch_embed.proj.weight'].reshape(hidden, -1).T
    # 2-D rotary positions (row, col) of each patch in the merged-block order of the processor
    hpos = np.arange(h)[:, None].repeat(w, 1).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    wpos = np.arange(w)[None, :].repeat(h, 0).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
    pos = np.tile(np.stack([hpos, wpos], -1), (t, 1))
    dim = hd // 2
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    freqs = np.concatenate([np.outer(pos[:, 0], inv_freq), np.outer(pos[:, 1], inv_freq)], axis=1)
    # windows: pad the merged grid with -100 to whole windows (a whole extra window when it already divides)
    ws = vc['window_size'] // m // vc['patch_size']
    gh, gw = h // m, w // m
    index = np.arange(t * gh * gw).reshape(t, gh, gw)
    ph, pw = ws - gh % ws, ws - gw % ws
    nh, nw = (gh + ph) // ws, (gw + pw) // ws
    padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-100)
    padded = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, ws, ws)
    seqlens = (padded != -100).sum(axis=(2, 3)).reshape(-1)
    flat = padded.reshape(-1)
    window_index = flat[flat != -100]
    cu_window = np.concatenate([[0], np.cumsum(seqlens * unit)])
    cu_window = np.array([c for i, c in enumerate(cu_window) if i == 0 or c != cu_window[i - 1]])
    cu_full = np.concatenate([[0], np.cumsum(np.repeat(h * w, t))])
    n = x.shape[0]
    x = x.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
    freqs = freqs.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    eps = 1e-6
    for layer in range(vc['depth']):
        p = f'visual.blocks.{layer}.'
        cu = cu_full if layer in vc.get('fullatt_block_indexes', []) else cu_window
        y = rms_norm(x, W[p + 'norm1.weight'], eps)
        qkv = (y @ W[p + 'attn.qkv.weight'].T + W[p + 'attn.qkv.bias']).reshape(n, 3, heads, hd)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # [n, heads, hd]
        q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
        k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
        o = np.zeros_like(q)
        for a, b in zip(cu[:-1], cu[1:]):
            s = np.einsum('qhd,khd->hqk', q[a:b], k[a:b]) / np.sqrt(hd)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o[a:b] = np.einsum('hqk,khd->qhd', s, v[a:b])
        x = x + o.reshape(n, hidden) @ W[p + 'attn.proj.weight'].T + W[p + 'attn.proj.bias']
        y = rms_norm(x, W[p + 'norm2.weight'], eps)
        g = y @ W[p + 'mlp.gate_proj.weight'].T + W[p + 'mlp.gate_proj.bias']
        u = y @ W[p + 'mlp.up_proj.weight'].T + W[p + 'mlp.up_proj.bias']
        x = x + (silu(g) * u) @ W[p + 'mlp.down_proj.weight'].T + W[p + 'mlp.down_proj.bias']
    y = rms_norm(x, W['visual.merger.ln_q.weight'], eps).reshape(n // unit, unit * hidden)
    y = gelu(y @ W['visual.merger.mlp.0.weight'].T + W['visual.merger.mlp.0.bias'])
    y = y @ W['visual.merger.mlp.2.weight'].T + W['visual.merger.mlp.2.bias']
    return y[np.argsort(window_index)]


def text_config(cfg):
    return {**cfg, **cfg.get('text_config', {})}


def language_model(cfg, W, tokens, positions, embeds):
    c = text_config(cfg)
    hidden, heads, kv = c['hidden_size'], c['num_attention_heads'], c['num_key_value_heads']
    hd = c.get('head_dim') or hidden // heads
    rope = c.get('rope_scaling') or c.get('rope_parameters') or {}
    theta = rope.get('rope_theta', c.get('rope_theta', 10000.0))
    section = rope['mrope_section']
    eps = c['rms_norm_eps']
    image_id = cfg['image_token_id']
    x = W['model.embed_tokens.weight'][np.array(tokens)]
    mask = np.array(tokens) == image_id
    if mask.any():
        x[mask] = embeds
    n = len(tokens)
    inv_freq = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))  # [hd/2]
    pos = np.array(positions, dtype=np.float64)  # [3, n]
    # frequency j takes the section it falls in: time for the first section[0], then height, then width
    which = np.concatenate([np.full(s, i) for i, s in enumerate(section)])
    freqs = pos[which, :].T * inv_freq[None, :]  # [n, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(c['num_hidden_layers']):
        p = f'model.layers.{layer}.'
        y = rms_norm(x, W[p + 'input_layernorm.weight'], eps)
        q = (y @ W[p + 'self_attn.q_proj.weight'].T + W[p + 'self_attn.q_proj.bias']).reshape(n, heads, hd)
        k = (y @ W[p + 'self_attn.k_proj.weight'].T + W[p + 'self_attn.k_proj.bias']).reshape(n, kv, hd)
        v = (y @ W[p + 'self_attn.v_proj.weight'].T + W[p + 'self_attn.v_proj.bias']).reshape(n, kv, hd)
        q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
        k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
        k = np.repeat(k, heads // kv, axis=1)
        v = np.repeat(v, heads // kv, axis=1)
        s = np.einsum('qhd,khd->hqk', q, k) / np.sqrt(hd) + causal[None]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum('hqk,khd->qhd', s, v).reshape(n, heads * hd)
        x = x + o @ W[p + 'self_attn.o_proj.weight'].T
        y = rms_norm(x, W[p + 'post_attention_layernorm.weight'], eps)
        g = y @ W[p + 'mlp.gate_proj.weight'].T
        u = y @ W[p + 'mlp.up_proj.weight'].T
        x = x + (silu(g) * u) @ W[p + 'mlp.down_proj.weight'].T
    x = rms_norm(x, W['model.norm.weight'], eps)
    head = W.get('lm_head.weight', W['model.embed_tokens.weight'])
    return x @ head.T


def main():
    mode, model_dir = sys.argv[1], sys.argv[2]
    with open(os.path.join(model_dir, 'config.json')) as f:
        cfg = json.load(f)
    W = load_tensors(model_dir)
    if mode == 'vision':
        pixels_file, t, h, w, out_file = sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
        pixels = np.fromfile(pixels_file, dtype='<f4').astype(np.float64).reshape(t * h * w, -1)
        vision(cfg, W, pixels, t, h, w).astype('<f8').tofile(out_file)
    elif mode == 'lm':
        with open(sys.argv[3]) as f:
            req = json.load(f)
        hidden = text_config(cfg)['hidden_size']
        parts = [np.fromfile(im['embeds'], dtype='<f4').astype(np.float64).reshape(-1, hidden) for im in req.get('images', [])]
        embeds = np.concatenate(parts) if parts else np.zeros((0, hidden))
        language_model(cfg, W, req['tokens'], req['positions'], embeds).astype('<f8').tofile(sys.argv[4])
    else:
        raise SystemExit(f'unknown mode {mode}')


if __name__ == '__main__':
    main()
