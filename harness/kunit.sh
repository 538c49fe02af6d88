#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs the KUnit suites with kunit.py under QEMU, once per vIOMMU given
# (default: vtd virtio), and records every test case and the kernel log
# check of each boot.
# Usage: kunit.sh [-f FILTER_GLOB] [vtd|virtio ...]
. "$(dirname "$0")/lib.sh"

filter=
if [ "${1:-}" = -f ]; then
	filter=$2
	shift 2
fi
[ $# -gt 0 ] || set -- vtd virtio
for viommu in "$@"; do
	viommu_qemu_args "$viommu" >/dev/null
done

failed_before=$(count_failed)
for viommu in "$@"; do
	log "KUnit under QEMU q35 + $viommu vIOMMU"
	json=$OUT/kunit-$viommu.json
	console=$OUT/kunit-$viommu.console.log
	mkdir -p "$OUT"
	rm -f "$json" "$console" "$OBJ/test.log"
	kunit_py exec --timeout=600 --json="$json" \
		--qemu_args="$(viommu_qemu_args "$viommu") $TEST_DEVICE_ARGS" \
		--kernel_args="$(viommu_kernel_args "$viommu")" ${filter:+"$filter"} \
		2>&1 | tee "$OUT/kunit-$viommu.log" || true
	if [ ! -s "$json" ] || ! python3 "$REPO/harness/kunit_results.py" "kunit/$viommu" "$json" >> "$RESULTS"; then
		record FAIL "kunit/$viommu" "kunit.py produced no results (see $OUT/kunit-$viommu.log)"
	fi
	cp "$OBJ/test.log" "$console" 2>/dev/null || true
	check_kernel_log "kunit/$viommu/kernel_log" "$console"
done
[ "$(count_failed)" = "$failed_before" ]
