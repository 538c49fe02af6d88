#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make demo: builds everything, boots the guest behind a vIOMMU with an
# NVMe disk, loads the Rust NVMe sample, writes a few MiB from a user buffer
# and reads them back into another, and prints a short report.
# Usage: demo.sh [CONFIG], a name from harness/matrix (default: vtd-strict)
. "$(dirname "$0")/lib.sh"

mode=${1:-vtd-strict}
matrix_config "$mode" >/dev/null
read -r viommu args <<<"$(matrix_config "$mode")"

bash "$REPO/harness/prepare.sh"
bash "$REPO/harness/initramfs.sh"
logfile=$OUT/demo-$mode.log
log "Booting q35 + $viommu vIOMMU + NVMe disk ($args)"
# shellcheck disable=SC2086 # kernel arguments are split on purpose
bash "$REPO/harness/boot.sh" "$logfile" "$viommu" $args RFL_DEMO=1 || true

grep -q '^RFL-GUEST-DONE' "$logfile" || die "the guest did not finish; see $logfile"
cat <<REPORT

==================== Rust DMA series demo ($mode) ====================
Kernel:  $(grep -m 1 -o 'Linux version [^ ]*' "$logfile"), base $(cat "$PRISTINE/.rfl-base-version") + $(git -C "$SRC" rev-list --count refs/tags/base..HEAD) series patches:
$(git -C "$SRC" log --reverse --format='           %s' refs/tags/base..HEAD)
Machine: $(viommu_qemu_args "$viommu") $TEST_DEVICE_ARGS, NVMe disk of $((NVME_DISK_BYTES >> 20)) MiB with MDTS 10
IOMMU:
$(grep -E 'DMAR: (IOMMU enabled|Intel\(R\) Virtualization)|iommu: Default domain type|virtio_iommu|software IO TLB: mapped' "$logfile" | sed -E 's/^(\[[ 0-9.]*\] )?/  /')
PCI devices (bdf vendor:device class, IOMMU group and its domain type):
$(sed -n '/^RFL-DEMO-BEGIN/,/^RFL-DEMO-END/p' "$logfile" | sed '1d;$d;s/^/  /')

The Rust NVMe sample (samples/rust/rust_nvme_dma.rs), driven from user space:
$(sed -n '/^RFL-NVME-DEMO-BEGIN/,/^RFL-NVME-DEMO-END/p' "$logfile" | sed '1d;$d;s/^/  /')
Console log: $logfile
REPORT
grep -q "^RFL-NVME-DEMO-END rc=0" "$logfile" || die "the NVMe demo failed; see $logfile"
