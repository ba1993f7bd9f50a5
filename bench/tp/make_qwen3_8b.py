"""A Qwen3-8B-shaped checkpoint with random weights for the tensor-parallel timing (bench/tp/gpu-tp.sh), on the GPU
machine: config.json from transformers' Qwen3Config (the real model's hyper-parameters) and one model.safetensors of
bf16 tensors drawn on the GPU (std 0.02, norm weights 1 + N(0, 0.1)), about 16.4 GB, written tensor by tensor from
host copies. The timing needs the shape, not the values.
Usage: python3 make_qwen3_8b.py OUT_DIR [seed]
"""
import os, sys, torch
from safetensors.torch import save_file
from transformers import Qwen3Config

out = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
os.makedirs(out, exist_ok=True)
cfg = Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
cfg.architectures = ["Qwen3ForCausalLM"]
cfg.save_pretrained(out)
g = torch.Generator(device="cuda").manual_seed(seed)
H, I, D, V = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.vocab_size
Q, KV = cfg.num_attention_heads * D, cfg.num_key_value_heads * D

def w(*shape):
    return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

def norm(n):
    return (1 + 0.1 * torch.randn(n, generator=g, device="cuda", dtype=torch.float32)).to(torch.bfloat16).cpu()

t = {"model.embed_tokens.weight": w(V, H), "model.norm.weight": norm(H), "lm_head.weight": w(V, H)}
for l in range(cfg.num_hidden_layers):
    p = f"model.layers.{l}."
    t[p + "input_layernorm.weight"] = norm(H)
    t[p + "post_attention_layernorm.weight"] = norm(H)
    t[p + "self_attn.q_proj.weight"] = w(Q, H)
    t[p + "self_attn.k_proj.weight"] = w(KV, H)
    t[p + "self_attn.v_proj.weight"] = w(KV, H)
    t[p + "self_attn.o_proj.weight"] = w(H, Q)
    t[p + "self_attn.q_norm.weight"] = norm(D)
    t[p + "self_attn.k_norm.weight"] = norm(D)
    t[p + "mlp.gate_proj.weight"] = w(I, H)
    t[p + "mlp.up_proj.weight"] = w(I, H)
    t[p + "mlp.down_proj.weight"] = w(H, I)
save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
print(f"make_qwen3_8b: wrote {out} ({sum(x.numel() for x in t.values()) * 2 / 1e9:.2f} GB bf16)", flush=True)
