#!/usr/bin/env bash
# One device call on a two-GPU machine for the figures of issues 4, 5 and 8 together (a two-GPU machine counts its
# whole held time, so everything that needs a GPU runs in this one command):
#   1. bench/disagg/gpu2.sh: prefill on GPU 0, decode on GPU 1, aggregated on GPU 0 (issue 8);
#   2. bench/engine/ceilings.py, then bench/offline/run.ts on GPU 0 (issue 5: offline throughput against its floor,
#      batch-1 ITL through the actors against the engine's);
#   3. bench/engine/bench.ts and the torch CUDA-graph peer on GPU 0 (issue 4: ratios from the same command).
# Summaries print last; every log is packed into OUT/all.tar.xz (a device call returns at most 8 files).
# Staging here: bash bench/disagg/stage-slim.sh && cp ../shared/peers/torch_peer.py build/
# Device: run(kind="nvidia-h100-x2", carry=["build/kvipc-stage", "build/kvipc-head.tar.xz", "build/torch_peer.py"],
#   command="mkdir -p /opt/kvstage && tar -C /opt/kvstage -xJf build/kvipc-stage/bundle.tar.xz &&
#   export PATH=/opt/kvstage/bin:$PATH NCCL_NVLS_ENABLE=0 && mkdir -p /tmp/h && tar -xJf build/kvipc-head.tar.xz -C /tmp/h
#   && ln -sfn /opt/kvstage/node_modules /tmp/h/node_modules && cp build/torch_peer.py /tmp/h/ && cd /tmp/h &&
#   COMMIT=<HEAD> bash bench/gpu-final.sh $OUT")
set -u -o pipefail
out=${1:-${OUT:-/tmp/dsg-final}}
work=/tmp/dsg-final-work
rm -rf "$work" && mkdir -p "$work" "$out"
export PATH=/usr/local/cuda/bin:$PATH
BUDGET_S=${DISAGG_BUDGET_S:-200} bash bench/disagg/gpu2.sh "$work/disagg" > "$work/gpu2.log" 2>&1
echo "gpu2.sh exit $?"
python3 bench/engine/ceilings.py > "$work/ceil.json" 2> "$work/ceil.log"
bw=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['copy_TBps'])" "$work/ceil.json")
tf=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['bf16_TFLOPs'])" "$work/ceil.json")
gbs=$(python3 -c "print(round($bw*1000))")
CUDA_VISIBLE_DEVICES=0 timeout 130 node --import tsx bench/offline/run.ts --model /tmp/q3 --device cuda --num 256 \
  --min 100 --max 1024 --seed 1 --bandwidth-gbs "$gbs" --out "$work/offline.json" > "$work/offline.log" 2>&1
echo "offline exit $?"
CUDA_VISIBLE_DEVICES=0 timeout 120 node --import tsx bench/engine/bench.ts /tmp/q3 "$bw" "$tf" > "$work/bench.log" 2>&1
echo "bench exit $?"
CUDA_VISIBLE_DEVICES=0 timeout 90 python3 torch_peer.py > "$work/torch_peer.log" 2>&1
echo "torch peer exit $?"
tar -C "$(dirname "$work")" -cJf "$out/all.tar.xz" "$(basename "$work")"
echo; echo "## ceilings"; cat "$work/ceil.json"
echo; echo "## offline"; tail -n 1 "$work/offline.log"
python3 -c "import json,sys;r=json.load(open(sys.argv[1]));a=r['actors'];e=r['engine'] or {};print({k:a.get(k) for k in ['outTokS','seconds','steps','retractions','engineBusySeconds','schedulerHostSeconds','hostOverheadPerStepMs','submitGapUs','itl1Ms','itl1EngineMs','itl1HostMs']}, {k:e.get(k) for k in ['ceilingTokS','ceilingContext','itl1Ms']}, r['floor'], r['totalIn'], r['totalOut'], r['meanDecodeContext'])" "$work/offline.json"
echo; echo "## engine bench"; grep "^|" "$work/bench.log"
echo; echo "## torch peer"
grep -o '"bs": [0-9]*\|"tokens": [0-9]*\|"itl_ms": [0-9.]*\|"out_tok_s": [0-9.]*\|"tok_s": [0-9]*' "$work/torch_peer.log" | paste -sd' '
echo; sed -n '/^## Disaggregated/,$p' "$work/gpu2.log"
