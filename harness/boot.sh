#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Boots the test guest once with the initramfs of initramfs.sh, behind a
# vIOMMU, with the DMA test devices and an NVMe disk, zeroed before each
# boot (NVME_DISK, NVME_DISK_BYTES). The console goes to LOG, always created,
# with Unix line ends; BOOT_QEMU_ARGS adds devices, NVME_DEVICE_OPTS
# properties of the NVMe controller (",bus=...,id=..."). A guest that does not
# power off within BOOT_TIMEOUT seconds is killed and the boot fails with
# its status.
# Usage: boot.sh LOG VIOMMU [KERNEL_ARG...]
. "$(dirname "$0")/lib.sh"

logfile=$1
viommu=$2
shift 2
rm -f "$NVME_DISK"
truncate -s "$NVME_DISK_BYTES" "$NVME_DISK"

# slab_nomerge: rust_nvme_dma/alloc_faults picks the slab caches whose
# allocations fail, which failslab allows only for caches nothing was merged
# into.
cmdline="slab_nomerge RUST_NVME_DMA_DISK_BYTES=$NVME_DISK_BYTES $*"

rc=0
# shellcheck disable=SC2046 # the argument lists are split on purpose
run_qemu_env timeout --kill-after=10 "${BOOT_TIMEOUT:-300}" qemu-system-x86_64 \
	$(viommu_qemu_args "$viommu") -m 2048 -smp 2 -accel kvm -accel tcg \
	-bios qboot.rom -display none -monitor none -no-reboot -serial "file:$logfile" \
	-kernel "$OBJ/arch/x86/boot/bzImage" -initrd "$INITRAMFS.cpio" \
	-append "console=ttyS0 panic=-1 kunit.enable=0 $(viommu_kernel_args "$viommu") $cmdline" \
	$TEST_DEVICE_ARGS ${BOOT_QEMU_ARGS:-} \
	-drive "file=$NVME_DISK,if=none,id=nvme0,format=raw" \
	-device "nvme,serial=rfl-dma-0,drive=nvme0,mdts=10${NVME_DEVICE_OPTS:-}" \
	</dev/null || rc=$?

touch "$logfile"
tr -d '\r' < "$logfile" > "$logfile.txt"
mv "$logfile.txt" "$logfile"
exit $rc
