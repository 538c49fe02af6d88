#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make test: set-up, then every check; ends with "N passed, N failed".
. "$(dirname "$0")/lib.sh"

# Runs one stage; a stage that fails without recording why fails by name.
stage() {
	local before
	before=$(count_failed)
	bash "$REPO/harness/$1.sh" && return 0
	[ "$(count_failed)" -gt "$before" ] || record FAIL "$1" "harness/$1.sh failed (see its output above)"
	return 1
}

mkdir -p "$OUT"
rm -f "$RESULTS"
touch "$RESULTS"
start=$SECONDS
if stage prepare; then
	stage kunit || true
	stage kunit-pt || true
	stage selftests || true
	stage hotplug || true
	stage static-checks || true
	stage series || true
	stage debug-kernel || true
fi
log "make test took $((SECONDS - start)) s"
exec bash "$REPO/harness/summary.sh"
