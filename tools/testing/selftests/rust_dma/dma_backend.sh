#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Checks that the DMA test devices sit behind the DMA backend the test
# machine was started with, so that the DMA tests of this directory run
# against the backend they claim to test. The expected backend comes from
# the environment:
#   RUST_DMA_IOMMU   dmar, virtio or none: the IOMMU translating the devices
#   RUST_DMA_DOMAIN  DMA, DMA-FQ or identity: the default domain type of the
#                    devices' IOMMU groups (unset when RUST_DMA_IOMMU=none)
#   RUST_DMA_SWIOTLB force when streaming DMA must bounce through swiotlb,
#                    soft when a swiotlb pool must exist without that
#                    (iommu=soft), for the devices an IOMMU does not trust
# The test devices are QEMU's edu device (1234:11e8), which must be
# present, and NVMe controllers.

DIR=$(dirname "$(readlink -f "$0")")
. "$DIR/../kselftest/ktap_helpers.sh"

test_devices() {
	for dev in /sys/bus/pci/devices/*; do
		case "$(cat "$dev/vendor"):$(cat "$dev/device"):$(cat "$dev/class")" in
		0x1234:0x11e8:*|*:0x010802)
			echo "$dev"
			;;
		esac
	done
}

# The device's IOMMU is the expected kind: a VT-d unit, a PCI function
# whose virtio device is bound to virtio_iommu, or none at all.
device_iommu_is() {
	iommu=$(basename "$(readlink "$1/iommu")" 2>/dev/null)
	case "$2" in
	dmar)
		case "$iommu" in dmar*) return 0 ;; esac
		;;
	virtio)
		for vdev in "/sys/bus/pci/devices/$iommu"/virtio*; do
			[ "$(basename "$(readlink "$vdev/driver")")" = virtio_iommu ] && return 0
		done
		;;
	none)
		[ ! -e "$1/iommu" ] && return 0
		;;
	esac
	ktap_print_msg "$(basename "$1"): IOMMU '$iommu', expected $2"
	return 1
}

group_type_is() {
	if [ "$2" = none ]; then
		[ ! -e "$1/iommu_group" ]
		return
	fi
	got=$(cat "$1/iommu_group/type" 2>/dev/null)
	[ "$got" = "$2" ] && return 0
	ktap_print_msg "$(basename "$1"): group type '$got', expected '$2'"
	return 1
}

# With less than 4 GiB of RAM and no memory encryption, x86 sets up the
# swiotlb pool only when swiotlb=force or iommu=soft asks for it.
swiotlb_pool_is() {
	nslabs=$(cat /sys/kernel/debug/swiotlb/io_tlb_nslabs 2>/dev/null || echo 0)
	if [ "$1" != none ]; then
		[ "$nslabs" -gt 0 ] && return 0
	else
		[ "$nslabs" -eq 0 ] && return 0
	fi
	ktap_print_msg "swiotlb pool of $nslabs slabs with swiotlb=$1"
	return 1
}

ktap_print_header

if [ -z "${RUST_DMA_IOMMU:-}" ]; then
	ktap_skip_all "RUST_DMA_IOMMU is not set"
	exit "$KSFT_SKIP"
fi
devices=$(test_devices)
echo "$devices" | grep -q . || ktap_exit_fail_msg "no test device found"
for dev in $devices; do
	[ "$(cat "$dev/vendor"):$(cat "$dev/device")" = 0x1234:0x11e8 ] && edu=$dev
done
[ -n "${edu:-}" ] || ktap_exit_fail_msg "no edu device (1234:11e8) found"

ktap_set_plan $((2 * $(echo "$devices" | wc -l) + 1))
for dev in $devices; do
	bdf=$(basename "$dev")
	ktap_test_result "iommu_${RUST_DMA_IOMMU}_$bdf" device_iommu_is "$dev" "$RUST_DMA_IOMMU"
	ktap_test_result "group_type_${RUST_DMA_DOMAIN:-none}_$bdf" \
		group_type_is "$dev" "${RUST_DMA_DOMAIN:-none}"
done
swiotlb=${RUST_DMA_SWIOTLB:-none}
ktap_test_result "swiotlb_pool_$swiotlb" swiotlb_pool_is "$swiotlb"

ktap_finished
