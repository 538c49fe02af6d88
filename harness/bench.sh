#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make bench: boots the guest once under VT-d in strict mode and prints the
# map+unmap time of dma_map_sg() (SG mode of the DMA map benchmark), of a C
# loop over dma_iova_link() (its IOVA mode) and of the Rust DMA mapping API
# (samples/rust/rust_dma_bench.rs), with their ratios. Figures from one
# boot only: under TCG only the ratios mean something.
# Usage: bench.sh [SECONDS per C benchmark run, default 2]
. "$(dirname "$0")/lib.sh"

seconds=${1:-2}
bash "$REPO/harness/prepare.sh"
bash "$REPO/harness/initramfs.sh"
logfile=$OUT/bench.log
read -r viommu args <<<"$(matrix_config vtd-strict)"
log "Booting vtd-strict ($viommu vIOMMU, $args) with pci-testdev and edu"
# shellcheck disable=SC2086 # kernel arguments are split on purpose
BOOT_QEMU_ARGS="-device pci-testdev" BOOT_TIMEOUT=1500 \
	bash "$REPO/harness/boot.sh" "$logfile" "$viommu" $args "RFL_BENCH=$seconds" || true
grep -q '^RFL-BENCH-END' "$logfile" || die "the benchmark did not finish; see $logfile"

sed -n '/^RFL-BENCH-BEGIN/,/^RFL-BENCH-END/p' "$logfile" | python3 "$REPO/harness/bench_report.py"
