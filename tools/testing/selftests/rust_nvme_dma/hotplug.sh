#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Hot-unplug of an NVMe controller driven by the Rust NVMe driver
# (samples/rust/rust_nvme_dma.rs) while an ext4 writer and direct I/O run
# on its disk, and hot-plug of a new one, in rounds. The host takes the
# controller away and brings a new one (harness/hotplug.sh: QEMU's
# device_del and device_add on a PCIe root port) when this script prints
#   RFL-HOTPLUG-UNPLUG <round>   the controller may go now
#   RFL-HOTPLUG-PLUG <round>     a new controller may come now
# QEMU's device_del presses the slot's attention button: pciehp blinks the
# power indicator and removes the device 5 s later, in order, the device
# still there. Each of these rounds checks that the disk goes away, that
# the writers end with errors instead of hanging, that the driver binds the
# new controller and that data written to the new disk reads back. A last
# round makes the removal a surprise: once the indicator blinks, this
# script has QEMU unplug the controller at once, under its bound driver,
# and pciehp then finds the card gone (see pull_card); no controller comes
# back after it (pciehp does not take the next one in that slot). Not run
# as a kselftest of its own: it needs the host's side (RFL_HOTPLUG in
# harness/guest-init).
#
# Needs mkfs.ext4 (e2fsprogs) and GNU dd (coreutils).
# Environment: RFL_HOTPLUG_ROUNDS, the number of rounds with a new
# controller after the removal (default 2), before the surprise removal.

DIR=$(dirname "$(readlink -f "$0")")
. "$DIR/../kselftest/ktap_helpers.sh"

DRIVER=rust_nvme_dma
ROUNDS=${RFL_HOTPLUG_ROUNDS:-2}
WORK=$(mktemp -d)
MNT=$WORK/mnt
# The file system takes the first FS_MIB MiB of the disk, direct I/O the
# DIRECT_MIB MiB after it.
FS_MIB=24
DIRECT_MIB=16
# Seconds the controller may take to go away (pciehp waits 5 s after the
# attention button; after the surprise, the driver finds the controller
# lost once a request timed out (30 s), its Abort too (10 s) and the reset
# found it not ready (7.5 s)) or to come back, and the writers to end.
GONE_WITHIN=90
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

# Polls the shell condition $2 every 0.1 s for at most $1 seconds.
wait_for() {
	tries=$(($1 * 10))
	while ! eval "$2"; do
		tries=$((tries - 1))
		[ $tries -gt 0 ] || return 1
		sleep 0.1
	done
}

# GNU dd, for oflag=direct: busybox sh would run its own dd applet.
gnu_dd() {
	for dir in $(echo "$PATH" | tr : ' '); do
		"$dir/dd" --version 2>/dev/null | grep -q coreutils && echo "$dir/dd" && return
	done
}

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

# Offset of the Slot Control register of PCI device $1 (in its PCI Express
# capability).
slot_control_offset() {
	config=/sys/bus/pci/devices/$1/config
	cap=$(od -An -tu1 -j 52 -N 1 "$config" | tr -d ' ')
	while [ "${cap:-0}" -ne 0 ]; do
		# shellcheck disable=SC2046 # the capability's ID and next pointer
		set -- $(od -An -tu1 -j "$cap" -N 2 "$config")
		[ "$1" -eq 16 ] && echo $((cap + 24)) && return
		cap=$2
	done
	return 1
}

# Writes the bytes $3 (low) and $4 (high) to the register at offset $2 of the
# configuration space of PCI device $1, in one write: QEMU takes each write
# to Slot Control as one command.
write_register() {
	# shellcheck disable=SC2059 # the format is the bytes to write
	printf "\\$(printf %o "$3")\\$(printf %o "$4")" |
		dd of="/sys/bus/pci/devices/$1/config" bs=2 count=1 seek=$(($2 / 2)) \
			conv=notrunc 2>/dev/null
}

# Takes the card out of the slot below root port $1 without pciehp: once
# pciehp blinks the power indicator after the attention button, the slot's
# power is turned off, which makes QEMU unplug the card at once, with hotplug
# interrupts off; then on again as pciehp left it, with interrupts, so that
# pciehp finds a powered slot with no card in it, as after a surprise
# removal.
pull_card() {
	config=/sys/bus/pci/devices/$1/config
	offset=$(slot_control_offset "$1") || return
	# Power Indicator Control (bits 8-9): 01b on, 10b blinking, 11b off;
	# Power Controller Control (bit 10): 1 off; Hot-Plug Interrupt Enable
	# (bit 5).
	wait_for 10 "[ \$((\$(od -An -tu1 -j $((offset + 1)) -N 1 $config) & 3)) -eq 2 ]" ||
		{ ktap_print_msg "$1: pciehp did not blink the power indicator"; return 1; }
	# shellcheck disable=SC2046 # the register's two bytes
	set -- "$1" $(od -An -tu1 -j "$offset" -N 2 "$config")
	write_register "$1" "$offset" $(($2 & ~32)) $(($3 | 7)) &&
		write_register "$1" "$offset" "$2" "$3"
}

disk_ios() {
	awk '{ print $1 + $5 }' "/sys/block/${DEV#/dev/}/stat" 2>/dev/null || echo 0
}

# The writers: one writing files on ext4 and syncing, two writing the disk
# directly with O_DIRECT, each in a loop that ends at its first error.
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
	for job in 0 1; do
		(
			i=0
			while "$DD" if=/dev/urandom of="$DEV" bs=64k count=$((DIRECT_MIB * 8)) \
				seek=$(((FS_MIB + job * DIRECT_MIB / 2) * 16)) oflag=direct \
				conv=notrunc status=none; do
				i=$((i + 1))
			done
			echo "direct writer $job: $i passes, then an error"
		) > "$WORK/writer-direct-$job.log" 2>&1 &
		WRITER_PIDS="$WRITER_PIDS $!"
	done
}

# Every writer ended (with an error: they loop until one).
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
	port=$(basename "$(dirname "$(readlink -f "/sys/bus/pci/devices/$BDF")")")
	echo "RFL-HOTPLUG-UNPLUG $ROUND"
	if [ "$ROUND" -gt "$ROUNDS" ]; then
		ktap_print_msg "surprise removal: card pulled out of the slot of $port"
		pull_card "$port" || return
	fi
	wait_for "$GONE_WITHIN" "[ ! -e /sys/bus/pci/devices/$BDF ] && [ ! -b $DEV ]" && return
	ktap_print_msg "$BDF or $DEV still there $GONE_WITHIN s after the unplug request"
	return 1
}

case_writers_failed() {
	if ! wait_for "$WRITERS_END_WITHIN" writers_ended; then
		ktap_print_msg "writers still running $WRITERS_END_WITHIN s after the unplug"
		return 1
	fi
	for log in "$WORK"/writer-*.log; do
		ktap_print_msg "$(tail -n 1 "$log")"
	done
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
for pci in /sys/bus/pci/devices/*; do
	[ "$(cat "$pci/class")" = 0x010802 ] && echo $DRIVER > "$pci/driver_override"
done
modprobe $DRIVER || ktap_exit_fail_msg "cannot load $DRIVER"

ktap_set_plan $((ROUNDS * 4 + 3))
for ROUND in $(seq "$ROUNDS"); do
	for name in setup disk_gone writers_failed new_disk_works; do
		ktap_test_result "round${ROUND}_$name" "case_$name"
	done
done
ROUND=$((ROUNDS + 1))
for name in setup disk_gone writers_failed; do
	ktap_test_result "round${ROUND}_surprise_$name" "case_$name"
done
ktap_finished
