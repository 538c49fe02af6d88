// SPDX-License-Identifier: GPL-2.0
/*
 * Shows the Rust NVMe driver's block device at work: binds the controller,
 * writes a few MiB from a user buffer with O_DIRECT (the block layer pins
 * the pages, the driver maps them: zero-copy), reads them back into another,
 * compares, and prints the driver's statistics before and after with the
 * DMA path its mappings took. Used by `make demo` (harness/demo.sh), which
 * embeds the output lines.
 */
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <linux/fs.h>

#include "nvme_dma_blk.h"

#define MIB		(1024ULL * 1024)
#define DEMO_BYTES	(6 * MIB)
#define DEMO_OFFSET	MIB

static const char * const path_names[] = {
	[STAT_MAPPINGS_IOVA] = "iova (one IOVA range per request, its pages linked as lists)",
	[STAT_MAPPINGS_IOMMU] = "iommu (an IOMMU mapping per physical range)",
	[STAT_MAPPINGS_DIRECT] = "direct (physical addresses, no translation)",
	[STAT_MAPPINGS_BOUNCE] = "bounce (swiotlb bounce buffers)",
};

static void *map_buffer(size_t len)
{
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (buf == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return buf;
}

static long long ms_since(const struct timespec *start)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (now.tv_sec - start->tv_sec) * 1000LL + (now.tv_nsec - start->tv_nsec) / 1000000;
}

/* One O_DIRECT transfer of all DEMO_BYTES, timed. */
static void transfer(int fd, bool write, void *buf, const char *what)
{
	struct timespec start;
	ssize_t done;

	clock_gettime(CLOCK_MONOTONIC, &start);
	done = write ? pwrite(fd, buf, DEMO_BYTES, DEMO_OFFSET) :
		       pread(fd, buf, DEMO_BYTES, DEMO_OFFSET);
	if (done != (ssize_t)DEMO_BYTES) {
		printf("%s: %s\n", write ? "write" : "read", done < 0 ? strerror(errno) : "short");
		exit(1);
	}
	printf("%s %llu bytes at offset %llu, %s: %lld ms\n", write ? "write" : "read ",
	       DEMO_BYTES, DEMO_OFFSET, what, ms_since(&start));
}

static void print_stats(const struct nvme_stats *before, const struct nvme_stats *after)
{
	unsigned long long grown, total = 0;
	int i, path = -1, paths = 0;

	for (i = 0; i < NVME_NR_STATS; i++)
		printf("  %s %llu -> %llu (+%llu)\n", nvme_stat_names[i], before->v[i],
		       after->v[i], after->v[i] - before->v[i]);
	for (i = STAT_MAPPINGS_IOVA; i <= STAT_MAPPINGS_BOUNCE; i++) {
		grown = after->v[i] - before->v[i];
		total += grown;
		if (grown) {
			path = i;
			paths++;
		}
	}
	if (paths == 1)
		printf("DMA path: %s, %llu mappings\n", path_names[path], total);
	else
		printf("DMA path: %d paths grew, %llu mappings\n", paths, total);
}

int main(void)
{
	struct nvme_stats before, after;
	struct nvme_target target;
	unsigned char *out, *in;
	unsigned long long x = 0x9e3779b97f4a7c15ULL, size = 0;
	unsigned int lbs = 0;
	char bdf[32], err[256];
	bool have_before;
	size_t i;
	int fd;

	if (nvme_target_init(&target, err, sizeof(err)) ||
	    nvme_attach(&target, bdf, sizeof(bdf), err, sizeof(err))) {
		printf("%s\n", err);
		return 1;
	}
	fd = open(target.dev, O_RDWR | O_DIRECT);
	if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) || ioctl(fd, BLKSSZGET, &lbs)) {
		printf("%s: %s\n", target.dev, strerror(errno));
		return 1;
	}
	printf("device: %s, %llu bytes in %u-byte blocks, driver %s, controller %s\n",
	       target.dev, size, lbs, target.driver, bdf);

	out = map_buffer(DEMO_BYTES);
	in = map_buffer(DEMO_BYTES);
	for (i = 0; i < DEMO_BYTES; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		out[i] = x;
	}
	memset(in, 0xa5, DEMO_BYTES);

	have_before = !nvme_read_stats(target.stats, &before, err, sizeof(err));
	transfer(fd, true, out, "O_DIRECT from a user buffer (zero-copy)");
	transfer(fd, false, in, "O_DIRECT into another user buffer");
	if (memcmp(out, in, DEMO_BYTES)) {
		printf("verified: MISMATCH\n");
		return 1;
	}
	printf("verified: %llu bytes read back equal to the bytes written\n", DEMO_BYTES);

	if (!have_before || nvme_read_stats(target.stats, &after, err, sizeof(err))) {
		printf("statistics: %s\n", err);
		return 1;
	}
	printf("statistics (%s), before -> after the two transfers:\n", target.stats);
	print_stats(&before, &after);
	close(fd);
	return 0;
}
