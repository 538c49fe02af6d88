#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs the kselftests in one QEMU boot per machine configuration of
# harness/matrix (default: all) and records every KTAP test case, plus one
# check each that the boot completed, that every installed kselftest ran,
# that the kernel log is clean, that no page pin leaked and that the NVMe
# disk holds the pattern the guest wrote last, from a seed of this boot.
# Usage: selftests.sh [CONFIG...]
. "$(dirname "$0")/lib.sh"

for name in "$@"; do
	matrix_config "$name" >/dev/null
done

bash "$REPO/harness/initramfs.sh"
tests=$(cat "$INITRAMFS/kselftest/kselftest-list.txt")
[ -n "$tests" ] || die "no kselftest installed in the initramfs"

failed_before=$(count_failed)
while read -r name viommu args; do
	[ $# -eq 0 ] || [[ " $* " == *" $name "* ]] || continue
	log "kselftests on $name ($viommu vIOMMU, $args)"
	logfile=$OUT/selftest-$name.log
	rm -f "$logfile" "$logfile".qemu-crash-*
	start=$SECONDS
	# QEMU 10.0.2 itself crashes now and then (SIGSEGV in its NVMe
	# controller's nvme_rw_complete_cb: three boots of 54 that forced
	# timeouts, two of them in the last two runs on virtio-iommu): such a
	# boot runs again, at most twice, each crash recorded as skipped; what
	# its log shows up to the crash still counts.
	for attempt in 1 2 3; do
		seed=$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')
		rc=0
		# shellcheck disable=SC2086 # kernel arguments are split on purpose
		bash "$REPO/harness/boot.sh" "$logfile" "$viommu" $args RUST_NVME_DMA_SEED="$seed" ||
			rc=$?
		if [ $rc -ne 139 ] || [ $attempt -eq 3 ]; then
			break
		fi
		crashed=$logfile.qemu-crash-$attempt
		mv "$logfile" "$crashed"
		record SKIP "selftest/$name/qemu_crash_$attempt" \
			"QEMU crashed (SIGSEGV), the boot runs again (see $crashed)"
		check_kernel_log "selftest/$name/qemu_crash_${attempt}_kernel_log" "$crashed"
		! grep -a -q '^not ok ' "$crashed" ||
			record FAIL "selftest/$name/qemu_crash_${attempt}_cases" \
				"cases failed before the crash ($crashed)"
	done

	if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
		record FAIL "selftest/$name/boot" "guest hung: killed after ${BOOT_TIMEOUT:-300} s (see $logfile)"
	elif ! grep -q '^RFL-GUEST-DONE' "$logfile"; then
		record FAIL "selftest/$name/boot" "guest did not finish (qemu rc=$rc, see $logfile)"
	else
		record PASS "selftest/$name/boot" "$((SECONDS - start)) s"
	fi
	check_kernel_log "selftest/$name/kernel_log" "$logfile"

	pins=$(sed -n 's/^RFL-VMSTAT //p' "$logfile")
	read -r _ acquired _ released <<<"$pins"
	if [ -z "$pins" ]; then
		record FAIL "selftest/$name/pins" "no pin counters reported"
	elif [ "$acquired" != "$released" ]; then
		record FAIL "selftest/$name/pins" "page pins leaked: $pins"
	else
		record PASS "selftest/$name/pins" "$pins"
	fi

	if disk=$(python3 "$REPO/harness/nvme_disk_check.py" "$NVME_DISK" "$seed" 2>&1); then
		record PASS "selftest/$name/nvme_disk" "$disk"
	else
		record FAIL "selftest/$name/nvme_disk" "$disk"
	fi

	for test in $tests; do
		grep -qxF "RFL-KSELFTEST-BEGIN $test" "$logfile" ||
			record FAIL "selftest/$name/$test" "did not run"
	done

	# Top-level KTAP results of each kselftest, between the init's markers.
	# A skipped case, or a kselftest that skips as a whole, fails: the
	# matrix sets up what every test needs.
	awk -v cfg="$name" '
		/^RFL-KSELFTEST-BEGIN / { test = $2; n = 0; fails = 0; next }
		/^RFL-KSELFTEST-END / {
			rc = substr($3, 4)
			if (n == 0 || (rc != 0 && fails == 0))
				printf "FAIL\tselftest/%s/%s\tno test result, exit code %s\n", cfg, $2, rc
			test = ""; next
		}
		test != "" && /^(not )?ok [0-9]+ / {
			n++
			desc = $0
			sub(/^(not )?ok [0-9]+ /, "", desc)
			split(desc, words, " ")
			st = /^not ok/ || desc ~ /# *SKIP/ ? "FAIL" : "PASS"
			if (st == "FAIL") fails++
			printf "%s\tselftest/%s/%s/%s\t%s\n", st, cfg, test, words[1], desc
		}
		test != "" && /^1\.\.0 # SKIP/ {
			n++; fails++
			printf "FAIL\tselftest/%s/%s\tskipped as a whole: %s\n", cfg, test, $0
		}' "$logfile" >> "$RESULTS"
done < <(matrix_lines)

[ "$(count_failed)" = "$failed_before" ]
