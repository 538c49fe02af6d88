#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Static checks of the working tree, each recorded as one test:
# rustfmtcheck, clippy on the series' files and rustdoc warnings.
. "$(dirname "$0")/lib.sh"

series_files=$(git -C "$SRC" diff --name-only refs/tags/base HEAD)
mkdir -p "$OUT"

log "make rustfmtcheck"
if out=$(kmake rustfmtcheck 2>&1); then
	record PASS static/rustfmtcheck
else
	printf '%s\n' "$out" > "$OUT/rustfmtcheck.log"
	record FAIL static/rustfmtcheck "$(grep -m 1 '^Diff in' <<<"$out" || tail -n 1 <<<"$out")"
fi

log "CLIPPY=1 build"
kmake CLIPPY=1 > "$OUT/clippy.log" 2>&1 || true
# A warning's location follows it on a line "  --> FILE:LINE:COL".
hits=$(grep -E -- '^\s+--> ' "$OUT/clippy.log" | sed -E 's/^\s+--> ([^:]+):.*/\1/' |
	sed "s|^$SRC/||; s|^\.\./||" | sort -u | grep -xF "$series_files" || true)
if grep -q '^make.*Error' "$OUT/clippy.log"; then
	record FAIL static/clippy "CLIPPY=1 build failed (see $OUT/clippy.log)"
elif [ -n "$hits" ]; then
	record FAIL static/clippy "warnings in $(tr '\n' ' ' <<<"$hits")(see $OUT/clippy.log)"
else
	record PASS static/clippy
fi

log "make rustdoc"
if ! kmake rustdoc > "$OUT/rustdoc.log" 2>&1; then
	record FAIL static/rustdoc "make rustdoc failed (see $OUT/rustdoc.log)"
elif grep -q '^warning' "$OUT/rustdoc.log"; then
	record FAIL static/rustdoc "$(grep -m 1 '^warning' "$OUT/rustdoc.log") (see $OUT/rustdoc.log)"
else
	record PASS static/rustdoc
fi
