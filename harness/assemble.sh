#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Builds the working kernel tree: the base commit plus one commit per entry
# of series/series. Commits are made on a scratch index, then the work tree
# is moved to the result, so files the series did not change keep their
# mtimes and incremental builds stay incremental.
. "$(dirname "$0")/lib.sh"

SERIES_DIR=$REPO/series
SERIES_DATE=2026-11-21T00:00:00Z

# Repo files below a top-level directory that the base also has are kernel
# files; everything else (README, Makefile, harness/, series/, .ci/) is not.
kernel_files() {
	local dir
	for dir in "$REPO"/*/; do
		dir=$(basename "$dir")
		[ -d "$PRISTINE/$dir" ] || continue
		(cd "$REPO" && find "$dir" -type f)
	done | sort
}

# Prints "field value" lines for the carried items of entry $1 and the
# commit message on stdout of entry_message.
entry_items() { sed -n '/^---$/,$p' "$SERIES_DIR/$1" | sed 1d | grep -v '^\s*\(#.*\)\?$' || true; }
entry_message() { sed '/^---$/,$d' "$SERIES_DIR/$1"; }

entries=$(grep -v '^\s*\(#.*\)\?$' "$SERIES_DIR/series")
[ -n "$entries" ] || die "series/series lists no entry"

# Every kernel file and every patch file must be carried by exactly one entry.
declare -A carried
for entry in $entries; do
	[ -f "$SERIES_DIR/$entry" ] || die "series/series names $entry, which does not exist"
	entry_message "$entry" | grep -q '^Signed-off-by: ' ||
		die "series entry $entry has no Signed-off-by"
	while read -r kind path; do
		case $kind in
		new) file=$path ;;
		patch) file=series/patches/$path ;;
		*) die "series entry $entry: unknown item '$kind $path'" ;;
		esac
		[ -f "$REPO/$file" ] || die "series entry $entry carries $file, which does not exist"
		[ -z "${carried[$file]:-}" ] || die "$file is carried by both ${carried[$file]} and $entry"
		carried[$file]=$entry
	done < <(entry_items "$entry")
done
while read -r file; do
	[ -n "${carried[$file]:-}" ] || die "$file is not carried by any entry of series/series"
done < <(kernel_files; (cd "$REPO" && find series/patches -type f 2>/dev/null))

if [ ! -d "$SRC/.git" ]; then
	log "Creating the working tree $SRC from the pristine base"
	rm -rf "$SRC.tmp"
	git clone -q --no-checkout "$PRISTINE" "$SRC.tmp"
	git -C "$SRC.tmp" checkout -q -b series base
	mv "$SRC.tmp" "$SRC"
fi

cd "$SRC"
# Follows the pristine base when fetch-base.sh replaced it.
git fetch -q -f "$PRISTINE" +refs/tags/base:refs/tags/base
index=$(mktemp "$RFL_CACHE/assemble-index.XXXXXX")
trap 'rm -f "$index"' EXIT
export GIT_INDEX_FILE=$index
git read-tree refs/tags/base

# A file the series adds may grow in later patches of the series: the entry
# that adds it carries the repo file with those later patches reversed.
# Prints the blob of file $1 as added; $2... are the entries after it.
added_blob() {
	local path=$1 entry kind item dir
	local later=()
	shift
	for entry in "$@"; do
		while read -r kind item; do
			[ "$kind" = patch ] || continue
			grep -qxF "+++ b/$path" "$SERIES_DIR/patches/$item" &&
				later=("$SERIES_DIR/patches/$item" "${later[@]}")
		done < <(entry_items "$entry")
	done
	if [ ${#later[@]} -eq 0 ]; then
		git hash-object -w "$REPO/$path"
		return
	fi
	dir=$(mktemp -d)
	mkdir -p "$dir/$(dirname "$path")"
	cp "$REPO/$path" "$dir/$path"
	for item in "${later[@]}"; do
		(cd "$dir" && env -u GIT_INDEX_FILE git apply -R --include="$path" "$item") ||
			die "$(basename "$item") does not reverse-apply to $path"
	done
	git hash-object -w "$dir/$path"
	rm -rf "$dir"
}

mapfile -t entry_list <<<"$entries"
head=$(git rev-parse refs/tags/base)
for i in "${!entry_list[@]}"; do
	entry=${entry_list[$i]}
	while read -r kind path; do
		case $kind in
		new)
			mode=100644
			[ -x "$REPO/$path" ] && mode=100755
			blob=$(added_blob "$path" "${entry_list[@]:i+1}")
			git update-index --add --cacheinfo "$mode,$blob,$path"
			;;
		patch)
			git apply --cached --whitespace=error-all "$REPO/series/patches/$path" ||
				die "patch series/patches/$path (entry $entry) does not apply"
			;;
		esac
	done < <(entry_items "$entry")
	author=$(entry_message "$entry" | sed -n 's/^Signed-off-by: //p' | head -n 1)
	head=$(entry_message "$entry" |
		GIT_AUTHOR_NAME=${author% <*} GIT_AUTHOR_EMAIL=$(sed 's/.*<\(.*\)>/\1/' <<<"$author") \
		GIT_COMMITTER_NAME=${author% <*} GIT_COMMITTER_EMAIL=$(sed 's/.*<\(.*\)>/\1/' <<<"$author") \
		GIT_AUTHOR_DATE=$SERIES_DATE GIT_COMMITTER_DATE=$SERIES_DATE \
		git commit-tree "$(git write-tree)" -p "$head")
done
unset GIT_INDEX_FILE

# The work tree becomes exactly the series, local edits included; only files
# that differ are rewritten, so the others keep their mtimes.
git symbolic-ref HEAD refs/heads/series
git reset -q --hard "$head"
git clean -q -fdx
log "Working tree $SRC: $(git rev-list --count base..HEAD) patches on the base"
