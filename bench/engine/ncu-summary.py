"""Summarises an ncu raw CSV (gpu__time_duration.sum per kernel launch) by kernel name: for a decode profile of
STEPS steps, the last step's launches (kernel count per step = launches // steps), else every launch.
Usage: python3 ncu-summary.py FILE.csv [STEPS]"""
import csv, sys, collections
rows = []
with open(sys.argv[1]) as f:
    lines = [l for l in f if l.startswith('"')]
for r in csv.DictReader(lines):
    try:
        t = float(r['gpu__time_duration.sum'].replace(',', ''))
    except (KeyError, ValueError):
        continue
    rows.append((r['Kernel Name'].split('(')[0][-60:], t, r.get('Grid Size', ''), r.get('Block Size', '')))
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1
per = len(rows) // steps
last = rows[-per:]
unit = 'ns'
agg = collections.OrderedDict()
for name, t, g, b in last:
    a = agg.setdefault(name, [0, 0.0, g, b])
    a[0] += 1
    a[1] += t
total = sum(a[1] for a in agg.values())
print(f'launches {len(last)} of {len(rows)}, kernel time {total/1e3:.1f} us')
for name, (cnt, t, g, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f'{t/1e3:9.1f} us {100*t/total:5.1f}%  x{cnt:<4d} {t/cnt/1e3:8.2f} us/launch  grid {g} block {b}  {name}')
