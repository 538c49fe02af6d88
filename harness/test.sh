#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# make test: set-up, then every check; ends with "N passed, N failed".
. "$(dirname "$0")/lib.sh"

mkdir -p "$OUT"
rm -f "$RESULTS"
start=$SECONDS
if bash "$REPO/harness/prepare.sh"; then
	bash "$REPO/harness/kunit.sh" || true
	bash "$REPO/harness/selftests.sh" || true
	bash "$REPO/harness/static-checks.sh" || true
	bash "$REPO/harness/series.sh" || record FAIL series/export "series.sh failed"
fi
log "make test took $((SECONDS - start)) s"
exec bash "$REPO/harness/summary.sh"
