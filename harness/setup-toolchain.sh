#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Installs the toolchain: Debian's rustc-web, LLVM 22, QEMU from
# bookworm-backports and a pinned bindgen-cli. Skips what is present.
. "$(dirname "$0")/lib.sh"

PACKAGES=(rustc-web rust-web-src rust-web-clippy rustfmt-web
	clang-$LLVM_VERSION lld-$LLVM_VERSION llvm-$LLVM_VERSION
	libclang-$LLVM_VERSION-dev flex bison libelf-dev libssl-dev bc cpio
	busybox-static kmod rsync make git python3 python3-ply python3-git
	xz-utils perl gawk cargo-web ca-certificates gcc libc6-dev
	e2fsprogs fio coreutils)
QEMU_PACKAGES=(qemu-system-x86)

# dpkg-query lists only known packages; compare against the request.
not_installed() {
	local p
	for p in "$@"; do
		dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed ||
			echo "$p"
	done
}

# Writes file $1 from stdin unless it already has that content; returns
# whether it changed.
write_if_changed() {
	local new
	new=$(cat)
	[ -f "$1" ] && [ "$(cat "$1")" = "$new" ] && return 1
	printf '%s\n' "$new" > "$1"
}

add_apt_sources() {
	local changed=1
	write_if_changed /etc/apt/sources.list.d/rfl-dma.sources <<'SRC' && changed=0
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
	# Matched by codename (n=): the archive names (a=) are
	# oldstable-backports and stable-backports.
	write_if_changed /etc/apt/preferences.d/rfl-dma <<'PIN' && changed=0
Package: *
Pin: release n=bookworm-backports
Pin-Priority: 50

Package: *
Pin: release n=trixie-backports
Pin-Priority: 50
PIN
	[ $changed = 0 ] && log "Added bookworm-backports and trixie-backports apt sources (pin 50)"
	return $changed
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
	/usr/bin/cargo install --quiet --locked --root "$TOOLS" "bindgen-cli@$BINDGEN_VERSION"
fi
