#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Packs the test guest's initramfs: static busybox, the series' kselftests,
# the block-device clients the NVMe kselftests run (Debian's mkfs.ext4,
# fsck.ext4, fio and coreutils dd, in /usr/bin), the shared libraries of
# every dynamically linked program, and the kernel modules.
. "$(dirname "$0")/lib.sh"

stage=$INITRAMFS
rm -rf "$stage"
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,kselftest,etc,usr/bin}
cp /bin/busybox "$stage/bin/busybox"
for program in "${BLOCK_CLIENTS[@]}"; do
	path=$(command -v "$program") || die "no $program: harness/setup-toolchain.sh installs it"
	cp -L "$path" "$stage/usr/bin/$program"
done
# mke2fs's defaults per file system type.
cp /etc/mke2fs.conf "$stage/etc/"
install -m 755 "$REPO/harness/guest-init" "$stage/init"

make -s -C "$SRC/tools/testing/selftests" O="$OBJ/kselftest" LLVM=1 \
	TARGETS="rust_dma rust_nvme_dma" INSTALL_PATH="$stage/kselftest" install >/dev/null
kmake -s INSTALL_MOD_PATH="$stage" INSTALL_MOD_STRIP=1 modules_install >/dev/null

# Dynamically linked programs get the host's libraries.
libs=$(find "$stage/kselftest" "$stage/usr/bin" -type f -perm -u+x -exec ldd {} + 2>/dev/null |
	grep -o '/[^ ]*\.so[^ ]*' | sort -u || true)
for lib in $libs; do
	mkdir -p "$stage$(dirname "$lib")"
	cp -L "$lib" "$stage$lib"
done

(cd "$stage" && find . | cpio -o -H newc --quiet) > "$INITRAMFS.cpio"
