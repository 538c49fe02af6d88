#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Checks that the DMA test devices sit behind the DMA backend the test
# machine was started with, so that the DMA tests of this directory run
# against the backend they claim to test. The expected backend comes from
# the environment:
#   RUST_DMA_IOMMU   dmar, virtio or none: the IOMMU driver translating DMA
#   RUST_DMA_DOMAIN  DMA, DMA-FQ or identity: the default domain type of the
#                    test devices' IOMMU groups (unset when RUST_DMA_IOMMU=none)
#   RUST_DMA_SWIOTLB force when all streaming DMA must bounce through swiotlb
# The test devices are QEMU's edu device (1234:11e8) and NVMe controllers.

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

iommu_driver_is() {
	case "$1" in
	dmar)
		ls /sys/class/iommu | grep -q '^dmar'
		;;
	virtio)
		ls /sys/bus/virtio/drivers/virtio_iommu 2>/dev/null | grep -q '^virtio' &&
			[ -n "$(ls /sys/class/iommu)" ]
		;;
	none)
		[ -z "$(ls /sys/class/iommu)" ]
		;;
	*)
		false
		;;
	esac
}

group_type_is() {
	dev=$1
	want=$2
	if [ "$want" = none ]; then
		[ ! -e "$dev/iommu_group" ]
	else
		got=$(cat "$dev/iommu_group/type" 2>/dev/null)
		[ "$got" = "$want" ] && return 0
		ktap_print_msg "$(basename "$dev"): group type '$got', expected '$want'"
		return 1
	fi
}

swiotlb_pool_present() {
	nslabs=$(cat /sys/kernel/debug/swiotlb/io_tlb_nslabs 2>/dev/null || echo 0)
	[ "$nslabs" -gt 0 ]
}

ktap_print_header

if [ -z "${RUST_DMA_IOMMU:-}" ]; then
	ktap_skip_all "RUST_DMA_IOMMU is not set"
	exit "$KSFT_SKIP"
fi
devices=$(test_devices)
if [ -z "$devices" ]; then
	ktap_exit_fail_msg "no test device (edu or NVMe) found"
fi

plan=$((1 + $(echo "$devices" | wc -l)))
[ "${RUST_DMA_SWIOTLB:-}" = force ] && plan=$((plan + 1))
ktap_set_plan "$plan"

ktap_test_result "iommu_driver_$RUST_DMA_IOMMU" iommu_driver_is "$RUST_DMA_IOMMU"
for dev in $devices; do
	ktap_test_result "group_type_${RUST_DMA_DOMAIN:-none}_$(basename "$dev")" \
		group_type_is "$dev" "${RUST_DMA_DOMAIN:-none}"
done
if [ "${RUST_DMA_SWIOTLB:-}" = force ]; then
	ktap_test_result "swiotlb_pool_present" swiotlb_pool_present
fi

ktap_finished
