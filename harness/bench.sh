#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make bench: boots the guest once under VT-d (strict mode by default) and times
# map+unmap of the same memory, with the same physical ranges, by
# dma_map_sgtable(), the C two-step API and the Rust DMA mapping API
# (samples/rust/rust_dma_bench.rs), in interleaved rounds; counts the
# IOTLB syncs and allocations per map+unmap. Prints the table and writes it
# to build/bench.tsv. Figures from one boot only: under TCG only the ratios
# mean something.
# Usage: bench.sh [MILLISECONDS per measured run, default 200] [MACHINE of
# harness/matrix with a VT-d vIOMMU, default vtd-strict, whose table goes to
# build/bench.tsv; any other's to build/bench-MACHINE.tsv]
# The benchmark kernel (lib.sh) unless BENCH_KERNEL=0 asks for the test kernel.
export BENCH_KERNEL=${BENCH_KERNEL:-1}
. "$(dirname "$0")/lib.sh"

run_ms=${1:-200}
machine=${2:-vtd-strict}
tsv=$OUT/bench.tsv
[ "$machine" = vtd-strict ] || tsv=$OUT/bench-$machine.tsv
bash "$REPO/harness/prepare.sh"
bash "$REPO/harness/initramfs.sh"
logfile=$OUT/bench.log
read -r viommu args <<<"$(matrix_config "$machine")"
# DMA-API debugging, which only the test kernel (BENCH_KERNEL=0) has: off.
args+=" dma_debug=off"
log "Booting $machine ($viommu vIOMMU, $args) with pci-testdev"
# shellcheck disable=SC2086 # kernel arguments are split on purpose
BOOT_QEMU_ARGS="-device pci-testdev" BOOT_TIMEOUT=600 \
	bash "$REPO/harness/boot.sh" "$logfile" "$viommu" $args "RFL_BENCH=$run_ms" || true
grep -q '^RFL-BENCH-END' "$logfile" || die "the benchmark did not finish; see $logfile"
if bad=$(grep -a -m 3 -E "$BAD_LOG" "$logfile"); then
	warn "the kernel log has: $(tr '\n' ' ' <<<"$bad")(see $logfile)"
fi

sed -n '/^RFL-BENCH-BEGIN/,/^RFL-BENCH-END/p' "$logfile" |
	python3 "$REPO/harness/bench_report.py" "$tsv" "$machine"
