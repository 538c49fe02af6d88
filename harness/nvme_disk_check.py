#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Checks the NVMe disk image after the rust_nvme_dma kselftest.

Usage: nvme_disk_check.py IMAGE SEED

The kselftest's last case (disk_pattern) fills the whole disk with the
pattern of RUST_NVME_DMA_SEED. This checks, on the host, that the raw image
holds exactly that pattern over its whole size: what the sample reported as
written reached the right blocks.

The pattern, the same as in
tools/testing/selftests/rust_nvme_dma/nvme_dma.c: the disk is cut in
512-byte units whatever its block size; in unit u (bytes 512 * u to
512 * u + 511), the 8-byte little-endian word i (0 to 63) is

    k ^ (((u << 6) | i) * 0x9e3779b97f4a7c15 mod 2^64),  k = splitmix64(seed ^ u)

so that every word depends on the seed and on its own offset: data written
to the wrong block, shifted by 8 bytes or more inside a block, or left over
from a boot with another seed does not match.

Prints "ok: N bytes match seed S" and exits 0, or reports the first
mismatch and exits 1 (2 for a usage error).
"""

import struct
import sys

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
UNIT = 512
WORDS = UNIT // 8
CHUNK = 1 << 20  # bytes read and compared at once
# (u << 6 | i) * GOLDEN = (u << 6) * GOLDEN + i * GOLDEN: i's part is fixed.
WORD_STEPS = [i * GOLDEN for i in range(WORDS)]
PACK = struct.Struct("<%dQ" % WORDS).pack


def splitmix64(x):
    x = (x + GOLDEN) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def unit_pattern(seed, unit):
    """The 512 bytes the pattern puts at disk offset 512 * unit."""
    k = splitmix64(seed ^ unit)
    base = (unit << 6) * GOLDEN
    return PACK(*[((base + step) & MASK) ^ k for step in WORD_STEPS])


def mismatch(offset, want, got):
    """Describes the first byte where got differs from want (offset: want[0])."""
    i = next(i for i in range(len(got)) if want[i] != got[i])
    at = offset + i
    word = at - at % 8
    w_want = want[word - offset:word - offset + 8]
    w_got = got[word - offset:word - offset + 8]
    return ("mismatch at byte offset %d (block %d): expected 0x%02x, got 0x%02x "
            "(little-endian word at %d: expected 0x%s, got 0x%s)"
            % (at, at // UNIT, want[i], got[i], word, w_want[::-1].hex(), w_got[::-1].hex()))


def check(path, seed):
    size = 0
    with open(path, "rb") as image:
        while True:
            got = image.read(CHUNK)
            if not got:
                break
            first = size // UNIT
            units = (len(got) + UNIT - 1) // UNIT
            want = b"".join(unit_pattern(seed, u) for u in range(first, first + units))
            want = want[:len(got)]
            if got != want:
                return size, mismatch(size, want, got)
            size += len(got)
    if size == 0 or size % UNIT:
        return size, "mismatch: %s holds %d bytes, not whole blocks" % (path, size)
    return size, None


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: %s IMAGE SEED\n" % argv[0])
        return 2
    digits = argv[2].isascii() and argv[2].isdigit()
    seed = int(argv[2], 10) if digits else -1
    if not 0 <= seed <= MASK:
        sys.stderr.write("%s: SEED must be a decimal u64, not %r\n" % (argv[0], argv[2]))
        return 2
    try:
        size, error = check(argv[1], seed)
    except OSError as err:
        size, error = 0, "mismatch: cannot read %s: %s" % (argv[1], err)
    if error:
        print(error)
        return 1
    print("ok: %d bytes match seed %d" % (size, seed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
