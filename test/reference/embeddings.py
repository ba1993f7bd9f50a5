#!/usr/bin/env python3
"""Float64 reference embeddings of a decoder checkpoint (llama / qwen2 / qwen3, bare or *ForCausalLM) or a BertModel
encoder, written from
the model definitions with numpy alone, independent of the engine: reads config.json, model.safetensors and the
sentence-transformers pooling files beside them.

stdin: {"model": DIR, "inputs": [[token ids], ...]}; stdout: {"embeddings": [[floats], ...]} (pooled, normalised
as the checkpoint declares; last token and normalised without modules.json)."""
import json
import os
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = data[a:b]
        if info['dtype'] == 'F32':
            arr = np.frombuffer(raw, dtype='<f4').astype(np.float64)
        elif info['dtype'] == 'F16':
            arr = np.frombuffer(raw, dtype='<f2').astype(np.float64)
        elif info['dtype'] == 'BF16':
            arr = (np.frombuffer(raw, dtype='<u2').astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise SystemExit(f'{path}: {name} has dtype {info["dtype"]}')
        if name.startswith('bert.'):
            name = name[5:]
        key = name if name.startswith(('model.', 'embeddings.', 'encoder.', 'pooler.')) or name == 'lm_head.weight' else 'model.' + name
        out[key] = arr.reshape(info['shape'])
    return out


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, theta):
    # rotate-half layout (HF): pairs (i, i + d/2)
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    ang = positions[:, None] * inv[None, :]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., : d // 2], x[..., d // 2:]
    return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)


def final_hidden(cfg, w, tokens):
    arch = (cfg.get('architectures') or [cfg.get('model_type')])[0].lower()
    qwen2, qwen3 = arch.startswith('qwen2'), arch.startswith('qwen3')
    H = cfg['hidden_size']
    nH = cfg['num_attention_heads']
    nKV = cfg.get('num_key_value_heads', nH)
    D = cfg.get('head_dim') or H // nH
    eps = cfg.get('rms_norm_eps', 1e-6)
    theta = (cfg.get('rope_parameters') or {}).get('rope_theta', cfg.get('rope_theta', 10000.0))
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    h = w['model.embed_tokens.weight'][np.array(tokens)]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg['num_hidden_layers']):
        p = f'model.layers.{l}.'
        xn = rms_norm(h, w[p + 'input_layernorm.weight'], eps)
        q = xn @ w[p + 'self_attn.q_proj.weight'].T
        k = xn @ w[p + 'self_attn.k_proj.weight'].T
        v = xn @ w[p + 'self_attn.v_proj.weight'].T
        if qwen2:
            q, k, v = q + w[p + 'self_attn.q_proj.bias'], k + w[p + 'self_attn.k_proj.bias'], v + w[p + 'self_attn.v_proj.bias']
        q, k, v = q.reshape(T, nH, D), k.reshape(T, nKV, D), v.reshape(T, nKV, D)
        if qwen3:
            q = rms_norm(q, w[p + 'self_attn.q_norm.weight'], eps)
            k = rms_norm(k, w[p + 'self_attn.k_norm.weight'], eps)
        q, k = rope(q, pos, theta), rope(k, pos, theta)
        g = nH // nKV
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        scores = np.einsum('thd,shd->hts', q, k) / np.sqrt(D) + mask
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        attn = np.einsum('hts,shd->thd', scores, v).reshape(T, nH * D)
        h = h + attn @ w[p + 'self_attn.o_proj.weight'].T
        xn = rms_norm(h, w[p + 'post_attention_layernorm.weight'], eps)
        gate, up = xn @ w[p + 'mlp.gate_proj.weight'].T, xn @ w[p + 'mlp.up_proj.weight'].T
        h = h + (gate / (1 + np.exp(-gate)) * up) @ w[p + 'mlp.down_proj.weight'].T
    return rms_norm(h, w['model.norm.weight'], eps)


def layer_norm(x, w, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu(x):
    from math import erf, sqrt
    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


def bert_hidden(cfg, w, tokens):
    """BertModel: word + position + token type 0 embeddings, LayerNorm; post-LN layers, bidirectional attention."""
    H = cfg['hidden_size']
    nH = cfg['num_attention_heads']
    D = H // nH
    eps = cfg.get('layer_norm_eps', 1e-12)
    T = len(tokens)
    h = w['embeddings.word_embeddings.weight'][np.array(tokens)] + w['embeddings.position_embeddings.weight'][:T] \
        + w['embeddings.token_type_embeddings.weight'][0]
    h = layer_norm(h, w['embeddings.LayerNorm.weight'], w['embeddings.LayerNorm.bias'], eps)
    for l in range(cfg['num_hidden_layers']):
        p = f'encoder.layer.{l}.'
        lin = lambda x, n: x @ w[p + n + '.weight'].T + w[p + n + '.bias']
        q = lin(h, 'attention.self.query').reshape(T, nH, D)
        k = lin(h, 'attention.self.key').reshape(T, nH, D)
        v = lin(h, 'attention.self.value').reshape(T, nH, D)
        s = np.einsum('thd,shd->hts', q, k) / np.sqrt(D)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        a = np.einsum('hts,shd->thd', s, v).reshape(T, H)
        h = layer_norm(h + lin(a, 'attention.output.dense'), w[p + 'attention.output.LayerNorm.weight'], w[p + 'attention.output.LayerNorm.bias'], eps)
        f = lin(gelu(lin(h, 'intermediate.dense')), 'output.dense')
        h = layer_norm(h + f, w[p + 'output.LayerNorm.weight'], w[p + 'output.LayerNorm.bias'], eps)
    return h


def pooling_of(model, bert):
    modules_file = os.path.join(model, 'modules.json')
    if not os.path.exists(modules_file):
        return ('cls' if bert else 'last'), True
    modules = json.load(open(modules_file))
    normalize = any(m['type'].endswith('.Normalize') for m in modules)
    pool = [m for m in modules if m['type'].endswith('.Pooling')]
    if not pool:
        return 'last', normalize
    cfg = json.load(open(os.path.join(model, pool[0]['path'], 'config.json')))
    if cfg.get('pooling_mode_mean_tokens'):
        return 'mean', normalize
    if cfg.get('pooling_mode_cls_token'):
        return 'cls', normalize
    return 'last', normalize


def main():
    req = json.load(sys.stdin)
    model = req['model']
    cfg = json.load(open(os.path.join(model, 'config.json')))
    w = load_safetensors(os.path.join(model, 'model.safetensors'))
    bert = cfg.get('model_type') == 'bert'
    pooling, normalize = pooling_of(model, bert)
    out = []
    for tokens in req['inputs']:
        hs = bert_hidden(cfg, w, tokens) if bert else final_hidden(cfg, w, tokens)
        v = hs[-1] if pooling == 'last' else hs[0] if pooling == 'cls' else hs.mean(axis=0)
        if normalize:
            v = v / np.linalg.norm(v)
        out.append(v.tolist())
    json.dump({'embeddings': out}, sys.stdout)


if __name__ == '__main__':
    main()
