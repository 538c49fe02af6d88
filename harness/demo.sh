#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make demo: builds everything, boots the guest behind a vIOMMU with an
# NVMe disk, binds the Rust NVMe block driver, moves a few MiB with O_DIRECT,
# creates, checks and reads back an ext4 file system, runs a short fio job,
# and prints a short report with the driver's statistics and DMA path.
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

The Rust NVMe block driver (samples/rust/rust_nvme_dma.rs), /dev/rnvme0n1 with O_DIRECT:
$(sed -n '/^RFL-NVME-DEMO-BEGIN/,/^RFL-NVME-DEMO-END/p' "$logfile" | sed '1d;$d;s/^/  /')

Real programs on the same disk (mkfs.ext4, fsck.ext4, fio from Debian):
$(sed -n '/^RFL-FS-DEMO-BEGIN/,/^RFL-FS-DEMO-END/p' "$logfile" | sed '1d;$d;s/^/  /')
Console log: $logfile
REPORT
grep -q "^RFL-NVME-DEMO-END rc=0" "$logfile" || die "the NVMe demo failed; see $logfile"
grep -q "^RFL-FS-DEMO-END rc=0" "$logfile" || die "the file system demo failed; see $logfile"
