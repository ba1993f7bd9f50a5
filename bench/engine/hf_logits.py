"""Reference logits for the CUDA backend's correctness check (issue 4), on the GPU machine.

Writes a Qwen3-0.6B-shaped checkpoint with random weights (std 0.02, norm weights 1 + N(0, 0.1)), stored in bf16,
to OUT/model, then runs HF transformers on the same weights in float32 (the reference) and in bf16 (the bar), over
4 sequences of mixed prompt lengths followed by 32 teacher-forced tokens. For each sequence it keeps the logits of
the last prompt position and of each of the 32 following positions (33 rows):
  OUT/ref_fp32.bin, OUT/hf_bf16.bin   float32 [4, 33, vocab]
  OUT/tokens.json                     {"prompts": [[...]], "continuations": [[...]], "rows": 33, "vocab": V}
Usage: python3 hf_logits.py OUT [seed]
"""
import json, os, sys, torch
from transformers import Qwen3Config, Qwen3ForCausalLM

out = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
os.makedirs(out, exist_ok=True)
torch.manual_seed(seed)
cfg = Qwen3Config(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, initializer_range=0.02)
model = Qwen3ForCausalLM(cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1 + 0.1 * torch.randn_like(p))
model = model.to(torch.bfloat16)
model.save_pretrained(os.path.join(out, "model"), safe_serialization=True)

prompt_lens = [256, 100, 37, 180]
new = 32
g = torch.Generator().manual_seed(seed + 1)
prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in prompt_lens]
conts = [torch.randint(0, cfg.vocab_size, (new,), generator=g).tolist() for _ in prompt_lens]

def rows(m):
    res = []
    with torch.inference_mode():
        for p, c in zip(prompts, conts):
            ids = torch.tensor([p + c], device="cuda")
            logits = m(ids).logits[0].float()
            res.append(logits[len(p) - 1: len(p) + new].cpu())
    return torch.stack(res)

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# Both runs load the saved checkpoint, as a user would: casting the in-memory model with .to() would also round
# the RoPE inv_freq buffer to bf16 (a position-dependent error that is not HF's real behaviour).
del model
path = os.path.join(out, "model")
ref = rows(Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval())
ref.numpy().tofile(os.path.join(out, "ref_fp32.bin"))
bf = rows(Qwen3ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval())
bf.numpy().tofile(os.path.join(out, "hf_bf16.bin"))
with open(os.path.join(out, "tokens.json"), "w") as f:
    json.dump({"prompts": prompts, "continuations": conts, "rows": new + 1, "vocab": cfg.vocab_size}, f)
print(f"hf_logits: wrote {out} ({ref.shape[0]} seqs x {ref.shape[1]} rows x {ref.shape[2]})", flush=True)
