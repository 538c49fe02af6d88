#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Runs the KUnit suites with kunit.py under QEMU, once per configuration of
# harness/matrix given (default: all), and records every test case and the
# kernel log check of each boot.
# Usage: kunit.sh [-f FILTER_GLOB] [CONFIG ...]
. "$(dirname "$0")/lib.sh"

filter=
if [ "${1:-}" = -f ]; then
	filter=$2
	shift 2
fi
# shellcheck disable=SC2046 # one configuration name per word
[ $# -gt 0 ] || set -- $(matrix_names)
for name in "$@"; do
	matrix_config "$name" >/dev/null
done

failed_before=$(count_failed)
for machine in "$@"; do
	read -r viommu args <<<"$(matrix_config "$machine")"
	log "KUnit under QEMU q35 + $viommu vIOMMU: $args"
	json=$OUT/kunit-$machine.json
	console=$OUT/kunit-$machine.console.log
	mkdir -p "$OUT"
	rm -f "$json" "$console" "$OBJ/test.log"
	kunit_py exec --timeout=600 --json="$json" \
		--qemu_args="$(viommu_qemu_args "$viommu") $TEST_DEVICE_ARGS" \
		--kernel_args="$(viommu_kernel_args "$viommu") $args" ${filter:+"$filter"} \
		2>&1 | tee "$OUT/kunit-$machine.log" || true
	if [ ! -s "$json" ] || ! python3 "$REPO/harness/kunit_results.py" "kunit/$machine" "$json" >> "$RESULTS"; then
		record FAIL "kunit/$machine" "kunit.py produced no results (see $OUT/kunit-$machine.log)"
	fi
	cp "$OBJ/test.log" "$console" 2>/dev/null || true
	check_kernel_log "kunit/$machine/kernel_log" "$console"
done
[ "$(count_failed)" = "$failed_before" ]
