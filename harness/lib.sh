# SPDX-License-Identifier: GPL-2.0
# Common settings of the harness, sourced by every script in harness/.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RFL_CACHE=${RFL_CACHE:-$HOME/.cache/rfl-dma}
DOWNLOADS=$RFL_CACHE/downloads
PRISTINE=$RFL_CACHE/linux-pristine
SRC=$RFL_CACHE/linux
OBJ=${RFL_OBJ:-$RFL_CACHE/obj}
TOOLS=$RFL_CACHE/tools
OUT=${RFL_OUT:-$REPO/build}

BASE_PACKAGE=linux-source-7.3
BASE_VERSION=7.3.4-1~bpo13+1
BASE_SHA256=703e369ddd4cce971452f5a593ee55df3a5c10c83caf0fa0df039633ed181ee3
BINDGEN_VERSION=0.73.2
LLVM_VERSION=22

# Debian's tools first: its python3 has the modules scripts/spdxcheck.py needs.
export PATH=/usr/lib/llvm-$LLVM_VERSION/bin:$TOOLS/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LIBCLANG_PATH=/usr/lib/llvm-$LLVM_VERSION/lib

# Every kernel make goes through these, so rustup's toolchains (no
# rust-src) are never picked up.
KMAKE_VARS=(
	LLVM=1
	RUSTC=/usr/bin/rustc
	RUSTDOC=/usr/bin/rustdoc
	RUSTFMT=/usr/bin/rustfmt
	CLIPPY_DRIVER=/usr/bin/clippy-driver
	BINDGEN="$TOOLS/bin/bindgen"
)

# One harness run at a time per cache: the outermost script takes the
# lock, the scripts it runs inherit it.
if [ -z "${RFL_LOCK_HELD:-}" ]; then
	mkdir -p "$RFL_CACHE"
	exec 9>"$RFL_CACHE/lock"
	if ! flock -n 9; then
		printf '==> Waiting for another harness run on %s\n' "$RFL_CACHE" >&2
		flock 9
	fi
	export RFL_LOCK_HELD=1
fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[1;33mWARNING: %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

kmake() {
	make -C "$SRC" O="$OBJ" ARCH=x86_64 "${KMAKE_VARS[@]}" -j"$(nproc)" "$@"
}

# Masks /dev/kvm when it exists but cannot work (no vmx/svm), so QEMU
# falls back to TCG instead of hanging.
run_qemu_env() {
	if [ -e /dev/kvm ] && ! grep -qwE 'vmx|svm' /proc/cpuinfo; then
		unshare -m sh -c 'mount --bind /dev/null /dev/kvm && exec "$0" "$@"' "$@"
	else
		"$@"
	fi
}

# Config fragments of the one guest kernel: relative paths are in the kernel
# tree, absolute ones in the harness.
KUNITCONFIGS=(rust/kernel/dma/.kunitconfig kernel/dma/.kunitconfig
	tools/testing/selftests/rust_dma/config tools/testing/selftests/rust_nvme_dma/config
	"$REPO/harness/bench.config")

# DEBUG_KERNEL=1 switches a stage to the debug guest kernel: the same
# fragments plus harness/debug.config (KASAN, lockdep, DMA-API debug, IOMMU
# page-allocation checks, fault injection), its own object and output
# directories, and the kernel argument that turns the IOMMU checks on.
DEBUG_KERNEL_ARGS=
if [ "${DEBUG_KERNEL:-0}" = 1 ]; then
	OBJ=$RFL_CACHE/obj-debug
	OUT=$OUT/debug
	KUNITCONFIGS+=("$REPO/harness/debug.config")
	DEBUG_KERNEL_ARGS="iommu.debug_pagealloc=1"
fi

# BENCH_KERNEL=1 switches make bench to the benchmark guest kernel: the same
# fragments without lock, atomic-sleep and DMA-API debugging (their checks
# tax every lock and mapping, more so the driver that takes more locks), in
# its own object directory and with its own initramfs. It also inlines the C
# helpers that Rust calls for what C inlines (atomics, MMIO accessors, locks),
# as the C driver has them: RUST_INLINE_HELPERS, which needs EXPERT.
KCONFIG_ADD=()
INITRAMFS=$OUT/initramfs
if [ "${BENCH_KERNEL:-0}" = 1 ]; then
	OBJ=$RFL_CACHE/obj-bench
	INITRAMFS=$OUT/initramfs-bench
	for option in PROVE_LOCKING DEBUG_ATOMIC_SLEEP DMA_API_DEBUG DMA_API_DEBUG_KUNIT_TEST; do
		KCONFIG_ADD+=("--kconfig_add=# CONFIG_$option is not set")
	done
	KCONFIG_ADD+=("--kconfig_add=CONFIG_EXPERT=y" "--kconfig_add=CONFIG_RUST_INLINE_HELPERS=y")
fi

# kunit.py with the committed config fragments and the toolchain above.
kunit_py() {
	local cmd=$1 opts=("${KCONFIG_ADD[@]}") frag var
	shift
	for frag in "${KUNITCONFIGS[@]}"; do
		case $frag in
		/*) opts+=(--kunitconfig="$frag") ;;
		*) opts+=(--kunitconfig="$SRC/$frag") ;;
		esac
	done
	for var in "${KMAKE_VARS[@]}"; do
		opts+=(--make_options="$var")
	done
	run_qemu_env python3 "$SRC/tools/testing/kunit/kunit.py" "$cmd" --arch=x86_64 \
		--build_dir="$OBJ" "${opts[@]}" "$@"
}

# Test results, one line each: PASS|FAIL|SKIP <tab> name <tab> detail.
RESULTS=$OUT/results.tsv
record() {
	mkdir -p "$OUT"
	printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >> "$RESULTS"
	[ "$1" != FAIL ] || printf '\033[1;31mFAIL\033[0m %s: %s\n' "$2" "${3:-}" >&2
}

count_failed() {
	if [ -f "$RESULTS" ]; then
		grep -c '^FAIL' "$RESULTS" || true
	else
		echo 0
	fi
}

# QEMU's DMA test device: the edu device's DMA engine, with a full DMA mask.
TEST_DEVICE_ARGS="-device edu,dma_mask=0xffffffffffffffff"
# The guest's NVMe disk. MDTS 10 allows commands whose PRP lists take more
# than one page (the sample caps them at 1024 pages).
NVME_DISK=$OUT/nvme-disk.img
NVME_DISK_BYTES=$((64 << 20))
# Debian's programs the guest runs on the NVMe block devices (packages
# e2fsprogs, fio and coreutils), copied into the initramfs with their
# libraries.
BLOCK_CLIENTS=(mkfs.ext4 fsck.ext4 fio dd)

# The machine configurations of harness/matrix, one "name viommu kernel-args"
# line each.
matrix_lines() {
	grep -v -E '^\s*(#|$)' "$REPO/harness/matrix"
}

matrix_names() {
	matrix_lines | awk '{ print $1 }'
}

# Prints the vIOMMU and the kernel arguments of configuration $1 of the
# matrix; dies if there is none of that name.
matrix_config() {
	local config
	config=$(matrix_lines | awk -v name="$1" '$1 == name { $1 = ""; print }')
	[ -n "$config" ] || die "no configuration '$1' in harness/matrix"
	echo "$config"
}

# QEMU machine arguments for each vIOMMU (vtd, virtio or none).
viommu_qemu_args() {
	case $1 in
	vtd) echo "-M q35,kernel-irqchip=split -device intel-iommu,intremap=on" ;;
	virtio) echo "-M q35 -device virtio-iommu-pci" ;;
	none) echo "-M q35" ;;
	*) die "unknown vIOMMU '$1' (vtd, virtio or none)" ;;
	esac
}

# no_timer_check: on a busy host, a guest under TCG can miss the ticks of the
# boot-time timer check, which then panics ("timer doesn't work through
# Interrupt-remapped IO-APIC") behind VT-d: seen in about one boot in ten.
viommu_kernel_args() {
	case $1 in
	vtd) echo "intel_iommu=on no_timer_check $DEBUG_KERNEL_ARGS" ;;
	*) echo "$DEBUG_KERNEL_ARGS" ;;
	esac
}

# Kernel log lines that fail a boot: warnings, crashes, IOMMU faults,
# DMA-API debug reports (each error it finds starts "DMA-API: DRIVER DEVICE: ")
# and DMA-API debug giving up for lack of memory (not dma_debug=off).
BAD_LOG='WARNING: |------------\[ cut here \]|BUG: |Oops|Kernel panic|KASAN|UBSAN|Call Trace:'
BAD_LOG+='|DMAR: \[DMA (Read|Write)|DMAR: DRHD: handling fault|fault from EP'
BAD_LOG+='|DMA-API: [^ ]+ [^ ]+: |DMA-API: .*(disabling|- disabled|dma-debug disabled)'

# Records test NAME: the guest console log FILE has none of BAD_LOG.
check_kernel_log() {
	local bad
	if [ ! -s "$2" ]; then
		record FAIL "$1" "no console log $2"
	elif bad=$(grep -a -m 3 -E "$BAD_LOG" "$2"); then
		record FAIL "$1" "$(tr '\n' ' ' <<<"$bad")(see $2)"
	else
		record PASS "$1"
	fi
}
