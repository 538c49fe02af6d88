#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Reads the fio benchmark part of a guest console log on stdin, prints for
every job the IOPS, bandwidth and busy CPU time per I/O of both drivers
(medians over the rounds) with their ratios, second driver to C driver,
and writes one tab-separated row per job and driver to the file named by
the first argument. Exits 1 if a run failed or a figure is missing."""
import json
import re
import statistics
import sys

JOBS = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd1",
        "randwrite-4k-qd32", "read-128k-qd32", "write-128k-qd32"]
COLUMNS = ["job", "driver", "iops", "bw_kib_s", "cpu_us_per_io", "iops_min",
           "iops_max", "rounds", "ratio_iops", "ratio_bw", "ratio_cpu_per_io"]
# /proc/stat counts in USER_HZ, 100 on x86.
USER_HZ = 100
LABELS = {"nvme": "c-nvme", "rust_nvme_dma": "rust-nvme"}


def fields(line):
    return dict(re.findall(r"(\w+)=(\S+)", line))


text = sys.stdin.read()
errors = re.findall(r"^RFL-BENCH-FIO-ERROR (.*)", text, re.M)
setup = re.search(r"^RFL-BENCH-FIO-SETUP (.*)", text, re.M)
if not setup:
    sys.exit("no RFL-BENCH-FIO-SETUP line: the guest did not set the disks up")
disks = fields(setup.group(1))
labels = {which: LABELS.get(disks[which + "_driver"], disks[which + "_driver"])
          for which in ("first", "second")}
if labels["first"] == labels["second"]:
    labels["second"] += "-2"

# Per job and disk: one (iops, bw, cpu per I/O) per round.
runs = {}
for line in re.findall(r"^RFL-BENCH-FIO-RESULT .*", text, re.M):
    head, _, data = line.partition(" json=")
    f = fields(head)
    where = "%s %s round %s" % (f["job"], labels[f["disk"]], f["round"])
    try:
        job = json.loads(data)["jobs"][0]
    except (ValueError, KeyError, IndexError):
        errors.append("%s: no fio JSON output (fio status %s)" % (where, f["rc"]))
        continue
    if f["rc"] != "0" or job["error"]:
        errors.append("%s: fio status %s, error %s" % (where, f["rc"], job["error"]))
        continue
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    if not ios:
        errors.append("%s: no I/O" % where)
        continue
    runs.setdefault((f["job"], f["disk"]), []).append((
        job["read"]["iops"] + job["write"]["iops"],
        job["read"]["bw"] + job["write"]["bw"],
        int(f["busy_ticks"]) * 1e6 / USER_HZ / ios))

rows, missing = {}, []
rounds = max((len(r) for r in runs.values()), default=0)
for name in JOBS:
    for which in ("first", "second"):
        values = runs.get((name, which), [])
        if len(values) != rounds or not rounds:
            missing.append("%s %s: %d of %d rounds" % (name, labels[which], len(values), rounds))
        if not values:
            continue
        iops = [v[0] for v in values]
        rows[name, which] = {
            "job": name, "driver": labels[which],
            "iops": statistics.median(iops),
            "bw_kib_s": statistics.median(v[1] for v in values),
            "cpu_us_per_io": statistics.median(v[2] for v in values),
            "iops_min": min(iops), "iops_max": max(iops), "rounds": len(values)}
    first, second = rows.get((name, "first")), rows.get((name, "second"))
    if first and second:
        for column, ratio in (("iops", "ratio_iops"), ("bw_kib_s", "ratio_bw"),
                              ("cpu_us_per_io", "ratio_cpu_per_io")):
            second[ratio] = second[column] / first[column] if first[column] else None

vs = "%s/%s" % (labels["second"], labels["first"])
print("fio on two identical NVMe controllers (%s, one boot): %s on one, %s on the other;"
      % (sys.argv[2], labels["first"], labels["second"]))
print("medians of %d interleaved rounds; CPU time is the busy time of the whole guest" % rounds)
print("(/proc/stat, interrupts included) during the run, per I/O. Ratios: %s." % vs)
layout = "%-18s %10s %10s %7s %11s %11s %7s %9s %9s %7s"
print(layout % ("job", "iops", "iops", "ratio", "KiB/s", "KiB/s", "ratio",
                "cpu us/io", "cpu us/io", "ratio"))
print(layout % ("", labels["first"], labels["second"], "", labels["first"],
                labels["second"], "", labels["first"], labels["second"], ""))


def show(row, column, form, absent="-"):
    value = row.get(column) if row else None
    return form % value if value is not None else absent


for name in JOBS:
    first, second = rows.get((name, "first")), rows.get((name, "second"))
    print(layout % (name, show(first, "iops", "%.0f"), show(second, "iops", "%.0f"),
                    show(second, "ratio_iops", "%.3f"), show(first, "bw_kib_s", "%.0f"),
                    show(second, "bw_kib_s", "%.0f"), show(second, "ratio_bw", "%.3f"),
                    show(first, "cpu_us_per_io", "%.1f"),
                    show(second, "cpu_us_per_io", "%.1f"),
                    show(second, "ratio_cpu_per_io", "%.3f")))

FORMATS = {"iops": "%.1f", "bw_kib_s": "%.0f", "cpu_us_per_io": "%.2f", "iops_min": "%.1f",
           "iops_max": "%.1f", "rounds": "%d", "ratio_iops": "%.4f", "ratio_bw": "%.4f",
           "ratio_cpu_per_io": "%.4f"}
with open(sys.argv[1], "w") as tsv:
    tsv.write("\t".join(COLUMNS) + "\n")
    for name in JOBS:
        for which in ("first", "second"):
            row = rows.get((name, which))
            if row:
                tsv.write("\t".join(row[c] if c in ("job", "driver") else
                                    show(row, c, FORMATS[c], "") for c in COLUMNS) + "\n")

for error in errors:
    print("error: " + error)
for item in missing:
    print("missing: " + item)
sys.exit(1 if errors or missing else 0)
