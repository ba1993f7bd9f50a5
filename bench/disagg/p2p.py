# Peer-to-peer copy rate GPU 0 -> GPU 1 (what the GPU path of the KV transfer moves over): 1 GiB copied 10 times
# with torch (cudaMemcpyPeer underneath), both devices synchronised around the timed loop. Prints one JSON line.
import json
import time

import torch

n = 1 << 30
src = torch.empty(n, dtype=torch.uint8, device="cuda:0")
dst = torch.empty(n, dtype=torch.uint8, device="cuda:1")
for _ in range(3):
    dst.copy_(src)
torch.cuda.synchronize(0)
torch.cuda.synchronize(1)
reps = 10
t0 = time.perf_counter()
for _ in range(reps):
    dst.copy_(src)
torch.cuda.synchronize(0)
torch.cuda.synchronize(1)
dt = time.perf_counter() - t0
print(json.dumps({
    "gbs": round(reps * n / dt / 1e9, 1),
    "peer_access": torch.cuda.can_device_access_peer(1, 0),
    "gpus": [torch.cuda.get_device_name(0), torch.cuda.get_device_name(1)],
}))
