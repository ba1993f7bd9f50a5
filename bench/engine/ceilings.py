"""The two ceilings of the GPU machine, measured in the same command as a benchmark: device-to-device copy
bandwidth (bytes read + written) and the bf16 GEMM rate (8192^3 through torch/cuBLAS). Prints one JSON line."""
import json, time, torch

n = 1 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda"); a.random_(0, 255); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): b.copy_(a)
torch.cuda.synchronize(); bw = 2 * n / ((time.perf_counter() - t) / 20)
m = 8192
x = torch.randn(m, m, dtype=torch.bfloat16, device="cuda"); y = torch.randn_like(x)
for _ in range(3): x @ y
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): x @ y
torch.cuda.synchronize(); rate = 2 * m ** 3 / ((time.perf_counter() - t) / 10)
print(json.dumps({"gpu": torch.cuda.get_device_name(), "copy_TBps": round(bw / 1e12, 3), "bf16_TFLOPs": round(rate / 1e12, 1)}), flush=True)
