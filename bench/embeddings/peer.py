#!/usr/bin/env python3
"""The transformers bf16 peer of the embedding throughput benchmark: the same inputs (a JSON list of token-id lists,
written by throughput.ts --inputs-out), embedded by AutoModel in bfloat16 on one CUDA card with the usual batching:
inputs sorted by length, batches of BATCH padded on the left (last-token pooling reads the last position), final
hidden state of the last token, L2-normalised. Prints one JSON line like throughput.ts.
Usage: python3 bench/embeddings/peer.py MODEL_DIR INPUTS.json [BATCH=32]"""
import json
import sys
import time

import torch
from transformers import AutoModel


def main():
    model_dir, inputs_file = sys.argv[1], sys.argv[2]
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    inputs = json.load(open(inputs_file))
    model = AutoModel.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))

    def run(ids_lists):
        n = max(len(x) for x in ids_lists)
        ids = torch.zeros((len(ids_lists), n), dtype=torch.long)
        mask = torch.zeros((len(ids_lists), n), dtype=torch.long)
        for r, x in enumerate(ids_lists):
            ids[r, n - len(x):] = torch.tensor(x)
            mask[r, n - len(x):] = 1
        out = model(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state[:, -1]
        return torch.nn.functional.normalize(out.float(), dim=-1)

    with torch.inference_mode():
        run([inputs[i] for i in order[:batch]])  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in range(0, len(order), batch):
            run([inputs[i] for i in order[b:b + batch]])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    tokens = sum(len(x) for x in inputs)
    print(json.dumps({'side': 'transformers-bf16', 'batch': batch, 'inputs': len(inputs), 'tokens': tokens, 'seconds': round(seconds, 3),
                      'emb_per_s': round(len(inputs) / seconds, 1), 'tok_per_s': round(tokens / seconds)}))


if __name__ == '__main__':
    main()
