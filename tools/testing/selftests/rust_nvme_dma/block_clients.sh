#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs real block-device clients on namespace 1 of an NVMe controller bound
# to the Rust NVMe driver (samples/rust/rust_nvme_dma.rs): mkfs.ext4, a tree
# of files written, fsck.ext4 and the files read back; fio with verification
# (random and sequential, 4 KiB to 1 MiB, direct and buffered, queue depth
# 32, four jobs); dd with O_DIRECT at lengths the block layer must take or
# refuse; the driver's statistics; unbind, rebind and module unload while
# fio runs. It binds the first NVMe controller (PCI class 010802) to the
# driver through driver_override and destroys the data on its disk.
#
# Needs mkfs.ext4 and fsck.ext4 (e2fsprogs), fio and GNU dd (coreutils).
# Environment:
#   NVME_BLK_DRIVER     the driver under test: rust_nvme_dma (default), or
#                       nvme, the C driver, to check this test itself
#   RUST_NVME_DMA_PATH  iova, direct or bounce: the DMA path the Rust
#                       driver's statistics must show the requests took

DIR=$(dirname "$(readlink -f "$0")")
. "$DIR/../kselftest/ktap_helpers.sh"
. "$DIR/nvme_dma_lib.sh"

DRIVER=${NVME_BLK_DRIVER:-rust_nvme_dma}
case $DRIVER in
rust_nvme_dma) DISK=rnvme0n1 ;;
nvme) DISK=nvme0n1 ;;
*) ktap_exit_fail_msg "NVME_BLK_DRIVER=$DRIVER: rust_nvme_dma or nvme" ;;
esac
DEV=/dev/$DISK
STATS=/sys/kernel/debug/rust_nvme_dma/rnvme0/stats
WORK=$(mktemp -d)
MNT=$WORK/mnt
# fio runs in the background are killed after this many seconds: a fio
# still running then hangs on the device.
FIO_KILL_AFTER=90

cleanup() {
	grep -q " $MNT " /proc/mounts && umount "$MNT"
	rm -rf "$WORK"
}
trap cleanup EXIT

# Runs a command, its output kept in the file $WORK/$1 and shown as
# diagnostics when it fails. Usage: logged LOG COMMAND...
logged() {
	log=$WORK/$1
	shift
	"$@" > "$log" 2>&1 && return 0
	ktap_print_msg "$* failed with status $?:"
	tail -n 20 "$log" | sed 's/^/#   /'
	return 1
}

bound_driver() {
	basename "$(readlink "$PCI/driver")" 2>/dev/null
}

# Reads and writes completed on the disk, from /sys/block.
disk_ios() {
	awk '{ print $1 + $5 }' "/sys/block/$DISK/stat" 2>/dev/null || echo 0
}

# Files of many sizes, odd ones included, in nested directories.
make_tree() {
	i=0
	for size in 0 1 511 512 513 4095 4096 4097 12288 65543 131072 1048575 \
		1048576 3145739; do
		mkdir -p "$1/big/$((i % 3))"
		head -c "$size" /dev/urandom > "$1/big/$((i % 3))/file-$size"
		i=$((i + 1))
	done
	for i in $(seq 0 63); do
		mkdir -p "$1/small/$((i % 8))/$((i % 5))"
		head -c $(((i * i * 977 + i * 131) % 70001)) /dev/urandom \
			> "$1/small/$((i % 8))/$((i % 5))/file-$i"
	done
}

case_mkfs_ext4() {
	logged mkfs.log mkfs.ext4 -F -q "$DEV"
}

case_ext4_write_tree() {
	mkdir -p "$MNT" "$WORK/tree" &&
		make_tree "$WORK/tree" &&
		(cd "$WORK/tree" && find . -type f | sort | xargs sha256sum) \
			> "$WORK/tree.sha256" &&
		logged mount.log mount -t ext4 "$DEV" "$MNT" &&
		cp -a "$WORK/tree/." "$MNT/" &&
		sync &&
		logged umount.log umount "$MNT" &&
		ktap_print_msg "$(wc -l < "$WORK/tree.sha256") files of $(du -sk "$WORK/tree" |
			cut -f1) KiB written"
}

case_fsck_ext4_clean() {
	logged fsck.log fsck.ext4 -fn "$DEV"
}

# The files read back from the device: the page cache is dropped first.
case_ext4_read_tree() {
	echo 3 > /proc/sys/vm/drop_caches &&
		logged mount.log mount -t ext4 "$DEV" "$MNT" || return
	(cd "$MNT" && logged sha256 sha256sum -c "$WORK/tree.sha256")
	rc=$?
	count=$(cd "$MNT" && find . -type f | wc -l)
	logged umount.log umount "$MNT" || rc=1
	[ "$count" -eq "$(wc -l < "$WORK/tree.sha256")" ] && return $rc
	ktap_print_msg "$count files on the file system, $(wc -l < "$WORK/tree.sha256") written"
	return 1
}

# Four jobs, each writing and then verifying its own 8 MiB of the disk
# (the verify phase flushes and invalidates the page cache, so buffered
# data is read back from the device too). Usage: fio_verified NAME OPTION...
fio_verified() {
	name=$1
	shift
	logged "$name" fio --name="$name" --filename="$DEV" --numjobs=4 --size=8M \
		--offset_increment=8M --iodepth=32 \
		--bssplit=4k/40:16k/20:64k/20:256k/10:1m/10 \
		--verify=crc32c --do_verify=1 --verify_fatal=1 "$@"
}

case_fio_verify_direct_random() {
	fio_verified direct-random --ioengine=libaio --direct=1 --rw=randwrite
}

case_fio_verify_direct_sequential() {
	fio_verified direct-sequential --ioengine=libaio --direct=1 --rw=write
}

case_fio_verify_buffered_random() {
	fio_verified buffered-random --ioengine=io_uring --direct=0 --rw=randwrite
}

case_fio_verify_buffered_sequential() {
	fio_verified buffered-sequential --ioengine=io_uring --direct=0 --rw=write
}

# O_DIRECT needs lengths and offsets in logical blocks (512 B here), not
# pages: written at one length, read back at another, compared. Usage:
# dd_round_trip OFFSET LENGTH WRITE_BS READ_BS
dd_round_trip() {
	head -c "$2" "$WORK/random" > "$WORK/dd.in" &&
		logged dd-write.log "$DD" if="$WORK/dd.in" of="$DEV" bs="$3" \
			oflag=direct,seek_bytes seek="$1" &&
		logged dd-read.log "$DD" if="$DEV" of="$WORK/dd.out" bs="$4" \
			iflag=direct,skip_bytes,count_bytes skip="$1" count="$2" &&
		logged cmp.log cmp "$WORK/dd.in" "$WORK/dd.out"
}

case_dd_direct_block_multiple() {
	head -c $((3 << 20)) /dev/urandom > "$WORK/random" &&
		dd_round_trip 17920 1039360 2560 3584 &&
		dd_round_trip $(((4 << 20) + 512)) 2098176 1049088 1536
}

# Lengths that are not a multiple of the logical block size fail with
# EINVAL, and nothing reaches the disk.
case_dd_direct_unaligned_length() {
	"$DD" if="$DEV" of="$WORK/before" bs=4096 count=1 2>/dev/null || return
	if "$DD" if="$WORK/random" of="$DEV" bs=1000 count=1 oflag=direct 2> "$WORK/dd.err"; then
		ktap_print_msg "a 1000-byte O_DIRECT write succeeded"
		return 1
	fi
	grep -q 'Invalid argument' "$WORK/dd.err" ||
		{ ktap_print_msg "write: $(cat "$WORK/dd.err")"; return 1; }
	if "$DD" if="$DEV" of=/dev/null bs=1000 count=1 iflag=direct 2> "$WORK/dd.err"; then
		ktap_print_msg "a 1000-byte O_DIRECT read succeeded"
		return 1
	fi
	grep -q 'Invalid argument' "$WORK/dd.err" ||
		{ ktap_print_msg "read: $(cat "$WORK/dd.err")"; return 1; }
	echo 1 > /proc/sys/vm/drop_caches
	"$DD" if="$DEV" of="$WORK/after" bs=4096 count=1 iflag=direct 2>/dev/null &&
		logged cmp-unchanged.log cmp "$WORK/before" "$WORK/after"
}

# The statistics since the disk appeared, against STATS_BEFORE: requests
# and bytes grew, mappings grew on the expected DMA path only, no request
# failed. QEMU's controller has shadow doorbells (Doorbell Buffer Config):
# with fio's queue depths, some doorbell register writes were not needed.
case_statistics() {
	before=$WORK/stats.before
	after=$WORK/stats.after
	[ -s "$before" ] && cat "$STATS" > "$after" || return
	sed '/^$/d; s/^/#   /' "$after"
	rc=0
	for name in requests read_bytes write_bytes "mappings_$RUST_NVME_DMA_PATH" \
		doorbell_writes_skipped; do
		if [ "$(stat_value "$after" "$name")" -le "$(stat_value "$before" "$name")" ]; then
			ktap_print_msg "$name did not grow"
			rc=1
		fi
	done
	for path in iova iommu direct bounce; do
		[ "$path" != "$RUST_NVME_DMA_PATH" ] || continue
		if [ "$(stat_value "$after" "mappings_$path")" -ne \
			"$(stat_value "$before" "mappings_$path")" ]; then
			expected=mappings_$RUST_NVME_DMA_PATH
			ktap_print_msg "mappings_$path grew, expected only $expected"
			rc=1
		fi
	done
	if [ "$(stat_value "$after" failed_requests)" -ne \
		"$(stat_value "$before" failed_requests)" ]; then
		ktap_print_msg "failed_requests grew"
		rc=1
	fi
	return $rc
}

# fio without verification in the background, in one process (--thread)
# so that the kill after FIO_KILL_AFTER seconds stops every job; it would
# end successfully after 60 s. Waits until its I/O flows.
start_fio() {
	ios=$(disk_ios)
	timeout -s KILL $FIO_KILL_AFTER fio --name=background --filename="$DEV" \
		--thread --numjobs=4 --size=8M --offset_increment=8M --ioengine=libaio \
		--direct=1 --rw=randrw --bs=64k --iodepth=32 --time_based --runtime=60 \
		> "$WORK/background.log" 2>&1 &
	FIO_PID=$!
	wait_for 30 "[ \$(disk_ios) -gt $((ios + 64)) ]" ||
		ktap_print_msg "no I/O flowing 30 s after fio started"
}

# fio ended with an error, neither successfully (the device went away
# unnoticed) nor killed (it hung).
fio_failed() {
	wait "$FIO_PID"
	rc=$?
	case $rc in
	0) ktap_print_msg "fio succeeded on a device that went away" ;;
	137) ktap_print_msg "fio hung: killed after $FIO_KILL_AFTER s" ;;
	*)
		ktap_print_msg "fio failed with status $rc: $(grep -m 1 -i error \
			"$WORK/background.log")"
		return 0
		;;
	esac
	return 1
}

disk_gone() {
	wait_for 10 "[ ! -b $DEV ]" && return
	ktap_print_msg "$DEV still there 10 s after the controller went away"
	return 1
}

case_unbind_during_fio() {
	start_fio
	unbound=true
	echo "$BDF" > "/sys/bus/pci/drivers/$DRIVER/unbind" || unbound=false
	fio_failed && disk_gone && $unbound
}

case_rebind_verify() {
	echo "$BDF" > "/sys/bus/pci/drivers/$DRIVER/bind" &&
		wait_for 10 "[ -b $DEV ]" &&
		fio_verified rebound --ioengine=libaio --direct=1 --rw=randwrite --size=2M
}

# An open disk holds a reference to its driver's module, as with the C
# driver: rmmod while fio runs is refused and fio goes on; the unbind then
# makes fio fail, and rmmod removes the module and its disk.
case_rmmod_during_fio() {
	start_fio
	refused=true
	if rmmod "$DRIVER" 2> "$WORK/rmmod.err"; then
		ktap_print_msg "rmmod removed $DRIVER while fio held its disk open"
		refused=false
	else
		ktap_print_msg "rmmod with the disk open: $(cat "$WORK/rmmod.err")"
		kill -0 "$FIO_PID" 2> /dev/null ||
			{ ktap_print_msg "fio ended at the refused rmmod"; refused=false; }
	fi
	unbound=true
	[ ! -e "$PCI/driver" ] || echo "$BDF" > "/sys/bus/pci/drivers/$DRIVER/unbind" ||
		unbound=false
	fio_failed && $refused && $unbound || return 1
	logged rmmod.log rmmod "$DRIVER" && disk_gone || return
	[ ! -d "/sys/module/$DRIVER" ] && return
	ktap_print_msg "module $DRIVER still loaded after rmmod"
	return 1
}

case_reload_verify() {
	bind_controller "$BDF" &&
		fio_verified reloaded --ioengine=libaio --direct=1 --rw=randwrite --size=2M
}

ktap_print_header
BDF=$(first_nvme_controller)
[ -n "$BDF" ] || ktap_exit_fail_msg "no NVMe controller (PCI class 010802)"
PCI=/sys/bus/pci/devices/$BDF
for program in mkfs.ext4 fsck.ext4 fio; do
	command -v $program > /dev/null || ktap_exit_fail_msg "$program not found"
done
DD=$(gnu_dd)
[ -n "$DD" ] || ktap_exit_fail_msg "no GNU dd (coreutils) in PATH"
bind_controller "$BDF" || ktap_exit_fail_msg "cannot bind $BDF to $DRIVER"
ktap_print_msg "$DEV: $BDF bound to $DRIVER, $(cat "/sys/block/$DISK/size") sectors," \
	"logical block $(cat "/sys/block/$DISK/queue/logical_block_size") B"
[ "$DRIVER" = nvme ] || cat "$STATS" > "$WORK/stats.before" ||
	ktap_print_msg "no statistics file $STATS"

ktap_set_plan 15
for name in mkfs_ext4 ext4_write_tree fsck_ext4_clean ext4_read_tree \
	fio_verify_direct_random fio_verify_direct_sequential \
	fio_verify_buffered_random fio_verify_buffered_sequential \
	dd_direct_block_multiple dd_direct_unaligned_length; do
	ktap_test_result "$name" "case_$name"
done
if [ "$DRIVER" = nvme ]; then
	ktap_print_msg "the C driver has no statistics"
	ktap_test_skip statistics
elif [ -z "${RUST_NVME_DMA_PATH:-}" ]; then
	ktap_print_msg "RUST_NVME_DMA_PATH (iova, direct or bounce) is not set"
	ktap_test_skip statistics
else
	ktap_test_result statistics case_statistics
fi
for name in unbind_during_fio rebind_verify rmmod_during_fio reload_verify; do
	ktap_test_result "$name" "case_$name"
done
ktap_finished
