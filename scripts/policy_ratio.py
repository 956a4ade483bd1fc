#!/usr/bin/env python3
"""CPU time per 256-image batch of each policy application mode (median of 15 after 3 warm-ups), 1 thread."""
import statistics, sys, time, torch
from cvlab.core import augment as aug
torch.set_num_threads(1)
x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
res = {}
for name in ("trivialaugment", "randaugment", "autoaugment"):
    pol = aug.make_policy(name)
    for group in (1, 16, 0):
        g = torch.Generator().manual_seed(0)
        times = []
        for i in range(18):
            t = time.perf_counter(); aug.apply_policy(x, pol, g, group); times.append(time.perf_counter() - t)
        res[(name, group)] = statistics.median(times[3:])
    base = res[(name, 1)]
    print(f"{name:15s} group=1 {1000*base:7.1f} ms | group=16 {1000*res[(name,16)]:6.1f} ms ({base/res[(name,16)]:4.1f}x) "
          f"| by op (0) {1000*res[(name,0)]:6.1f} ms ({base/res[(name,0)]:4.1f}x)")
