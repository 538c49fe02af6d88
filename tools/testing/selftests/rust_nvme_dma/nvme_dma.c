// SPDX-License-Identifier: GPL-2.0
/*
 * Moves data between QEMU's NVMe disk and user memory through the block
 * device of the Rust NVMe driver (rust_nvme_dma, /dev/rnvme0n1): O_DIRECT
 * requests of many sizes and offsets from anonymous, malloc'ed, THP,
 * hugetlb, scattered and page-cache memory, vectored I/O, requests of
 * sub-page segments and of merged bios, buffered I/O, write-zeroes and
 * discard, the errors the block layer gives, the driver's statistics and
 * the DMA path of its mappings, swiotlb slots, unbinding with I/O in flight
 * and module unloading. The last case fills the whole disk with the pattern
 * of RUST_NVME_DMA_SEED, which the host checks (harness/nvme_disk_check.py).
 *
 * Environment: RUST_NVME_DMA_PATH (iova, direct or bounce: the DMA path
 * every mapping must take), RUST_NVME_DMA_SEED (decimal) and
 * RUST_NVME_DMA_DISK_BYTES. RUST_NVME_DMA_RANDOM_SEED replays the random
 * data of an earlier run (each case prints it). NVME_BLK_DRIVER=nvme runs it
 * on the C driver (nvme_dma_blk.h), to check the test itself.
 */
#include <endian.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/fs.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>

#include "../kselftest_harness.h"
#include "nvme_dma_blk.h"

#define NR_HUGEPAGES	"/proc/sys/vm/nr_hugepages"
#define THP_ENABLED	"/sys/kernel/mm/transparent_hugepage/enabled"
#define SWIOTLB_USED	"/sys/kernel/debug/swiotlb/io_tlb_used"

#define HUGE_SIZE	(2ULL << 20)
#define KIB		1024ULL
#define MIB		(1024ULL * 1024)
#define GOLDEN		0x9e3779b97f4a7c15ULL
#define PATTERN_UNIT	512		/* bytes per key of the disk pattern */
#define PFN_MASK	((1ULL << 55) - 1)
#define WORKERS		4		/* processes doing I/O while the driver goes */

static struct nvme_target target;
static __u64 run_seed;
static size_t page_size;

/* What a case moved since stats_begin(), for stats_check(). */
struct tally {
	__u64 read, written;
	__u64 requests;		/* at least: requests are cut at max_request */
};

struct nvme_state {
	int fd;			/* the block device, O_RDWR | O_DIRECT */
	char bdf[32];		/* the controller */
	__u64 size;		/* bytes */
	__u64 lbs;		/* logical block size */
	__u64 max_request;	/* max_sectors_kb: longer requests are split */
	__u64 max_segments;
	__u64 dma_alignment;	/* mask of the buffer alignment O_DIRECT needs */
	int path;		/* STAT_MAPPINGS_* every mapping must take, < 0: unknown */
	__u64 rng;		/* xorshift64 state of the case's random data */
	bool unbound;		/* rebound by the teardown */
	bool unloaded;		/* reloaded by the teardown */
	char nr_hugepages[32];	/* restored by the teardown if set */
	struct nvme_stats before, delta;
	bool have_before;
	long long bounce_slots;	/* swiotlb slots in use before, < 0: no swiotlb */
	struct tally tally;
	__u64 moved, ios;
	struct timespec start;
};

static __u64 splitmix64(__u64 x)
{
	x += GOLDEN;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static __u64 xorshift64(__u64 *state)
{
	__u64 x = *state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

static __u64 random_below(struct nvme_state *s, __u64 n)
{
	return n ? xorshift64(&s->rng) % n : 0;
}

static __u64 min_u64(__u64 a, __u64 b)
{
	return a < b ? a : b;
}

static void fill_random(void *buf, size_t len, __u64 *state)
{
	unsigned char *p = buf;
	__u64 word;

	for (; len >= sizeof(word); p += sizeof(word), len -= sizeof(word)) {
		word = xorshift64(state);
		memcpy(p, &word, sizeof(word));
	}
	word = xorshift64(state);
	memcpy(p, &word, len);
}

/*
 * The final disk pattern, the same as in harness/nvme_disk_check.py: in the
 * 512-byte unit u of the disk (whatever its block size), the 8-byte
 * little-endian word i (0..63) is k ^ ((u << 6 | i) * GOLDEN mod 2^64) with
 * k = splitmix64(seed ^ u). Every word depends on the seed and on its
 * offset, so misplaced, shifted or stale data does not match.
 */
static void fill_pattern(void *buf, __u64 offset, size_t len, __u64 seed)
{
	unsigned char *p = buf;
	__u64 unit, word, k;
	unsigned int i;

	for (unit = offset / PATTERN_UNIT; len; unit++, len -= PATTERN_UNIT) {
		k = splitmix64(seed ^ unit);
		for (i = 0; i < PATTERN_UNIT / 8; i++, p += 8) {
			word = htole64(k ^ ((unit << 6 | i) * GOLDEN));
			memcpy(p, &word, 8);
		}
	}
}

/* Compares byte for byte; on a difference, logs its offset from @base. */
static bool same(struct __test_metadata *_metadata, const void *want, const void *got,
		 size_t len, __u64 base, const char *what)
{
	const unsigned char *a = want, *b = got;
	size_t i;

	if (!memcmp(a, b, len))
		return true;
	for (i = 0; a[i] == b[i]; i++)
		;
	TH_LOG("%s: first difference at byte %llu (byte %zu of %zu): expected %#04x, got %#04x",
	       what, (unsigned long long)(base + i), i, len, a[i], b[i]);
	return false;
}

static int read_file(const char *path, char *value, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t len = fd < 0 ? -1 : read(fd, value, size - 1);

	if (fd >= 0)
		close(fd);
	if (len < 0)
		return -1;
	value[len] = 0;
	value[strcspn(value, "\n")] = 0;
	return 0;
}

/* A file of the disk's queue directory in sysfs. */
static int read_queue_file(const char *name, char *value, size_t size)
{
	const char *disk = strrchr(target.dev, '/') ? strrchr(target.dev, '/') + 1 : target.dev;
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "/sys/class/block/%s/queue/%s", disk, name);
	return read_file(path, value, size);
}

/* A number of the disk's queue directory; -1 if unreadable. */
static long long queue_limit(const char *name)
{
	char value[64], *end;
	long long n;

	if (read_queue_file(name, value, sizeof(value)))
		return -1;
	n = strtoll(value, &end, 10);
	return *end || end == value ? -1 : n;
}

static int getenv_u64(const char *name, __u64 *value)
{
	const char *s = getenv(name);
	char *end;

	if (!s || !*s)
		return -1;
	errno = 0;
	*value = strtoull(s, &end, 10);
	return errno || *end || *s == '-' ? -1 : 0;
}

static int expected_path(void)
{
	const char *path = getenv("RUST_NVME_DMA_PATH");

	if (!path)
		return -1;
	if (!strcmp(path, "iova"))
		return STAT_MAPPINGS_IOVA;
	if (!strcmp(path, "direct"))
		return STAT_MAPPINGS_DIRECT;
	if (!strcmp(path, "bounce"))
		return STAT_MAPPINGS_BOUNCE;
	return -1;
}

static void *map(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

static void count_io(struct nvme_state *s, bool write, __u64 len)
{
	if (write)
		s->tally.written += len;
	else
		s->tally.read += len;
	s->tally.requests += (len + s->max_request - 1) / s->max_request;
	s->moved += len;
	s->ios++;
}

/* An O_DIRECT transfer that must move all @len bytes. */
static bool dio(struct __test_metadata *_metadata, struct nvme_state *s, bool write, void *buf,
		__u64 len, __u64 pos)
{
	ssize_t done = write ? pwrite(s->fd, buf, len, pos) : pread(s->fd, buf, len, pos);

	if (done == (ssize_t)len) {
		count_io(s, write, len);
		return true;
	}
	TH_LOG("O_DIRECT %s of %llu bytes at %llu, buffer %p (page offset %llu): %s",
	       write ? "write" : "read", (unsigned long long)len, (unsigned long long)pos, buf,
	       (unsigned long long)((uintptr_t)buf % page_size),
	       done < 0 ? strerror(errno) : "short transfer");
	return false;
}

/*
 * Writes random data from @wbuf at @pos and reads it back into @rbuf,
 * filled with other data first so that a read that moves nothing fails.
 */
static bool round_trip(struct __test_metadata *_metadata, struct nvme_state *s, void *wbuf,
		       void *rbuf, __u64 len, __u64 pos)
{
	fill_random(wbuf, len, &s->rng);
	fill_random(rbuf, len, &s->rng);
	if (!dio(_metadata, s, true, wbuf, len, pos) || !dio(_metadata, s, false, rbuf, len, pos))
		return false;
	if (same(_metadata, wbuf, rbuf, len, 0, "read back"))
		return true;
	TH_LOG("%llu bytes at %llu, buffers at page offsets %llu and %llu",
	       (unsigned long long)len, (unsigned long long)pos,
	       (unsigned long long)((uintptr_t)wbuf % page_size),
	       (unsigned long long)((uintptr_t)rbuf % page_size));
	return false;
}

/* A random place on the disk for @len bytes, block aligned. */
static __u64 random_pos(struct nvme_state *s, __u64 len)
{
	return random_below(s, (s->size - len) / s->lbs + 1) * s->lbs;
}

/* The swiotlb slots in use; -1 without swiotlb. */
static long long bounce_slots(void)
{
	char value[32];

	return read_file(SWIOTLB_USED, value, sizeof(value)) ? -1 : strtoll(value, NULL, 10);
}

static void stats_begin(struct __test_metadata *_metadata, struct nvme_state *s)
{
	char err[256];

	memset(&s->tally, 0, sizeof(s->tally));
	memset(&s->delta, 0, sizeof(s->delta));
	s->have_before = !nvme_read_stats(target.stats, &s->before, err, sizeof(err));
	if (!s->have_before)
		TH_LOG("%s", err);
	s->bounce_slots = bounce_slots();
}

/*
 * Checks the statistics against what the case moved since stats_begin():
 * the bytes (exactly when the case did nothing but O_DIRECT requests of its
 * own, at least otherwise), at least a request and a mapping per request of
 * at most max_request bytes, every mapping on the expected DMA path, one
 * DMA range and one IOTLB sync per IOVA mapping, a descriptor at least per
 * mapping, no failure, no swiotlb slot left in use. Leaves the differences
 * in s->delta. Without statistics the case fails but goes on, to check the
 * data.
 */
/*
 * Waits up to 10 s until the disk has no request in flight: readahead the
 * case started may still be reading (and holding swiotlb slots).
 */
static bool disk_idle(const char *dev)
{
	const char *name = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;
	unsigned long reads, writes;
	char path[PATH_MAX];
	int tries;

	snprintf(path, sizeof(path), "/sys/block/%s/inflight", name);
	for (tries = 0; tries < 1000; tries++) {
		FILE *f = fopen(path, "r");
		int n = f ? fscanf(f, "%lu %lu", &reads, &writes) : 0;

		if (f)
			fclose(f);
		if (n == 2 && !reads && !writes)
			return true;
		usleep(10000);
	}
	return false;
}

static void stats_check(struct __test_metadata *_metadata, struct nvme_state *s, bool exact)
{
	unsigned long long *d = s->delta.v, mapped;
	struct nvme_stats after;
	char err[256];
	int i;

	EXPECT_TRUE(disk_idle(target.dev)) TH_LOG("requests still in flight after 10 s");
	if (!s->have_before || nvme_read_stats(target.stats, &after, err, sizeof(err))) {
		TH_LOG("%s", s->have_before ? err : "no statistics before the I/O");
		_metadata->exit_code = KSFT_FAIL;
		return;
	}
	for (i = 0; i < NVME_NR_STATS; i++)
		d[i] = after.v[i] - s->before.v[i];
	TH_LOG("requests +%llu, write_bytes +%llu, read_bytes +%llu, flushes +%llu",
	       d[STAT_REQUESTS], d[STAT_WRITE_BYTES], d[STAT_READ_BYTES], d[STAT_FLUSHES]);
	TH_LOG("mappings iova +%llu iommu +%llu direct +%llu bounce +%llu, dma_ranges +%llu",
	       d[STAT_MAPPINGS_IOVA], d[STAT_MAPPINGS_IOMMU], d[STAT_MAPPINGS_DIRECT],
	       d[STAT_MAPPINGS_BOUNCE], d[STAT_DMA_RANGES]);
	TH_LOG("iotlb_syncs +%llu, prp_entries +%llu, sgl_data_blocks +%llu",
	       d[STAT_IOTLB_SYNCS], d[STAT_PRP_ENTRIES], d[STAT_SGL_DATA_BLOCKS]);

	if (exact) {
		EXPECT_EQ(s->tally.written, d[STAT_WRITE_BYTES]);
		EXPECT_EQ(s->tally.read, d[STAT_READ_BYTES]);
	} else {
		EXPECT_LE(s->tally.written, d[STAT_WRITE_BYTES]);
		EXPECT_LE(s->tally.read, d[STAT_READ_BYTES]);
	}
	EXPECT_LE(s->tally.requests, d[STAT_REQUESTS]);
	EXPECT_EQ(0, d[STAT_FAILED_REQUESTS]);
	EXPECT_EQ(0, d[STAT_TIMEOUTS]);
	EXPECT_EQ(0, d[STAT_ABORTS]);
	EXPECT_EQ(0, d[STAT_RESETS]);

	if (s->path < 0) {
		TH_LOG("RUST_NVME_DMA_PATH is not iova, direct or bounce");
		_metadata->exit_code = KSFT_FAIL;
		return;
	}
	mapped = d[s->path];
	EXPECT_LE(s->tally.requests, mapped) TH_LOG("%s", nvme_stat_names[s->path]);
	/* The harness's EXPECT_*() are not single statements. */
	for (i = STAT_MAPPINGS_IOVA; i <= STAT_MAPPINGS_BOUNCE; i++) {
		if (i != s->path) {
			EXPECT_EQ(0, d[i]) TH_LOG("%s grew, expected only %s", nvme_stat_names[i],
						  nvme_stat_names[s->path]);
		}
	}
	/* Only data requests map memory; flushes do not. */
	EXPECT_LE(mapped, d[STAT_REQUESTS]);
	if (s->path == STAT_MAPPINGS_IOVA) {
		EXPECT_EQ(mapped, d[STAT_DMA_RANGES]) TH_LOG("one IOVA range per mapping");
		EXPECT_EQ(mapped, d[STAT_IOTLB_SYNCS]) TH_LOG("one sync per IOVA mapping");
	} else {
		EXPECT_LE(mapped, d[STAT_DMA_RANGES]);
		EXPECT_EQ(0, d[STAT_IOTLB_SYNCS]);
	}
	EXPECT_LE(mapped, d[STAT_PRP_ENTRIES] + d[STAT_SGL_DATA_BLOCKS]);
	EXPECT_EQ(s->bounce_slots, bounce_slots()) TH_LOG("swiotlb slots in use");
}

/* A field of /proc/self/smaps for the mapping holding @addr, in kB; -1 if none. */
static long smaps_kb(void *addr, const char *field)
{
	unsigned long start, end, value;
	bool inside = false;
	long found = -1;
	char line[512];
	FILE *f = fopen("/proc/self/smaps", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2)
			inside = start <= (uintptr_t)addr && (uintptr_t)addr < end;
		else if (inside && !strncmp(line, field, strlen(field)) &&
			 sscanf(line + strlen(field), "%lu", &value) == 1)
			found = value;
	}
	fclose(f);
	return found;
}

/* Physically contiguous runs of the pages of @buf; 0 if a PFN is unknown. */
static long phys_runs(const void *buf, size_t len)
{
	uintptr_t first = (uintptr_t)buf / page_size;
	uintptr_t last = ((uintptr_t)buf + len - 1) / page_size, page;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	__u64 entry, pfn, prev = 0;
	long runs = 0;

	if (fd < 0)
		return 0;
	for (page = first; page <= last; page++) {
		if (pread(fd, &entry, sizeof(entry), page * sizeof(entry)) != sizeof(entry) ||
		    !(entry >> 63) || !(entry & PFN_MASK)) {
			runs = 0;
			break;
		}
		pfn = entry & PFN_MASK;
		if (page == first || pfn != prev + 1)
			runs++;
		prev = pfn;
	}
	close(fd);
	return runs;
}

FIXTURE(nvme)
{
	struct nvme_state n;
};

/* Binds the controller and opens its block device, which the case uses. */
static void open_disk(struct __test_metadata *_metadata, struct nvme_state *s)
{
	char err[256];
	long long max_kb;
	unsigned int lbs;

	ASSERT_EQ(0, nvme_attach(&target, s->bdf, sizeof(s->bdf), err, sizeof(err)))
		TH_LOG("%s", err);
	s->fd = open(target.dev, O_RDWR | O_DIRECT);
	ASSERT_LE(0, s->fd) TH_LOG("%s: %s", target.dev, strerror(errno));
	ASSERT_EQ(0, ioctl(s->fd, BLKGETSIZE64, &s->size));
	ASSERT_EQ(0, ioctl(s->fd, BLKSSZGET, &lbs));
	s->lbs = lbs;
	max_kb = queue_limit("max_sectors_kb");
	s->max_segments = queue_limit("max_segments");
	s->dma_alignment = queue_limit("dma_alignment");
	/* What every case computes with; the device case checks the rest. */
	ASSERT_TRUE(s->lbs >= 512 && !(s->lbs & (s->lbs - 1))) TH_LOG("block size %llu", s->lbs);
	ASSERT_LE(4, max_kb) TH_LOG("max_sectors_kb %lld", max_kb);
	s->max_request = max_kb * KIB;
	ASSERT_LE(1, (long long)s->max_segments);
	ASSERT_TRUE(s->dma_alignment < s->lbs && !(s->dma_alignment & (s->dma_alignment + 1)))
		TH_LOG("dma_alignment %lld", (long long)s->dma_alignment);
	ASSERT_LE(64 * MIB, s->size);
}

FIXTURE_SETUP(nvme)
{
	struct nvme_state *s = &self->n;
	const char *name = _metadata->name;
	__u64 hash = 0;

	s->fd = -1;
	clock_gettime(CLOCK_MONOTONIC, &s->start);
	s->path = expected_path();
	while (*name)
		hash = (hash ^ (unsigned char)*name++) * 0x100000001b3ULL;
	s->rng = splitmix64(run_seed ^ hash) | 1;
	TH_LOG("random data of RUST_NVME_DMA_RANDOM_SEED=%llu", (unsigned long long)run_seed);
	open_disk(_metadata, s);
}

FIXTURE_TEARDOWN(nvme)
{
	struct nvme_state *s = &self->n;
	char path[PATH_MAX], err[256];
	struct timespec now;

	if (s->fd >= 0)
		close(s->fd);
	snprintf(path, sizeof(path), PCI_DRIVERS "/%s/bind", target.driver);
	if (s->unbound && nvme_write_file(path, s->bdf))
		TH_LOG("cannot bind %s again: %s", s->bdf, strerror(errno));
	if (s->unloaded && nvme_attach(&target, s->bdf, sizeof(s->bdf), err, sizeof(err)))
		TH_LOG("cannot load %s again: %s", target.driver, err);
	if (s->nr_hugepages[0] && nvme_write_file(NR_HUGEPAGES, s->nr_hugepages))
		TH_LOG("cannot restore %s: %s", NR_HUGEPAGES, strerror(errno));
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (s->ios)
		TH_LOG("%llu transfers moved %llu KiB in %ld ms", (unsigned long long)s->ios,
		       (unsigned long long)(s->moved >> 10),
		       (now.tv_sec - s->start.tv_sec) * 1000 +
		       (now.tv_nsec - s->start.tv_nsec) / 1000000);
}

TEST_F_TIMEOUT(nvme, device, 60)
{
	struct nvme_state *s = &self->n;
	char path[PATH_MAX], value[64], err[256];
	long long max_kb, max_hw_kb;
	struct nvme_stats stats;
	__u64 disk_bytes = 0;
	unsigned int pbs;
	struct stat st;
	int i;

	max_kb = queue_limit("max_sectors_kb");
	max_hw_kb = queue_limit("max_hw_sectors_kb");
	ASSERT_EQ(0, read_queue_file("write_cache", value, sizeof(value)));
	ksft_print_msg("%s at %s: %llu bytes, %llu-byte blocks, %s cache\n", target.dev,
		       s->bdf, (unsigned long long)s->size, (unsigned long long)s->lbs, value);
	ksft_print_msg("requests up to %lld KiB (hardware %lld KiB) and %llu segments\n",
		       max_kb, max_hw_kb, (unsigned long long)s->max_segments);
	ksft_print_msg("DMA alignment mask %llu, swiotlb slots in use %lld\n",
		       (unsigned long long)s->dma_alignment, bounce_slots());

	ASSERT_EQ(0, stat(target.dev, &st));
	EXPECT_TRUE(S_ISBLK(st.st_mode));
	EXPECT_EQ(0, getenv_u64("RUST_NVME_DMA_DISK_BYTES", &disk_bytes))
		TH_LOG("RUST_NVME_DMA_DISK_BYTES not set to a number");
	EXPECT_EQ(disk_bytes, s->size);
	EXPECT_EQ(512, s->lbs);
	ASSERT_EQ(0, ioctl(s->fd, BLKPBSZGET, &pbs));
	EXPECT_TRUE(pbs >= s->lbs && !(pbs & (pbs - 1))) TH_LOG("physical block size %u", pbs);
	EXPECT_LE(max_kb, max_hw_kb);
	/* QEMU's controller has a volatile write cache: flushes must reach it. */
	EXPECT_STREQ("write back", value);
	snprintf(path, sizeof(path), PCI_DRIVERS "/%s/%s", target.driver, s->bdf);
	EXPECT_EQ(0, access(path, F_OK)) TH_LOG("%s not bound to %s", s->bdf, target.driver);
	EXPECT_LE(0, s->path) TH_LOG("RUST_NVME_DMA_PATH is not iova, direct or bounce");

	ASSERT_EQ(0, nvme_read_stats(target.stats, &stats, err, sizeof(err))) TH_LOG("%s", err);
	for (i = 0; i < NVME_NR_STATS; i++)
		ksft_print_msg("%s %llu\n", nvme_stat_names[i], stats.v[i]);
}

/*
 * O_DIRECT round trips of many sizes, from one block to several MiB (split
 * by the block layer into requests of max_request bytes), at many places in
 * pages and on the disk.
 */
TEST_F_TIMEOUT(nvme, sizes, 120)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->lbs, mr = s->max_request;
	__u64 sizes[] = { bs, 2 * bs, 7 * bs, 8 * bs, 9 * bs, 4 * KIB + bs, 64 * KIB, mr - bs,
			  mr, mr + bs, 3 * mr + 5 * bs, 4 * MIB + 4 * KIB, 6 * MIB + bs,
			  0, 0, 0, 0 };
	/* Last: any address O_DIRECT takes, if some is not block aligned. */
	__u64 offsets[] = { 0, bs, page_size - bs, 3 * bs, s->dma_alignment + 1 };
	unsigned int nr_offsets = ARRAY_SIZE(offsets) - (s->dma_alignment + 1 == bs);
	size_t buf_size = MIB;
	char *wbuf, *rbuf;
	unsigned int i, j;
	__u64 len;

	for (i = 0; i < ARRAY_SIZE(sizes); i++)
		buf_size = sizes[i] > buf_size ? sizes[i] : buf_size;
	buf_size += page_size;
	wbuf = map(buf_size, PROT_READ | PROT_WRITE);
	rbuf = map(buf_size, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(wbuf && rbuf);
	stats_begin(_metadata, s);
	for (i = 0; i < ARRAY_SIZE(sizes); i++) {
		/* The zeros: random sizes up to 1 MiB. */
		len = sizes[i] ?: (1 + random_below(s, MIB / bs)) * bs;
		for (j = 0; j < nr_offsets; j++) {
			/* Above 64 KiB, one place each. */
			if (len > 64 * KIB && j != i % nr_offsets)
				continue;
			ASSERT_TRUE(round_trip(_metadata, s, wbuf + offsets[j], rbuf + offsets[j],
					       len, random_pos(s, len)));
		}
	}
	stats_check(_metadata, s, true);
	munmap(wbuf, buf_size);
	munmap(rbuf, buf_size);
}

/*
 * Requests the block layer does not split, counted exactly: a request and
 * a mapping on the expected DMA path each, one IOVA range and one IOTLB
 * sync each on the IOVA path.
 */
TEST_F_TIMEOUT(nvme, dma_path, 60)
{
	struct nvme_state *s = &self->n;
	__u64 len = min_u64(min_u64(64 * KIB, s->max_request), s->max_segments * page_size);
	unsigned int i, rounds = 8;
	unsigned long long *d = s->delta.v;
	char *wbuf, *rbuf;

	len -= len % page_size;
	wbuf = map(len, PROT_READ | PROT_WRITE);
	rbuf = map(len, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(wbuf && rbuf);
	stats_begin(_metadata, s);
	/* Page aligned on the disk too: requests are cut at physical blocks. */
	for (i = 0; i < rounds; i++)
		ASSERT_TRUE(round_trip(_metadata, s, wbuf, rbuf, len,
				       random_pos(s, len) / page_size * page_size));
	stats_check(_metadata, s, true);
	ASSERT_LE(0, s->path);
	ksft_print_msg("%u requests of %llu bytes: %llu %s, %llu DMA ranges, %llu IOTLB syncs\n",
		       2 * rounds, (unsigned long long)len, d[s->path], nvme_stat_names[s->path],
		       d[STAT_DMA_RANGES], d[STAT_IOTLB_SYNCS]);
	EXPECT_EQ(2 * rounds, d[STAT_REQUESTS]);
	EXPECT_EQ(2 * rounds, d[s->path]);
	EXPECT_EQ(0, d[STAT_FLUSHES]);
	EXPECT_EQ(0, d[STAT_DISCARDS]);
	EXPECT_EQ(0, d[STAT_WRITE_ZEROES]);
	munmap(wbuf, len);
	munmap(rbuf, len);
}

/*
 * Heap memory: posix_memalign()ed buffers, and malloc()ed ones small enough
 * to come from the brk heap, block aligned.
 */
TEST_F_TIMEOUT(nvme, heap, 60)
{
	struct nvme_state *s = &self->n;
	__u64 lens[] = { s->lbs, 37 * s->lbs, 64 * KIB, 300 * KIB, MIB + s->lbs };
	size_t size = MIB + 2 * page_size, small = 64 * KIB + 3 * s->lbs;
	char *aligned_w, *aligned_r, *heap_w, *heap_r, *w, *r;
	unsigned int i;

	ASSERT_EQ(0, posix_memalign((void **)&aligned_w, page_size, size));
	ASSERT_EQ(0, posix_memalign((void **)&aligned_r, page_size, size));
	heap_w = malloc(small);
	heap_r = malloc(small);
	ASSERT_TRUE(heap_w && heap_r);
	/* Whatever malloc() gave, at the next block boundary and one further. */
	w = (char *)(((uintptr_t)heap_w + s->lbs - 1) & ~(uintptr_t)(s->lbs - 1)) + s->lbs;
	r = (char *)(((uintptr_t)heap_r + s->lbs - 1) & ~(uintptr_t)(s->lbs - 1));
	stats_begin(_metadata, s);
	for (i = 0; i < ARRAY_SIZE(lens); i++) {
		ASSERT_TRUE(round_trip(_metadata, s, aligned_w, aligned_r + (i % 2) * s->lbs,
				       lens[i], random_pos(s, lens[i])));
		if (lens[i] <= 64 * KIB)
			ASSERT_TRUE(round_trip(_metadata, s, w, r, lens[i],
					       random_pos(s, lens[i])));
	}
	stats_check(_metadata, s, true);
	free(aligned_w);
	free(aligned_r);
	free(heap_w);
	free(heap_r);
}

/*
 * Round trips through @wbuf and @rbuf, each two huge pages: a whole huge
 * page (on the direct path one DMA range per request: each lies in one
 * physically contiguous page), then 2 MiB across the two huge pages at a
 * block offset, then both.
 */
static void huge_round_trips(struct __test_metadata *_metadata, struct nvme_state *s,
			     char *wbuf, char *rbuf)
{
	const struct {
		__u64 offset, len;
	} pieces[] = {
		{ 0, HUGE_SIZE },
		{ HUGE_SIZE / 2 + s->lbs, HUGE_SIZE },
		{ 0, 2 * HUGE_SIZE },
	};
	unsigned long long *d = s->delta.v;
	unsigned int i;
	__u64 pos;

	for (i = 0; i < ARRAY_SIZE(pieces); i++) {
		pos = random_below(s, s->size / HUGE_SIZE - 1) * HUGE_SIZE;
		stats_begin(_metadata, s);
		ASSERT_TRUE(round_trip(_metadata, s, wbuf + pieces[i].offset,
				       rbuf + pieces[i].offset, pieces[i].len, pos));
		stats_check(_metadata, s, true);
		if (i || s->path != STAT_MAPPINGS_DIRECT)
			continue;
		EXPECT_EQ(d[STAT_MAPPINGS_DIRECT], d[STAT_DMA_RANGES])
			TH_LOG("a request within a huge page is one physical range");
	}
}

TEST_F_TIMEOUT(nvme, thp, 60)
{
	struct nvme_state *s = &self->n;
	size_t size = 3 * HUGE_SIZE;
	char value[128], *areas[2], *bufs[2];
	long kb;
	int i;

	ASSERT_EQ(0, read_file(THP_ENABLED, value, sizeof(value)));
	ASSERT_EQ(NULL, strstr(value, "[never]")) TH_LOG("THP disabled: %s", value);
	for (i = 0; i < 2; i++) {
		areas[i] = map(size, PROT_READ | PROT_WRITE);
		ASSERT_NE(NULL, areas[i]);
		bufs[i] = (char *)(((uintptr_t)areas[i] + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1));
		ASSERT_EQ(0, madvise(bufs[i], 2 * HUGE_SIZE, MADV_HUGEPAGE))
			TH_LOG("MADV_HUGEPAGE: %s", strerror(errno));
		memset(bufs[i], 0x5a, 2 * HUGE_SIZE);
		kb = smaps_kb(bufs[i], "AnonHugePages:");
		TH_LOG("buffer %d: AnonHugePages %ld kB", i, kb);
		/* Both huge pages, or the single range check would not hold. */
		ASSERT_EQ((long)(2 * HUGE_SIZE >> 10), kb) TH_LOG("no transparent huge pages");
	}
	huge_round_trips(_metadata, s, bufs[0], bufs[1]);
	for (i = 0; i < 2; i++)
		munmap(areas[i], size);
}

TEST_F_TIMEOUT(nvme, hugetlb, 60)
{
	struct nvme_state *s = &self->n;
	size_t size = 2 * HUGE_SIZE;
	char value[32], *bufs[2];
	int i;

	ASSERT_EQ(0, read_file(NR_HUGEPAGES, s->nr_hugepages, sizeof(s->nr_hugepages)));
	ASSERT_EQ(0, nvme_write_file(NR_HUGEPAGES, "8"))
		TH_LOG("%s: %s", NR_HUGEPAGES, strerror(errno));
	ASSERT_EQ(0, read_file(NR_HUGEPAGES, value, sizeof(value)));
	TH_LOG("nr_hugepages %s (was %s)", value, s->nr_hugepages);
	for (i = 0; i < 2; i++) {
		bufs[i] = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		ASSERT_NE(MAP_FAILED, bufs[i]) TH_LOG("MAP_HUGETLB: %s", strerror(errno));
		memset(bufs[i], 0x5a, size);
		EXPECT_EQ((long)(size >> 10), smaps_kb(bufs[i], "Private_Hugetlb:"));
	}
	huge_round_trips(_metadata, s, bufs[0], bufs[1]);
	for (i = 0; i < 2; i++)
		munmap(bufs[i], size);
}

/*
 * A buffer of @pages pages made of every other page of a faulted-in mapping
 * twice as large, moved together with mremap(), in @reverse order or not:
 * however the allocator handed out the pages, no two that follow each
 * other in the buffer are physically adjacent.
 */
static char *scattered_buffer(struct __test_metadata *_metadata, size_t pages, bool reverse)
{
	size_t len = pages * page_size, i, from;
	char *source, *buf;
	void *moved;

	source = map(2 * len, PROT_READ | PROT_WRITE);
	buf = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!source || buf == MAP_FAILED || madvise(source, 2 * len, MADV_NOHUGEPAGE))
		return NULL;
	memset(source, 0x5a, 2 * len);
	for (i = 0; i < pages; i++) {
		from = 2 * (reverse ? pages - 1 - i : i);
		moved = mremap(source + from * page_size, page_size, page_size,
			       MREMAP_MAYMOVE | MREMAP_FIXED, buf + i * page_size);
		if (moved != buf + i * page_size) {
			TH_LOG("mremap: %s", strerror(errno));
			return NULL;
		}
	}
	munmap(source, 2 * len);
	return buf;
}

/*
 * Buffers whose pages are not physically adjacent (scattered_buffer()): on
 * the direct path, every physical run of pages is a DMA range of its own.
 */
TEST_F_TIMEOUT(nvme, scattered, 60)
{
	struct nvme_state *s = &self->n;
	size_t pages = 64, len = pages * page_size;
	unsigned long long *d = s->delta.v;
	char *wbuf, *rbuf;
	long runs;

	wbuf = scattered_buffer(_metadata, pages, false);
	rbuf = scattered_buffer(_metadata, pages, true);
	ASSERT_TRUE(wbuf && rbuf);
	TH_LOG("%zu pages each: %ld and %ld physical runs", pages, phys_runs(wbuf, len),
	       phys_runs(rbuf, len));
	ASSERT_LT(1, phys_runs(wbuf, len)) TH_LOG("no PFNs in /proc/self/pagemap, or contiguous");
	ASSERT_LT(1, phys_runs(rbuf, len)) TH_LOG("no PFNs in /proc/self/pagemap, or contiguous");
	runs = phys_runs(wbuf, len) + phys_runs(rbuf, len);

	stats_begin(_metadata, s);
	ASSERT_TRUE(round_trip(_metadata, s, wbuf, rbuf, len, random_pos(s, len)));
	stats_check(_metadata, s, true);
	if (s->path == STAT_MAPPINGS_DIRECT)
		EXPECT_LE(runs, d[STAT_DMA_RANGES]);
	stats_begin(_metadata, s);
	ASSERT_TRUE(round_trip(_metadata, s, wbuf + s->lbs, rbuf + 3 * s->lbs,
			       len - 4 * s->lbs, random_pos(s, len)));
	stats_check(_metadata, s, true);
	munmap(wbuf, len);
	munmap(rbuf, len);
}

/*
 * Page-cache pages as the buffers: a shared mapping of a tmpfs file. What
 * the device wrote into the pages is what the file holds.
 */
TEST_F_TIMEOUT(nvme, page_cache, 60)
{
	struct nvme_state *s = &self->n;
	size_t len = MIB - s->lbs, file_size = 2 * MIB + 4 * page_size;
	char path[] = "/tmp/nvme_dma.XXXXXX", *file, *wbuf, *rbuf, *check;
	__u64 pos = random_pos(s, len);
	int fd;

	fd = mkstemp(path);
	ASSERT_LE(0, fd) TH_LOG("mkstemp: %s", strerror(errno));
	unlink(path);
	ASSERT_EQ(0, ftruncate(fd, file_size));
	file = mmap(NULL, file_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	check = map(len, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(file != MAP_FAILED && check);
	wbuf = file + page_size;
	rbuf = file + MIB + 2 * page_size + s->lbs;

	stats_begin(_metadata, s);
	ASSERT_TRUE(round_trip(_metadata, s, wbuf, rbuf, len, pos));
	stats_check(_metadata, s, true);
	ASSERT_EQ((ssize_t)len, pread(fd, check, len, rbuf - file));
	EXPECT_TRUE(same(_metadata, wbuf, check, len, 0, "file read after the device wrote"));
	munmap(file, file_size);
	munmap(check, len);
	close(fd);
}

/*
 * Vectored I/O: written from segments of many sizes and places, one longer
 * than a request, read back through other segments; then many one-block
 * segments, a request's worth of segments and more.
 */
TEST_F_TIMEOUT(nvme, vectors, 60)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->lbs, offsets[] = { 0, bs, 2 * bs, 0, page_size - bs, 0 };
	__u64 lens[] = { bs, 8 * bs, 3 * bs, 64 * KIB, 5 * bs, s->max_request + bs };
	__u64 read_lens[] = { 9 * bs, 64 * KIB - bs };
	struct iovec wv[ARRAY_SIZE(lens)], rv[ARRAY_SIZE(read_lens) + 1];
	size_t size = s->max_request + 2 * page_size, total = 0, done, small_size;
	unsigned int i, nr_small = min_u64(2 * s->max_segments + 3, IOV_MAX);
	char *wbufs[ARRAY_SIZE(lens)], *rbufs[ARRAY_SIZE(rv)], *want, *got;
	char *small_w, *small_r;
	struct iovec *small;
	__u64 pos;

	for (i = 0; i < ARRAY_SIZE(lens); i++) {
		wbufs[i] = map(size, PROT_READ | PROT_WRITE);
		ASSERT_NE(NULL, wbufs[i]);
		wv[i] = (struct iovec){ wbufs[i] + offsets[i], lens[i] };
		fill_random(wv[i].iov_base, lens[i], &s->rng);
		total += lens[i];
	}
	want = map(total, PROT_READ | PROT_WRITE);
	got = map(total, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(want && got);
	for (i = 0, done = 0; i < ARRAY_SIZE(lens); done += lens[i++])
		memcpy(want + done, wv[i].iov_base, lens[i]);
	/* The last read segment takes the rest. */
	for (i = 0, done = 0; i < ARRAY_SIZE(rv); i++) {
		rbufs[i] = map(total + page_size, PROT_READ | PROT_WRITE);
		ASSERT_NE(NULL, rbufs[i]);
		rv[i].iov_base = rbufs[i] + (i + 1) * bs;
		rv[i].iov_len = i < ARRAY_SIZE(read_lens) ? read_lens[i] : total - done;
		done += rv[i].iov_len;
	}

	stats_begin(_metadata, s);
	pos = random_pos(s, total);
	ASSERT_EQ((ssize_t)total, pwritev(s->fd, wv, ARRAY_SIZE(wv), pos))
		TH_LOG("pwritev: %s", strerror(errno));
	count_io(s, true, total);
	ASSERT_EQ((ssize_t)total, preadv(s->fd, rv, ARRAY_SIZE(rv), pos))
		TH_LOG("preadv: %s", strerror(errno));
	count_io(s, false, total);
	for (i = 0, done = 0; i < ARRAY_SIZE(rv); done += rv[i++].iov_len)
		memcpy(got + done, rv[i].iov_base, rv[i].iov_len);
	EXPECT_TRUE(same(_metadata, want, got, total, 0, "read back through other segments"));

	/* Every other block of a buffer: more segments than a request takes. */
	small_size = 2 * nr_small * bs;
	small = calloc(nr_small, sizeof(*small));
	small_w = map(small_size, PROT_READ | PROT_WRITE);
	small_r = map(small_size, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(small && small_w && small_r);
	fill_random(small_w, small_size, &s->rng);
	for (i = 0; i < nr_small; i++)
		small[i] = (struct iovec){ small_w + 2 * i * bs, bs };
	pos = random_pos(s, nr_small * bs);
	ASSERT_EQ((ssize_t)(nr_small * bs), pwritev(s->fd, small, nr_small, pos))
		TH_LOG("pwritev of %u segments: %s", nr_small, strerror(errno));
	count_io(s, true, nr_small * bs);
	ASSERT_TRUE(dio(_metadata, s, false, small_r, nr_small * bs, pos));
	for (i = 0; i < nr_small; i++) {
		ASSERT_TRUE(same(_metadata, small[i].iov_base, small_r + i * bs, bs, i * bs,
				 "segment read back"));
	}
	stats_check(_metadata, s, true);

	free(small);
	munmap(small_w, small_size);
	munmap(small_r, small_size);
	for (i = 0; i < ARRAY_SIZE(wbufs); i++)
		munmap(wbufs[i], size);
	for (i = 0; i < ARRAY_SIZE(rbufs); i++)
		munmap(rbufs[i], total + page_size);
	munmap(want, total);
	munmap(got, total);
}

/*
 * Requests of segments shorter than a page, as the buffer heads of small
 * file system blocks make them: the first ends a page, the middle one is a
 * whole page, the last starts a page, so that the block layer keeps them in
 * one request (PRPs can describe them). Read back through the same layout
 * and into one buffer.
 */
TEST_F_TIMEOUT(nvme, sub_page_segments, 60)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->lbs, lens[] = { bs, 2 * bs, page_size - bs }, len, pos;
	size_t size = 3 * page_size;
	char *wpages = map(size, PROT_READ | PROT_WRITE);
	char *rpages = map(size, PROT_READ | PROT_WRITE);
	char *flat = map(size, PROT_READ | PROT_WRITE);
	unsigned long long *d = s->delta.v;
	struct iovec wv[3], rv[3];
	unsigned int i, j;
	size_t done;

	ASSERT_TRUE(wpages && rpages && flat);
	stats_begin(_metadata, s);
	for (i = 0; i < ARRAY_SIZE(lens); i++) {
		len = lens[i];
		wv[0] = (struct iovec){ wpages + page_size - len, len };
		wv[1] = (struct iovec){ wpages + page_size, page_size };
		wv[2] = (struct iovec){ wpages + 2 * page_size, len };
		for (j = 0; j < 3; j++)
			rv[j] = (struct iovec){ rpages + ((char *)wv[j].iov_base - wpages),
						wv[j].iov_len };
		fill_random(wpages, size, &s->rng);
		fill_random(rpages, size, &s->rng);
		pos = random_pos(s, 2 * len + page_size);
		ASSERT_EQ((ssize_t)(2 * len + page_size), pwritev(s->fd, wv, 3, pos))
			TH_LOG("pwritev of %llu-byte segments: %s", len, strerror(errno));
		count_io(s, true, 2 * len + page_size);
		ASSERT_EQ((ssize_t)(2 * len + page_size), preadv(s->fd, rv, 3, pos))
			TH_LOG("preadv of %llu-byte segments: %s", len, strerror(errno));
		count_io(s, false, 2 * len + page_size);
		ASSERT_TRUE(dio(_metadata, s, false, flat, 2 * len + page_size, pos));
		for (j = 0, done = 0; j < 3; done += wv[j++].iov_len) {
			EXPECT_TRUE(same(_metadata, wv[j].iov_base, rv[j].iov_base, wv[j].iov_len,
					 done, "segment read back"));
			EXPECT_TRUE(same(_metadata, wv[j].iov_base, flat + done, wv[j].iov_len,
					 done, "segment read back in one buffer"));
		}
	}
	stats_check(_metadata, s, true);
	EXPECT_EQ(3 * ARRAY_SIZE(lens), d[STAT_REQUESTS]) TH_LOG("one request per transfer");
	munmap(wpages, size);
	munmap(rpages, size);
	munmap(flat, size);
}

/*
 * Submits @nr O_DIRECT transfers of @len bytes from @bufs to consecutive
 * places from @pos with one io_submit(), under one plug, and waits for them.
 */
static bool aio_batch(struct __test_metadata *_metadata, struct nvme_state *s, bool write,
		      char **bufs, unsigned int nr, __u64 len, __u64 pos)
{
	struct iocb iocbs[16], *list[16];
	struct io_event events[16];
	aio_context_t ctx = 0;
	unsigned int i;
	long done = 0;

	if (nr > ARRAY_SIZE(iocbs) || syscall(SYS_io_setup, nr, &ctx)) {
		TH_LOG("io_setup: %s", strerror(errno));
		return false;
	}
	for (i = 0; i < nr; i++) {
		iocbs[i] = (struct iocb){
			.aio_lio_opcode = write ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD,
			.aio_fildes = s->fd,
			.aio_buf = (uintptr_t)bufs[i],
			.aio_nbytes = len,
			.aio_offset = pos + i * len,
		};
		list[i] = &iocbs[i];
	}
	if (syscall(SYS_io_submit, ctx, nr, list) != nr)
		TH_LOG("io_submit: %s", strerror(errno));
	else
		done = syscall(SYS_io_getevents, ctx, nr, nr, events, NULL);
	for (i = 0; i < done; i++) {
		if (events[i].res != (__s64)len) {
			TH_LOG("transfer %u of the batch: %lld", i, (long long)events[i].res);
			done = 0;
		}
	}
	syscall(SYS_io_destroy, ctx);
	if (done != nr)
		return false;
	count_io(s, write, nr * len);
	return true;
}

/*
 * Writes @nr transfers of @len bytes from @wbufs and reads them back into
 * @rbufs, each batch with aio_batch(), then into one buffer: the block layer
 * merges the transfers into fewer requests of several bios.
 */
static void merged_round_trip(struct __test_metadata *_metadata, struct nvme_state *s,
			      char **wbufs, char **rbufs, unsigned int nr, __u64 len)
{
	__u64 pos = random_pos(s, nr * len);
	unsigned long long *d = s->delta.v;
	char *flat = map(nr * len, PROT_READ | PROT_WRITE);
	unsigned int i;

	ASSERT_NE(NULL, flat);
	for (i = 0; i < nr; i++) {
		fill_random(wbufs[i], len, &s->rng);
		fill_random(rbufs[i], len, &s->rng);
	}
	stats_begin(_metadata, s);
	ASSERT_TRUE(aio_batch(_metadata, s, true, wbufs, nr, len, pos));
	ASSERT_TRUE(aio_batch(_metadata, s, false, rbufs, nr, len, pos));
	ASSERT_TRUE(dio(_metadata, s, false, flat, nr * len, pos));
	for (i = 0; i < nr; i++) {
		EXPECT_TRUE(same(_metadata, wbufs[i], rbufs[i], len, i * len, "read back"));
		EXPECT_TRUE(same(_metadata, wbufs[i], flat + i * len, len, i * len,
				 "read back in one buffer"));
	}
	stats_check(_metadata, s, true);
	EXPECT_GT(2 * nr + 1, d[STAT_REQUESTS]) TH_LOG("no bios merged");
	munmap(flat, nr * len);
}

/*
 * Requests of several bios: transfers to consecutive places submitted
 * together. From buffers of their own (other pages), then from consecutive
 * blocks of one page, which make a request of physically contiguous pieces
 * that do not end pages, as buffer heads of small blocks make them.
 */
TEST_F_TIMEOUT(nvme, merged_bios, 60)
{
	struct nvme_state *s = &self->n;
	char *wbufs[8], *rbufs[8], *wpage, *rpage;
	unsigned int i, nr = ARRAY_SIZE(wbufs);
	__u64 len = 2 * page_size;

	for (i = 0; i < nr; i++) {
		wbufs[i] = map(len, PROT_READ | PROT_WRITE);
		rbufs[i] = map(len, PROT_READ | PROT_WRITE);
		ASSERT_TRUE(wbufs[i] && rbufs[i]);
	}
	merged_round_trip(_metadata, s, wbufs, rbufs, nr, len);
	for (i = 0; i < nr; i++) {
		munmap(wbufs[i], len);
		munmap(rbufs[i], len);
	}

	wpage = map(page_size, PROT_READ | PROT_WRITE);
	rpage = map(page_size, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(wpage && rpage);
	nr = min_u64(nr, page_size / s->lbs);
	for (i = 0; i < nr; i++) {
		wbufs[i] = wpage + i * s->lbs;
		rbufs[i] = rpage + i * s->lbs;
	}
	merged_round_trip(_metadata, s, wbufs, rbufs, nr, s->lbs);
	munmap(wpage, page_size);
	munmap(rpage, page_size);
}

/*
 * Buffered I/O, through the block device's page cache: written at an
 * unaligned place, synced (a flush reaches the write cache), dropped from
 * the cache and read again from the device; then an O_DIRECT write, seen by
 * the next buffered read.
 */
TEST_F_TIMEOUT(nvme, buffered, 60)
{
	struct nvme_state *s = &self->n;
	/* The span is whole pages around the unaligned range. */
	size_t len = 300 * KIB + 123, span = (len / page_size + 3) * page_size;
	__u64 start = random_pos(s, span) / page_size * page_size;
	__u64 pos = start + page_size + 100;
	unsigned long long *d = s->delta.v;
	char *want, *got, *direct;
	int fd;

	fd = open(target.dev, O_RDWR);
	ASSERT_LE(0, fd) TH_LOG("%s: %s", target.dev, strerror(errno));
	want = map(span, PROT_READ | PROT_WRITE);
	got = map(span, PROT_READ | PROT_WRITE);
	direct = map(span, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(want && got && direct);

	/* What the device holds around the range, then the buffered write. */
	ASSERT_TRUE(dio(_metadata, s, false, want, span, start));
	fill_random(want + (pos - start), len, &s->rng);
	stats_begin(_metadata, s);
	ASSERT_EQ((ssize_t)len, pwrite(fd, want + (pos - start), len, pos));
	ASSERT_EQ(0, fsync(fd)) TH_LOG("fsync: %s", strerror(errno));
	s->tally.written = len;
	s->tally.requests = 1;
	stats_check(_metadata, s, false);
	EXPECT_LE(1, d[STAT_FLUSHES]) TH_LOG("fsync sent no flush");
	ASSERT_TRUE(dio(_metadata, s, false, direct, span, start));
	EXPECT_TRUE(same(_metadata, want, direct, span, start, "O_DIRECT read after fsync"));

	/* Read again from the device, not from the cache. */
	ASSERT_EQ(0, ioctl(fd, BLKFLSBUF, 0)) TH_LOG("BLKFLSBUF: %s", strerror(errno));
	ASSERT_EQ(0, posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED));
	stats_begin(_metadata, s);
	ASSERT_EQ((ssize_t)span, pread(fd, got, span, start));
	s->tally.read = span;
	s->tally.requests = 1;
	stats_check(_metadata, s, false);
	EXPECT_TRUE(same(_metadata, want, got, span, start, "buffered read after the flush"));

	/* An O_DIRECT write replaces what the cache holds. */
	fill_random(want, span, &s->rng);
	ASSERT_TRUE(dio(_metadata, s, true, want, span, start));
	ASSERT_EQ((ssize_t)span, pread(fd, got, span, start));
	EXPECT_TRUE(same(_metadata, want, got, span, start, "buffered read after O_DIRECT write"));
	close(fd);
	munmap(want, span);
	munmap(got, span);
	munmap(direct, span);
}

/*
 * Write-zeroes and discard, which QEMU's controller offers: the block layer
 * sends them as such (not as writes of zero pages), and zeroed blocks read
 * back as zeros.
 */
TEST_F_TIMEOUT(nvme, zeroes_discard, 60)
{
	struct nvme_state *s = &self->n;
	__u64 len = MIB, range[2] = { random_pos(s, MIB), MIB };
	unsigned long long *d = s->delta.v;
	char *buf = map(len, PROT_READ | PROT_WRITE);
	char *zeros = map(len, PROT_READ | PROT_WRITE);

	ASSERT_TRUE(buf && zeros);
	EXPECT_LT(0, queue_limit("write_zeroes_max_bytes"));
	EXPECT_LT(0, queue_limit("discard_max_bytes"));

	fill_random(buf, len, &s->rng);
	ASSERT_TRUE(dio(_metadata, s, true, buf, len, range[0]));
	stats_begin(_metadata, s);
	ASSERT_EQ(0, ioctl(s->fd, BLKZEROOUT, range)) TH_LOG("BLKZEROOUT: %s", strerror(errno));
	ASSERT_TRUE(dio(_metadata, s, false, buf, len, range[0]));
	/* Whether zeroed or discarded blocks count as written is the driver's choice. */
	stats_check(_metadata, s, false);
	EXPECT_LE(1, d[STAT_WRITE_ZEROES]);
	EXPECT_TRUE(same(_metadata, zeros, buf, len, range[0], "zeroed blocks"));

	stats_begin(_metadata, s);
	ASSERT_EQ(0, ioctl(s->fd, BLKDISCARD, range)) TH_LOG("BLKDISCARD: %s", strerror(errno));
	stats_check(_metadata, s, false);
	EXPECT_LE(1, d[STAT_DISCARDS]);
	munmap(buf, len);
	munmap(zeros, len);
}

/* An O_DIRECT transfer that must fail with @err. */
static void expect_error(struct __test_metadata *_metadata, bool write, int fd, void *buf,
			 __u64 len, __u64 pos, int err)
{
	ssize_t ret = write ? pwrite(fd, buf, len, pos) : pread(fd, buf, len, pos);

	EXPECT_EQ(-1, ret) TH_LOG("%s of %llu bytes at %llu from %p: %zd, expected %s",
				  write ? "write" : "read", (unsigned long long)len,
				  (unsigned long long)pos, buf, ret, strerror(err));
	if (ret == -1) {
		EXPECT_EQ(err, errno) TH_LOG("%s of %llu bytes at %llu from %p: %s, expected %s",
					     write ? "write" : "read", (unsigned long long)len,
					     (unsigned long long)pos, buf, strerror(errno),
					     strerror(err));
	}
}

/*
 * What the block layer refuses or cuts before the driver sees it: lengths,
 * positions and buffers O_DIRECT cannot take, transfers past the end of
 * the disk, memory that is not there or not writable. No request fails in
 * the driver, and the disk holds what the transfers that went through wrote.
 */
TEST_F_TIMEOUT(nvme, errors, 60)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->lbs, end = s->size, guard_len = 8 * page_size, guard = end - guard_len;
	size_t size = guard_len + 4 * page_size;
	char *want = map(size, PROT_READ | PROT_WRITE);
	char *buf = map(size, PROT_READ | PROT_WRITE);
	char *ro = map(4 * page_size, PROT_READ);
	char *hole = map(4 * page_size, PROT_READ | PROT_WRITE);
	char *gone = map(2 * page_size, PROT_READ | PROT_WRITE);
	struct iovec odd[2];
	unsigned int i;
	ssize_t ret;

	ASSERT_TRUE(want && buf && ro && hole && gone);
	ASSERT_EQ(0, munmap(gone, 2 * page_size));
	memset(hole, 0x5a, 4 * page_size);
	ASSERT_EQ(0, munmap(hole + 2 * page_size, page_size));
	fill_random(want, guard_len, &s->rng);
	ASSERT_TRUE(dio(_metadata, s, true, want, guard_len, guard));

	/* A copy of what the failed reads must leave in their buffer. */
	fill_random(buf, 2 * page_size, &s->rng);
	memcpy(buf + 4 * page_size, buf, 2 * page_size);
	stats_begin(_metadata, s);
	for (i = 0; i < 2; i++) {
		expect_error(_metadata, i, s->fd, buf, bs - 1, guard, EINVAL);
		expect_error(_metadata, i, s->fd, buf, bs + 1, guard, EINVAL);
		expect_error(_metadata, i, s->fd, buf, bs, guard + bs / 2, EINVAL);
		/* Misaligned for the device's DMA. */
		if (s->dma_alignment)
			expect_error(_metadata, i, s->fd, buf + 1, bs, guard, EINVAL);
		/* Not there at all. */
		expect_error(_metadata, i, s->fd, gone, bs, guard, EFAULT);
		expect_error(_metadata, i, s->fd, NULL, bs, guard, EFAULT);
	}
	/* Segments that make a block together, each misaligned for DMA. */
	odd[0] = (struct iovec){ buf, 1 };
	odd[1] = (struct iovec){ buf + page_size, bs - 1 };
	if (s->dma_alignment) {
		EXPECT_EQ(-1, pwritev(s->fd, odd, 2, guard));
		EXPECT_EQ(EINVAL, errno);
		EXPECT_EQ(-1, preadv(s->fd, odd, 2, guard));
		EXPECT_EQ(EINVAL, errno);
	}
	EXPECT_TRUE(same(_metadata, buf + 4 * page_size, buf, 2 * page_size, 0,
			 "buffer of the failed reads"));

	/* The device may read a read-only buffer (zeros), not write it. */
	expect_error(_metadata, false, s->fd, ro, 2 * bs, guard, EFAULT);
	ASSERT_TRUE(dio(_metadata, s, true, ro, 2 * bs, guard));
	memset(want, 0, 2 * bs);

	/* At and past the end: nothing; across it: what fits. */
	expect_error(_metadata, true, s->fd, buf, bs, end, ENOSPC);
	expect_error(_metadata, true, s->fd, buf, bs, end + 1024 * bs, ENOSPC);
	EXPECT_EQ(0, pread(s->fd, buf, bs, end));
	EXPECT_EQ(0, pread(s->fd, buf, bs, end + 1024 * bs));
	fill_random(buf, 2 * page_size, &s->rng);
	EXPECT_EQ((ssize_t)page_size, pwrite(s->fd, buf, 2 * page_size, end - page_size));
	count_io(s, true, page_size);
	memcpy(want + guard_len - page_size, buf, page_size);
	EXPECT_EQ((ssize_t)page_size, pread(s->fd, buf + 2 * page_size, 2 * page_size,
					    end - page_size));
	count_io(s, false, page_size);
	EXPECT_TRUE(same(_metadata, buf, buf + 2 * page_size, page_size, end - page_size,
			 "read across the end"));

	/*
	 * A hole after two pages: the block layer moves the blocks before it
	 * or fails with EFAULT, and never touches the blocks after it.
	 */
	ret = pwrite(s->fd, hole, 4 * page_size, guard + 2 * page_size);
	if (ret == -1) {
		EXPECT_EQ(EFAULT, errno);
	} else {
		TH_LOG("write across a hole after %zu bytes: %zd bytes", 2 * page_size, ret);
		ASSERT_TRUE(ret <= (ssize_t)(2 * page_size) && !(ret % bs));
		memcpy(want + 2 * page_size, hole, ret);
		/* Its requests are not known: a buffered write of the rest may follow. */
		s->tally.written += ret;
	}

	ASSERT_TRUE(dio(_metadata, s, false, buf, guard_len, guard));
	EXPECT_TRUE(same(_metadata, want, buf, guard_len, guard, "blocks at the end"));
	stats_check(_metadata, s, true);

	/*
	 * Reading into the hole: the blocks before it, or EFAULT. After the
	 * exact counts: a buffered read of the rest may follow.
	 */
	ret = pread(s->fd, hole, 4 * page_size, guard + 2 * page_size);
	if (ret == -1) {
		EXPECT_EQ(EFAULT, errno);
	} else {
		TH_LOG("read across a hole after %zu bytes: %zd bytes", 2 * page_size, ret);
		ASSERT_TRUE(ret <= (ssize_t)(2 * page_size) && !(ret % bs));
		EXPECT_TRUE(same(_metadata, want + 2 * page_size, hole, ret,
				 guard + 2 * page_size, "read across a hole"));
	}
	munmap(want, size);
	munmap(buf, size);
	munmap(ro, 4 * page_size);
	munmap(hole, 4 * page_size);
}

/* What an io_worker() saw, shared with the parent. */
struct worker_log {
	int ok;			/* verified round trips */
	int err;		/* the errno that ended the worker, 0 if none */
	bool eof;		/* a read found the end of the disk */
	__u64 size_after;	/* the disk's size then */
	char bad[160];		/* what went wrong otherwise */
};

/*
 * Writes and reads back @len bytes at @pos until a transfer fails, a read
 * finds the end of the disk or *@stop is set; the first success is written
 * to @notify. Every read must give what was written.
 */
static int io_worker(struct nvme_state *s, int fd, __u64 len, __u64 pos, int notify,
		     struct worker_log *log, int *stop)
{
	char *wbuf = map(len, PROT_READ | PROT_WRITE);
	char *rbuf = map(len, PROT_READ | PROT_WRITE);
	struct timespec start, now;
	ssize_t done;
	int i;

	if (!wbuf || !rbuf)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (i = 0; !__atomic_load_n(stop, __ATOMIC_RELAXED); i++) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec >= 30) {
			snprintf(log->bad, sizeof(log->bad), "no error in 30 s");
			return 1;
		}
		fill_random(wbuf, len, &s->rng);
		memset(rbuf, 0, len);
		done = pwrite(fd, wbuf, len, pos);
		if (done == (ssize_t)len)
			done = pread(fd, rbuf, len, pos);
		if (done <= 0) {
			log->err = done ? errno : 0;
			log->eof = !done;
			if (ioctl(fd, BLKGETSIZE64, &log->size_after))
				log->size_after = -1;
			return 0;
		}
		if (done != (ssize_t)len) {
			snprintf(log->bad, sizeof(log->bad), "round trip %d: %zd bytes", i, done);
			return 1;
		}
		if (memcmp(wbuf, rbuf, len)) {
			snprintf(log->bad, sizeof(log->bad), "round trip %d read other data", i);
			return 1;
		}
		if (!log->ok++ && write(notify, "", 1) != 1)
			return 1;
	}
	return 0;
}

/* Waits @ms for the workers; those still running then are killed. */
static int wait_workers(struct __test_metadata *_metadata, pid_t *pids, int ms)
{
	int i, status, left = 0, failed = 0;

	for (i = 0; i < WORKERS; i++)
		left += pids[i] > 0;
	for (; left && ms > 0; ms -= 10) {
		for (i = 0; i < WORKERS; i++) {
			if (pids[i] <= 0 || waitpid(pids[i], &status, WNOHANG) != pids[i])
				continue;
			if (!WIFEXITED(status) || WEXITSTATUS(status)) {
				TH_LOG("worker %d: status %#x", i, status);
				failed++;
			}
			pids[i] = 0;
			left--;
		}
		usleep(10000);
	}
	for (i = 0; i < WORKERS; i++) {
		if (pids[i] > 0) {
			TH_LOG("worker %d hangs", i);
			kill(pids[i], SIGKILL);
			failed++;
		}
	}
	return failed;
}

/*
 * Runs io_worker() in WORKERS processes, each on a file of its own, and
 * returns once each has done a round trip.
 */
static int start_workers(struct __test_metadata *_metadata, struct nvme_state *s, __u64 len,
			 pid_t *pids, struct worker_log *logs, int *stop)
{
	int p[2], i, fd, started = 0;
	struct pollfd pfd;
	char c;

	memset(pids, 0, WORKERS * sizeof(*pids));
	if (pipe(p))
		return -1;
	for (i = 0; i < WORKERS; i++) {
		fd = open(target.dev, O_RDWR | O_DIRECT);
		if (fd < 0)
			break;
		pids[i] = fork();
		if (!pids[i]) {
			close(p[0]);
			s->rng = splitmix64(s->rng + i) | 1;
			_exit(io_worker(s, fd, len, i * 4 * MIB, p[1], &logs[i], stop));
		}
		close(fd);
		if (pids[i] < 0)
			break;
		started++;
	}
	close(p[1]);
	pfd = (struct pollfd){ .fd = p[0], .events = POLLIN };
	for (i = 0; i < started && poll(&pfd, 1, 20000) == 1 && read(p[0], &c, 1) == 1; i++)
		;
	close(p[0]);
	if (i == WORKERS)
		return 0;
	TH_LOG("%d of %d workers did a round trip", i, WORKERS);
	__atomic_store_n(stop, 1, __ATOMIC_RELAXED);
	wait_workers(_metadata, pids, 30000);
	return -1;
}

static bool io_error(int err)
{
	return err == EIO || err == ENODEV || err == ENXIO;
}

/*
 * A transfer after the disk went away: an I/O error, or for requests that
 * start after del_gendisk() set its size to 0, what the block layer gives at
 * the end of a disk (ENOSPC for writes, nothing read).
 */
static bool gone(int err, bool eof, __u64 size)
{
	return io_error(err) || ((err == ENOSPC || eof) && !size);
}

/*
 * Unbinds the controller while processes do O_DIRECT I/O: each transfer
 * succeeds with the right data or fails (gone()), none hangs; files still
 * open fail the same way, the device and its statistics go. Bound again,
 * the device works.
 */
TEST_F_TIMEOUT(nvme, unbind_in_flight, 120)
{
	struct nvme_state *s = &self->n;
	__u64 len = min_u64(4 * MIB, 2 * s->max_request);
	struct timespec start, now;
	char path[PATH_MAX];
	struct worker_log *logs;
	int *stop;
	pid_t pids[WORKERS];
	void *shared;
	long long slots;
	__u64 size;
	ssize_t ret;
	char *buf;
	int i;

	shared = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	buf = map(MIB, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(shared != MAP_FAILED && buf);
	stop = shared;
	logs = (struct worker_log *)((char *)shared + 64);
	slots = bounce_slots();
	ASSERT_EQ(0, start_workers(_metadata, s, len, pids, logs, stop));

	usleep(20000);
	TH_LOG("unbinding %s during %d workers' %llu-byte transfers", s->bdf, WORKERS,
	       (unsigned long long)len);
	clock_gettime(CLOCK_MONOTONIC, &start);
	snprintf(path, sizeof(path), PCI_DRIVERS "/%s/unbind", target.driver);
	s->unbound = true;
	EXPECT_EQ(0, nvme_write_file(path, s->bdf)) TH_LOG("unbind: %s", strerror(errno));
	clock_gettime(CLOCK_MONOTONIC, &now);
	TH_LOG("unbind took %ld ms", (now.tv_sec - start.tv_sec) * 1000 +
	       (now.tv_nsec - start.tv_nsec) / 1000000);

	EXPECT_EQ(0, wait_workers(_metadata, pids, 30000));
	for (i = 0; i < WORKERS; i++) {
		TH_LOG("worker %d: %d round trips, then %s, disk size %lld%s%s", i, logs[i].ok,
		       logs[i].eof ? "end of disk" : strerror(logs[i].err),
		       (long long)logs[i].size_after, logs[i].bad[0] ? ": " : "", logs[i].bad);
		EXPECT_LE(1, logs[i].ok);
		EXPECT_TRUE(gone(logs[i].err, logs[i].eof, logs[i].size_after));
		EXPECT_EQ(0, logs[i].bad[0]);
	}

	/* A file opened before fails as well. */
	ASSERT_EQ(0, ioctl(s->fd, BLKGETSIZE64, &size));
	EXPECT_EQ(0, size) TH_LOG("size of the removed disk");
	ret = pread(s->fd, buf, MIB, 0);
	EXPECT_TRUE(ret <= 0 && gone(ret ? errno : 0, !ret, size))
		TH_LOG("read after unbind: %zd, %s", ret, strerror(errno));
	ret = pwrite(s->fd, buf, MIB, 0);
	EXPECT_TRUE(ret < 0 && gone(errno, false, size))
		TH_LOG("write after unbind: %zd, %s", ret, strerror(errno));
	EXPECT_EQ(0, close(s->fd));
	s->fd = -1;
	EXPECT_TRUE(nvme_wait_for(target.dev, false, 5000)) TH_LOG("%s still there", target.dev);
	EXPECT_NE(0, access(target.stats, F_OK)) TH_LOG("%s still there", target.stats);

	snprintf(path, sizeof(path), PCI_DRIVERS "/%s/bind", target.driver);
	ASSERT_EQ(0, nvme_write_file(path, s->bdf)) TH_LOG("bind: %s", strerror(errno));
	s->unbound = false;
	open_disk(_metadata, s);
	stats_begin(_metadata, s);
	ASSERT_TRUE(round_trip(_metadata, s, buf, buf + MIB / 2, MIB / 2,
			       random_pos(s, MIB / 2)));
	stats_check(_metadata, s, true);
	EXPECT_EQ(slots, bounce_slots()) TH_LOG("swiotlb slots in use after the case");
	munmap(shared, page_size);
	munmap(buf, MIB);
}

static int delete_module(const char *name)
{
	return syscall(SYS_delete_module, name, O_NONBLOCK) ? -errno : 0;
}

/*
 * The driver stays while its block device is open (here by processes
 * doing I/O, which goes on), and unloads once it is closed: the device,
 * the module and the statistics go. Loaded again, the device works.
 */
TEST_F_TIMEOUT(nvme, module_unload, 120)
{
	struct nvme_state *s = &self->n;
	__u64 len = min_u64(MIB, s->max_request);
	char path[PATH_MAX], value[32], *buf;
	struct worker_log *logs;
	int *stop;
	pid_t pids[WORKERS];
	long long slots;
	void *shared;
	long refs;
	int i, ret;

	shared = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	buf = map(MIB, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(shared != MAP_FAILED && buf);
	stop = shared;
	logs = (struct worker_log *)((char *)shared + 64);
	slots = bounce_slots();
	ASSERT_EQ(0, start_workers(_metadata, s, len, pids, logs, stop));

	/*
	 * Unloading a module that the open disk does not hold would free the
	 * disk's operations under the open files: checked without trying.
	 */
	snprintf(path, sizeof(path), "/sys/module/%s/refcnt", target.driver);
	ASSERT_EQ(0, read_file(path, value, sizeof(value)));
	refs = strtol(value, NULL, 10);
	EXPECT_LT(0, refs) TH_LOG("%s not held by its open disk", target.driver);
	if (refs > 0) {
		ret = delete_module(target.driver);
		s->unloaded = !ret;
		EXPECT_TRUE(ret == -EBUSY || ret == -EAGAIN)
			TH_LOG("rmmod with the device open: %s", ret ? strerror(-ret) : "done");
	}
	__atomic_store_n(stop, 1, __ATOMIC_RELAXED);
	EXPECT_EQ(0, wait_workers(_metadata, pids, 30000));
	for (i = 0; i < WORKERS; i++) {
		EXPECT_LE(1, logs[i].ok);
		EXPECT_EQ(0, logs[i].err) TH_LOG("worker %d: %s", i, strerror(logs[i].err));
		EXPECT_FALSE(logs[i].eof) TH_LOG("worker %d read nothing", i);
		EXPECT_EQ(0, logs[i].bad[0]) TH_LOG("worker %d: %s", i, logs[i].bad);
	}

	EXPECT_EQ(0, close(s->fd));
	s->fd = -1;
	s->unloaded = true;
	ret = delete_module(target.driver);
	ASSERT_EQ(0, ret) TH_LOG("rmmod: %s", strerror(-ret));
	EXPECT_TRUE(nvme_wait_for(target.dev, false, 5000)) TH_LOG("%s still there", target.dev);
	snprintf(path, sizeof(path), "/sys/module/%s", target.driver);
	EXPECT_NE(0, access(path, F_OK));
	EXPECT_NE(0, access(target.stats, F_OK)) TH_LOG("%s still there", target.stats);

	open_disk(_metadata, s);
	s->unloaded = false;
	stats_begin(_metadata, s);
	ASSERT_TRUE(round_trip(_metadata, s, buf, buf + MIB / 2, MIB / 2,
			       random_pos(s, MIB / 2)));
	stats_check(_metadata, s, true);
	EXPECT_EQ(slots, bounce_slots()) TH_LOG("swiotlb slots in use after the case");
	munmap(shared, page_size);
	munmap(buf, MIB);
}

/*
 * Writes the pattern of RUST_NVME_DMA_SEED over the whole disk with
 * O_DIRECT, flushes it, then reads it back, in transfers of varied sizes
 * and buffer offsets. The host checks the image afterwards: no case may
 * write after this one.
 */
TEST_F_TIMEOUT(nvme, disk_pattern, 300)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->lbs, mr = s->max_request, disk = s->size;
	__u64 sizes[] = { bs, 8 * bs, 37 * bs, mr, 255 * bs, 3 * MIB, 2 * mr + bs, 4 * MIB };
	__u64 offsets[] = { 0, bs, page_size - bs, s->dma_alignment + 1 };
	unsigned int nr_offsets = ARRAY_SIZE(offsets) - (s->dma_alignment + 1 == bs);
	__u64 seed, pos, len, size = 0;
	unsigned int i, phase, transfers[2] = { 0 };
	char *buf, *want, *at;

	for (i = 0; i < ARRAY_SIZE(sizes); i++)
		size = sizes[i] > size ? sizes[i] : size;
	size += page_size;
	buf = map(size, PROT_READ | PROT_WRITE);
	want = map(size, PROT_READ | PROT_WRITE);
	ASSERT_EQ(0, getenv_u64("RUST_NVME_DMA_SEED", &seed))
		TH_LOG("RUST_NVME_DMA_SEED not set to a decimal number");
	ASSERT_TRUE(buf && want);
	TH_LOG("writing %llu bytes with the pattern of seed %llu", (unsigned long long)disk,
	       (unsigned long long)seed);

	stats_begin(_metadata, s);
	/* The read back starts elsewhere in the cycles: other boundaries. */
	for (phase = 0; phase < 2; phase++) {
		for (pos = 0, i = 3 * phase; pos < disk; pos += len, i++) {
			len = min_u64(sizes[i % ARRAY_SIZE(sizes)], disk - pos);
			at = buf + offsets[i % nr_offsets];
			transfers[phase]++;
			if (!phase) {
				fill_pattern(at, pos, len, seed);
				ASSERT_TRUE(dio(_metadata, s, true, at, len, pos));
				continue;
			}
			memset(at, 0xa5, len);
			ASSERT_TRUE(dio(_metadata, s, false, at, len, pos));
			fill_pattern(want, pos, len, seed);
			ASSERT_TRUE(same(_metadata, want, at, len, pos, "disk pattern"));
		}
		if (!phase)
			ASSERT_EQ(0, fsync(s->fd)) TH_LOG("fsync: %s", strerror(errno));
	}
	stats_check(_metadata, s, true);
	EXPECT_LE(1, s->delta.v[STAT_FLUSHES]);
	TH_LOG("written in %u transfers, read back in %u", transfers[0], transfers[1]);
	munmap(buf, size);
	munmap(want, size);
}

int main(int argc, char **argv)
{
	struct timespec now;
	char err[256];

	page_size = sysconf(_SC_PAGESIZE);
	if (nvme_target_init(&target, err, sizeof(err)))
		ksft_exit_fail_msg("%s\n", err);
	if (getenv_u64("RUST_NVME_DMA_RANDOM_SEED", &run_seed)) {
		clock_gettime(CLOCK_REALTIME, &now);
		run_seed = splitmix64(now.tv_sec ^ ((__u64)now.tv_nsec << 20) ^ getpid());
	}
	return test_harness_run(argc, argv);
}
