/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ioctl interface of the Rust NVMe DMA sample (samples/rust/rust_nvme_dma.rs).
 *
 * Each bound controller gets a misc device /dev/rust-nvme-dmaN. Reads and
 * writes move whole logical blocks of namespace 1 between the device and a
 * user buffer: either zero-copy (the buffer is pinned and mapped) or through
 * a kernel buffer of the kind a flag names (the sample copies to or from
 * user memory). A request is mapped once and cut into commands of at most
 * max_transfer bytes; with SGLs, also of at most max_sgl_blocks DMA ranges.
 *
 * Errors: EINVAL (zero length, length not a multiple of the block size,
 * unknown flags or both kernel-buffer flags, PRPs with a buffer not aligned
 * on 4 bytes), ERANGE (blocks past the end of the namespace), E2BIG (longer
 * than max_request, or than max_contiguous with RUST_NVME_IO_CONTIGUOUS),
 * EOPNOTSUPP (SGLs on a controller without them), EFAULT (buffer not mapped,
 * or read-only for a read), ENODEV (controller unbound), EIO (the
 * controller failed the command), ETIMEDOUT (no completion in time; the
 * controller is then disabled and later requests get EIO).
 */
#ifndef _SAMPLES_RUST_NVME_DMA_H
#define _SAMPLES_RUST_NVME_DMA_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* struct rust_nvme_io.flags */
#define RUST_NVME_IO_SGL	0x1 /* SGL descriptors, not PRPs */
#define RUST_NVME_IO_VMALLOC	0x2 /* through a vmalloc'ed kernel buffer */
#define RUST_NVME_IO_CONTIGUOUS	0x4 /* through a kmalloc'ed kernel buffer */

/* DMA paths, as in kernel::dma::map::DmaPath */
#define RUST_NVME_PATH_IOVA	0 /* one IOVA range, ranges linked as lists */
#define RUST_NVME_PATH_IOMMU	1 /* IOMMU mapping per range */
#define RUST_NVME_PATH_DIRECT	2 /* physical addresses, no translation */
#define RUST_NVME_PATH_BOUNCE	3 /* swiotlb bounce buffers */
#define RUST_NVME_PATHS		4

struct rust_nvme_info {
	char serial[20];	/* Identify Controller SN, space padded */
	char model[40];		/* MN */
	char firmware[8];	/* FR */
	__u16 pci_vendor;	/* VID */
	__u16 sgl;		/* 1 if the controller takes SGLs */
	__u32 block_size;	/* bytes per logical block of namespace 1 */
	__u32 max_transfer;	/* bytes per command: MDTS, capped by the sample and DMA */
	__u64 blocks;		/* namespace size (NSZE) in blocks */
	__u32 max_request;	/* bytes per read or write request */
	__u32 max_contiguous;	/* bytes per RUST_NVME_IO_CONTIGUOUS request */
	__u32 queue_entries;	/* entries of the I/O submission queue */
	__u32 max_sgl_blocks;	/* SGL data blocks per command */
};

struct rust_nvme_io {
	__u64 addr;		/* in: user buffer */
	__u64 len;		/* in: bytes */
	__u64 lba;		/* in: first logical block */
	__u32 flags;		/* in: RUST_NVME_IO_* */
	__u32 path;		/* out: RUST_NVME_PATH_* of the mapping */
	__u32 dma_ranges;	/* out: DMA ranges of the mapping */
	__u32 commands;		/* out: NVMe commands issued */
	__u32 descriptors;	/* out: PRP entries or SGL data block descriptors */
	__u32 list_pages;	/* out: PRP list pages or SGL segments */
};

struct rust_nvme_stats {
	__u64 commands;		/* I/O commands completed successfully */
	__u64 bytes_written;
	__u64 bytes_read;
	__u64 mappings;		/* DMA mappings made for requests */
	__u64 dma_ranges;	/* DMA ranges of those mappings */
	__u64 paths[RUST_NVME_PATHS]; /* mappings per RUST_NVME_PATH_* */
	__u64 iova_syncs;	/* dma_iova_sync() calls: one per IOVA mapping */
	__u64 prp_entries;
	__u64 prp_list_pages;
	__u64 sgl_descriptors;	/* data block descriptors */
	__u64 sgl_segments;
	__u64 failed_requests;	/* requests that returned an error */
};

#define RUST_NVME_IOC_INFO	_IOR('|', 0xa0, struct rust_nvme_info)
#define RUST_NVME_IOC_READ	_IOWR('|', 0xa1, struct rust_nvme_io)
#define RUST_NVME_IOC_WRITE	_IOWR('|', 0xa2, struct rust_nvme_io)
#define RUST_NVME_IOC_STATS	_IOR('|', 0xa3, struct rust_nvme_stats)

#endif /* _SAMPLES_RUST_NVME_DMA_H */
