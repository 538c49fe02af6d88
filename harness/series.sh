#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Exports the working tree's history as the patch series (git format-patch
# plus a cover letter) into build/series, checks that it applies with
# git am to the pristine base and gives the same tree, and runs
# checkpatch.pl --strict on every patch (a file a patch adds must be covered
# by a MAINTAINERS section instead of the patch touching MAINTAINERS). With BUILD_EACH=1, also builds
# the kernel after each patch, from patch number BUILD_FROM on (default 1).
. "$(dirname "$0")/lib.sh"

series_out=$OUT/series
amdir=$RFL_CACHE/am-check
rm -rf "$series_out" "$OUT"/checkpatch-*.log
mkdir -p "$series_out"

# The series' author signs the cover letter and commits the git am check.
as_author=(-c user.name="$(git -C "$SRC" log -1 --format=%an)"
	-c user.email="$(git -C "$SRC" log -1 --format=%ae)")

git -C "$SRC" config branch.series.description "$(cat "$REPO/series/cover-letter")"
git -C "$SRC" "${as_author[@]}" format-patch -q --cover-letter --cover-from-description=subject \
	--base=refs/tags/base -o "$series_out" refs/tags/base..HEAD
log "Exported $(ls "$series_out" | wc -l) files to $series_out"

# A scratch worktree of the working tree's repository, kept between runs.
if [ "$(git -C "$amdir" rev-parse --show-toplevel 2>/dev/null)" != "$amdir" ]; then
	rm -rf "$amdir"
	git -C "$SRC" worktree prune
	git -C "$SRC" worktree add -q --detach "$amdir" refs/tags/base
fi
git -C "$amdir" am --abort 2>/dev/null || true
git -C "$amdir" reset -q --hard refs/tags/base
git -C "$amdir" clean -q -fdx

patches=$(ls "$series_out"/*.patch | grep -v '/0000-')
applied=yes
for patch in $patches; do
	if ! git -C "$amdir" "${as_author[@]}" am -q --whitespace=error "$patch" > "$OUT/git-am.log" 2>&1; then
		record FAIL "series/git_am" "$(basename "$patch") does not apply to the base: $(head -n 1 "$OUT/git-am.log")"
		git -C "$amdir" am --abort
		applied=
		break
	fi
	number=$(basename "$patch" | cut -c1-4)
	if [ "${BUILD_EACH:-0}" = 1 ] && [ "$((10#$number))" -ge "${BUILD_FROM:-1}" ]; then
		log "Building after $(basename "$patch")"
		mkdir -p "$RFL_CACHE/obj-each"
		cp "$OBJ/.config" "$RFL_CACHE/obj-each/.config"
		if make -C "$amdir" O="$RFL_CACHE/obj-each" ARCH=x86_64 "${KMAKE_VARS[@]}" \
			-j"$(nproc)" olddefconfig all > "$OUT/build-each.log" 2>&1; then
			record PASS "series/build/$(basename "$patch")"
		else
			record FAIL "series/build/$(basename "$patch")" "$(grep -m 1 -E 'error|Error' "$OUT/build-each.log")"
		fi
	fi
done
if [ -n "$applied" ]; then
	if [ "$(git -C "$amdir" rev-parse 'HEAD^{tree}')" = "$(git -C "$SRC" rev-parse 'HEAD^{tree}')" ]; then
		record PASS series/git_am
	else
		record FAIL series/git_am "git am of the export gives another tree than the assembly"
	fi
fi

# checkpatch asks whether MAINTAINERS needs updating for every added file;
# answer it: an added file must be covered by a MAINTAINERS section.
uncovered_files() {
	local file
	for file in $(awk '/^diff --git / { file = substr($4, 3) } /^new file mode/ { print file }' "$1"); do
		(cd "$SRC" && scripts/get_maintainer.pl --no-git --no-git-fallback -f "$file") |
			grep -E '\((maintainer|reviewer):' | grep -qv 'THE REST' || echo "$file"
	done
}

for patch in $patches; do
	name=$(basename "$patch")
	uncovered=$(uncovered_files "$patch")
	if [ -n "$uncovered" ]; then
		record FAIL "checkpatch/$name" "no MAINTAINERS entry covers $(echo $uncovered)"
	elif out=$(cd "$SRC" && scripts/checkpatch.pl --strict --quiet --no-summary \
		--ignore FILE_PATH_CHANGES "$patch" 2>&1) && [ -z "$out" ]; then
		record PASS "checkpatch/$name"
	else
		printf '%s\n' "$out" > "$OUT/checkpatch-$name.log"
		record FAIL "checkpatch/$name" "$(grep -m 1 -E '^(ERROR|WARNING|CHECK)' <<<"$out")"
	fi
done
