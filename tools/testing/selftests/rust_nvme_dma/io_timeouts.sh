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
# It binds the first NVMe controller (PCI class 010802) to the driver through
# driver_override and destroys the data on its disk.
#
# Needs fio, and a kernel with CONFIG_FAIL_IO_TIMEOUT and
# CONFIG_FAULT_INJECTION_DEBUG_FS.

DIR=$(dirname "$(readlink -f "$0")")
. "$DIR/../kselftest/ktap_helpers.sh"

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

first_nvme_controller() {
	for pci in /sys/bus/pci/devices/*; do
		[ "$(cat "$pci/class")" = 0x010802 ] && basename "$pci" && return
	done
}

# Binds the controller to the driver (loading it if needed) and waits for
# the disk.
bind_controller() {
	pci=/sys/bus/pci/devices/$1
	current=$(basename "$(readlink "$pci/driver")" 2>/dev/null)
	if [ "$current" != "$DRIVER" ]; then
		[ -z "$current" ] || echo "$1" > "$pci/driver/unbind" || return
		echo "$DRIVER" > "$pci/driver_override" || return
		if [ -d "/sys/module/$DRIVER" ]; then
			echo "$1" > /sys/bus/pci/drivers_probe || return
		else
			modprobe "$DRIVER" || return
		fi
	fi
	wait_for 10 "[ -b $DEV ]"
}

# One counter of the driver's statistics ("name value" lines).
stat_value() {
	awk -v name="$1" '$1 == name { print $2; found = 1 } END { exit !found }' "$STATS"
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
		stat_value "$name" > "$WORK/$name.before" || return
	done
	echo 100 > "$FAULT/probability" &&
		echo "$FAULT_INTERVAL" > "$FAULT/interval" &&
		echo 0 > "$FAULT/verbose" &&
		echo 1 > "/sys/block/$DISK/io-timeout-fail" || return
	rc=0
	for round in $(seq $FIO_ROUNDS); do
		echo "$FAULT_TIMES" > "$FAULT/times" || return
		run_fio "timeouts-$round"
		status=$?
		case $status in
		0)
			ktap_print_msg "round $round: fio succeeded despite the timeouts"
			rc=1
			;;
		137)
			ktap_print_msg "round $round: fio hung, killed after $FIO_KILL_AFTER s"
			rc=1
			;;
		*)
			error=$(grep -m 1 -o 'err=[^,]*, [^:]*: [^=]*' "$WORK/timeouts-$round.log")
			ktap_print_msg "round $round: fio failed with status $status ($error)"
			case $error in
			*"Input/output error"*) ;;
			*) rc=1 ;;
			esac
			;;
		esac
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
		after=$(stat_value "$name") || return
		ktap_print_msg "$name: $before -> $after"
		[ "$after" -gt "$before" ] || rc=1
	done
	return $rc
}

# Injection off: a verified write and read of 16 MiB with no error, no
# timeout and no reset.
case_verified_io_after_resets() {
	resets=$(stat_value resets) && timeouts=$(stat_value timeouts) &&
		failed=$(stat_value failed_requests) || return
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
	[ "$(stat_value resets)" = "$resets" ] && [ "$(stat_value timeouts)" = "$timeouts" ] &&
		[ "$(stat_value failed_requests)" = "$failed" ] && return
	ktap_print_msg "timeouts, resets or failures without injection:"
	sed 's/^/#   /' "$STATS"
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

ktap_set_plan 3
for name in fio_errors_on_timeouts timeouts_aborts_resets_counted \
	verified_io_after_resets; do
	ktap_test_result "$name" "case_$name"
done
ktap_finished
