// SPDX-License-Identifier: GPL-2.0
/*
 * Injects allocation failures into O_DIRECT reads and writes on the disk of
 * the Rust NVMe driver (samples/rust/rust_nvme_dma.rs): with
 * /proc/thread-self/fail-nth, the n-th slab allocation the I/O makes in
 * this thread fails, for n = 1, 2, ... until an I/O makes fewer than n
 * allocations. The driver's own allocations are those of its mappings in
 * queue_rq (GFP_ATOMIC, none on the IOVA path), which runs in the thread
 * that submits the request. Each injected failure must end in an error for
 * the caller (ENOMEM) or in a success after the block layer retried the
 * request (the driver returns ENOMEM from queue_rq, which becomes
 * BLK_STS_RESOURCE): the data must then be right, no request may have
 * failed in the driver, and no page pin or swiotlb slot may be left behind.
 * Requests the driver sent back are counted with the block_rq_requeue
 * trace event; where the mappings allocate (RUST_NVME_DMA_PATH direct or
 * bounce), some must have been.
 *
 * Every slab cache may fail but radix_tree_node: DMA-API debugging keeps
 * its cacheline tracking there and turns itself off for good when an
 * allocation fails. Caches are chosen with failslab's cache filter, which
 * takes only caches that no other cache was merged into: the kernel must
 * run with slab_nomerge.
 */
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "nvme_dma_blk.h"

#define PAGE			4096
/* A request of several pages, each its own DMA range (pages touched in reverse order). */
#define IO_BYTES		(16 * PAGE)
/* Away from the start of the disk, where the other tests put file systems. */
#define IO_OFFSET		(40LL << 20)
/* An I/O that still needs more allocations after this many failed is broken. */
#define MAX_FAULTS		500
#define TRACING			"/sys/kernel/tracing"
#define REQUEUE_EVENT		TRACING "/events/block/block_rq_requeue"
#define SWIOTLB_USED		"/sys/kernel/debug/swiotlb/io_tlb_used"
#define FAILSLAB		"/sys/kernel/debug/failslab"
#define SLAB_CACHES		"/sys/kernel/slab"
/* The one cache spared, see above. */
#define SPARED_CACHE		"radix_tree_node"

/* Fault injection settings changed for the test, restored at its end. */
static struct setting {
	const char *path, *value;
	char saved[16];
} settings[] = {
	/* Allocations that may sleep fail too, not only atomic ones. */
	{ FAILSLAB "/ignore-gfp-wait", "N" },
	/* No report of each injected failure, no stack trace in the kernel log. */
	{ FAILSLAB "/verbose", "0" },
	/* Only the caches marked below fail. */
	{ FAILSLAB "/cache-filter", "Y" },
};

struct counters {
	struct nvme_stats stats;
	long long pins_acquired, pins_released;
	long long swiotlb_used;		/* -1 without swiotlb */
};

struct injection {
	int faults;			/* failures injected */
	int errors;			/* of which the caller got ENOMEM */
	int retried;			/* of which the I/O succeeded */
	int requeues;			/* requests the driver sent back */
};

static struct nvme_target target;
static int disk = -1, fail_nth = -1;
static unsigned char *buf, *expected;
static char disk_dev[32];		/* "major,minor" as the trace shows it */
static bool mounted_tracing;
/* Whether the driver's mappings allocate memory on this machine. */
static bool allocating_path;

static long long read_number(const char *path, const char *key)
{
	char line[256];
	long long value = -1;
	size_t len = key ? strlen(key) : 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!key) {
			value = atoll(line);
			break;
		}
		if (!strncmp(line, key, len) && line[len] == ' ') {
			value = atoll(line + len + 1);
			break;
		}
	}
	fclose(f);
	return value;
}

static int read_counters(struct counters *c)
{
	char err[256];

	if (nvme_read_stats(target.stats, &c->stats, err, sizeof(err))) {
		ksft_print_msg("%s\n", err);
		return -1;
	}
	/* The CPUs' deltas join the counters first (SMP). */
	if (nvme_write_file("/proc/sys/vm/stat_refresh", "1")) {
		ksft_print_msg("/proc/sys/vm/stat_refresh: %s\n", strerror(errno));
		return -1;
	}
	c->pins_acquired = read_number("/proc/vmstat", "nr_foll_pin_acquired");
	c->pins_released = read_number("/proc/vmstat", "nr_foll_pin_released");
	c->swiotlb_used = read_number(SWIOTLB_USED, NULL);
	return 0;
}

/* Requests of the disk sent back to the block layer since the trace was cleared. */
static int count_requeues(void)
{
	char line[512], pattern[48];
	int count = 0;
	FILE *f = fopen(TRACING "/trace", "r");

	if (!f)
		return -1;
	snprintf(pattern, sizeof(pattern), "block_rq_requeue: %s ", disk_dev);
	while (fgets(line, sizeof(line), f))
		count += !!strstr(line, pattern);
	fclose(f);
	return count;
}

static int tracing_setup(void)
{
	struct stat st;

	if (fstat(disk, &st))
		return -1;
	snprintf(disk_dev, sizeof(disk_dev), "%u,%u", major(st.st_rdev), minor(st.st_rdev));
	if (access(TRACING "/trace", F_OK)) {
		if (mount("tracefs", TRACING, "tracefs", 0, NULL))
			return -1;
		mounted_tracing = true;
	}
	return nvme_write_file(REQUEUE_EVENT "/enable", "1");
}

static void tracing_cleanup(void)
{
	nvme_write_file(REQUEUE_EVENT "/enable", "0");
	nvme_write_file(TRACING "/trace", "");
	if (mounted_tracing)
		umount(TRACING);
}

static int change_settings(void)
{
	struct setting *s;
	ssize_t len;
	int fd;

	for (s = settings; s < settings + ARRAY_SIZE(settings); s++) {
		fd = open(s->path, O_RDONLY);
		len = fd < 0 ? -1 : read(fd, s->saved, sizeof(s->saved) - 1);
		if (fd >= 0)
			close(fd);
		if (len <= 0 || nvme_write_file(s->path, s->value)) {
			ksft_print_msg("%s: %s\n", s->path, strerror(errno));
			s->saved[0] = 0;
			return -1;
		}
		s->saved[len] = 0;
	}
	return 0;
}

/* Marks every slab cache but SPARED_CACHE for failures (on = true), or none. */
static int mark_caches(bool on)
{
	char path[PATH_MAX];
	struct dirent *entry;
	struct stat st;
	int ret = 0;
	DIR *dir = opendir(SLAB_CACHES);

	if (!dir)
		return -1;
	while ((entry = readdir(dir))) {
		/* Links are the names of merged caches. */
		if (entry->d_name[0] == '.' || !strcmp(entry->d_name, SPARED_CACHE))
			continue;
		snprintf(path, sizeof(path), SLAB_CACHES "/%s", entry->d_name);
		if (lstat(path, &st) || !S_ISDIR(st.st_mode))
			continue;
		snprintf(path, sizeof(path), SLAB_CACHES "/%s/failslab", entry->d_name);
		if (nvme_write_file(path, on ? "1" : "0") && on) {
			ksft_print_msg("%s: %s (slab_nomerge missing?)\n", path, strerror(errno));
			ret = -1;
			break;
		}
	}
	closedir(dir);
	return ret;
}

static void restore_settings(void)
{
	struct setting *s;

	for (s = settings; s < settings + ARRAY_SIZE(settings); s++)
		if (s->saved[0])
			nvme_write_file(s->path, s->saved);
	mark_caches(false);
}

static void fill(unsigned char *p, unsigned int seed)
{
	size_t i;

	for (i = 0; i < IO_BYTES; i++)
		p[i] = (unsigned char)((i * 131 + seed * 29 + (i >> 12)) ^ (seed >> 3));
}

static ssize_t do_io(bool write)
{
	return write ? pwrite(disk, buf, IO_BYTES, IO_OFFSET) :
		       pread(disk, buf, IO_BYTES, IO_OFFSET);
}

/* An I/O with no failure injected, which must move all its bytes. */
static int clean_io(bool write)
{
	ssize_t done = do_io(write);

	if (done == IO_BYTES)
		return 0;
	ksft_print_msg("%s without injection: %zd (%s)\n", write ? "write" : "read", done,
		       done < 0 ? strerror(errno) : "short");
	return -1;
}

/*
 * One I/O with the n-th allocation failing. Returns 1 if it made fewer than
 * n allocations (nothing injected), 0 if the failure was handled, -1 if not.
 */
static int inject(bool write, int nth, struct injection *in)
{
	char value[16];
	ssize_t done, len;
	int saved_errno, requeues;

	if (write)
		fill(buf, nth);
	else
		memset(buf, 0, IO_BYTES);
	nvme_write_file(TRACING "/trace", "");
	snprintf(value, sizeof(value), "%d", nth);
	if (pwrite(fail_nth, value, strlen(value), 0) < 0) {
		ksft_print_msg("fail-nth: %s\n", strerror(errno));
		return -1;
	}
	done = do_io(write);
	saved_errno = errno;
	len = pread(fail_nth, value, sizeof(value) - 1, 0);
	if (pwrite(fail_nth, "0", 1, 0) < 0 || len <= 0) {
		ksft_print_msg("fail-nth: %s\n", strerror(errno));
		return -1;
	}
	value[len] = 0;
	requeues = count_requeues();
	if (requeues < 0) {
		ksft_print_msg("%s/trace: %s\n", TRACING, strerror(errno));
		return -1;
	}
	in->requeues += requeues;
	/* fail-nth still counting down: the I/O made fewer than nth allocations. */
	if (atoi(value) != 0)
		return done == IO_BYTES ? 1 : clean_io(write);
	in->faults++;
	if (done < 0 && saved_errno == ENOMEM) {
		in->errors++;
		return 0;
	}
	if (done != IO_BYTES) {
		ksft_print_msg("%s, allocation %d failed: %zd (%s)\n", write ? "write" : "read",
			       nth, done, done < 0 ? strerror(saved_errno) : "short");
		return -1;
	}
	/* Success after the retry: the bytes are the right ones. */
	if (write) {
		memcpy(expected, buf, IO_BYTES);
		if (clean_io(false))
			return -1;
	}
	if (memcmp(buf, expected, IO_BYTES)) {
		ksft_print_msg("%s, allocation %d failed: wrong data\n", write ? "write" : "read",
			       nth);
		return -1;
	}
	in->retried++;
	return 0;
}

/* Nothing failed in the driver, and no pin or swiotlb slot is left. */
static bool balanced(const struct counters *before, const struct counters *after)
{
	bool ok = true;

	if (after->stats.v[STAT_FAILED_REQUESTS] != before->stats.v[STAT_FAILED_REQUESTS]) {
		ksft_print_msg("failed_requests grew by %llu\n",
			       after->stats.v[STAT_FAILED_REQUESTS] -
			       before->stats.v[STAT_FAILED_REQUESTS]);
		ok = false;
	}
	if (after->pins_acquired - before->pins_acquired !=
	    after->pins_released - before->pins_released) {
		ksft_print_msg("page pins: %lld acquired, %lld released\n",
			       after->pins_acquired - before->pins_acquired,
			       after->pins_released - before->pins_released);
		ok = false;
	}
	if (after->swiotlb_used != before->swiotlb_used) {
		ksft_print_msg("swiotlb slots used: %lld before, %lld after\n",
			       before->swiotlb_used, after->swiotlb_used);
		ok = false;
	}
	return ok;
}

/*
 * Fails every allocation of a read or write in turn, then checks the
 * counters. The disk holds `expected` at IO_OFFSET on entry and on return.
 */
static void run_case(bool write)
{
	const char *name = write ? "write_alloc_faults" : "read_alloc_faults";
	struct injection in = { 0 };
	struct counters before, after;
	int nth, ret = 0;

	if (read_counters(&before)) {
		ksft_test_result_fail("%s\n", name);
		return;
	}
	for (nth = 1; nth <= MAX_FAULTS; nth++) {
		ret = inject(write, nth, &in);
		if (ret)
			break;
	}
	if (ret == 0)
		ksft_print_msg("%s: still allocating after %d failures\n", name, MAX_FAULTS);
	/* Whatever failed last, the disk gets the expected bytes again. */
	memcpy(buf, expected, IO_BYTES);
	if (ret == 1 && clean_io(true))
		ret = -1;
	if (ret == 1 && (clean_io(false) || memcmp(buf, expected, IO_BYTES))) {
		ksft_print_msg("%s: the disk does not read back what was written\n", name);
		ret = -1;
	}
	if (read_counters(&after))
		ret = -1;
	ksft_print_msg("%s: %d failures injected, %d returned ENOMEM, %d retried\n",
		       name, in.faults, in.errors, in.retried);
	ksft_print_msg("%s: %d requests sent back by the driver\n", name, in.requeues);
	if (ret == 1 && !in.faults) {
		ksft_print_msg("%s: no allocation failed\n", name);
		ret = -1;
	}
	if (ret == 1 && allocating_path && !in.requeues) {
		ksft_print_msg("%s: no failure reached the driver's mappings\n", name);
		ret = -1;
	}
	ksft_test_result(ret == 1 && balanced(&before, &after), "%s\n", name);
}

int main(void)
{
	char err[256], bdf[32];
	unsigned char *page;
	const char *path;
	int i;

	ksft_print_header();
	if (nvme_target_init(&target, err, sizeof(err)) ||
	    nvme_attach(&target, bdf, sizeof(bdf), err, sizeof(err)))
		ksft_exit_fail_msg("%s\n", err);
	disk = open(target.dev, O_RDWR | O_DIRECT);
	if (disk < 0)
		ksft_exit_fail_msg("%s: %s\n", target.dev, strerror(errno));
	fail_nth = open("/proc/thread-self/fail-nth", O_RDWR);
	if (fail_nth < 0)
		ksft_exit_fail_msg("/proc/thread-self/fail-nth: %s (CONFIG_FAULT_INJECTION)\n",
				   strerror(errno));
	path = getenv("RUST_NVME_DMA_PATH");
	if (!path || (strcmp(path, "iova") && strcmp(path, "direct") && strcmp(path, "bounce")))
		ksft_exit_fail_msg("RUST_NVME_DMA_PATH (iova, direct or bounce) is not set\n");
	allocating_path = strcmp(path, "iova");
	if (tracing_setup())
		ksft_exit_fail_msg("%s: %s\n", REQUEUE_EVENT, strerror(errno));
	if (change_settings() || mark_caches(true)) {
		restore_settings();
		ksft_exit_fail_msg("cannot set up failslab (CONFIG_FAILSLAB, slab_nomerge)\n");
	}
	buf = mmap(NULL, IO_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	expected = malloc(IO_BYTES);
	if (buf == MAP_FAILED || !expected)
		ksft_exit_fail_msg("out of memory\n");
	/* Pages faulted in last to first: physically apart, each its own DMA range. */
	for (i = IO_BYTES / PAGE - 1; i >= 0; i--) {
		page = buf + (size_t)i * PAGE;
		*page = 1;
	}
	fill(expected, 0);
	memcpy(buf, expected, IO_BYTES);
	if (clean_io(true))
		ksft_exit_fail_msg("the disk does not take a write\n");

	ksft_set_plan(2);
	run_case(true);
	run_case(false);
	restore_settings();
	tracing_cleanup();
	ksft_finished();
}
