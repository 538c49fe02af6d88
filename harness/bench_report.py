#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Reads the benchmark part of a guest console log on stdin and prints the
map+unmap times of dma_map_sg(), the C dma_iova_link() loop and the Rust API
with their ratios, the median of the rounds of each. Exits 1 if a figure is
missing."""
import re
import statistics
import sys

text = sys.stdin.read()
rust = {}
for count, unit, ns, path, ranges in re.findall(
        r"rust_dma_bench: (\d+) (pages|MiB contiguous): (\d+) ns per map\+unmap, "
        r"path (\w+), \d+ physical ranges, (\d+) DMA", text):
    rust.setdefault((int(count), unit), []).append((int(ns) / 1000, path, int(ranges)))
c = {}
for mode, granule, body in re.findall(
        r"benchmark\((\w+)_MODE\).*?granule:\s*(\d+)\n(.*?)(?=dma mapping benchmark|RFL-BENCH-END)",
        text, re.S):
    lat = [float(x) for x in re.findall(r"average (?:map|unmap) latency\(us\):([\d.]+)", body)]
    if len(lat) == 2:
        c.setdefault((mode, int(granule)), []).append(lat[0] + lat[1])

rounds = min([len(v) for v in list(c.values()) + list(rust.values())] or [0])
c = {key: statistics.median(values) for key, values in c.items()}
rust = {key: (statistics.median(v[0] for v in values), values[0][1], values[0][2])
        for key, values in rust.items()}
print("map+unmap, microseconds per operation, median of %d rounds (VT-d strict, one boot):"
      % rounds)
print("%16s %11s %12s %9s %7s %8s  %s" %
      ("case", "dma_map_sg", "C IOVA loop", "Rust API", "Rust/C", "IOVA/SG", "Rust path"))
complete = True
for pages in (1, 16, 512):
    sg, iova, r = c.get(("SG", pages)), c.get(("IOVA", pages)), rust.get((pages, "pages"))
    if None in (sg, iova, r):
        print("%10d pages: missing figures" % pages)
        complete = False
        continue
    print("%10d pages %11.1f %12.1f %9.1f %7.3f %8.3f  %s, %d range(s)" %
          (pages, sg, iova, r[0], r[0] / iova, iova / sg, r[1], r[2]))
single, r = c.get(("SINGLE", 512)), rust.get((2, "MiB contiguous"))
if single is None or r is None:
    print("2 MiB contiguous: missing figures")
    complete = False
else:
    print("%16s %11s %12.1f %9.1f %7.3f %8s  %s, %d range(s)" %
          ("2 MiB contiguous", "-", single, r[0], r[0] / single, "-", r[1], r[2]))
    print("(2 MiB: the C column is dma_map_single() of the same buffer size)")
sys.exit(0 if complete else 1)
