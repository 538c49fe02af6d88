#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make bench, second part: boots the guest once with two identical NVMe
# controllers (same disk size, MDTS 10) behind the same vIOMMU (VT-d strict
# by default), the C nvme driver on one and the Rust driver rust_nvme_dma on
# the other, and runs the same fio jobs on both in interleaved rounds: 4 KiB
# random reads and writes at queue depth 1 and 32, 128 KiB sequential reads
# and writes (direct I/O, libaio). Prints IOPS, bandwidth and busy CPU time
# per I/O (medians over the rounds) with the Rust/C ratios, and writes them
# to build/bench-fio.tsv. Under TCG only the ratios mean something.
# BENCH_FIO_DRIVER=nvme puts the C driver on both controllers, to check the
# benchmark itself (ratios near 1); RFL_PREPARED=1 skips the kernel build
# and the initramfs.
# Usage: bench-fio.sh [SECONDS per fio run, default 5] [ROUNDS, default 5]
# [MACHINE of harness/matrix, default vtd-strict, whose table goes to
# build/bench-fio.tsv; any other's to build/bench-fio-MACHINE.tsv]
# The benchmark kernel (lib.sh) unless BENCH_KERNEL=0 asks for the test kernel.
export BENCH_KERNEL=${BENCH_KERNEL:-1}
. "$(dirname "$0")/lib.sh"

run_s=${1:-5}
rounds=${2:-5}
machine=${3:-vtd-strict}
tsv=$OUT/bench-fio.tsv
[ "$machine" = vtd-strict ] || tsv=$OUT/bench-fio-$machine.tsv
# make bench has built the kernel and the initramfs for bench.sh just before.
if [ -z "${RFL_PREPARED:-}" ]; then
	bash "$REPO/harness/prepare.sh"
	bash "$REPO/harness/initramfs.sh"
fi
logfile=$OUT/bench-fio.log
second_disk=$OUT/nvme-disk-2.img
rm -f "$second_disk"
truncate -s "$NVME_DISK_BYTES" "$second_disk"
read -r viommu args <<<"$(matrix_config "$machine")"
# DMA-API debugging, which only the test kernel (BENCH_KERNEL=0) has: off.
args+=" dma_debug=off"
[ -z "${BENCH_FIO_DRIVER:-}" ] || args+=" RFL_BENCH_FIO_DRIVER=$BENCH_FIO_DRIVER"
log "Booting $machine ($viommu vIOMMU, $args) with two NVMe controllers"
second_nvme="-drive file=$second_disk,if=none,id=nvme1,format=raw"
second_nvme+=" -device nvme,serial=rfl-dma-1,drive=nvme1,mdts=10"
# 12 fio runs per round, each with a few seconds of start and stop.
# shellcheck disable=SC2086 # kernel arguments are split on purpose
BOOT_QEMU_ARGS=$second_nvme BOOT_TIMEOUT=$((300 + 12 * (run_s + 5) * rounds)) \
	bash "$REPO/harness/boot.sh" "$logfile" "$viommu" $args \
	RFL_BENCH_FIO="$run_s" RFL_BENCH_FIO_ROUNDS="$rounds" || true
rm -f "$second_disk"
grep -q '^RFL-BENCH-FIO-END' "$logfile" || die "the fio benchmark did not finish; see $logfile"
if bad=$(grep -a -m 3 -E "$BAD_LOG" "$logfile"); then
	warn "the kernel log has: $(tr '\n' ' ' <<<"$bad")(see $logfile)"
fi

sed -n '/^RFL-BENCH-FIO-BEGIN/,/^RFL-BENCH-FIO-END/p' "$logfile" |
	python3 "$REPO/harness/bench_fio_report.py" "$tsv" "$machine"
