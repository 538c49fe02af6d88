#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Everything before the tests: toolchain, base, working tree, kernel.
# A failing step is recorded as a failed test named after it.
. "$(dirname "$0")/lib.sh"

for step in setup-toolchain fetch-base assemble build; do
	errlog=$OUT/$step.err
	mkdir -p "$OUT"
	# With pipefail, the pipeline fails when the step does.
	if ! bash "$REPO/harness/$step.sh" 2>&1 | tee "$errlog"; then
		record FAIL "prepare/$step" "$(grep -a -m 1 'ERROR' "$errlog" | sed 's/\x1b\[[0-9;]*m//g' || tail -n 1 "$errlog")"
		exit 1
	fi
done
