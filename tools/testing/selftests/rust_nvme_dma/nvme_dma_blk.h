/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the rust_nvme_dma kselftest and the demo share: binding QEMU's NVMe
 * controller to the Rust NVMe driver, its block device and its statistics.
 *
 * NVME_BLK_DRIVER=nvme puts the C driver and its block device in place of
 * the Rust sample, as for block_clients.sh: to check the tests themselves
 * (the C driver has no statistics file).
 */
#ifndef NVME_DMA_BLK_H
#define NVME_DMA_BLK_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../kselftest.h"

#define NVME_STATS		"/sys/kernel/debug/rust_nvme_dma/rnvme0/stats"
#define NVME_PCI_CLASS		"0x010802"	/* mass storage, NVM Express */
#define PCI_DEVICES		"/sys/bus/pci/devices"
#define PCI_DRIVERS		"/sys/bus/pci/drivers"

struct nvme_target {
	const char *driver;	/* module and PCI driver */
	const char *dev;	/* block device node */
	const char *stats;	/* statistics file */
};

enum nvme_stat {
	STAT_REQUESTS,
	STAT_READ_BYTES,
	STAT_WRITE_BYTES,
	STAT_FLUSHES,
	STAT_DISCARDS,
	STAT_WRITE_ZEROES,
	STAT_MAPPINGS_IOVA,
	STAT_MAPPINGS_IOMMU,
	STAT_MAPPINGS_DIRECT,
	STAT_MAPPINGS_BOUNCE,
	STAT_DMA_RANGES,
	STAT_IOTLB_SYNCS,
	STAT_PRP_ENTRIES,
	STAT_PRP_LIST_PAGES,
	STAT_SGL_DATA_BLOCKS,
	STAT_SGL_SEGMENTS,
	STAT_FAILED_REQUESTS,
	STAT_TIMEOUTS,
	STAT_ABORTS,
	STAT_RESETS,
	NVME_NR_STATS
};

static const char * const nvme_stat_names[NVME_NR_STATS] = {
	"requests", "read_bytes", "write_bytes", "flushes", "discards", "write_zeroes",
	"mappings_iova", "mappings_iommu", "mappings_direct", "mappings_bounce",
	"dma_ranges", "iotlb_syncs", "prp_entries", "prp_list_pages", "sgl_data_blocks",
	"sgl_segments", "failed_requests", "timeouts", "aborts", "resets",
};

struct nvme_stats {
	unsigned long long v[NVME_NR_STATS];
};

static inline __printf(3, 4) int nvme_error(char *err, size_t size, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	vsnprintf(err, size, fmt, args);
	va_end(args);
	return -1;
}

/* The driver under test (NVME_BLK_DRIVER) and its device. */
static inline int nvme_target_init(struct nvme_target *t, char *err, size_t size)
{
	const char *driver = getenv("NVME_BLK_DRIVER");

	t->driver = driver && *driver ? driver : "rust_nvme_dma";
	t->stats = NVME_STATS;
	if (!strcmp(t->driver, "rust_nvme_dma"))
		t->dev = "/dev/rnvme0n1";
	else if (!strcmp(t->driver, "nvme"))
		t->dev = "/dev/nvme0n1";
	else
		return nvme_error(err, size, "NVME_BLK_DRIVER=%s: rust_nvme_dma or nvme", driver);
	return 0;
}

static inline int nvme_write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	ssize_t len = fd < 0 ? -1 : write(fd, value, strlen(value));
	int err = errno;

	if (fd >= 0)
		close(fd);
	errno = err;
	return len == (ssize_t)strlen(value) ? 0 : -1;
}

static inline bool nvme_wait_for(const char *path, bool present, int ms)
{
	for (;; ms -= 10) {
		if ((access(path, F_OK) == 0) == present)
			return true;
		if (ms <= 0)
			return false;
		usleep(10000);
	}
}

/* The first NVMe controller by PCI address (the test machines have one). */
static inline int nvme_find_controller(char *bdf, size_t size)
{
	char path[PATH_MAX], class[16];
	struct dirent **entries;
	int n, i, found = -1;
	ssize_t len;
	int fd;

	n = scandir(PCI_DEVICES, &entries, NULL, alphasort);
	if (n < 0)
		return -1;
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), PCI_DEVICES "/%s/class", entries[i]->d_name);
		fd = open(path, O_RDONLY);
		len = fd < 0 ? -1 : read(fd, class, sizeof(class) - 1);
		if (fd >= 0)
			close(fd);
		class[len > 0 ? len : 0] = 0;
		if (found < 0 && !strcmp(class, NVME_PCI_CLASS "\n") &&
		    strlen(entries[i]->d_name) < size) {
			snprintf(bdf, size, "%s", entries[i]->d_name);
			found = 0;
		}
		free(entries[i]);
	}
	free(entries);
	return found;
}

/* modprobe, its messages turned into KTAP diagnostics. */
static inline int nvme_load_module(const char *module)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd),
		 "out=$(modprobe -- %s 2>&1); rc=$?; "
		 "[ -z \"$out\" ] || echo \"$out\" | sed 's/^/# /' >&2; exit $rc", module);
	return system(cmd);
}

/*
 * Binds the NVMe controller to the driver under test, loading the driver if
 * needed (nothing autoloads modules in the test guest), and waits for the
 * block device. driver_override keeps other drivers of the controller (the
 * C nvme driver) away from it.
 */
static inline int nvme_attach(const struct nvme_target *t, char *bdf, size_t bdf_size,
			      char *err, size_t size)
{
	char path[PATH_MAX], link[PATH_MAX], *bound;
	ssize_t len;
	int rc;

	if (nvme_find_controller(bdf, bdf_size))
		return nvme_error(err, size, "no NVMe controller (PCI class %s)", NVME_PCI_CLASS);
	snprintf(path, sizeof(path), PCI_DEVICES "/%s/driver_override", bdf);
	if (nvme_write_file(path, t->driver))
		return nvme_error(err, size, "%s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), PCI_DEVICES "/%s/driver", bdf);
	len = readlink(path, link, sizeof(link) - 1);
	if (len > 0) {
		link[len] = 0;
		bound = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;
		snprintf(path, sizeof(path), PCI_DRIVERS "/%s/unbind", bound);
		if (strcmp(bound, t->driver) && nvme_write_file(path, bdf))
			return nvme_error(err, size, "unbind %s from %s: %s", bdf, bound,
					  strerror(errno));
	}
	snprintf(path, sizeof(path), "/sys/module/%s", t->driver);
	if (access(path, F_OK)) {
		rc = nvme_load_module(t->driver);
		if (rc)
			return nvme_error(err, size, "modprobe %s failed: status %d", t->driver,
					  rc);
	}
	snprintf(path, sizeof(path), PCI_DRIVERS "/%s/%s", t->driver, bdf);
	if (access(path, F_OK) && nvme_write_file("/sys/bus/pci/drivers_probe", bdf))
		return nvme_error(err, size, "probe %s: %s", bdf, strerror(errno));
	if (access(path, F_OK))
		return nvme_error(err, size, "%s not bound to %s", bdf, t->driver);
	if (!nvme_wait_for(t->dev, true, 10000))
		return nvme_error(err, size, "%s missing 10 s after binding %s to %s", t->dev,
				  bdf, t->driver);
	return 0;
}

/* Every counter of the statistics file, each on a "name value" line. */
static inline int nvme_read_stats(const char *path, struct nvme_stats *stats, char *err,
				  size_t size)
{
	bool seen[NVME_NR_STATS] = { false };
	unsigned long long value;
	char name[64];
	FILE *f = fopen(path, "r");
	int i, fields;

	if (!f)
		return nvme_error(err, size, "%s: %s", path, strerror(errno));
	while ((fields = fscanf(f, "%63s %llu", name, &value)) == 2) {
		for (i = 0; i < NVME_NR_STATS; i++) {
			if (strcmp(name, nvme_stat_names[i]))
				continue;
			if (seen[i]) {
				fclose(f);
				return nvme_error(err, size, "%s: %s twice", path, name);
			}
			seen[i] = true;
			stats->v[i] = value;
		}
	}
	fclose(f);
	if (fields != EOF)
		return nvme_error(err, size, "%s: not a \"name value\" line at \"%s\"", path,
				  fields == 1 ? name : "?");
	for (i = 0; i < NVME_NR_STATS; i++)
		if (!seen[i])
			return nvme_error(err, size, "%s: no %s line", path, nvme_stat_names[i]);
	return 0;
}

#endif /* NVME_DMA_BLK_H */
