#!/usr/bin/env python3
"""Reference logits from HF transformers (float32, CPU, eager attention) for checkpoints written by our
make-model (see make-hf-fixtures.ts). For each checkpoint: three sequences of different prompt lengths, each
followed by 8 teacher-forced tokens; one full forward pass per sequence (causal, so the logits at position p are
exactly those a prefill ending at p, or a decode step at p, produces). Writes OUT/<name>.json with the token ids,
prompt lengths and the last-token logits of the prefill and of each decode step (float32, little-endian, base64).

usage: python3 hf_logits.py OUT_DIR CHECKPOINT_DIR...
"""
import base64
import json
import math
import os
import struct
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPT_LENS = [3, 17, 9]  # 17 crosses a 16-token page
DECODE_STEPS = 8


def token_ids(seed, n, vocab):
    # A small LCG so the ids are reproducible without numpy/torch RNG details.
    out, x = [], seed
    for _ in range(n):
        x = (1103515245 * x + 12345) % (2 ** 31)
        out.append(x % vocab)
    return out


def expected_inv_freq(cfg, head_dim):
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = [1.0 / (theta ** (i / head_dim)) for i in range(0, head_dim, 2)]
    if rope.get("rope_type", rope.get("type")) == "llama3":
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                s = (old / wavelen - lo) / (hi - lo)
                out.append((1 - s) * f / factor + s * f)
        inv = out
    return inv


def main():
    out_dir, dirs = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    failures = 0
    for d in dirs:
        name = os.path.basename(os.path.normpath(d))
        try:
            cfg = json.load(open(os.path.join(d, "config.json")))
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
            model.eval()
            vocab = cfg["vocab_size"]
            head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
            rotary = getattr(model.model, "rotary_emb", None)
            rope_check = "not checked"
            if rotary is not None and hasattr(rotary, "inv_freq"):
                want = torch.tensor(expected_inv_freq(cfg, head_dim), dtype=torch.float64)
                got = rotary.inv_freq.double().cpu()
                err = (got - want).abs().max().item() / want.abs().max().item()
                rope_check = f"inv_freq rel err {err:.2e}"
                if err > 1e-5:
                    raise RuntimeError(f"{name}: transformers read a different RoPE than config.json says ({rope_check})")
            seqs = []
            blobs = []
            for i, plen in enumerate(PROMPT_LENS):
                ids = token_ids(1000 * (i + 1) + len(name), plen + DECODE_STEPS, min(vocab, 1024))
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0].float()
                rows = logits[plen - 1 : plen + DECODE_STEPS]  # prefill's last token, then each decode step
                assert rows.shape == (DECODE_STEPS + 1, vocab), rows.shape
                flat = rows.contiguous().view(-1).tolist()
                blobs.append(struct.pack(f"<{len(flat)}f", *flat))
                seqs.append({"token_ids": ids, "prompt_len": plen, "steps": DECODE_STEPS + 1})
            result = {
                "model": name,
                "generator": "bench/reference/hf_logits.py",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "dtype": "float32",
                "device": "cpu",
                "attn_implementation": "eager",
                "vocab_size": vocab,
                "rope_check": rope_check,
                "sequences": seqs,
                "logits_f32_base64": base64.b64encode(b"".join(blobs)).decode("ascii"),
            }
            with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                json.dump(result, f)
            print(f"{name}: ok ({rope_check}; {model.config.architectures})", flush=True)
        except Exception as e:  # keep going: one bad checkpoint must not lose the others' references
            failures += 1
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
