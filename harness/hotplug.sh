#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Hot-unplug of the NVMe controller under load: one boot of a machine of
# harness/matrix (default vtd-strict) with the controller behind a
# hot-pluggable PCIe root port and a QMP socket. The guest runs
# rust_nvme_dma/hotplug.sh (RFL_HOTPLUG in guest-init) with the Rust NVMe
# driver, an ext4 writer and direct I/O on the disk; at its markers
# harness/hotplug.py removes the controller (device_del: QEMU presses the
# slot's attention button, the guest's pciehp removes the device, then QEMU
# unplugs it) and adds a new one with a fresh disk image (device_add), for
# HOTPLUG_ROUNDS rounds. Records the guest's KTAP cases, each QMP step, and
# the boot's checks: finished in time, clean kernel log, page pins balanced.
# Usage: hotplug.sh [CONFIG]
. "$(dirname "$0")/lib.sh"

config=${1:-vtd-strict}
read -r viommu args <<<"$(matrix_config "$config")"
rounds=${HOTPLUG_ROUNDS:-2}
name=hotplug/$config
logfile=$OUT/hotplug-$config.log
qmp_socket=$OUT/hotplug-$config.qmp
qmp_results=$OUT/hotplug-$config.tsv

bash "$REPO/harness/initramfs.sh"
log "NVMe hot-unplug on $config ($viommu vIOMMU, $rounds rounds)"
rm -f "$logfile" "$logfile".* "$qmp_socket" "$OUT"/hotplug-disk*.img
python3 "$REPO/harness/hotplug.py" "$logfile" "$qmp_socket" "$OUT/hotplug-disk" \
	"$NVME_DISK_BYTES" hotplug-nvme0 hotplug-port > "$qmp_results" &
qmp_pid=$!
start=$SECONDS
rc=0
# shellcheck disable=SC2086 # kernel arguments are split on purpose
# q35 hands PCI hotplug to ACPI by default, which the guest kernel does not
# build (HOTPLUG_PCI_ACPI): with it off, firmware grants the guest native
# PCIe hotplug and pciehp drives the root port's slot.
BOOT_QEMU_ARGS="-global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off
	-device pcie-root-port,id=hotplug-port,chassis=1,slot=1
	-qmp unix:$qmp_socket,server=on,wait=off" \
	NVME_DEVICE_OPTS=",bus=hotplug-port,id=hotplug-nvme0" \
	bash "$REPO/harness/boot.sh" "$logfile" "$viommu" $args RFL_HOTPLUG=1 \
	RFL_HOTPLUG_ROUNDS="$rounds" || rc=$?
qmp_rc=0
wait "$qmp_pid" || qmp_rc=$?

failed_before=$(count_failed)
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
	record FAIL "$name/boot" "guest hung: killed after ${BOOT_TIMEOUT:-300} s (see $logfile)"
elif ! grep -q '^RFL-GUEST-DONE' "$logfile"; then
	record FAIL "$name/boot" "guest did not finish (qemu rc=$rc, see $logfile)"
else
	record PASS "$name/boot" "$((SECONDS - start)) s"
fi
# pciehp's removal takes pci_rescan_remove_lock under its reset_lock, then
# the reset_lock again under pci_rescan_remove_lock
# (pciehp_unconfigure_device()): lockdep reports that at the first removal,
# whatever the driver, and checks no lock after it. That one report is set
# aside and recorded as skipped; anything else in the log fails.
awk -v kept="$logfile.checked" -v set_aside="$logfile.pciehp-lockdep" '
	function flush(to) { printf "%s", report > to; report = "" }
	/^=+$/ && !inside { held = $0 "\n"; next }
	/WARNING: possible circular locking dependency detected/ { inside = 1 }
	inside {
		report = report held $0 "\n"; held = ""
		if ($0 ~ /<\/TASK>/) {
			inside = 0
			pciehp = report ~ /pciehp_unconfigure_device/ && report ~ /&ctrl->reset_lock/ &&
				report ~ /pci_rescan_remove_lock/
			flush(pciehp ? set_aside : kept)
		}
		next
	}
	{ printf "%s%s\n", held, $0 > kept; held = "" }
	END { printf "%s", held > kept; if (report != "") flush(kept) }' "$logfile"
check_kernel_log "$name/kernel_log" "$logfile.checked"
set_aside="lockdep report of pciehp_unconfigure_device()'s lock order set aside,"
set_aside+=" lockdep off after it (see $logfile.pciehp-lockdep)"
[ ! -s "$logfile.pciehp-lockdep" ] || record SKIP "$name/kernel_log_pciehp_lockdep" "$set_aside"

pins=$(sed -n 's/^RFL-VMSTAT //p' "$logfile")
read -r _ acquired _ released <<<"$pins"
if [ -z "$pins" ]; then
	record FAIL "$name/pins" "no pin counters reported"
elif [ "$acquired" != "$released" ]; then
	record FAIL "$name/pins" "page pins leaked: $pins"
else
	record PASS "$name/pins" "$pins"
fi

# Every QMP step the guest asked for: a removal and an addition per round.
[ $qmp_rc -eq 0 ] || record FAIL "$name/qmp" "hotplug.py failed with status $qmp_rc"
for round in $(seq "$rounds"); do
	for step in device_del device_deleted device_add; do
		grep -q "^[A-Z]*	round${round}_$step	" "$qmp_results" ||
			record FAIL "$name/round${round}_$step" "not done (see $logfile)"
	done
done
while IFS=$'\t' read -r status step detail; do
	record "$status" "$name/$step" "$detail"
done < "$qmp_results"

# The guest's KTAP cases, between guest-init's markers; a missing or
# skipped case fails.
grep -q '^RFL-KSELFTEST-END rust_nvme_dma:hotplug.sh ' "$logfile" ||
	record FAIL "$name/guest" "the guest's hotplug.sh did not run to its end"
awk -v name="$name" '
	/^RFL-KSELFTEST-BEGIN rust_nvme_dma:hotplug.sh/ { inside = 1; next }
	/^RFL-KSELFTEST-END / { inside = 0 }
	inside && /^(not )?ok [0-9]+ / {
		desc = $0
		sub(/^(not )?ok [0-9]+ /, "", desc)
		split(desc, words, " ")
		status = /^not ok/ || desc ~ /# *SKIP/ ? "FAIL" : "PASS"
		printf "%s\t%s/%s\t%s\n", status, name, words[1], desc
	}' "$logfile" >> "$RESULTS"
cases=$(grep -c -E '^(not )?ok [0-9]+ round' "$logfile" || true)
[ "$cases" -eq $((rounds * 4)) ] ||
	record FAIL "$name/cases" "$cases guest cases reported, $((rounds * 4)) expected"

[ "$(count_failed)" = "$failed_before" ]
