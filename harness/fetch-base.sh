#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Downloads the base kernel source (Debian's linux-source-7.3, not
# installed), verifies it and unpacks it once into a pristine git tree.
. "$(dirname "$0")/lib.sh"

stamp=$PRISTINE/.rfl-base-version
if [ "$(cat "$stamp" 2>/dev/null)" = "$BASE_VERSION" ] &&
	git -C "$PRISTINE" rev-parse -q --verify refs/tags/base >/dev/null; then
	exit 0
fi

mkdir -p "$DOWNLOADS"
version=$BASE_VERSION
available=$(apt-cache madison "$BASE_PACKAGE" | awk '{ print $3 }')
if [ -z "$available" ]; then
	apt-get update -qq
	available=$(apt-cache madison "$BASE_PACKAGE" | awk '{ print $3 }')
fi
if ! grep -qxF "$BASE_VERSION" <<<"$available"; then
	version=$(sort -V <<<"$available" | tail -n 1)
	[ -n "$version" ] || die "no $BASE_PACKAGE in the apt sources (trixie-backports)"
	warn "$BASE_PACKAGE $BASE_VERSION is gone from the mirror; using the newest, $version, instead."
	warn "The series was made against $BASE_VERSION: expect patch conflicts."
fi

deb=$DOWNLOADS/${BASE_PACKAGE}_${version//:/%3a}_all.deb
if [ ! -f "$deb" ]; then
	log "Downloading $BASE_PACKAGE $version"
	(cd "$DOWNLOADS" && apt-get download -q -o APT::Sandbox::User=root "$BASE_PACKAGE=$version")
fi

# apt-get download already checked the hash of the signed index; the pin
# guards the cache and makes the base explicit.
if [ "$version" = "$BASE_VERSION" ] && ! echo "$BASE_SHA256  $deb" | sha256sum -c --quiet -; then
	rm -f "$deb"
	die "sha256 mismatch for $deb (expected $BASE_SHA256); removed it, run again to download it anew"
fi

log "Unpacking $BASE_PACKAGE $version into $PRISTINE"
tmp=$RFL_CACHE/unpack.tmp
rm -rf "$tmp" "$PRISTINE"
mkdir -p "$tmp"
dpkg -x "$deb" "$tmp/deb"
tar -xf "$tmp"/deb/usr/src/linux-source-7.3.tar.xz -C "$tmp"
mv "$tmp"/linux-source-7.3 "$PRISTINE"
rm -rf "$tmp"

log "Committing the base to $PRISTINE"
git -C "$PRISTINE" init -q -b linux
git -C "$PRISTINE" add -A -f  # Debian's .gitignore ignores the top level
GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z \
	git -C "$PRISTINE" -c user.name=base -c user.email=base@localhost \
	commit -q -m "Linux $version ($BASE_PACKAGE)"
git -C "$PRISTINE" tag base
# Loose objects make the clone of the working tree fail; one pack is fast.
git -C "$PRISTINE" repack -a -d -q --window=0 --depth=0
echo "$version" > "$stamp"
