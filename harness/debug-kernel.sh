#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds the debug guest kernel (DEBUG_KERNEL=1 in lib.sh: the guest
# fragments plus harness/debug.config, in its own object directory) and runs
# the KUnit suites, the kselftests and the hot-unplug boot on it, on the machines of
# harness/matrix given (default: vtd-strict and swiotlb). Its results count
# like the normal ones, named debug/...
# Usage: debug-kernel.sh [CONFIG...]
. "$(dirname "$0")/lib.sh"

[ "${DEBUG_KERNEL:-0}" = 0 ] || die "run debug-kernel.sh without DEBUG_KERNEL"
[ $# -gt 0 ] || set -- vtd-strict swiotlb
for name in "$@"; do
	matrix_config "$name" >/dev/null
done

# The stages below write their results to the debug kernel's output
# directory; they join the main results once all have run.
debug_results=$OUT/debug/results.tsv
mkdir -p "$OUT/debug"
rm -f "$debug_results"
touch "$debug_results"

failed_before=$(count_failed)
start=$SECONDS
if DEBUG_KERNEL=1 bash "$REPO/harness/build.sh" 2>&1 | tee "$OUT/debug/build.log"; then
	record PASS debug/build "$((SECONDS - start)) s"
	DEBUG_KERNEL=1 bash "$REPO/harness/kunit.sh" "$@" || true
	DEBUG_KERNEL=1 bash "$REPO/harness/selftests.sh" "$@" || true
	# Hot-unplug under load, with KASAN and DMA-API debug watching.
	DEBUG_KERNEL=1 bash "$REPO/harness/hotplug.sh" || true
else
	record FAIL debug/build "building the debug kernel failed (see $OUT/debug/build.log)"
fi
# The first tab of each line ends the status: the name follows it.
sed 's/\t/\tdebug\//' "$debug_results" >> "$RESULTS"
[ "$(count_failed)" = "$failed_before" ]
