#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Installs the toolchain: Debian's rustc-web, LLVM 22, QEMU from
# bookworm-backports and a pinned bindgen-cli. Skips what is present.
. "$(dirname "$0")/lib.sh"

PACKAGES=(rustc-web rust-web-src rust-web-clippy rustfmt-web
	clang-$LLVM_VERSION lld-$LLVM_VERSION llvm-$LLVM_VERSION
	libclang-$LLVM_VERSION-dev flex bison libelf-dev libssl-dev bc cpio
	busybox-static kmod rsync make git python3 python3-ply python3-git
	xz-utils perl gawk)
QEMU_PACKAGES=(qemu-system-x86)


# dpkg-query lists only known packages; compare against the request.
not_installed() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed ||
			echo "$p"
	done
}

add_apt_sources() {
	local list=/etc/apt/sources.list.d/rfl-dma.sources
	local pin=/etc/apt/preferences.d/rfl-dma
	[ -f "$list" ] && [ -f "$pin" ] && return 1
	log "Adding bookworm-backports and trixie-backports apt sources (pin 50)"
	cat > "$list" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	cat > "$pin" <<'PIN'
Package: *
Pin: release a=bookworm-backports
Pin-Priority: 50

Package: *
Pin: release a=trixie-backports
Pin-Priority: 50
PIN
	return 0
}

APT_LOG=$OUT/apt.log
# Runs apt-get quietly; its whole output is shown only when it fails.
apt_get() {
	mkdir -p "$OUT"
	DEBIAN_FRONTEND=noninteractive apt-get "$@" > "$APT_LOG" 2>&1 ||
		{ cat "$APT_LOG" >&2; die "apt-get $* failed"; }
}

updated=
apt_update() {
	[ -n "$updated" ] && return
	log "apt-get update"
	apt_get update
	updated=1
}

if add_apt_sources; then
	apt_update
fi

missing=$(not_installed "${PACKAGES[@]}")
if [ -n "$missing" ]; then
	apt_update
	log "Installing:" $missing
	apt_get install -y --no-install-recommends $missing
fi

missing=$(not_installed "${QEMU_PACKAGES[@]}")
if [ -n "$missing" ]; then
	apt_update
	log "Installing from bookworm-backports:" $missing
	apt_get install -y --no-install-recommends -t bookworm-backports \
		$missing ipxe-qemu seabios qemu-system-data
fi

if ! "$TOOLS/bin/bindgen" --version 2>/dev/null | grep -q " $BINDGEN_VERSION\$"; then
	log "Installing bindgen-cli $BINDGEN_VERSION from crates.io"
	cargo install --quiet --locked --root "$TOOLS" "bindgen-cli@$BINDGEN_VERSION"
fi
