#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Forces request timeouts on the disk of the Rust NVMe driver
# (samples/rust/rust_nvme_dma.rs) while fio runs: fail_io_timeout drops the
# completions of some requests, as if their interrupts were lost, so the
# driver's timeout handler aborts the command and, as the abort finds nothing
# to abort, resets the controller, failing what was in flight. fio must end
# with I/O errors, not hang; the driver's statistics must count the timeouts,
# aborts and resets; with the injection off again, verified I/O must work.
# Then the controller dies under fio (its memory decoding turned off): the
# driver must declare it lost, turn its bus mastering off, fail what it had
# and every later request without mapping anything, and work again once
# unbound and bound.
# It binds the first NVMe controller (PCI class 010802) to the driver through
# driver_override and destroys the data on its disk.
#
# Needs fio, and a kernel with CONFIG_FAIL_IO_TIMEOUT and
# CONFIG_FAULT_INJECTION_DEBUG_FS.

DIR=$(dirname "$(readlink -f "$0")")
. "$DIR/../kselftest/ktap_helpers.sh"
. "$DIR/nvme_dma_lib.sh"

DRIVER=rust_nvme_dma
DISK=rnvme0n1
DEV=/dev/$DISK
STATS=/sys/kernel/debug/rust_nvme_dma/rnvme0/stats
FAULT=/sys/kernel/debug/fail_io_timeout
WORK=$(mktemp -d)
SAVED_IO_TIMEOUT=
# The block layer's default of 30 s per timeout would make each one too
# slow for a test; the timer has a granularity of one second anyway.
IO_TIMEOUT_MS=1000
# Completions dropped per fio run: one in FAULT_INTERVAL, FAULT_TIMES times.
FAULT_INTERVAL=40
FAULT_TIMES=2
FIO_ROUNDS=2
# A fio still running after this many seconds hangs on the device.
FIO_KILL_AFTER=60

cleanup() {
	[ -w "/sys/block/$DISK/io-timeout-fail" ] && echo 0 > "/sys/block/$DISK/io-timeout-fail"
	[ -d "$FAULT" ] && echo 0 > "$FAULT/probability"
	[ -n "$SAVED_IO_TIMEOUT" ] && echo "$SAVED_IO_TIMEOUT" > "/sys/block/$DISK/queue/io_timeout"
	# For the tests after this one, should it end with the controller lost.
	[ "$(stat_value "$STATS" losses)" = 0 ] || revive_controller
	rm -rf "$WORK"
}
trap cleanup EXIT

# The low byte of the Command register (offset 4) of the controller's
# configuration space.
command_register() {
	od -An -tu1 -j 4 -N 1 "/sys/bus/pci/devices/$BDF/config"
}

# Sets (1) or clears (0) the Memory Space Enable bit (bit 1) of the Command
# register. Cleared, the controller's registers no longer answer (QEMU reads
# them as zeroes, a real device as all ones) and its doorbells are never rung,
# as if it had died. Binding a driver does not set it again: the device stays
# enabled after an unbind.
set_memory_decoding() {
	config=/sys/bus/pci/devices/$BDF/config
	# shellcheck disable=SC2046 # the register's two bytes
	set -- "$1" $(od -An -tu1 -j 4 -N 2 "$config")
	low=$(($1 ? $2 | 2 : $2 & ~2))
	# shellcheck disable=SC2059 # the format is the bytes to write
	printf "\\$(printf %o "$low")\\$(printf %o "$3")" |
		dd of="$config" bs=2 count=1 seek=2 conv=notrunc 2>/dev/null
}

# The counters of the requests the driver sends, what it maps and writes
# for them, on one line.
mapping_counters() {
	counters=
	for name in requests mappings_iova mappings_iommu mappings_direct mappings_bounce \
		prp_list_pages sgl_segments; do
		counters="$counters $(stat_value "$STATS" "$name")" || return
	done
	echo "$counters"
}

# Unbinds the lost controller, turns its memory decoding on again as if it
# came back, and binds it again.
revive_controller() {
	echo "$BDF" > "/sys/bus/pci/drivers/$DRIVER/unbind" &&
		wait_for 10 "[ ! -b $DEV ]" &&
		set_memory_decoding 1 &&
		echo "$BDF" > /sys/bus/pci/drivers_probe &&
		wait_for 10 "[ -b $DEV ]"
}

# Succeeds if fio's status $1 in round $2 is an I/O error, not a success or
# a hang.
fio_failed_with_eio() {
	case $1 in
	0)
		ktap_print_msg "$2: fio succeeded"
		return 1
		;;
	137)
		ktap_print_msg "$2: fio hung, killed after $FIO_KILL_AFTER s"
		return 1
		;;
	esac
	error=$(grep -m 1 -o 'err=[^,]*, [^:]*: [^=]*' "$WORK/$2.log")
	ktap_print_msg "$2: fio failed with status $1 ($error)"
	case $error in
	*"Input/output error"*) ;;
	*) return 1 ;;
	esac
}

# Runs fio in the background for at most FIO_KILL_AFTER seconds; returns
# its status, or 137 if it had to be killed. fio runs its jobs as threads
# (--thread): a kill then stops every job, and they need no System V shared
# memory. A fio whose I/O never ends cannot even die: it is left behind,
# rather than hanging this test. Usage: bounded_fio LOG OPTION...
bounded_fio() {
	log=$1
	shift
	fio --thread "$@" > "$log" 2>&1 &
	pid=$!
	if ! wait_for $FIO_KILL_AFTER "! kill -0 $pid 2>/dev/null"; then
		kill -KILL $pid
		wait_for 5 "! kill -0 $pid 2>/dev/null" && wait $pid
		return 137
	fi
	wait $pid
}

# fio without verification: mixed random I/O at queue depth 16.
# Usage: run_fio NAME
run_fio() {
	bounded_fio "$WORK/$1.log" --name="$1" --filename="$DEV" \
		--numjobs=2 --size=8M --offset_increment=8M --ioengine=libaio --direct=1 \
		--rw=randrw --bs=16k --iodepth=16 --time_based --runtime=20
}

# Injection on: fio runs until requests time out, and must end with I/O
# errors (the reset fails the requests in flight) instead of hanging.
case_fio_errors_on_timeouts() {
	for name in timeouts aborts resets failed_requests; do
		stat_value "$STATS" "$name" > "$WORK/$name.before" || return
	done
	echo 100 > "$FAULT/probability" &&
		echo "$FAULT_INTERVAL" > "$FAULT/interval" &&
		echo 0 > "$FAULT/verbose" &&
		echo 1 > "/sys/block/$DISK/io-timeout-fail" || return
	rc=0
	for round in $(seq $FIO_ROUNDS); do
		echo "$FAULT_TIMES" > "$FAULT/times" || return
		run_fio "timeouts-$round"
		fio_failed_with_eio $? "timeouts-$round" || rc=1
	done
	echo 0 > "/sys/block/$DISK/io-timeout-fail" && echo 0 > "$FAULT/probability" || return
	return $rc
}

# Every forced timeout was counted, aborted, and ended in a reset (QEMU's
# controller does not abort I/O commands), whose cancelled requests count
# as failed.
case_timeouts_aborts_resets_counted() {
	rc=0
	for name in timeouts aborts resets failed_requests; do
		before=$(cat "$WORK/$name.before")
		after=$(stat_value "$STATS" "$name") || return
		ktap_print_msg "$name: $before -> $after"
		[ "$after" -gt "$before" ] || rc=1
	done
	return $rc
}

# Injection off: a verified write and read of 16 MiB with no error, no
# timeout and no reset.
case_verified_io_after_resets() {
	resets=$(stat_value "$STATS" resets) && timeouts=$(stat_value "$STATS" timeouts) &&
		failed=$(stat_value "$STATS" failed_requests) || return
	bounded_fio "$WORK/verify.log" --name=verify --filename="$DEV" \
		--numjobs=2 --size=8M --offset_increment=8M --ioengine=libaio --direct=1 \
		--rw=randwrite --bs=16k --iodepth=16 --verify=crc32c --do_verify=1 \
		--verify_fatal=1
	status=$?
	if [ $status -ne 0 ]; then
		ktap_print_msg "verified fio failed with status $status:"
		tail -n 10 "$WORK/verify.log" | sed 's/^/#   /'
		return 1
	fi
	[ "$(stat_value "$STATS" resets)" = "$resets" ] &&
		[ "$(stat_value "$STATS" timeouts)" = "$timeouts" ] &&
		[ "$(stat_value "$STATS" failed_requests)" = "$failed" ] && return
	ktap_print_msg "timeouts, resets or failures without injection:"
	sed 's/^/#   /' "$STATS"
	return 1
}

# Memory decoding off while fio runs: at the first timeout the driver finds
# the controller gone and declares it lost: bus mastering off, what was in
# flight failed, and fio ends with I/O errors.
case_lost_controller_fails_io() {
	losses=$(stat_value "$STATS" losses) || return
	(
		sleep 3
		set_memory_decoding 0
	) &
	decoding_off=$!
	run_fio lost
	status=$?
	wait $decoding_off
	fio_failed_with_eio $status lost || return
	after=$(stat_value "$STATS" losses) || return
	ktap_print_msg "losses: $losses -> $after"
	[ "$after" -eq $((losses + 1)) ] || return
	# Bus Master Enable: bit 2.
	[ $(($(command_register) & 4)) -eq 0 ] && return
	ktap_print_msg "bus mastering still on for the lost controller"
	return 1
}

# Once lost, a request fails before anything is mapped for it or written to
# a descriptor page the controller may still read.
case_nothing_mapped_once_lost() {
	before=$(mapping_counters) || return
	bounded_fio "$WORK/after-loss.log" --name=after-loss --filename="$DEV" \
		--ioengine=psync --direct=1 --rw=read --bs=64k --size=1M
	fio_failed_with_eio $? after-loss || return
	after=$(mapping_counters) || return
	[ "$after" = "$before" ] && return
	ktap_print_msg "sent, mapped or described for a lost controller: $before ->$after"
	return 1
}

# Unbound (nothing left mapped: DMA-API debugging and the pin and swiotlb
# checks of the boot see to it), memory decoding on again and bound again:
# verified I/O works.
case_rebind_after_loss() {
	revive_controller || return
	bounded_fio "$WORK/rebound.log" --name=rebound --filename="$DEV" \
		--numjobs=2 --size=8M --offset_increment=8M --ioengine=libaio --direct=1 \
		--rw=randwrite --bs=16k --iodepth=16 --verify=crc32c --do_verify=1 \
		--verify_fatal=1 && [ "$(stat_value "$STATS" losses)" = 0 ] && return
	ktap_print_msg "after the rebind:"
	tail -n 10 "$WORK/rebound.log" | sed 's/^/#   /'
	return 1
}

ktap_print_header
[ -d "$FAULT" ] || ktap_exit_fail_msg "no $FAULT (CONFIG_FAIL_IO_TIMEOUT, debugfs)"
command -v fio > /dev/null || ktap_exit_fail_msg "fio not found"
BDF=$(first_nvme_controller)
[ -n "$BDF" ] || ktap_exit_fail_msg "no NVMe controller (PCI class 010802)"
bind_controller "$BDF" || ktap_exit_fail_msg "cannot bind $BDF to $DRIVER"
SAVED_IO_TIMEOUT=$(cat "/sys/block/$DISK/queue/io_timeout")
echo $IO_TIMEOUT_MS > "/sys/block/$DISK/queue/io_timeout" ||
	ktap_exit_fail_msg "cannot set the request timeout of $DISK"

ktap_set_plan 6
for name in fio_errors_on_timeouts timeouts_aborts_resets_counted \
	verified_io_after_resets lost_controller_fails_io nothing_mapped_once_lost \
	rebind_after_loss; do
	ktap_test_result "$name" "case_$name"
done
ktap_finished
