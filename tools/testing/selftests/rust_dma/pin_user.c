// SPDX-License-Identifier: GPL-2.0
/*
 * Pins user memory through the rust_dma_pin sample (/dev/rust-dma-pin),
 * which uses the Rust UserPhyrs, and checks the physical ranges it reports
 * against /proc/self/pagemap, the error codes of bad input, and that every
 * page pinned is unpinned again (nr_foll_pin_* in /proc/vmstat).
 */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/types.h>

#include "../kselftest_harness.h"

/* struct PinArgs of samples/rust/rust_dma_pin.rs */
struct rust_dma_pin {
	__u64 addr;
	__u64 len;
	__u64 ranges;
	__u32 max_ranges;
	__u32 write;
	__u32 nr_ranges;
	__u32 reserved;
};

#define RUST_DMA_PIN _IOWR('|', 0x90, struct rust_dma_pin)

#define KPF_HUGE 17
#define KPF_THP 22
#define MAX_RANGES 4096

struct range {
	__u64 paddr;
	__u64 len;
};

static unsigned long page_size, huge_size;

/* What a test changes globally, restored by the fixture's teardown. */
struct saved_setting {
	const char *path;
	char value[32];
};

static unsigned long vmstat_value(const char *name)
{
	char key[64];
	unsigned long value, found = -1UL;
	FILE *f = fopen("/proc/sys/vm/stat_refresh", "w");

	/* An SMP kernel folds the CPUs' counts into /proc/vmstat on write. */
	if (f) {
		fputs("1", f);
		fclose(f);
	}
	f = fopen("/proc/vmstat", "r");
	if (!f)
		return -1UL;
	while (fscanf(f, "%63s %lu", key, &value) == 2)
		if (!strcmp(key, name))
			found = value;
	fclose(f);
	return found;
}

static __u64 read_u64_at(const char *path, off_t index)
{
	__u64 value = 0;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return 0;
	if (pread(fd, &value, sizeof(value), index * sizeof(value)) != sizeof(value))
		value = 0;
	close(fd);
	return value;
}

/* Physical address of the page at virtual address @page, 0 if not present. */
static __u64 page_paddr(uintptr_t page)
{
	__u64 entry = read_u64_at("/proc/self/pagemap", page / page_size);

	if (!(entry >> 63))
		return 0;
	return (entry & ((1ULL << 55) - 1)) * page_size;
}

static int page_flag(uintptr_t page, int flag)
{
	__u64 paddr = page_paddr(page);

	return paddr && (read_u64_at("/proc/kpageflags", paddr / page_size) >> flag & 1);
}

/* The ranges the kernel must report, from the page tables: coalesced bytes. */
static int expected_ranges(void *addr, size_t len, struct range *out)
{
	uintptr_t start = (uintptr_t)addr, end = start + len, page;
	int n = 0;

	for (page = start & ~(page_size - 1); page < end; page += page_size) {
		uintptr_t lo = start > page ? start : page;
		uintptr_t hi = end < page + page_size ? end : page + page_size;
		__u64 paddr = page_paddr(page);

		if (!paddr || n == MAX_RANGES)
			return -1;
		paddr += lo - page;
		if (n && out[n - 1].paddr + out[n - 1].len == paddr)
			out[n - 1].len += hi - lo;
		else
			out[n++] = (struct range){ paddr, hi - lo };
	}
	return n;
}

static int pin(int fd, void *addr, size_t len, int write, struct range *ranges,
	       __u32 *nr_ranges)
{
	struct rust_dma_pin args = {
		.addr = (uintptr_t)addr,
		.len = len,
		.ranges = (uintptr_t)ranges,
		.max_ranges = ranges ? MAX_RANGES : 0,
		.write = write,
	};
	int ret = ioctl(fd, RUST_DMA_PIN, &args);

	if (nr_ranges)
		*nr_ranges = args.nr_ranges;
	return ret ? -errno : 0;
}

static void *map(size_t len, int prot)
{
	void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
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
	int ret = fd < 0 ? -1 : (int)write(fd, value, strlen(value));

	if (fd >= 0)
		close(fd);
	return ret < 0 ? -1 : 0;
}

struct pin_state {
	int fd;
	unsigned long acquired, released;
	struct saved_setting saved[4];
	int nr_saved;
	struct range got[MAX_RANGES], want[MAX_RANGES];
};

/* Sets @path to @value until the end of the test; fails if it cannot. */
static int change_setting(struct pin_state *self, const char *path, const char *value)
{
	struct saved_setting *saved = &self->saved[self->nr_saved];

	if (self->nr_saved == 4 || read_file(path, saved->value, sizeof(saved->value)))
		return -1;
	saved->path = path;
	self->nr_saved++;
	return write_file(path, value);
}

FIXTURE(pin)
{
	struct pin_state s;
};

FIXTURE_SETUP(pin)
{
	self->s.fd = open("/dev/rust-dma-pin", O_RDWR);
	if (self->s.fd < 0)
		SKIP(return, "/dev/rust-dma-pin: %s (CONFIG_SAMPLE_RUST_DMA_PIN)",
		     strerror(errno));
	self->s.acquired = vmstat_value("nr_foll_pin_acquired");
	self->s.released = vmstat_value("nr_foll_pin_released");
	ASSERT_NE(-1UL, self->s.acquired);
	ASSERT_NE(-1UL, self->s.released);
}

FIXTURE_TEARDOWN(pin)
{
	while (self->s.nr_saved > 0) {
		struct saved_setting *saved = &self->s.saved[--self->s.nr_saved];

		write_file(saved->path, saved->value);
	}
	if (self->s.fd >= 0)
		close(self->s.fd);
}

/* Pages pinned since the test started; every pin must have been released. */
static unsigned long pins_since_start(struct __test_metadata *_metadata,
				      struct pin_state *self)
{
	unsigned long acquired = vmstat_value("nr_foll_pin_acquired") - self->acquired;
	unsigned long released = vmstat_value("nr_foll_pin_released") - self->released;

	EXPECT_EQ(acquired, released);
	return acquired;
}

/* Pins @len bytes at @addr and checks the ranges against the page tables. */
static int pin_and_compare(struct __test_metadata *_metadata, struct pin_state *self,
			   void *addr, size_t len, int write)
{
	__u32 nr;
	int i, n;

	EXPECT_EQ(0, pin(self->fd, addr, len, write, self->got, &nr));
	n = expected_ranges(addr, len, self->want);
	EXPECT_LT(0, n);
	EXPECT_EQ(n, nr);
	for (i = 0; i < n && i < nr; i++) {
		EXPECT_EQ(self->want[i].paddr, self->got[i].paddr) TH_LOG("range %d", i);
		EXPECT_EQ(self->want[i].len, self->got[i].len) TH_LOG("range %d", i);
	}
	return nr;
}

TEST_F(pin, single_page)
{
	char *buf = map(page_size, PROT_READ | PROT_WRITE);

	ASSERT_NE(NULL, buf);
	buf[0] = 1;
	EXPECT_EQ(1, pin_and_compare(_metadata, &self->s, buf, page_size, 1));
	EXPECT_EQ(1, pins_since_start(_metadata, &self->s));
	munmap(buf, page_size);
}

TEST_F(pin, unaligned_bytes)
{
	char *buf = map(4 * page_size, PROT_READ | PROT_WRITE);

	ASSERT_NE(NULL, buf);
	memset(buf, 1, 4 * page_size);
	pin_and_compare(_metadata, &self->s, buf + 100, 3 * page_size, 0);
	EXPECT_EQ(self->s.want[0].paddr % page_size, 100);
	EXPECT_EQ(4, pins_since_start(_metadata, &self->s));
	munmap(buf, 4 * page_size);
}

/* More pages than one batch of pin_user_pages_fast(), faulted in reverse. */
TEST_F(pin, scattered_pages)
{
	size_t pages = 1537, i;
	char *buf = map(pages * page_size, PROT_READ | PROT_WRITE);
	int nr;

	ASSERT_NE(NULL, buf);
	for (i = pages; i > 0; i--)
		buf[(i - 1) * page_size] = 1;
	nr = pin_and_compare(_metadata, &self->s, buf + 1, pages * page_size - 2, 1);
	TH_LOG("%zu pages in %d ranges", pages, nr);
	EXPECT_EQ(pages, pins_since_start(_metadata, &self->s));
	munmap(buf, pages * page_size);
}

TEST_F(pin, transparent_huge_page)
{
	char *area = map(2 * huge_size, PROT_READ | PROT_WRITE);
	char *buf = (char *)(((uintptr_t)area + huge_size - 1) & ~(huge_size - 1));

	ASSERT_NE(NULL, area);
	if (!huge_size || madvise(buf, huge_size, MADV_HUGEPAGE))
		SKIP(return, "no transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)");
	memset(buf, 1, huge_size);
	ASSERT_TRUE(page_flag((uintptr_t)buf, KPF_THP)) TH_LOG("no THP allocated");
	EXPECT_EQ(1, pin_and_compare(_metadata, &self->s, buf, huge_size, 1));
	EXPECT_EQ(0, self->s.got[0].paddr % huge_size);
	EXPECT_EQ(huge_size, self->s.got[0].len);
	EXPECT_EQ(huge_size / page_size, pins_since_start(_metadata, &self->s));
	munmap(area, 2 * huge_size);
}

TEST_F(pin, hugetlb_page)
{
	char *buf;

	if (change_setting(&self->s, "/proc/sys/vm/nr_hugepages", "1"))
		SKIP(return, "no hugetlb pages (CONFIG_HUGETLBFS)");
	buf = mmap(NULL, huge_size, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (buf == MAP_FAILED)
		SKIP(return, "no %lu KiB hugetlb page: %s", huge_size >> 10, strerror(errno));
	memset(buf, 1, huge_size);
	ASSERT_TRUE(page_flag((uintptr_t)buf, KPF_HUGE));
	EXPECT_EQ(1, pin_and_compare(_metadata, &self->s, buf, huge_size, 1));
	EXPECT_EQ(huge_size, self->s.got[0].len);
	EXPECT_EQ(huge_size / page_size, pins_since_start(_metadata, &self->s));
	munmap(buf, huge_size);
}

TEST_F(pin, read_only_mapping)
{
	char *buf = map(2 * page_size, PROT_READ);

	ASSERT_NE(NULL, buf);
	EXPECT_EQ(0, buf[0] + buf[page_size]);
	EXPECT_EQ(-EFAULT, pin(self->s.fd, buf, 2 * page_size, 1, self->s.got, NULL));
	EXPECT_EQ(0, pins_since_start(_metadata, &self->s));
	/* The device may read it. */
	pin_and_compare(_metadata, &self->s, buf, 2 * page_size, 0);
	munmap(buf, 2 * page_size);
}

/* Pages before an unmapped hole are pinned, then released with the error. */
static void pin_across_hole(struct __test_metadata *_metadata, struct pin_state *self,
			    size_t pages, size_t hole)
{
	char *buf = map(pages * page_size, PROT_READ | PROT_WRITE);

	ASSERT_NE(NULL, buf);
	memset(buf, 1, pages * page_size);
	ASSERT_EQ(0, munmap(buf + hole * page_size, page_size));
	EXPECT_EQ(-EFAULT, pin(self->fd, buf, pages * page_size, 1, self->got, NULL));
	EXPECT_EQ(hole, pins_since_start(_metadata, self));
	munmap(buf, pages * page_size);
}

TEST_F(pin, hole)
{
	pin_across_hole(_metadata, &self->s, 8, 5);
}

TEST_F(pin, hole_after_first_batch)
{
	pin_across_hole(_metadata, &self->s, 1100, 700);
}

TEST_F(pin, bad_ranges)
{
	char *buf = map(2 * page_size, PROT_READ | PROT_WRITE);
	char *unmapped = buf + page_size;

	ASSERT_NE(NULL, buf);
	buf[0] = 1;
	ASSERT_EQ(0, munmap(unmapped, page_size));
	EXPECT_EQ(-EINVAL, pin(self->s.fd, buf, 0, 1, self->s.got, NULL));
	EXPECT_EQ(-EINVAL, pin(self->s.fd, (void *)(UINTPTR_MAX - page_size + 1), 2 * page_size, 0,
			       self->s.got, NULL));
	EXPECT_EQ(-EFAULT, pin(self->s.fd, unmapped, page_size, 0, self->s.got, NULL));
	/* The top of the address space is the kernel's. */
	EXPECT_EQ(-EFAULT, pin(self->s.fd, (void *)(UINTPTR_MAX - 2 * page_size + 1), page_size, 0,
			       self->s.got, NULL));
	EXPECT_EQ(-EFAULT, pin(self->s.fd, (void *)(UINTPTR_MAX - page_size + 1), page_size - 1, 0,
			       self->s.got, NULL));
	EXPECT_EQ(0, pins_since_start(_metadata, &self->s));
	/* Far larger than the mapping: released after its page was pinned. */
	EXPECT_EQ(-EFAULT, pin(self->s.fd, buf, 1UL << 46, 0, self->s.got, NULL));
	EXPECT_EQ(1, pins_since_start(_metadata, &self->s));
	munmap(buf, page_size);
}

TEST_F(pin, count_without_copy)
{
	char *buf = map(page_size, PROT_READ | PROT_WRITE);
	__u32 nr = 0;

	ASSERT_NE(NULL, buf);
	buf[0] = 1;
	EXPECT_EQ(0, pin(self->s.fd, buf, page_size, 1, NULL, &nr));
	EXPECT_EQ(1, nr);
	EXPECT_EQ(1, pins_since_start(_metadata, &self->s));
	munmap(buf, page_size);
}

/*
 * Fails each slab allocation of a pin in turn (fail-nth with failslab):
 * every failure is ENOMEM and releases what was pinned, some after pinning
 * had started.
 */
TEST_F(pin, out_of_memory)
{
	size_t pages = 1200, i;
	char *buf = map(pages * page_size, PROT_READ | PROT_WRITE);
	int fail_nth, nth, failures = 0, late_failures = 0, ret = -ENOMEM;
	bool injected;
	char value[16];

	ASSERT_NE(NULL, buf);
	for (i = pages; i > 0; i--)
		buf[(i - 1) * page_size] = 1;
	/* GFP_KERNEL allocations are spared unless told otherwise. */
	if (change_setting(&self->s, "/sys/kernel/debug/failslab/ignore-gfp-wait", "N") ||
	    change_setting(&self->s, "/sys/kernel/debug/failslab/verbose", "0"))
		SKIP(return, "no failslab (CONFIG_FAILSLAB, CONFIG_FAULT_INJECTION_DEBUG_FS)");
	fail_nth = open("/proc/thread-self/fail-nth", O_RDWR);
	ASSERT_LE(0, fail_nth);

	/*
	 * Fail each allocation of the call in turn, until one past the last:
	 * fail-nth then reads back the count it did not use. An injected
	 * failure that a fallback absorbs lets the call succeed; the others
	 * must fail it cleanly.
	 */
	for (nth = 1, injected = true; injected && nth < 1000; nth++) {
		unsigned long before = vmstat_value("nr_foll_pin_acquired");

		snprintf(value, sizeof(value), "%d", nth);
		ASSERT_LT(0, pwrite(fail_nth, value, strlen(value), 0));
		ret = pin(self->s.fd, buf, pages * page_size, 1, self->s.got, NULL);
		memset(value, 0, sizeof(value));
		ASSERT_LT(0, pread(fail_nth, value, sizeof(value) - 1, 0));
		injected = atoi(value) == 0;
		ASSERT_LT(0, pwrite(fail_nth, "0", 1, 0));
		ASSERT_TRUE(ret == 0 || ret == -ENOMEM) TH_LOG("allocation %d: %d", nth, ret);
		ASSERT_TRUE(injected || ret == 0) TH_LOG("no failure injected, yet %d", ret);
		if (ret == -ENOMEM) {
			failures++;
			late_failures += vmstat_value("nr_foll_pin_acquired") != before;
		}
		pins_since_start(_metadata, &self->s);
	}
	ASSERT_FALSE(injected) TH_LOG("still failing allocations after %d", nth);
	close(fail_nth);
	TH_LOG("%d allocations failed, %d after pinning had started",
	       failures, late_failures);
	EXPECT_EQ(0, ret);
	EXPECT_LT(0, failures);
	EXPECT_LT(0, late_failures);
	munmap(buf, pages * page_size);
}

int main(int argc, char **argv)
{
	char value[32];

	page_size = sysconf(_SC_PAGESIZE);
	if (!read_file("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", value,
		       sizeof(value)))
		huge_size = strtoul(value, NULL, 0);
	else
		huge_size = page_size / sizeof(void *) * page_size;
	return test_harness_run(argc, argv);
}
