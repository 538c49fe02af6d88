#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Configures and builds the kernel of the working tree in $OBJ: one kernel
# for the KUnit runs and the kselftest boots.
. "$(dirname "$0")/lib.sh"

mkdir -p "$OBJ"
if ! out=$(kmake -s rustavailable 2>&1); then
	printf '%s\n' "$out" >&2
	die "make rustavailable failed: $(grep -m 1 -iE 'error|\*\*\*' <<<"$out" || echo 'see above')"
fi

log "Building the kernel in $OBJ"
kunit_py build --jobs="$(nproc)"
