#!/usr/bin/env python3
"""Correctness fixtures for the embedding worker, made by transformers (for the GPU machine, where torch and
transformers are installed; it does not run on the CPU-only CI machine). For each pooling (last token, mean),
transformers builds a tiny random Qwen3Model of make-model's qwen3-embedding-tiny shape (torch seed fixed), and for
CLS pooling a BertModel of make-model's bert-tiny shape (CPU only: the engine refuses BERT on CUDA), saves it
with save_pretrained (float32 safetensors), the tokenizer files of a make-model checkpoint beside it, and the
sentence-transformers files (modules.json, 1_Pooling/config.json, 2_Normalize) declaring the pooling; then it embeds a
fixed set of token-id inputs, one at a time (no padding), in float32 on the CPU and, with CUDA, in bfloat16 on the
card, and writes the checkpoints' paths, the inputs and both sets of vectors to OUT/fixtures.json.
bench/embeddings/check-fixtures.ts compares the engine against them: cosine >= 0.99999 to float32 on CPU, and on
CUDA no further from float32 than transformers' own bf16.

Usage: python3 bench/embeddings/make-fixtures.py OUT_DIR TOKENIZER_DIR
(TOKENIZER_DIR: any make-model tiny checkpoint, e.g. from `make-model --shape qwen3-embedding-tiny`.)"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import AutoModel, BertConfig, BertModel, Qwen3Config, Qwen3Model

INPUTS = [
    [5, 17, 300, 42, 9, 1000, 77],
    [3],
    [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 11, 12, 13, 14, 15, 16, 17],
    [64, 65],
    list(range(1, 120)),
]


def write_sentence_transformers(d, pooling, hidden):
    json.dump([
        {'idx': 0, 'name': '0', 'path': '', 'type': 'sentence_transformers.models.Transformer'},
        {'idx': 1, 'name': '1', 'path': '1_Pooling', 'type': 'sentence_transformers.models.Pooling'},
        {'idx': 2, 'name': '2', 'path': '2_Normalize', 'type': 'sentence_transformers.models.Normalize'},
    ], open(os.path.join(d, 'modules.json'), 'w'), indent=2)
    os.makedirs(os.path.join(d, '1_Pooling'), exist_ok=True)
    os.makedirs(os.path.join(d, '2_Normalize'), exist_ok=True)
    json.dump({'word_embedding_dimension': hidden, 'pooling_mode_cls_token': pooling == 'cls',
               'pooling_mode_mean_tokens': pooling == 'mean', 'pooling_mode_max_tokens': False,
               'pooling_mode_mean_sqrt_len_tokens': False, 'pooling_mode_weightedmean_tokens': False,
               'pooling_mode_lasttoken': pooling == 'last', 'include_prompt': True},
              open(os.path.join(d, '1_Pooling', 'config.json'), 'w'), indent=2)


def embed(model, pooling, device):
    out = []
    with torch.inference_mode():
        for ids in INPUTS:
            h = model(input_ids=torch.tensor([ids], device=device)).last_hidden_state[0].float()
            v = h[-1] if pooling == 'last' else h[0] if pooling == 'cls' else h.mean(dim=0)
            out.append(torch.nn.functional.normalize(v, dim=-1).cpu().tolist())
    return out


def main():
    out_dir, tokenizer_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    fixtures = []
    for seed, (kind, pooling) in enumerate([('qwen3', 'last'), ('qwen3', 'mean'), ('bert', 'cls')]):
        d = os.path.abspath(os.path.join(out_dir, f'hf-{kind}-embedding-tiny-{pooling}'))
        torch.manual_seed(seed)
        if kind == 'bert':
            config = BertConfig(vocab_size=1088, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=128, type_vocab_size=2,
                                layer_norm_eps=1e-12, initializer_range=0.1)
            model = BertModel(config, add_pooling_layer=False).float().eval()
        else:
            config = Qwen3Config(vocab_size=1088, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
                                 rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, initializer_range=0.1)
            model = Qwen3Model(config).float().eval()
        # random norms too (they initialise to ones), so the norm weights are exercised
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.lower().endswith('norm.weight'):
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(d, safe_serialization=True)
        for f in ('tokenizer.json', 'tokenizer_config.json'):
            shutil.copy(os.path.join(tokenizer_dir, f), d)
        write_sentence_transformers(d, pooling, config.hidden_size)
        f32 = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
        entry = {'model': d, 'pooling': pooling, 'inputs': INPUTS, 'float32': embed(f32, pooling, 'cpu')}
        if torch.cuda.is_available() and kind != 'bert':
            entry['bf16'] = embed(AutoModel.from_pretrained(d, dtype=torch.bfloat16).cuda().eval(), pooling, 'cuda')
        fixtures.append(entry)
    path = os.path.join(out_dir, 'fixtures.json')
    json.dump({'transformers': transformers.__version__, 'fixtures': fixtures}, open(path, 'w'))
    print(f'wrote {path}: {len(fixtures)} checkpoints, {len(INPUTS)} inputs each (transformers {transformers.__version__})')


if __name__ == '__main__':
    main()
