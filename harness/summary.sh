#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Prints the failed tests and the closing count line; fails if any failed.
. "$(dirname "$0")/lib.sh"

[ -f "$RESULTS" ] || die "no test results in $RESULTS"
awk -F '\t' '
	$1 == "PASS" { pass++ }
	$1 == "SKIP" { skip++ }
	$1 == "FAIL" { fail++; failed = failed sprintf("  %s: %s\n", $2, $3) }
	END {
		if (fail) printf "Failed tests:\n%s", failed
		printf "%d passed, %d failed, %d skipped\n", pass, fail, skip
		exit fail > 0
	}' "$RESULTS"
