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
# Objects of the crates holding the series' Rust files: removed first so
# that clippy really compiles them, whatever was built before.
crates=$(grep '\.rs$' <<<"$series_files" |
	sed -E 's|^rust/kernel/.*|rust/kernel.o|; s|\.rs$|.o|' | sort -u || true)
for crate in $crates; do
	rm -f "$OBJ/$crate"
done
# A warning's location follows it on a line "  --> FILE:LINE:COL".
if ! kmake CLIPPY=1 > "$OUT/clippy.log" 2>&1; then
	record FAIL static/clippy "CLIPPY=1 build failed (see $OUT/clippy.log)"
elif hits=$(grep -E -- '^\s+--> ' "$OUT/clippy.log" | sed -E 's/^\s+--> ([^:]+):.*/\1/' |
	sed "s|^$SRC/||; s|^\.\./||" | sort -u | grep -xF "$series_files"); then
	record FAIL static/clippy "warnings in $(tr '\n' ' ' <<<"$hits")(see $OUT/clippy.log)"
elif missing=$(for crate in $crates; do
	grep -qE "^\s+CLIPPY\s.*\s$crate\$" "$OUT/clippy.log" || echo "$crate"
done) && [ -n "$missing" ]; then
	record FAIL static/clippy "clippy did not compile $(tr '\n' ' ' <<<"$missing")(see $OUT/clippy.log)"
else
	record PASS static/clippy "$(tr '\n' ' ' <<<"$crates")"
fi

log "make rustdoc"
if ! kmake rustdoc > "$OUT/rustdoc.log" 2>&1; then
	record FAIL static/rustdoc "make rustdoc failed (see $OUT/rustdoc.log)"
elif grep -q '^warning' "$OUT/rustdoc.log"; then
	record FAIL static/rustdoc "$(grep -m 1 '^warning' "$OUT/rustdoc.log") (see $OUT/rustdoc.log)"
else
	record PASS static/rustdoc
fi
