#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Prints the skipped and the failed tests, then the closing count line
# "N passed, N failed"; fails if any failed.
. "$(dirname "$0")/lib.sh"

[ -f "$RESULTS" ] || die "no test results in $RESULTS"
awk -F '\t' '
	$1 == "PASS" { pass++ }
	$1 == "SKIP" { skip++; skipped = skipped sprintf("  %s: %s\n", $2, $3) }
	$1 == "FAIL" { fail++; failed = failed sprintf("  %s: %s\n", $2, $3) }
	END {
		if (skip) printf "Skipped tests (counted neither passed nor failed):\n%s", skipped
		if (fail) printf "Failed tests:\n%s", failed
		printf "%d passed, %d failed\n", pass, fail
		exit fail > 0
	}' "$RESULTS"
