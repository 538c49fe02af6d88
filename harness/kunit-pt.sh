#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds and runs the generic page table KUnit suite (its own
# drivers/iommu/generic_pt/.kunitconfig, every page-table format, in its
# own object directory) and records every test case and the kernel log
# check of the boot. The suite also prints the time of mapping a list of
# scattered pages range by range and in one walk.
. "$(dirname "$0")/lib.sh"

failed_before=$(count_failed)
obj=$RFL_CACHE/obj-pt
json=$OUT/kunit-pt.json
console=$OUT/kunit-pt.console.log
mkdir -p "$OUT" "$obj"
rm -f "$json" "$console" "$obj/test.log"
log "generic_pt KUnit (drivers/iommu/generic_pt/.kunitconfig) in $obj"
opts=()
for var in "${KMAKE_VARS[@]}"; do
	opts+=(--make_options="$var")
done
run_qemu_env python3 "$SRC/tools/testing/kunit/kunit.py" run --arch=x86_64 \
	--build_dir="$obj" --kunitconfig="$SRC/drivers/iommu/generic_pt/.kunitconfig" \
	--jobs="$(nproc)" --timeout=900 --json="$json" "${opts[@]}" 2>&1 |
	tee "$OUT/kunit-pt.log" || true
if [ ! -s "$json" ] || ! python3 "$REPO/harness/kunit_results.py" kunit-pt "$json" >> "$RESULTS"; then
	record FAIL kunit-pt "kunit.py produced no results (see $OUT/kunit-pt.log)"
	exit 1
fi
cp "$obj/test.log" "$console" 2>/dev/null || true
grep -a 'speedup' "$console" || true
check_kernel_log kunit-pt/kernel_log "$console"
[ "$(count_failed)" = "$failed_before" ]
