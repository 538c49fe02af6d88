#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Hot-unplug of an NVMe controller driven by the Rust NVMe driver
# (samples/rust/rust_nvme_dma.rs) while an ext4 writer and fio's direct
# I/O run on its disk, and hot-plug of a new one, in rounds. The host takes the
# controller away and brings a new one (harness/hotplug.sh: QEMU's
# device_del and device_add on a PCIe root port) when this script prints
#   RFL-HOTPLUG-UNPLUG <round>   the controller may go now
#   RFL-HOTPLUG-PLUG <round>     a new controller may come now
# QEMU's device_del presses the slot's attention button: pciehp blinks the
# power indicator and removes the device 5 s later, in order, the device
# still there, while the writers' requests are in flight. Each round checks
# that the disk goes away, that the writers end with errors instead of
# hanging, that the driver binds the new controller and that data written
# to the new disk reads back. Not run as a kselftest of its own: it needs
# the host's side (RFL_HOTPLUG in harness/guest-init).
#
# Needs mkfs.ext4 (e2fsprogs), fio and GNU dd (coreutils).
# Environment: RFL_HOTPLUG_ROUNDS, the number of rounds (default 2).

DIR=$(dirname "$(readlink -f "$0")")
. "$DIR/../kselftest/ktap_helpers.sh"
. "$DIR/nvme_dma_lib.sh"

DRIVER=rust_nvme_dma
ROUNDS=${RFL_HOTPLUG_ROUNDS:-2}
WORK=$(mktemp -d)
MNT=$WORK/mnt
# The file system takes the first FS_MIB MiB of the disk, direct I/O the
# DIRECT_MIB MiB after it.
FS_MIB=24
DIRECT_MIB=16
# Seconds the controller may take to go away (pciehp waits 5 s after the
# attention button) or to come back, and the writers to end.
GONE_WITHIN=60
HERE_WITHIN=60
WRITERS_END_WITHIN=60

cleanup() {
	for pid in $WRITER_PIDS; do
		kill -KILL "$pid" 2>/dev/null
	done
	grep -q " $MNT " /proc/mounts && umount -l "$MNT"
	rm -rf "$WORK"
}
trap cleanup EXIT

# The NVMe controllers (PCI class 010802) bound to the driver.
bound_controllers() {
	for pci in "/sys/bus/pci/drivers/$DRIVER"/????:??:??.?; do
		[ -e "$pci" ] && basename "$pci"
	done
}

# The driver's disk of controller $1 (the only one below it in sysfs).
disk_of() {
	for disk in /sys/block/rnvme*; do
		case $(readlink -f "$disk") in
		*"/$1/"*) basename "$disk" && return ;;
		esac
	done
	return 1
}

# A controller bound to the driver with its disk; sets BDF and DEV.
disk_ready() {
	BDF=$(bound_controllers | head -n 1)
	[ -n "$BDF" ] && DEV=/dev/$(disk_of "$BDF") && [ -b "$DEV" ]
}

find_disk() {
	wait_for "$HERE_WITHIN" disk_ready
}

disk_ios() {
	awk '{ print $1 + $5 }' "/sys/block/${DEV#/dev/}/stat" 2>/dev/null || echo 0
}

# The writers: one writing files on ext4 and syncing, in a loop that ends
# at its first error, and fio writing the disk after the file system with
# O_DIRECT in two jobs.
start_writers() {
	WRITER_PIDS=
	(
		i=0
		while head -c $((256 << 10)) /dev/urandom > "$MNT/file-$((i % 32))" && sync; do
			i=$((i + 1))
		done
		echo "ext4 writer: $i files, then an error"
	) > "$WORK/writer-ext4.log" 2>&1 &
	WRITER_PIDS=$!
	# fio ends at its first I/O error, or after an hour.
	fio --thread --name=direct --filename="$DEV" --numjobs=2 --offset="${FS_MIB}M" \
		--size=$((DIRECT_MIB / 2))M --offset_increment=$((DIRECT_MIB / 2))M \
		--ioengine=libaio --direct=1 --rw=randwrite --bs=64k --iodepth=16 \
		--time_based --runtime=3600 > "$WORK/writer-fio.log" 2>&1 &
	WRITER_PIDS="$WRITER_PIDS $!"
}

# Every writer ended (with an error: they run until one).
writers_ended() {
	for pid in $WRITER_PIDS; do
		kill -0 "$pid" 2>/dev/null && return 1
	done
	return 0
}

case_setup() {
	find_disk || { ktap_print_msg "no disk of $DRIVER"; return 1; }
	ktap_print_msg "round $ROUND: $DEV of $BDF"
	mkfs.ext4 -F -q "$DEV" "${FS_MIB}M" > "$WORK/mkfs.log" 2>&1 &&
		mkdir -p "$MNT" && mount -t ext4 "$DEV" "$MNT" || return
	ios=$(disk_ios)
	start_writers
	wait_for 30 "[ \$(disk_ios) -gt $((ios + 64)) ]" && return
	ktap_print_msg "no I/O flowing 30 s after the writers started"
	return 1
}

case_disk_gone() {
	echo "RFL-HOTPLUG-UNPLUG $ROUND"
	wait_for "$GONE_WITHIN" "[ ! -e /sys/bus/pci/devices/$BDF ] && [ ! -b $DEV ]" && return
	ktap_print_msg "$BDF or $DEV still there $GONE_WITHIN s after the unplug request"
	return 1
}

case_writers_failed() {
	if ! wait_for "$WRITERS_END_WITHIN" writers_ended; then
		ktap_print_msg "writers still running $WRITERS_END_WITHIN s after the unplug"
		return 1
	fi
	ktap_print_msg "$(tail -n 1 "$WORK/writer-ext4.log")"
	error=$(grep -m 1 -o 'io_u error.*' "$WORK/writer-fio.log")
	if [ -z "$error" ]; then
		ktap_print_msg "fio ended without an I/O error:"
		tail -n 5 "$WORK/writer-fio.log" | sed 's/^/#   /'
		return 1
	fi
	ktap_print_msg "fio: $error"
	WRITER_PIDS=
	# The file system's device is gone: only a lazy unmount can work.
	umount -l "$MNT"
}

case_new_disk_works() {
	echo "RFL-HOTPLUG-PLUG $ROUND"
	if ! find_disk; then
		ktap_print_msg "no disk of $DRIVER $HERE_WITHIN s after the plug request;" \
			"bound: $(bound_controllers | tr '\n' ' ')"
		for disk in /sys/block/*; do
			ktap_print_msg "$disk -> $(readlink -f "$disk")"
		done
		return 1
	fi
	head -c $((4 << 20)) /dev/urandom > "$WORK/data"
	"$DD" if="$WORK/data" of="$DEV" bs=256k oflag=direct status=none &&
		"$DD" if="$DEV" of="$WORK/back" bs=256k count=16 iflag=direct status=none &&
		cmp "$WORK/data" "$WORK/back" && return
	ktap_print_msg "$DEV: the data written does not read back"
	return 1
}

ktap_print_header
DD=$(gnu_dd)
[ -n "$DD" ] || ktap_exit_fail_msg "no GNU dd (coreutils) in PATH"
command -v mkfs.ext4 > /dev/null || ktap_exit_fail_msg "mkfs.ext4 not found"
command -v fio > /dev/null || ktap_exit_fail_msg "fio not found"
for pci in /sys/bus/pci/devices/*; do
	[ "$(cat "$pci/class")" = 0x010802 ] && echo $DRIVER > "$pci/driver_override"
done
modprobe $DRIVER || ktap_exit_fail_msg "cannot load $DRIVER"

ktap_set_plan $((ROUNDS * 4))
for ROUND in $(seq "$ROUNDS"); do
	for name in setup disk_gone writers_failed new_disk_works; do
		ktap_test_result "round${ROUND}_$name" "case_$name"
	done
done
ktap_finished
