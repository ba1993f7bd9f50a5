"""Summarises a rank step trace (DSG_STEP_TRACE lines: sequences, tokens, KV tokens read, engine ms): mixed
(prefill-carrying) steps vs decode steps, decode steps binned by batch size with their effective KV read rate, and a
least-squares fit of decode step time = fixed + KV bytes / bandwidth (per-step overhead vs attention speed).
With pipelined steps (the rank begins step N+1 before N ends) a step's engine ms runs from the later of its begin and
the previous step's end. A mixed (prefill, eager-launched) step can fill the device's launch queue, so its begin returns
only when most of it has run and its time lands on the step before it: consecutive mixed steps then read like 90 ms
+ 0.1 ms. Their sum, and every total here, is right.
Usage: python3 trace-summary.py TRACE.tsv [KV_BYTES_PER_TOKEN (default 114688, Qwen3-0.6B bf16)]"""
import sys

rows = [tuple(float(x) for x in l.split()) for l in open(sys.argv[1]) if l.strip()]
kvb = float(sys.argv[2]) if len(sys.argv) > 2 else 114688.0
decode = [r for r in rows if r[1] == r[0]]
mixed = [r for r in rows if r[1] != r[0]]
total = sum(r[3] for r in rows)
print(f'steps {len(rows)}, engine {total / 1e3:.3f} s; mixed {len(mixed)} steps {sum(r[3] for r in mixed) / 1e3:.3f} s '
      f'({sum(r[1] - r[0] for r in mixed):.0f} prefill tokens); decode {len(decode)} steps {sum(r[3] for r in decode) / 1e3:.3f} s')
for r in mixed[:40]:
    print(f'  mixed: {r[0]:.0f} seqs {r[1]:.0f} tokens kv {r[2]:.0f} -> {r[3]:.2f} ms')
print('| batch | steps | ms total | ms/step | mean KV tokens | KV TB/s |')
print('|---|---|---|---|---|---|')
edges = [1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256]
for lo, hi in zip([0] + edges[:-1], edges):
    sel = [r for r in decode if lo < r[0] <= hi]
    if not sel:
        continue
    ms = sum(r[3] for r in sel)
    kv = sum(r[2] for r in sel)
    print(f'| {lo + 1}-{hi} | {len(sel)} | {ms:.1f} | {ms / len(sel):.3f} | {kv / len(sel):.0f} | {kv * kvb / (ms / 1e3) / 1e12:.2f} |')
if len(decode) > 2:
    n = len(decode)
    xs = [r[2] * kvb for r in decode]
    ys = [r[3] / 1e3 for r in decode]
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    print(f'decode fit: step = {a * 1e3:.3f} ms + KV bytes / {1 / b / 1e12:.2f} TB/s; fixed part over all decode steps '
          f'{a * n:.3f} s, KV part {b * sum(xs):.3f} s')
