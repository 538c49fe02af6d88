#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs the KUnit suites with kunit.py under QEMU, once per vIOMMU given
# (default: vtd virtio), and records every test case.
# Usage: kunit.sh [-f FILTER_GLOB] [vtd|virtio ...]
. "$(dirname "$0")/lib.sh"

filter=
if [ "${1:-}" = -f ]; then
	filter=$2
	shift 2
fi
[ $# -gt 0 ] || set -- vtd virtio

status=0
for viommu in "$@"; do
	log "KUnit under QEMU q35 + $viommu vIOMMU"
	json=$OUT/kunit-$viommu.json
	logfile=$OUT/kunit-$viommu.log
	mkdir -p "$OUT"
	rm -f "$json"
	kunit_py exec --timeout=600 --json="$json" \
		--qemu_args="$(viommu_qemu_args "$viommu") $TEST_DEVICE_ARGS" \
		--kernel_args="$(viommu_kernel_args "$viommu")" ${filter:+"$filter"} \
		2>&1 | tee "$logfile" || status=1
	cp "$OBJ/test.log" "$OUT/kunit-$viommu.console.log"
	check_kernel_log "kunit/$viommu/kernel_log" "$OUT/kunit-$viommu.console.log"
	if [ ! -s "$json" ] || ! python3 "$REPO/harness/kunit_results.py" "kunit/$viommu" "$json" >> "$RESULTS"; then
		record FAIL "kunit/$viommu" "kunit.py produced no results (see $logfile)"
		status=1
	fi
done
grep -P '^FAIL\tkunit/' "$RESULTS" >&2 && status=1
exit $status
