// SPDX-License-Identifier: GPL-2.0
/*
 * Shows the Rust NVMe DMA sample at work: writes a few MiB from a user
 * buffer with PRPs, reads them back into another with SGLs, both zero-copy,
 * compares and prints what the driver reported. Used by `make demo`.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rust_nvme_dma.h"

#define DEMO_BYTES (6UL << 20)
#define DEVICE "/dev/rust-nvme-dma0"

static const char * const path_names[RUST_NVME_PATHS] = {
	"iova (one IOVA range, the pages linked as lists)",
	"iommu (IOMMU mapping per range)",
	"direct (physical addresses)",
	"bounce (swiotlb)",
};

static const char *path_name(unsigned int path)
{
	return path < RUST_NVME_PATHS ? path_names[path] : "unknown";
}

static void print_request(const char *what, const struct rust_nvme_io *io,
			  const char *descriptor, const char *list)
{
	printf("%s %llu bytes at LBA %llu: path %s, %u DMA ranges, %u commands, %u %s, %u %s\n",
	       what, (unsigned long long)io->len, (unsigned long long)io->lba,
	       path_name(io->path), io->dma_ranges, io->commands,
	       io->descriptors, descriptor, io->list_pages, list);
}

/* Copies a space-padded Identify field without its padding. */
static const char *field(char *out, const char *in, size_t len)
{
	memcpy(out, in, len);
	while (len && (out[len - 1] == ' ' || out[len - 1] == 0))
		len--;
	out[len] = 0;
	return out;
}

static int open_device(void)
{
	int fd, tries;

	for (tries = 0; tries < 100; tries++) {
		fd = open(DEVICE, O_RDWR);
		if (fd >= 0)
			return fd;
		if (tries == 0 && system("modprobe rust_nvme_dma") != 0)
			break;
		usleep(100000);
	}
	perror(DEVICE);
	exit(1);
}

static void *map_buffer(size_t len)
{
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return buf;
}

int main(void)
{
	char model[41], serial[21], firmware[9];
	struct rust_nvme_stats stats;
	struct rust_nvme_info info;
	struct rust_nvme_io io;
	unsigned char *out, *in;
	unsigned long long x = 0x9e3779b97f4a7c15ULL;
	size_t i;
	int fd;

	fd = open_device();
	if (ioctl(fd, RUST_NVME_IOC_INFO, &info)) {
		perror("RUST_NVME_IOC_INFO");
		return 1;
	}
	printf("controller: %s, serial %s, firmware %s, PCI vendor 0x%04x\n",
	       field(model, info.model, sizeof(info.model)),
	       field(serial, info.serial, sizeof(info.serial)),
	       field(firmware, info.firmware, sizeof(info.firmware)), info.pci_vendor);
	printf("namespace 1: %llu blocks of %u bytes\n", (unsigned long long)info.blocks,
	       info.block_size);
	printf("per command: %u bytes, %u SGL data blocks (SGLs %s); %u queue entries\n",
	       info.max_transfer, info.max_sgl_blocks, info.sgl ? "yes" : "no",
	       info.queue_entries);

	out = map_buffer(DEMO_BYTES);
	in = map_buffer(DEMO_BYTES);
	for (i = 0; i < DEMO_BYTES; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		out[i] = x;
	}
	memset(in, 0xa5, DEMO_BYTES);

	memset(&io, 0, sizeof(io));
	io.addr = (unsigned long)out;
	io.len = DEMO_BYTES;
	io.lba = 2048;
	if (ioctl(fd, RUST_NVME_IOC_WRITE, &io)) {
		perror("RUST_NVME_IOC_WRITE");
		return 1;
	}
	print_request("write (user buffer, zero-copy, PRPs)", &io, "PRP entries",
		      "PRP list pages");

	io.addr = (unsigned long)in;
	io.flags = RUST_NVME_IO_SGL;
	if (ioctl(fd, RUST_NVME_IOC_READ, &io)) {
		perror("RUST_NVME_IOC_READ");
		return 1;
	}
	print_request("read  (user buffer, zero-copy, SGLs)", &io, "SGL data blocks",
		      "SGL segments");

	if (memcmp(out, in, DEMO_BYTES)) {
		printf("verified: MISMATCH\n");
		return 1;
	}
	printf("verified: %lu bytes read back equal to the bytes written\n", DEMO_BYTES);

	if (ioctl(fd, RUST_NVME_IOC_STATS, &stats)) {
		perror("RUST_NVME_IOC_STATS");
		return 1;
	}
	printf("device statistics: %llu commands, %llu bytes written, %llu bytes read\n",
	       (unsigned long long)stats.commands, (unsigned long long)stats.bytes_written,
	       (unsigned long long)stats.bytes_read);
	printf("  %llu mappings: iova %llu, iommu %llu, direct %llu, bounce %llu\n",
	       (unsigned long long)stats.mappings,
	       (unsigned long long)stats.paths[RUST_NVME_PATH_IOVA],
	       (unsigned long long)stats.paths[RUST_NVME_PATH_IOMMU],
	       (unsigned long long)stats.paths[RUST_NVME_PATH_DIRECT],
	       (unsigned long long)stats.paths[RUST_NVME_PATH_BOUNCE]);
	printf("  %llu DMA ranges, %llu IOTLB syncs (dma_iova_sync calls)\n",
	       (unsigned long long)stats.dma_ranges, (unsigned long long)stats.iova_syncs);
	printf("  %llu PRP entries in %llu list pages, %llu SGL data blocks in %llu segments\n",
	       (unsigned long long)stats.prp_entries, (unsigned long long)stats.prp_list_pages,
	       (unsigned long long)stats.sgl_descriptors, (unsigned long long)stats.sgl_segments);
	printf("  %llu failed requests\n", (unsigned long long)stats.failed_requests);
	close(fd);
	return 0;
}
