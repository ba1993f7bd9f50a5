#!/usr/bin/env bash
# The embedding benchmark's one device command (issue 19), on one CUDA card: a Qwen3-Embedding-0.6B-shaped random
# checkpoint (make-model), 1,000 inputs of 128-512 tokens through sup.embed (batched passes) against transformers
# bf16 on the same card and the same inputs, then the p50 latency of one 32-token input through the frontend
# (`run --embedding`), and the correctness check against checkpoints and vectors transformers made (make-fixtures.py,
# check-fixtures.ts). Logs in $OUT; the
# JSON lines printed at the end are the record. Needs npm ci (the CUDA addon) and python3 with torch + transformers.
# Goal (issue 19): emb_per_s at least 2x the peer's; p50 <= 5 ms.
set -u
out=${OUT:-/tmp/dsg-embeddings}
mkdir -p "$out"
model=$out/qwen3-embedding-0.6b
[ -f "$model/model.safetensors" ] || node --import tsx test/helpers/cli-entry.ts make-model --shape qwen3-embedding-0.6b --seed 1 --out "$model" > "$out/make-model.log" 2>&1
timeout 600 npx tsx bench/embeddings/throughput.ts "$model" 1000 --device cuda --inputs-out "$out/inputs.json" > "$out/ours.log" 2>&1
timeout 600 python3 bench/embeddings/peer.py "$model" "$out/inputs.json" 32 > "$out/peer.log" 2>&1
timeout 300 npx tsx bench/embeddings/latency.ts "$model" 500 --device cuda > "$out/latency.log" 2>&1
node --import tsx test/helpers/cli-entry.ts make-model --shape qwen3-embedding-tiny --seed 7 --out "$out/tokenizer" > /dev/null
timeout 300 python3 bench/embeddings/make-fixtures.py "$out" "$out/tokenizer" > "$out/fixtures.log" 2>&1
timeout 300 npx tsx bench/embeddings/check-fixtures.ts "$out/fixtures.json" > "$out/check.log" 2>&1
grep -h '^{' "$out/ours.log" "$out/peer.log" "$out/latency.log"
tail -1 "$out/fixtures.log"; cat "$out/check.log"
