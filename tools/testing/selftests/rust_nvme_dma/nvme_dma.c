// SPDX-License-Identifier: GPL-2.0
/*
 * Moves data between QEMU's NVMe disk and user memory through the
 * rust_nvme_dma sample (/dev/rust-nvme-dma0): PRPs and SGLs, 4 KiB pages,
 * THP and hugetlb pages, the sample's kernel buffers, the errors of bad
 * requests, the statistics, unbinding with requests in flight and module
 * unloading. The last case fills the whole disk with the pattern of
 * RUST_NVME_DMA_SEED, which the host checks (harness/nvme_disk_check.py).
 *
 * Environment: RUST_NVME_DMA_PATH (iova, direct or bounce: the DMA path
 * every mapping must take), RUST_NVME_DMA_SEED (decimal), and
 * RUST_NVME_DMA_DISK_BYTES. RUST_NVME_DMA_RANDOM_SEED replays the random
 * data of an earlier run (each case prints it).
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../kselftest_harness.h"
#include "rust_nvme_dma.h"

#define DEV_NAME	"rust-nvme-dma0"
#define DEV_PATH	"/dev/" DEV_NAME
#define MODULE_NAME	"rust_nvme_dma"
#define DRIVER_DIR	"/sys/bus/pci/drivers/" MODULE_NAME
#define NR_HUGEPAGES	"/proc/sys/vm/nr_hugepages"

#define READ		RUST_NVME_IOC_READ
#define WRITE		RUST_NVME_IOC_WRITE
#define SGL		RUST_NVME_IO_SGL
#define VMALLOC		RUST_NVME_IO_VMALLOC
#define CONTIGUOUS	RUST_NVME_IO_CONTIGUOUS

#define NVME_PAGE	4096ULL		/* the controller's memory page size */
#define HUGE_SIZE	(2ULL << 20)
#define MIB		(1024ULL * 1024)
#define GOLDEN		0x9e3779b97f4a7c15ULL
#define PATTERN_UNIT	512		/* bytes per key of the disk pattern */
#define GUARD_BLOCKS	16ULL
#define REPORTS_MAX	10		/* detailed reports of bad results per case */

static __u64 run_seed;

struct nvme_state {
	int fd;
	struct rust_nvme_info info;
	int path;		/* RUST_NVME_PATH_* every mapping must take, < 0: unknown */
	__u64 rng;		/* xorshift64 state of the case's random data */
	char bdf[32];		/* the controller, rebound by the teardown if unbound */
	bool unbound;
	bool unloaded;		/* the module is reloaded by the teardown */
	char nr_hugepages[32];	/* restored by the teardown if set */
	int reports;
	__u64 moved, requests;
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

static __u64 max_u64(__u64 a, __u64 b)
{
	return a > b ? a : b;
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
	return 0;
}

static int write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	ssize_t len = fd < 0 ? -1 : write(fd, value, strlen(value));
	int err = errno;

	if (fd >= 0)
		close(fd);
	errno = err;
	return len == (ssize_t)strlen(value) ? 0 : -1;
}

static bool wait_for(const char *path, bool present, int ms)
{
	for (;; ms -= 10) {
		if ((access(path, F_OK) == 0) == present)
			return true;
		if (ms <= 0)
			return false;
		usleep(10000);
	}
}

/* modprobe, its messages turned into KTAP diagnostics. */
static int load_module(void)
{
	return system("out=$(modprobe " MODULE_NAME " 2>&1); rc=$?; "
		      "[ -z \"$out\" ] || echo \"$out\" | sed 's/^/# /' >&2; exit $rc");
}

/* Opens the device, loading the module first if the node is missing. */
static int open_dev(struct __test_metadata *_metadata)
{
	int rc, fd;

	if (access(DEV_PATH, F_OK)) {
		rc = load_module();
		if (rc)
			TH_LOG("modprobe %s failed: status %d", MODULE_NAME,
			       WIFEXITED(rc) ? WEXITSTATUS(rc) : rc);
		else if (!wait_for(DEV_PATH, true, 10000))
			TH_LOG("%s missing 10 s after modprobe %s", DEV_PATH, MODULE_NAME);
	}
	fd = open(DEV_PATH, O_RDWR);
	if (fd < 0)
		TH_LOG("%s: %s", DEV_PATH, strerror(errno));
	return fd;
}

static int copy_name(char *dst, size_t size, const char *src)
{
	size_t len = strlen(src);

	if (len >= size)
		return -1;
	memcpy(dst, src, len + 1);
	return 0;
}

/* The PCI address of the controller behind the device node. */
static int find_bdf(char *bdf, size_t size)
{
	char link[PATH_MAX], path[PATH_MAX + 64], *base;
	unsigned int dom, bus, dev, fn;
	struct dirent *entry;
	ssize_t len;
	int found = 0;
	DIR *dir;

	len = readlink("/sys/class/misc/" DEV_NAME "/device", link, sizeof(link) - 1);
	if (len > 0) {
		link[len] = 0;
		base = strrchr(link, '/') ? strrchr(link, '/') + 1 : link;
		snprintf(path, sizeof(path), DRIVER_DIR "/%s", base);
		if (!access(path, F_OK))
			return copy_name(bdf, size, base);
	}
	/* No parent link: the one device bound to the driver. */
	dir = opendir(DRIVER_DIR);
	if (!dir)
		return -1;
	while ((entry = readdir(dir)))
		if (sscanf(entry->d_name, "%x:%x:%x.%x", &dom, &bus, &dev, &fn) == 4 &&
		    !found++ && copy_name(bdf, size, entry->d_name))
			found = 2;
	closedir(dir);
	return found == 1 ? 0 : -1;
}

static int do_io(int fd, unsigned long cmd, void *buf, __u64 len, __u64 lba, __u32 flags,
		 struct rust_nvme_io *out)
{
	struct rust_nvme_io io = {
		.addr = (uintptr_t)buf,
		.len = len,
		.lba = lba,
		.flags = flags,
	};
	int ret = ioctl(fd, cmd, &io);

	if (out)
		*out = io;
	return ret ? -errno : 0;
}

static int get_stats(int fd, struct rust_nvme_stats *stats)
{
	return ioctl(fd, RUST_NVME_IOC_STATS, stats) ? -errno : 0;
}

static const char *describe(char *out, size_t size, unsigned long cmd,
			    const struct rust_nvme_io *io)
{
	snprintf(out, size,
		 "%s of %llu bytes at lba %llu, buffer %#llx (page offset %llu), %s%s%s%s",
		 cmd == WRITE ? "write" : cmd == READ ? "read" : "ioctl",
		 (unsigned long long)io->len, (unsigned long long)io->lba,
		 (unsigned long long)io->addr, (unsigned long long)(io->addr % NVME_PAGE),
		 io->flags & SGL ? "sgl" : "prp", io->flags & VMALLOC ? " vmalloc" : "",
		 io->flags & CONTIGUOUS ? " contiguous" : "",
		 io->flags & ~(SGL | VMALLOC | CONTIGUOUS) ? " unknown flags" : "");
	return out;
}

/* PRP list pages for @entries: PRP1 takes one, a list's last entry links the next list. */
static __u32 prp_list_pages(__u64 entries)
{
	__u64 per_list = NVME_PAGE / 8;

	if (entries <= 2)
		return 0;
	entries--;
	if (entries <= per_list)
		return 1;
	return 1 + (entries - per_list + per_list - 2) / (per_list - 1);
}

/* Appends a problem to @out if @cond holds. */
static __printf(4, 5) void problem(char *out, size_t size, bool cond, const char *fmt, ...)
{
	size_t len = strlen(out);
	va_list args;

	if (!cond || len >= size)
		return;
	va_start(args, fmt);
	vsnprintf(out + len, size - len, fmt, args);
	va_end(args);
}

/*
 * Checks what the sample reports of a successful request. Requests are cut
 * in commands at multiples of max_transfer from their start. A PRP entry
 * per 4 KiB page that each command touches, DMA addresses keeping the
 * offset of the buffer in its page: the user buffer's offset, 0 for vmalloc
 * buffers, any for kmalloc buffers. An SGL has at least a descriptor per
 * command and at most one per DMA range in each command.
 */
static void check_io(struct __test_metadata *_metadata, struct nvme_state *s,
		     unsigned long cmd, const struct rust_nvme_io *io)
{
	__u64 mt = s->info.max_transfer, page_off, done, len, pages, max;
	bool contiguous = io->flags & CONTIGUOUS, sgl = io->flags & SGL, one_range;
	__u32 commands = 0, lo = 0, hi = 0, lists_lo = 0, lists_hi = 0;
	char problems[512] = "", what[256];
	size_t n = sizeof(problems);

	page_off = io->flags & (VMALLOC | CONTIGUOUS) ? 0 : io->addr % NVME_PAGE;
	for (done = 0; done < io->len; done += mt) {
		len = min_u64(mt, io->len - done);
		pages = (page_off + len + NVME_PAGE - 1) / NVME_PAGE;
		commands++;
		lo += pages;
		lists_lo += prp_list_pages(pages);
		if (contiguous)
			pages = (len + 2 * NVME_PAGE - 2) / NVME_PAGE;
		hi += pages;
		lists_hi += prp_list_pages(pages);
	}

	problem(problems, n, s->path < 0,
		"; path %u, RUST_NVME_DMA_PATH not iova, direct or bounce", io->path);
	problem(problems, n, s->path >= 0 && io->path != (__u32)s->path,
		"; path %u, expected %d", io->path, s->path);
	/* SGL commands also end at max_sgl_blocks data blocks. */
	problem(problems, n, sgl ? io->commands < commands : io->commands != commands,
		"; %u commands, expected %s%u", io->commands, sgl ? "at least " : "", commands);
	problem(problems, n, io->dma_ranges < 1 || io->dma_ranges > hi,
		"; %u DMA ranges, expected 1 to %u", io->dma_ranges, hi);
	/* One IOVA range; a kmalloc buffer is physically contiguous. */
	one_range = s->path == RUST_NVME_PATH_IOVA ||
		    (contiguous && s->path == RUST_NVME_PATH_DIRECT);
	problem(problems, n, one_range && io->dma_ranges != 1,
		"; %u DMA ranges, expected 1", io->dma_ranges);
	if (sgl) {
		max = min_u64((__u64)io->commands * s->info.max_sgl_blocks,
			      io->dma_ranges + io->commands - 1);
		problem(problems, n, io->descriptors < io->commands || io->descriptors > max,
			"; %u SGL descriptors, expected %u to %llu", io->descriptors,
			io->commands, (unsigned long long)max);
		problem(problems, n, io->list_pages > 2 * io->commands,
			"; %u SGL segments, expected at most 2 per command", io->list_pages);
	} else {
		problem(problems, n, io->descriptors < lo || io->descriptors > hi,
			"; %u PRP entries, expected %u to %u", io->descriptors, lo, hi);
		problem(problems, n, io->list_pages < lists_lo || io->list_pages > lists_hi,
			"; %u PRP list pages, expected %u to %u", io->list_pages, lists_lo,
			lists_hi);
	}

	if (!problems[0])
		return;
	_metadata->exit_code = KSFT_FAIL;
	if (s->reports++ < REPORTS_MAX)
		TH_LOG("%s: %s", describe(what, sizeof(what), cmd, io), problems + 2);
	else if (s->reports == REPORTS_MAX + 1)
		TH_LOG("more bad results, not shown");
}

/* A request that must succeed, and its results checked. */
static int checked_io(struct __test_metadata *_metadata, struct nvme_state *s,
		      unsigned long cmd, void *buf, __u64 len, __u64 lba, __u32 flags,
		      struct rust_nvme_io *out)
{
	struct rust_nvme_io io;
	char what[256];
	int ret = do_io(s->fd, cmd, buf, len, lba, flags, &io);

	if (ret) {
		io = (struct rust_nvme_io){
			.addr = (uintptr_t)buf, .len = len, .lba = lba, .flags = flags,
		};
		TH_LOG("%s: %s", describe(what, sizeof(what), cmd, &io), strerror(-ret));
	} else {
		s->moved += len;
		s->requests++;
		check_io(_metadata, s, cmd, &io);
	}
	if (out)
		*out = io;
	return ret;
}

/*
 * Writes random data from @wbuf and reads it back into @rbuf, filled with
 * other data first so that a read that moves nothing fails.
 */
static void round_trip(struct __test_metadata *_metadata, struct nvme_state *s,
		       void *wbuf, void *rbuf, __u64 len, __u64 lba, __u32 flags,
		       struct rust_nvme_io *wio, struct rust_nvme_io *rio)
{
	fill_random(wbuf, len, &s->rng);
	ASSERT_EQ(0, checked_io(_metadata, s, WRITE, wbuf, len, lba, flags, wio));
	fill_random(rbuf, len, &s->rng);
	ASSERT_EQ(0, checked_io(_metadata, s, READ, rbuf, len, lba, flags, rio));
	ASSERT_TRUE(same(_metadata, wbuf, rbuf, len, 0, "read back"))
		TH_LOG("%llu bytes at lba %llu, flags %#x, buffers at page offsets %llu and %llu",
		       (unsigned long long)len, (unsigned long long)lba, flags,
		       (unsigned long long)((uintptr_t)wbuf % NVME_PAGE),
		       (unsigned long long)((uintptr_t)rbuf % NVME_PAGE));
}

/* A random first block for @len bytes, the disk holding all of them. */
static __u64 random_lba(struct nvme_state *s, __u64 len)
{
	return random_below(s, s->info.blocks - len / s->info.block_size + 1);
}

/* Rounds down to whole blocks, within the longest request and the disk. */
static __u64 request_len(struct nvme_state *s, __u64 len, __u32 flags)
{
	__u64 max = flags & CONTIGUOUS ? s->info.max_contiguous : s->info.max_request;

	max = min_u64(max, s->info.blocks * s->info.block_size);
	len = min_u64(len, max);
	return len - len % s->info.block_size;
}

static void *map(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
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
		return RUST_NVME_PATH_IOVA;
	if (!strcmp(path, "direct"))
		return RUST_NVME_PATH_DIRECT;
	if (!strcmp(path, "bounce"))
		return RUST_NVME_PATH_BOUNCE;
	return -1;
}

FIXTURE(nvme)
{
	struct nvme_state n;
};

FIXTURE_SETUP(nvme)
{
	struct nvme_state *s = &self->n;
	struct rust_nvme_info *info = &s->info;
	const char *name = _metadata->name;
	__u64 hash = 0;

	s->fd = -1;
	clock_gettime(CLOCK_MONOTONIC, &s->start);
	s->path = expected_path();
	while (*name)
		hash = (hash ^ (unsigned char)*name++) * 0x100000001b3ULL;
	s->rng = splitmix64(run_seed ^ hash) | 1;
	TH_LOG("random data of RUST_NVME_DMA_RANDOM_SEED=%llu", (unsigned long long)run_seed);

	s->fd = open_dev(_metadata);
	ASSERT_LE(0, s->fd);
	ASSERT_EQ(0, ioctl(s->fd, RUST_NVME_IOC_INFO, info)) TH_LOG("INFO: %s", strerror(errno));
	/* What every case computes with; the info case checks the rest. */
	ASSERT_TRUE(info->block_size >= 512 && !(info->block_size & (info->block_size - 1)))
		TH_LOG("block size %u", info->block_size);
	ASSERT_TRUE(info->max_transfer >= NVME_PAGE && !(info->max_transfer % NVME_PAGE) &&
		    !(info->max_transfer % info->block_size))
		TH_LOG("max_transfer %u", info->max_transfer);
	ASSERT_TRUE(info->max_request >= info->max_transfer &&
		    !(info->max_request % info->block_size))
		TH_LOG("max_request %u", info->max_request);
	ASSERT_TRUE(info->max_contiguous >= info->block_size &&
		    !(info->max_contiguous % info->block_size))
		TH_LOG("max_contiguous %u", info->max_contiguous);
	ASSERT_LE(GUARD_BLOCKS * 4, info->blocks);
}

FIXTURE_TEARDOWN(nvme)
{
	struct nvme_state *s = &self->n;
	struct timespec now;

	if (s->fd >= 0)
		close(s->fd);
	if (s->unbound && write_file(DRIVER_DIR "/bind", s->bdf))
		TH_LOG("cannot bind %s again: %s", s->bdf, strerror(errno));
	if (s->unloaded && access("/sys/module/" MODULE_NAME, F_OK) && load_module())
		TH_LOG("cannot load %s again", MODULE_NAME);
	if (s->nr_hugepages[0] && write_file(NR_HUGEPAGES, s->nr_hugepages))
		TH_LOG("cannot restore %s: %s", NR_HUGEPAGES, strerror(errno));
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (s->requests)
		TH_LOG("%llu requests moved %llu KiB in %ld ms", (unsigned long long)s->requests,
		       (unsigned long long)(s->moved >> 10),
		       (now.tv_sec - s->start.tv_sec) * 1000 +
		       (now.tv_nsec - s->start.tv_nsec) / 1000000);
}

static void trim(char *out, const char *field, size_t len)
{
	memcpy(out, field, len);
	out[len] = 0;
	while (len && (out[len - 1] == ' ' || !out[len - 1]))
		out[--len] = 0;
}

static bool printable(const char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			return false;
	return true;
}

TEST_F_TIMEOUT(nvme, info, 60)
{
	struct nvme_state *s = &self->n;
	struct rust_nvme_info *info = &s->info, again;
	char serial[21], model[41], firmware[9], path[PATH_MAX], vendor[16];
	__u64 disk_bytes = 0;

	trim(serial, info->serial, sizeof(info->serial));
	trim(model, info->model, sizeof(info->model));
	trim(firmware, info->firmware, sizeof(info->firmware));
	ksft_print_msg("model \"%s\", serial \"%s\", firmware \"%s\", vendor %#06x, sgl %u\n",
		       model, serial, firmware, info->pci_vendor, info->sgl);
	ksft_print_msg("%llu blocks of %u bytes, max_transfer %u, max_request %u\n",
		       (unsigned long long)info->blocks, info->block_size, info->max_transfer,
		       info->max_request);
	ksft_print_msg("max_contiguous %u, %u submission queue entries\n", info->max_contiguous,
		       info->queue_entries);

	EXPECT_TRUE(serial[0] && printable(serial));
	EXPECT_TRUE(model[0] && printable(model));
	EXPECT_TRUE(printable(firmware));
	EXPECT_EQ(0, getenv_u64("RUST_NVME_DMA_DISK_BYTES", &disk_bytes))
		TH_LOG("RUST_NVME_DMA_DISK_BYTES not set to a number");
	EXPECT_EQ(disk_bytes, info->blocks * info->block_size);
	EXPECT_LE(4096U, info->max_transfer);
	EXPECT_EQ(0U, info->max_transfer % info->block_size);
	EXPECT_LE(info->max_transfer, info->max_request);
	EXPECT_LE(info->max_contiguous, info->max_request);
	EXPECT_EQ(1, info->sgl);
	EXPECT_LE(2U, info->queue_entries);
	/* At least a segment of SGL data blocks. */
	EXPECT_LE(256U, info->max_sgl_blocks);
	EXPECT_LE(0, s->path) TH_LOG("RUST_NVME_DMA_PATH is not iova, direct or bounce");

	/* Identify's VID is the PCI vendor of the function. */
	ASSERT_EQ(0, find_bdf(s->bdf, sizeof(s->bdf))) TH_LOG("no device bound to " MODULE_NAME);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/vendor", s->bdf);
	ASSERT_EQ(0, read_file(path, vendor, sizeof(vendor)));
	EXPECT_EQ(strtoul(vendor, NULL, 16), (unsigned long)info->pci_vendor);
	ksft_print_msg("PCI device %s\n", s->bdf);

	ASSERT_EQ(0, ioctl(s->fd, RUST_NVME_IOC_INFO, &again));
	EXPECT_EQ(0, memcmp(info, &again, sizeof(again)));
}

/* Round trips through user buffers of many sizes, at many places in pages. */
static void user_round_trips(struct __test_metadata *_metadata, struct nvme_state *s,
			     __u32 flags)
{
	static const unsigned int blocks[] = { 1, 7, 8, 9, 255, 256, 1024 };
	static const unsigned int prp_offsets[] = { 0, 512, 4 };
	static const unsigned int sgl_offsets[] = { 0, 512, 4, 1, 3 };
	const unsigned int *offsets = flags & SGL ? sgl_offsets : prp_offsets;
	unsigned int nr_offsets = flags & SGL ? 5 : 3, i, j;
	__u64 bs = s->info.block_size, mt = s->info.max_transfer, len, size;
	struct rust_nvme_io wio, rio;
	struct {
		__u64 len;
		unsigned int offset;
	} big[] = {
		{ mt, 0 },
		{ mt + bs, flags & SGL ? 1 : 512 },
		{ 3 * mt + 5 * bs, flags & SGL ? 3 : 4 },
	};
	char *wbuf, *rbuf;

	/* The largest request: the last big one or 1024 blocks. */
	size = request_len(s, max_u64(big[2].len, 1024 * bs), flags) + 2 * NVME_PAGE;
	wbuf = map(size, PROT_READ | PROT_WRITE);
	rbuf = map(size, PROT_READ | PROT_WRITE);
	ASSERT_NE(NULL, wbuf);
	ASSERT_NE(NULL, rbuf);

	for (i = 0; i < ARRAY_SIZE(blocks) + 4; i++) {
		/* Then a few random sizes, up to 1024 blocks. */
		len = i < ARRAY_SIZE(blocks) ? blocks[i] * bs :
			(1 + random_below(s, 1024)) * bs;
		len = request_len(s, len, flags);
		for (j = 0; j < nr_offsets; j++) {
			unsigned int off = offsets[j];

			/* Random sizes at one place each. */
			if (i >= ARRAY_SIZE(blocks) &&
			    j != i % nr_offsets)
				continue;
			round_trip(_metadata, s, wbuf + off, rbuf + off, len,
				   random_lba(s, len), flags, &wio, &rio);
		}
	}

	/* Hundreds of pages, in one or more commands. */
	for (i = 0; i < ARRAY_SIZE(big); i++) {
		len = request_len(s, big[i].len, flags);
		round_trip(_metadata, s, wbuf + big[i].offset, rbuf + big[i].offset, len,
			   random_lba(s, len), flags, &wio, &rio);
		TH_LOG("%llu bytes at page offset %u: %u commands, %u ranges, %u descs, %u lists",
		       (unsigned long long)len, big[i].offset, wio.commands, wio.dma_ranges,
		       wio.descriptors, wio.list_pages);
		/* 1024 pages in a command take a chained PRP list. */
		if (!i && !(flags & SGL) && mt / NVME_PAGE > NVME_PAGE / 8 + 1) {
			EXPECT_LE(2U, wio.list_pages);
			EXPECT_LE(2U, rio.list_pages);
		}
	}
	munmap(wbuf, size);
	munmap(rbuf, size);
}

TEST_F_TIMEOUT(nvme, user_prp, 240)
{
	user_round_trips(_metadata, &self->n, 0);
}

TEST_F_TIMEOUT(nvme, user_sgl, 240)
{
	user_round_trips(_metadata, &self->n, SGL);
}

/*
 * Round trips through @wbuf and @rbuf, each 2 huge pages: a whole huge page
 * for PRPs and for SGLs, which is one DMA range unless bounced, then 2 MiB
 * across the two huge pages, not page aligned.
 */
static void huge_round_trips(struct __test_metadata *_metadata, struct nvme_state *s,
			     char *wbuf, char *rbuf)
{
	static const struct {
		__u64 offset;
		__u32 flags;
	} pieces[] = {
		{ 0, 0 },
		{ HUGE_SIZE, SGL },
		{ HUGE_SIZE / 2 + 512, 0 },
		{ HUGE_SIZE / 2 + 1, SGL },
	};
	struct rust_nvme_io wio, rio;
	unsigned int i;
	__u64 len;

	for (i = 0; i < ARRAY_SIZE(pieces); i++) {
		len = request_len(s, HUGE_SIZE, pieces[i].flags);
		round_trip(_metadata, s, wbuf + pieces[i].offset, rbuf + pieces[i].offset, len,
			   random_lba(s, len), pieces[i].flags, &wio, &rio);
		TH_LOG("%llu bytes at offset %llu, %s: %u DMA ranges, %u descriptors",
		       (unsigned long long)len, (unsigned long long)pieces[i].offset,
		       pieces[i].flags & SGL ? "sgl" : "prp", wio.dma_ranges, wio.descriptors);
		if (pieces[i].offset % HUGE_SIZE || s->path == RUST_NVME_PATH_BOUNCE)
			continue;
		EXPECT_EQ(1U, wio.dma_ranges);
		EXPECT_EQ(1U, rio.dma_ranges);
	}
}

TEST_F_TIMEOUT(nvme, user_thp, 120)
{
	struct nvme_state *s = &self->n;
	size_t size = 3 * HUGE_SIZE;
	char *areas[2], *bufs[2];
	long kb;
	int i;

	for (i = 0; i < 2; i++) {
		areas[i] = map(size, PROT_READ | PROT_WRITE);
		ASSERT_NE(NULL, areas[i]);
		bufs[i] = (char *)(((uintptr_t)areas[i] + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1));
		ASSERT_EQ(0, madvise(bufs[i], 2 * HUGE_SIZE, MADV_HUGEPAGE))
			TH_LOG("MADV_HUGEPAGE: %s", strerror(errno));
		memset(bufs[i], 0x5a, 2 * HUGE_SIZE);
		kb = smaps_kb(bufs[i], "AnonHugePages:");
		TH_LOG("buffer %d: AnonHugePages %ld kB", i, kb);
		/* Both huge pages, or the single range checks would not hold. */
		ASSERT_EQ((long)(2 * HUGE_SIZE >> 10), kb) TH_LOG("no transparent huge pages");
	}
	huge_round_trips(_metadata, s, bufs[0], bufs[1]);
	for (i = 0; i < 2; i++)
		munmap(areas[i], size);
}

TEST_F_TIMEOUT(nvme, user_hugetlb, 120)
{
	struct nvme_state *s = &self->n;
	size_t size = 2 * HUGE_SIZE;
	char value[32], *bufs[2];
	int i;

	ASSERT_EQ(0, read_file(NR_HUGEPAGES, s->nr_hugepages, sizeof(s->nr_hugepages)));
	ASSERT_EQ(0, write_file(NR_HUGEPAGES, "8"))
		TH_LOG("%s: %s", NR_HUGEPAGES, strerror(errno));
	ASSERT_EQ(0, read_file(NR_HUGEPAGES, value, sizeof(value)));
	value[strcspn(value, "\n")] = 0;
	s->nr_hugepages[strcspn(s->nr_hugepages, "\n")] = 0;
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

/* SGL segments for @n data blocks: 256 descriptors a page, one chaining. */
static __u32 sgl_segments(__u32 n)
{
	if (n <= 1)
		return 0;
	return n <= 256 ? 1 : (n - 1 + 254) / 255;
}

/*
 * Buffers whose pages are faulted in from the last to the first, so that no
 * page is physically followed by the next one of the buffer: on the direct
 * path an SGL takes one data block per page, more than a segment holds, so
 * segments are chained and commands end at max_sgl_blocks.
 */
TEST_F_TIMEOUT(nvme, user_scattered, 120)
{
	static const __u32 flags[] = { SGL, 0 };
	struct nvme_state *s = &self->n;
	__u64 len = request_len(s, s->info.max_transfer, 0);
	struct rust_nvme_io wio, rio;
	__u32 blocks;
	char *bufs[2];
	unsigned int i;
	size_t off;

	for (i = 0; i < 2; i++) {
		bufs[i] = map(len, PROT_READ | PROT_WRITE);
		ASSERT_NE(NULL, bufs[i]);
		ASSERT_EQ(0, madvise(bufs[i], len, MADV_NOHUGEPAGE));
		for (off = len; off >= NVME_PAGE; off -= NVME_PAGE)
			bufs[i][off - NVME_PAGE] = 1;
	}
	for (i = 0; i < ARRAY_SIZE(flags); i++) {
		round_trip(_metadata, s, bufs[0], bufs[1], len, random_lba(s, len), flags[i],
			   &wio, &rio);
		TH_LOG("%llu bytes, %s: %u DMA ranges, %u descriptors, %u list pages",
		       (unsigned long long)len, flags[i] & SGL ? "sgl" : "prp",
		       wio.dma_ranges, wio.descriptors, wio.list_pages);
		if (s->path != RUST_NVME_PATH_DIRECT || !(flags[i] & SGL))
			continue;
		/* Page-sized ranges: commands end on them, max_sgl_blocks each. */
		blocks = s->info.max_sgl_blocks;
		EXPECT_LT(blocks, wio.dma_ranges);
		EXPECT_EQ(wio.dma_ranges, wio.descriptors);
		EXPECT_EQ((wio.dma_ranges + blocks - 1) / blocks, wio.commands);
		EXPECT_EQ(wio.dma_ranges / blocks * sgl_segments(blocks) +
			  sgl_segments(wio.dma_ranges % blocks), wio.list_pages);
	}
	for (i = 0; i < 2; i++)
		munmap(bufs[i], len);
}

/*
 * Round trips through the sample's kernel buffers of type @kind, with PRPs
 * and SGLs; the last and longest only with @last_sgl, to save time.
 */
static void kernel_round_trips(struct __test_metadata *_metadata, struct nvme_state *s,
			       __u32 kind, const __u64 *lens, unsigned int nr_lens,
			       __u32 last_sgl)
{
	/* The user buffer is only copied; bad_requests has PRPs from odd places. */
	static const unsigned int prp_offsets[] = { 0, 512, 4 };
	static const unsigned int sgl_offsets[] = { 0, 1, 3 };
	struct rust_nvme_io wio, rio;
	__u64 size = 0, len;
	unsigned int i, off;
	char *wbuf, *rbuf;
	__u32 flags;

	for (i = 0; i < nr_lens; i++)
		size = lens[i] > size ? lens[i] : size;
	size += NVME_PAGE;
	wbuf = map(size, PROT_READ | PROT_WRITE);
	rbuf = map(size, PROT_READ | PROT_WRITE);
	ASSERT_NE(NULL, wbuf);
	ASSERT_NE(NULL, rbuf);
	for (i = 0; i < 2 * nr_lens; i++) {
		flags = kind | (i % 2 ? SGL : 0);
		len = lens[i / 2];
		if (i / 2 == nr_lens - 1 && (flags & SGL) != last_sgl)
			continue;
		off = i % 2 ? sgl_offsets[i / 2 % 3] : prp_offsets[i / 2 % 3];
		round_trip(_metadata, s, wbuf + off, rbuf + off, len, random_lba(s, len), flags,
			   &wio, &rio);
		if (i / 2 == nr_lens - 1)
			TH_LOG("%llu bytes, %s: %u commands, %u DMA ranges, %u descriptors",
			       (unsigned long long)len, flags & SGL ? "sgl" : "prp", wio.commands,
			       wio.dma_ranges, wio.descriptors);
	}
	munmap(wbuf, size);
	munmap(rbuf, size);
}

TEST_F_TIMEOUT(nvme, kernel_vmalloc, 120)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->info.block_size;
	__u64 lens[] = { bs, 7 * bs, 8 * bs, 9 * bs, 255 * bs, 1024 * bs,
			 s->info.max_transfer + bs };
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(lens); i++)
		lens[i] = request_len(s, lens[i], VMALLOC);
	kernel_round_trips(_metadata, s, VMALLOC, lens, ARRAY_SIZE(lens), SGL);
}

TEST_F_TIMEOUT(nvme, kernel_contiguous, 120)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->info.block_size;
	__u64 lens[] = { bs, 7 * bs, 8 * bs, 9 * bs, 255 * bs, 1024 * bs,
			 s->info.max_contiguous };
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(lens); i++)
		lens[i] = request_len(s, lens[i], CONTIGUOUS);
	kernel_round_trips(_metadata, s, CONTIGUOUS, lens, ARRAY_SIZE(lens), 0);
}

/* Buffers of bad_requests. */
struct bad_bufs {
	char *guard, *back, *wbuf, *rbuf, *data;
	__u64 data_len;
	__u64 scratch_lba;
	int failed;
};

/*
 * A request that must fail with @err, without writing to the blocks from
 * @guard (written with random data first), after which the device still
 * does a round trip.
 */
static void expect_error(struct __test_metadata *_metadata, struct nvme_state *s,
			 struct bad_bufs *b, unsigned long cmd, void *buf, __u64 len, __u64 lba,
			 __u32 flags, int err, __u64 guard)
{
	struct rust_nvme_io io = {
		.addr = (uintptr_t)buf, .len = len, .lba = lba, .flags = flags,
	};
	__u64 glen = GUARD_BLOCKS * s->info.block_size;
	char what[256];
	int ret;

	describe(what, sizeof(what), cmd, &io);
	fill_random(b->guard, glen, &s->rng);
	ASSERT_EQ(0, checked_io(_metadata, s, WRITE, b->guard, glen, guard, 0, NULL));
	ret = do_io(s->fd, cmd, buf, len, lba, flags, NULL);
	b->failed++;
	EXPECT_EQ(-err, ret) TH_LOG("%s: %s, expected %s", what, ret ? strerror(-ret) : "success",
				    strerror(err));
	ASSERT_EQ(0, checked_io(_metadata, s, READ, b->back, glen, guard, 0, NULL))
		TH_LOG("after %s", what);
	EXPECT_TRUE(same(_metadata, b->guard, b->back, glen, guard * s->info.block_size,
			 "blocks after a failed request")) TH_LOG("%s", what);
	round_trip(_metadata, s, b->wbuf, b->rbuf, 8 * s->info.block_size, b->scratch_lba, 0,
		   NULL, NULL);
}

TEST_F_TIMEOUT(nvme, bad_requests, 180)
{
	struct nvme_state *s = &self->n;
	__u64 bs = s->info.block_size, blocks = s->info.blocks, mr = s->info.max_request;
	__u64 mc = s->info.max_contiguous, lba, last = blocks - GUARD_BLOCKS;
	static const __u32 kinds[] = { 0, SGL, VMALLOC, CONTIGUOUS };
	static const unsigned long cmds[] = { WRITE, READ };
	struct rust_nvme_stats before, after;
	struct bad_bufs b = { 0 };
	char *unmapped, *hole, *ro;
	unsigned int i, j;

	/* Or the hole below would be too large for CONTIGUOUS. */
	ASSERT_LE(4 * NVME_PAGE, mc);
	ASSERT_EQ(0, get_stats(s->fd, &before));
	b.guard = map(GUARD_BLOCKS * bs, PROT_READ | PROT_WRITE);
	b.back = map(GUARD_BLOCKS * bs, PROT_READ | PROT_WRITE);
	b.wbuf = map(8 * bs + NVME_PAGE, PROT_READ | PROT_WRITE);
	b.rbuf = map(8 * bs + NVME_PAGE, PROT_READ | PROT_WRITE);
	/* Lazily allocated: only requests that fail use the end of it. */
	b.data_len = mr + 2 * bs;
	b.data = map(b.data_len, PROT_READ | PROT_WRITE);
	ASSERT_TRUE(b.guard && b.back && b.wbuf && b.rbuf && b.data);
	memset(b.data, 0x5a, 16 * bs);
	b.scratch_lba = random_lba(s, 8 * bs);
	lba = random_lba(s, GUARD_BLOCKS * bs);

	for (i = 0; i < 2; i++) {
		expect_error(_metadata, s, &b, cmds[i], b.data, 0, lba, 0, EINVAL, lba);
		expect_error(_metadata, s, &b, cmds[i], b.data, bs + 1, lba, 0, EINVAL, lba);
		expect_error(_metadata, s, &b, cmds[i], b.data, bs, lba, 1U << 31, EINVAL, lba);
		expect_error(_metadata, s, &b, cmds[i], b.data, bs, lba, 1U << 3, EINVAL, lba);
		expect_error(_metadata, s, &b, cmds[i], b.data, bs, lba, VMALLOC | CONTIGUOUS,
			     EINVAL, lba);
		/* PRPs need dword-aligned memory. */
		expect_error(_metadata, s, &b, cmds[i], b.data + 2, 2 * bs, lba, 0, EINVAL, lba);
		/* Past the end of the disk, overflowing or not. */
		expect_error(_metadata, s, &b, cmds[i], b.data, bs, blocks, 0, ERANGE, last);
		expect_error(_metadata, s, &b, cmds[i], b.data, 2 * bs, blocks - 1, 0, ERANGE,
			     last);
		expect_error(_metadata, s, &b, cmds[i], b.data, 2 * bs, UINT64_MAX - 1, 0, ERANGE,
			     0);
		expect_error(_metadata, s, &b, cmds[i], b.data, bs, UINT64_MAX / bs + 1, 0, ERANGE,
			     0);
		/* At block 0, within the disk if not within limits. */
		expect_error(_metadata, s, &b, cmds[i], b.data, mr + bs, 0, 0, E2BIG, 0);
		expect_error(_metadata, s, &b, cmds[i], b.data, mr + bs, 0, SGL, E2BIG, 0);
		expect_error(_metadata, s, &b, cmds[i], b.data, mc + bs, 0, CONTIGUOUS, E2BIG, 0);
	}

	/* The PRP-misaligned buffer is fine with SGLs, and copied to kernel buffers. */
	round_trip(_metadata, s, b.wbuf + 2, b.rbuf + 2, 8 * bs, lba, SGL, NULL, NULL);
	round_trip(_metadata, s, b.wbuf + 2, b.rbuf + 2, 8 * bs, lba, VMALLOC, NULL, NULL);
	round_trip(_metadata, s, b.wbuf + 2, b.rbuf + 2, 8 * bs, lba, CONTIGUOUS, NULL, NULL);
	/* A failed read leaves its buffer alone. */
	fill_random(b.wbuf, 8 * bs, &s->rng);
	memcpy(b.rbuf, b.wbuf, 8 * bs);
	EXPECT_EQ(-EINVAL, do_io(s->fd, READ, b.rbuf + 2, 2 * bs, lba, 0, NULL));
	b.failed++;
	EXPECT_TRUE(same(_metadata, b.wbuf, b.rbuf, 8 * bs, 0, "buffer of a failed read"));

	/* Memory that is not there, wholly or after its first page. */
	unmapped = map(2 * NVME_PAGE, PROT_READ | PROT_WRITE);
	hole = map(4 * NVME_PAGE, PROT_READ | PROT_WRITE);
	ASSERT_NE(NULL, unmapped);
	ASSERT_NE(NULL, hole);
	ASSERT_EQ(0, munmap(unmapped, 2 * NVME_PAGE));
	memset(hole, 0x5a, 4 * NVME_PAGE);
	ASSERT_EQ(0, munmap(hole + 2 * NVME_PAGE, NVME_PAGE));
	for (i = 0; i < 2; i++) {
		for (j = 0; j < ARRAY_SIZE(kinds); j++) {
			expect_error(_metadata, s, &b, cmds[i], unmapped, 2 * bs, lba, kinds[j],
				     EFAULT, lba);
			expect_error(_metadata, s, &b, cmds[i], NULL, 2 * bs, lba, kinds[j],
				     EFAULT, lba);
			expect_error(_metadata, s, &b, cmds[i], hole, 4 * NVME_PAGE, lba,
				     kinds[j], EFAULT, lba);
		}
	}

	/* The device may read a read-only buffer, not write it. */
	ro = map(4 * NVME_PAGE, PROT_READ);
	ASSERT_NE(NULL, ro);
	for (j = 0; j < ARRAY_SIZE(kinds); j++) {
		expect_error(_metadata, s, &b, READ, ro, 2 * bs, lba, kinds[j], EFAULT, lba);
		fill_random(b.rbuf, 2 * bs, &s->rng);
		ASSERT_EQ(0, checked_io(_metadata, s, WRITE, ro, 2 * bs, lba, kinds[j], NULL));
		ASSERT_EQ(0, checked_io(_metadata, s, READ, b.rbuf, 2 * bs, lba, 0, NULL));
		memset(b.wbuf, 0, 2 * bs);
		EXPECT_TRUE(same(_metadata, b.wbuf, b.rbuf, 2 * bs, 0, "read-only buffer written"));
	}

	/* Neither requests nor counted as such. */
	EXPECT_EQ(-1, ioctl(s->fd, _IO('|', 0xaf)));
	EXPECT_EQ(ENOTTY, errno);
	EXPECT_EQ(-1, ioctl(s->fd, _IOWR('|', 0xa1, __u64), b.data));
	EXPECT_EQ(ENOTTY, errno);
	EXPECT_EQ(-1, ioctl(s->fd, RUST_NVME_IOC_WRITE, NULL));
	EXPECT_EQ(EFAULT, errno);
	EXPECT_EQ(-1, ioctl(s->fd, RUST_NVME_IOC_INFO, NULL));
	EXPECT_EQ(EFAULT, errno);
	round_trip(_metadata, s, b.wbuf, b.rbuf, 8 * bs, b.scratch_lba, SGL, NULL, NULL);

	ASSERT_EQ(0, get_stats(s->fd, &after));
	TH_LOG("%d failed requests, failed_requests %llu -> %llu", b.failed,
	       (unsigned long long)before.failed_requests,
	       (unsigned long long)after.failed_requests);
	EXPECT_EQ(before.failed_requests + b.failed, after.failed_requests);
	munmap(ro, 4 * NVME_PAGE);
	munmap(hole, 4 * NVME_PAGE);
	munmap(b.data, b.data_len);
	munmap(b.guard, GUARD_BLOCKS * bs);
	munmap(b.back, GUARD_BLOCKS * bs);
	munmap(b.wbuf, 8 * bs + NVME_PAGE);
	munmap(b.rbuf, 8 * bs + NVME_PAGE);
}

TEST_F(nvme, stats)
{
	struct nvme_state *s = &self->n;
	struct rust_nvme_stats before, after;
	struct rust_nvme_io wio, rio;
	__u64 len = 5 * NVME_PAGE, lba = random_lba(s, len);
	char *wbuf = map(len, PROT_READ | PROT_WRITE);
	char *rbuf = map(len, PROT_READ | PROT_WRITE);
	int i;

	ASSERT_TRUE(wbuf && rbuf);
	fill_random(wbuf, len, &s->rng);
	fill_random(rbuf, len, &s->rng);
	ASSERT_EQ(0, get_stats(s->fd, &before));
	ASSERT_EQ(0, checked_io(_metadata, s, WRITE, wbuf, len, lba, 0, &wio));
	ASSERT_EQ(0, checked_io(_metadata, s, READ, rbuf, len, lba, SGL, &rio));
	ASSERT_EQ(0, get_stats(s->fd, &after));
	EXPECT_TRUE(same(_metadata, wbuf, rbuf, len, 0, "read back"));

	EXPECT_EQ(before.commands + wio.commands + rio.commands, after.commands);
	EXPECT_EQ(before.bytes_written + len, after.bytes_written);
	EXPECT_EQ(before.bytes_read + len, after.bytes_read);
	EXPECT_EQ(before.mappings + 2, after.mappings);
	EXPECT_EQ(before.dma_ranges + wio.dma_ranges + rio.dma_ranges, after.dma_ranges);
	ASSERT_LE(0, s->path) TH_LOG("RUST_NVME_DMA_PATH is not iova, direct or bounce");
	/* The harness's EXPECT_*() are not single statements. */
	for (i = 0; i < RUST_NVME_PATHS; i++) {
		EXPECT_EQ(before.paths[i] + (i == s->path ? 2 : 0), after.paths[i])
			TH_LOG("mappings on path %d", i);
	}
	EXPECT_EQ(before.iova_syncs + (s->path == RUST_NVME_PATH_IOVA ? 2 : 0), after.iova_syncs);
	EXPECT_EQ(before.prp_entries + wio.descriptors, after.prp_entries);
	EXPECT_EQ(before.prp_list_pages + wio.list_pages, after.prp_list_pages);
	EXPECT_EQ(before.sgl_descriptors + rio.descriptors, after.sgl_descriptors);
	EXPECT_EQ(before.sgl_segments + rio.list_pages, after.sgl_segments);
	EXPECT_EQ(before.failed_requests, after.failed_requests);
	munmap(wbuf, len);
	munmap(rbuf, len);
}

/* What the child of unbind_in_flight saw. */
struct unbind_log {
	int ok, enodev;
};

/*
 * Writes and reads back @len bytes until the device goes away: each request
 * must succeed or fail with ENODEV, none succeed after an ENODEV. Tells
 * @notify when the first write is done.
 */
static int unbind_child(int fd, char *wbuf, char *rbuf, __u64 len, int notify,
			struct unbind_log *seen)
{
	struct timespec start, now;
	bool is_write;
	int i, ret;

	clock_gettime(CLOCK_MONOTONIC, &start);
	for (i = 0; seen->enodev < 3; i++) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - start.tv_sec >= 20)
			break;
		is_write = !(i % 2);
		if (!is_write)
			memset(rbuf, 0, len);
		ret = do_io(fd, is_write ? WRITE : READ, is_write ? wbuf : rbuf, len, 0,
			    i % 4 < 2 ? 0 : SGL, NULL);
		if (ret && ret != -ENODEV) {
			fprintf(stderr, "# request %d: %s\n", i, strerror(-ret));
			return 1;
		}
		if (!ret && seen->enodev) {
			fprintf(stderr, "# request %d succeeded after ENODEV\n", i);
			return 1;
		}
		if (ret) {
			seen->enodev++;
		} else {
			seen->ok++;
			if (!is_write && memcmp(wbuf, rbuf, len)) {
				fprintf(stderr, "# request %d read other data\n", i);
				return 1;
			}
		}
		if (!i && write(notify, "", 1) != 1)
			return 1;
	}
	return 0;
}

TEST_F_TIMEOUT(nvme, unbind_in_flight, 120)
{
	struct nvme_state *s = &self->n;
	__u64 len = request_len(s, 16 * MIB, 0);
	struct rust_nvme_info info;
	struct unbind_log *seen;
	struct pollfd pfd;
	char *wbuf, *rbuf, path[PATH_MAX], c;
	int p[2], status, ret;
	pid_t pid;

	ASSERT_EQ(0, find_bdf(s->bdf, sizeof(s->bdf))) TH_LOG("no device bound to " MODULE_NAME);
	TH_LOG("unbinding %s during %llu-byte requests", s->bdf, (unsigned long long)len);
	wbuf = map(len, PROT_READ | PROT_WRITE);
	rbuf = map(len, PROT_READ | PROT_WRITE);
	seen = mmap(NULL, sizeof(*seen), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_TRUE(wbuf && rbuf && seen != MAP_FAILED);
	fill_random(wbuf, len, &s->rng);
	memset(seen, 0, sizeof(*seen));
	ASSERT_EQ(0, pipe(p));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		close(p[0]);
		_exit(unbind_child(s->fd, wbuf, rbuf, len, p[1], seen));
	}
	close(p[1]);

	/* As the child starts its second request. */
	pfd = (struct pollfd){ .fd = p[0], .events = POLLIN };
	EXPECT_EQ(1, poll(&pfd, 1, 20000));
	EXPECT_EQ(1, read(p[0], &c, 1)) TH_LOG("the child's first write did not end");
	close(p[0]);
	usleep(20000);
	s->unbound = true;
	ret = write_file(DRIVER_DIR "/unbind", s->bdf);
	EXPECT_EQ(0, ret) TH_LOG("unbind %s: %s", s->bdf, strerror(errno));
	snprintf(path, sizeof(path), DRIVER_DIR "/%s", s->bdf);
	EXPECT_NE(0, access(path, F_OK));

	ASSERT_EQ(pid, waitpid(pid, &status, 0));
	TH_LOG("child: %d requests done, %d failed with ENODEV", seen->ok, seen->enodev);
	EXPECT_TRUE(WIFEXITED(status) && !WEXITSTATUS(status)) TH_LOG("child status %#x", status);
	EXPECT_LE(1, seen->ok);
	EXPECT_LE(1, seen->enodev);

	/* The open file outlives the device. */
	EXPECT_EQ(-ENODEV, do_io(s->fd, WRITE, wbuf, 8 * NVME_PAGE, 0, 0, NULL));
	EXPECT_EQ(-ENODEV, do_io(s->fd, READ, rbuf, 8 * NVME_PAGE, 0, SGL, NULL));
	EXPECT_EQ(-1, ioctl(s->fd, RUST_NVME_IOC_INFO, &info));
	EXPECT_EQ(ENODEV, errno);
	EXPECT_EQ(0, close(s->fd));
	s->fd = -1;
	EXPECT_TRUE(wait_for(DEV_PATH, false, 5000)) TH_LOG("%s still there", DEV_PATH);

	ASSERT_EQ(0, write_file(DRIVER_DIR "/bind", s->bdf))
		TH_LOG("bind %s: %s", s->bdf, strerror(errno));
	s->unbound = false;
	ASSERT_TRUE(wait_for(DEV_PATH, true, 10000)) TH_LOG("%s missing after bind", DEV_PATH);
	s->fd = open(DEV_PATH, O_RDWR);
	ASSERT_LE(0, s->fd) TH_LOG("%s: %s", DEV_PATH, strerror(errno));
	ASSERT_EQ(0, ioctl(s->fd, RUST_NVME_IOC_INFO, &info));
	EXPECT_EQ(0, memcmp(&s->info, &info, sizeof(info)));
	round_trip(_metadata, s, wbuf, rbuf, 64 * NVME_PAGE, random_lba(s, 64 * NVME_PAGE), 0,
		   NULL, NULL);
	round_trip(_metadata, s, wbuf + 1, rbuf + 1, 64 * NVME_PAGE,
		   random_lba(s, 64 * NVME_PAGE), SGL, NULL, NULL);
	munmap(wbuf, len);
	munmap(rbuf, len);
	munmap(seen, sizeof(*seen));
}

static int delete_module(const char *name)
{
	return syscall(SYS_delete_module, name, O_NONBLOCK) ? -errno : 0;
}

TEST_F_TIMEOUT(nvme, module_unload, 60)
{
	struct nvme_state *s = &self->n;
	__u64 len = 64 * NVME_PAGE;
	struct rust_nvme_info info;
	char *wbuf = map(len + 1, PROT_READ | PROT_WRITE);
	char *rbuf = map(len + 1, PROT_READ | PROT_WRITE);
	int ret;

	ASSERT_TRUE(wbuf && rbuf);
	/* An open file holds the module. */
	ret = delete_module(MODULE_NAME);
	s->unloaded = !ret;
	ASSERT_TRUE(ret == -EBUSY || ret == -EAGAIN) TH_LOG("rmmod with the device open: %s",
							    ret ? strerror(-ret) : "done");
	EXPECT_EQ(0, access(DEV_PATH, F_OK));
	round_trip(_metadata, s, wbuf, rbuf, len, random_lba(s, len), 0, NULL, NULL);

	EXPECT_EQ(0, close(s->fd));
	s->fd = -1;
	s->unloaded = true;
	ret = delete_module(MODULE_NAME);
	ASSERT_EQ(0, ret) TH_LOG("rmmod: %s", strerror(-ret));
	EXPECT_TRUE(wait_for(DEV_PATH, false, 5000)) TH_LOG("%s still there", DEV_PATH);
	EXPECT_NE(0, access("/sys/module/" MODULE_NAME, F_OK));

	s->fd = open_dev(_metadata);
	ASSERT_LE(0, s->fd);
	s->unloaded = false;
	ASSERT_EQ(0, ioctl(s->fd, RUST_NVME_IOC_INFO, &info));
	EXPECT_EQ(0, memcmp(&s->info, &info, sizeof(info)));
	round_trip(_metadata, s, wbuf, rbuf, len, random_lba(s, len), 0, NULL, NULL);
	round_trip(_metadata, s, wbuf + 1, rbuf + 1, len, random_lba(s, len), SGL, NULL, NULL);
	munmap(wbuf, len + 1);
	munmap(rbuf, len + 1);
}

/*
 * Writes the pattern of RUST_NVME_DMA_SEED over the whole disk, then reads
 * it back, in requests of varied sizes, kinds and buffer offsets. The host
 * checks the image afterwards: no case may write after this one.
 */
TEST_F_TIMEOUT(nvme, disk_pattern, 600)
{
	static const __u32 kinds[] = { 0, SGL, VMALLOC, CONTIGUOUS, VMALLOC | SGL,
				       CONTIGUOUS | SGL };
	static const unsigned int prp_offsets[] = { 0, 512, 4 };
	static const unsigned int sgl_offsets[] = { 0, 1, 3, 512 };
	struct nvme_state *s = &self->n;
	__u64 bs = s->info.block_size, disk = s->info.blocks * bs;
	__u64 sizes[] = { bs, 8 * bs, 37 * bs, s->info.max_transfer, 255 * bs, 3 * MIB,
			  s->info.max_request };
	__u64 seed, pos, len, size = s->info.max_request + NVME_PAGE;
	unsigned int nr_sizes = ARRAY_SIZE(sizes);
	unsigned int nr_kinds = ARRAY_SIZE(kinds);
	unsigned int i, off, phase, requests[2] = { 0 };
	char *buf = map(size, PROT_READ | PROT_WRITE);
	char *want = map(size, PROT_READ | PROT_WRITE);
	__u32 flags;

	ASSERT_EQ(0, getenv_u64("RUST_NVME_DMA_SEED", &seed))
		TH_LOG("RUST_NVME_DMA_SEED not set to a decimal number");
	ASSERT_TRUE(buf && want);
	TH_LOG("writing %llu bytes with the pattern of seed %llu", (unsigned long long)disk,
	       (unsigned long long)seed);

	/* The read back starts elsewhere in the cycles: other request boundaries. */
	for (phase = 0; phase < 2; phase++) {
		for (pos = 0, i = 3 * phase; pos < disk; pos += len, i++) {
			flags = kinds[i % nr_kinds];
			len = request_len(s, min_u64(sizes[i % nr_sizes], disk - pos), flags);
			off = flags & SGL ? sgl_offsets[i % 4] : prp_offsets[i % 3];
			requests[phase]++;
			if (!phase) {
				fill_pattern(buf + off, pos, len, seed);
				ASSERT_EQ(0, checked_io(_metadata, s, WRITE, buf + off, len,
							pos / bs, flags, NULL));
				continue;
			}
			memset(buf + off, 0xa5, len);
			ASSERT_EQ(0, checked_io(_metadata, s, READ, buf + off, len, pos / bs, flags,
						NULL));
			fill_pattern(want, pos, len, seed);
			ASSERT_TRUE(same(_metadata, want, buf + off, len, pos, "disk pattern"))
				TH_LOG("request from block %llu, flags %#x",
				       (unsigned long long)(pos / bs), flags);
		}
	}
	TH_LOG("written in %u requests, read back in %u", requests[0], requests[1]);
	munmap(buf, size);
	munmap(want, size);
}

int main(int argc, char **argv)
{
	struct timespec now;

	if (getenv_u64("RUST_NVME_DMA_RANDOM_SEED", &run_seed)) {
		clock_gettime(CLOCK_REALTIME, &now);
		run_seed = splitmix64(now.tv_sec ^ ((__u64)now.tv_nsec << 20) ^ getpid());
	}
	return test_harness_run(argc, argv);
}
