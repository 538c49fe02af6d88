#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Reads the benchmark part of a guest console log on stdin, prints the
table of every case and mode (map+unmap time: median, min and max over the
rounds; step times; IOTLB syncs and allocations per map+unmap; ratio to the
C two-step API) and writes it as tab-separated values to the file named by
the first argument. Exits 1 if a figure is missing."""
import re
import statistics
import sys

CASES = ["1-scattered", "16-scattered", "512-scattered", "4096-scattered",
         "16-adjacent", "512-adjacent", "4096-adjacent", "2M-contiguous"]
MODES = ["sg", "c-iova", "c-iova-batched", "rust", "rust-devres"]
STEPS = {"sg": ["map_ns", "unmap_ns"],
         "c-iova": ["iova_alloc_ns", "link_ns", "sync_ns", "destroy_ns"],
         "c-iova-batched": ["iova_alloc_ns", "link_ns", "sync_ns", "destroy_ns"],
         "rust": ["map_ns", "unmap_ns"],
         "rust-devres": ["map_ns", "unmap_ns"]}
EVENTS = ["kmalloc", "kmem_cache_alloc", "mm_page_alloc"]
COLUMNS = ["case", "mode", "iterations", "ranges", "bytes", "median_ns", "min_ns", "max_ns",
           "map_ns", "unmap_ns", "iova_alloc_ns", "link_ns", "sync_ns", "destroy_ns",
           "iotlb_syncs_per_map", "allocs_per_map", "kmalloc_per_map",
           "kmem_cache_alloc_per_map", "mm_page_alloc_per_map", "ratio_to_c_iova",
           "ratio_to_c_iova_batched"]


def fields(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))


def per_map(snapshots, counter):
    """The counter over the run of N cycles (snapshots 2 to 3) less the one
    over the run of 0 cycles (1 to 2), per cycle: exact when every cycle does
    the same."""
    c1, c2, c3 = (int(snapshots[k][counter]) for k in (1, 2, 3))
    value = ((c3 - c2) - (c2 - c1)) / int(snapshots[3]["iterations"])
    return value


def show(value):
    return "%d" % value if value == int(value) else "%.2f" % value


text = sys.stdin.read()
errors = re.findall(r"^RFL-BENCH-ERROR (.*)", text, re.M)
plan = fields(re.search(r"^RFL-BENCH-PLAN .*", text, re.M).group(0)) \
    if "RFL-BENCH-PLAN" in text else {}
rounds = int(plan.get("rounds", 0))
times, steps, info, counts = {}, {}, {}, {}
for line in re.findall(r"^RFL-BENCH-RESULT .*", text, re.M):
    f = fields(line)
    if "ns_per_map" not in f:
        continue
    key = (f["case"], f["mode"])
    info[key] = f
    if f["pass"] == "time":
        times.setdefault(key, []).append(int(f["ns_per_map"]))
    else:
        for step in STEPS[f["mode"]]:
            if step in f:
                steps.setdefault(key, {}).setdefault(step, []).append(int(f[step]))
timestamps = [int(f["timestamp_ns"]) for f in map(fields, re.findall(
    r"^RFL-BENCH-RESULT .* timestamp_ns=.*", text, re.M))]
for line in re.findall(r"^RFL-BENCH-COUNT .*", text, re.M):
    f = fields(line)
    counts.setdefault((f["case"], f["mode"]), {})[int(f["snapshot"])] = f

rows, missing = [], []
for case in CASES:
    for mode in MODES:
        key = (case, mode)
        row = dict.fromkeys(COLUMNS, "")
        row.update(case=case, mode=mode)
        if key in info:
            row.update({k: info[key][k] for k in ("iterations", "ranges", "bytes")})
        if len(times.get(key, [])) == rounds > 0:
            row.update(median_ns="%d" % statistics.median(times[key]),
                       min_ns=min(times[key]), max_ns=max(times[key]))
        else:
            missing.append("%s %s: %d of %d timed rounds" %
                           (case, mode, len(times.get(key, [])), rounds))
        for step in STEPS[mode]:
            values = steps.get(key, {}).get(step, [])
            if len(values) == rounds > 0:
                row[step] = "%d" % statistics.median(values)
            else:
                missing.append("%s %s: %s in %d of %d rounds" %
                               (case, mode, step, len(values), rounds))
        if mode.startswith("c-iova") and row["iova_alloc_ns"]:
            row["map_ns"] = "%d" % sum(int(row[s]) for s in STEPS[mode][:3])
            row["unmap_ns"] = row["destroy_ns"]
        snapshots = counts.get(key, {})
        if all(k in snapshots for k in (1, 2, 3)):
            row["iotlb_syncs_per_map"] = show(per_map(snapshots, "iotlb_syncs"))
            allocs = [per_map(snapshots, event) for event in EVENTS]
            for event, value in zip(EVENTS, allocs):
                row[event + "_per_map"] = show(value)
            row["allocs_per_map"] = show(sum(allocs))
        else:
            missing.append("%s %s: no IOTLB sync and allocation counts" % (case, mode))
        rows.append(row)

for row in rows:
    for mode in ("c-iova", "c-iova-batched"):
        base = next(r for r in rows if r["case"] == row["case"] and r["mode"] == mode)
        if row["median_ns"] and base["median_ns"]:
            row["ratio_to_" + mode.replace("-", "_")] = "%.3f" % (
                int(row["median_ns"]) / int(base["median_ns"]))

print("map+unmap of the same memory and physical ranges in every mode, ns per map+unmap:")
print("median, min and max of %d interleaved rounds (%s, one boot); step times are"
      % (rounds, sys.argv[2]))
print("medians of a separate pass with timestamps between the steps, less the cost of one")
print("timestamp (median %s ns); syncs and allocations per map+unmap are counted in an"
      % (statistics.median(timestamps) if timestamps else "?"))
print("untimed pass (N minus 0 cycles, in one warmed-up process).")
header = ("case", "mode", "ranges", "median", "min", "max", "map", "unmap", "iova_alloc",
          "link", "sync", "destroy", "syncs", "allocs", "/c-iova", "/batched")
layout = "%-15s %-14s %6s %9s %9s %9s %9s %9s %10s %9s %6s %8s %5s %6s %7s %8s"
print(layout % header)
for row in rows:
    print(layout % tuple(str(row[c]) for c in (
        "case", "mode", "ranges", "median_ns", "min_ns", "max_ns", "map_ns", "unmap_ns",
        "iova_alloc_ns", "link_ns", "sync_ns", "destroy_ns", "iotlb_syncs_per_map",
        "allocs_per_map", "ratio_to_c_iova", "ratio_to_c_iova_batched")))
paths = sorted({"%s with %s DMA range(s)" % (f["path"], f["dma_ranges"])
                for (case, mode), f in info.items()})
if paths:
    print("DmaMapping path: " + "; ".join(paths))

with open(sys.argv[1], "w") as tsv:
    tsv.write("\t".join(COLUMNS) + "\n")
    for row in rows:
        tsv.write("\t".join(str(row[c]) for c in COLUMNS) + "\n")

for error in errors:
    print("error: " + error)
for item in missing:
    print("missing: " + item)
sys.exit(1 if errors or missing or not rounds else 0)
