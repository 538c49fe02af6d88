// SPDX-License-Identifier: GPL-2.0
/*
 * Pins user memory through the rust_dma_pin sample (/dev/rust-dma-pin),
 * which uses the Rust UserPhyrs, and checks the physical ranges it reports
 * against /proc/self/pagemap, the error codes of bad input, and that every
 * page pinned is unpinned again (nr_foll_pin_* in /proc/vmstat).
 */
#include <errno.h>
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

#define PAGE 4096UL
#define HUGE (2UL << 20)
#define KPF_HUGE 17
#define KPF_THP 22
#define MAX_RANGES 4096

struct range {
	__u64 paddr;
	__u64 len;
};

static unsigned long vmstat_value(const char *name)
{
	char key[64];
	unsigned long value, found = -1UL;
	FILE *f = fopen("/proc/vmstat", "r");

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
	__u64 entry = read_u64_at("/proc/self/pagemap", page / PAGE);

	if (!(entry >> 63))
		return 0;
	return (entry & ((1ULL << 55) - 1)) * PAGE;
}

static int page_flag(uintptr_t page, int flag)
{
	__u64 paddr = page_paddr(page);

	return paddr && (read_u64_at("/proc/kpageflags", paddr / PAGE) >> flag & 1);
}

/* The ranges the kernel must report, from the page tables: coalesced bytes. */
static int expected_ranges(void *addr, size_t len, struct range *out)
{
	uintptr_t start = (uintptr_t)addr, end = start + len, page;
	int n = 0;

	for (page = start & ~(PAGE - 1); page < end; page += PAGE) {
		uintptr_t lo = start > page ? start : page;
		uintptr_t hi = end < page + PAGE ? end : page + PAGE;
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

FIXTURE(pin)
{
	int fd;
	unsigned long acquired, released;
	struct range got[MAX_RANGES], want[MAX_RANGES];
};

FIXTURE_SETUP(pin)
{
	self->fd = open("/dev/rust-dma-pin", O_RDWR);
	ASSERT_LE(0, self->fd) TH_LOG("/dev/rust-dma-pin: %s", strerror(errno));
	self->acquired = vmstat_value("nr_foll_pin_acquired");
	self->released = vmstat_value("nr_foll_pin_released");
	ASSERT_NE(-1UL, self->acquired);
	ASSERT_NE(-1UL, self->released);
}

FIXTURE_TEARDOWN(pin)
{
	close(self->fd);
}

/* Pages pinned since the test started; every pin must have been released. */
static unsigned long pins_since_start(struct __test_metadata *_metadata,
				      FIXTURE_DATA(pin) *self)
{
	unsigned long acquired = vmstat_value("nr_foll_pin_acquired") - self->acquired;
	unsigned long released = vmstat_value("nr_foll_pin_released") - self->released;

	EXPECT_EQ(acquired, released);
	return acquired;
}

/* Pins @len bytes at @addr and checks the ranges against the page tables. */
static int pin_and_compare(struct __test_metadata *_metadata, FIXTURE_DATA(pin) *self,
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
	char *buf = map(PAGE, PROT_READ | PROT_WRITE);

	ASSERT_NE(NULL, buf);
	buf[0] = 1;
	EXPECT_EQ(1, pin_and_compare(_metadata, self, buf, PAGE, 1));
	EXPECT_EQ(1, pins_since_start(_metadata, self));
	munmap(buf, PAGE);
}

TEST_F(pin, unaligned_bytes)
{
	char *buf = map(4 * PAGE, PROT_READ | PROT_WRITE);

	ASSERT_NE(NULL, buf);
	memset(buf, 1, 4 * PAGE);
	pin_and_compare(_metadata, self, buf + 100, 3 * PAGE, 0);
	EXPECT_EQ(self->want[0].paddr % PAGE, 100);
	EXPECT_EQ(4, pins_since_start(_metadata, self));
	munmap(buf, 4 * PAGE);
}

/* More pages than one batch of pin_user_pages_fast(), faulted in reverse. */
TEST_F(pin, scattered_pages)
{
	size_t pages = 1537, i;
	char *buf = map(pages * PAGE, PROT_READ | PROT_WRITE);
	int nr;

	ASSERT_NE(NULL, buf);
	for (i = pages; i > 0; i--)
		buf[(i - 1) * PAGE] = 1;
	nr = pin_and_compare(_metadata, self, buf + 1, pages * PAGE - 2, 1);
	TH_LOG("%zu pages in %d ranges", pages, nr);
	EXPECT_EQ(pages, pins_since_start(_metadata, self));
	munmap(buf, pages * PAGE);
}

TEST_F(pin, transparent_huge_page)
{
	char *area = map(2 * HUGE, PROT_READ | PROT_WRITE);
	char *buf = (char *)(((uintptr_t)area + HUGE - 1) & ~(HUGE - 1));

	ASSERT_NE(NULL, area);
	ASSERT_EQ(0, madvise(buf, HUGE, MADV_HUGEPAGE));
	memset(buf, 1, HUGE);
	ASSERT_TRUE(page_flag((uintptr_t)buf, KPF_THP)) TH_LOG("no THP");
	EXPECT_EQ(1, pin_and_compare(_metadata, self, buf, HUGE, 1));
	EXPECT_EQ(0, self->got[0].paddr % HUGE);
	EXPECT_EQ(HUGE, self->got[0].len);
	EXPECT_EQ(HUGE / PAGE, pins_since_start(_metadata, self));
	munmap(area, 2 * HUGE);
}

static int write_file(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	int ret = fd < 0 ? -1 : (int)write(fd, value, strlen(value));

	if (fd >= 0)
		close(fd);
	return ret < 0 ? -1 : 0;
}

TEST_F(pin, hugetlb_page)
{
	char *buf;

	ASSERT_EQ(0, write_file("/proc/sys/vm/nr_hugepages", "1"));
	buf = mmap(NULL, HUGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	ASSERT_NE(MAP_FAILED, buf);
	memset(buf, 1, HUGE);
	ASSERT_TRUE(page_flag((uintptr_t)buf, KPF_HUGE));
	EXPECT_EQ(1, pin_and_compare(_metadata, self, buf, HUGE, 1));
	EXPECT_EQ(HUGE, self->got[0].len);
	EXPECT_EQ(HUGE / PAGE, pins_since_start(_metadata, self));
	munmap(buf, HUGE);
	write_file("/proc/sys/vm/nr_hugepages", "0");
}

TEST_F(pin, read_only_mapping)
{
	char *buf = map(2 * PAGE, PROT_READ);

	ASSERT_NE(NULL, buf);
	EXPECT_EQ(0, buf[0] + buf[PAGE]);
	EXPECT_EQ(-EFAULT, pin(self->fd, buf, 2 * PAGE, 1, self->got, NULL));
	EXPECT_EQ(0, pins_since_start(_metadata, self));
	/* The device may read it. */
	pin_and_compare(_metadata, self, buf, 2 * PAGE, 0);
	munmap(buf, 2 * PAGE);
}

/* Pages before an unmapped hole are pinned, then released with the error. */
static void pin_across_hole(struct __test_metadata *_metadata, FIXTURE_DATA(pin) *self,
			    size_t pages, size_t hole)
{
	char *buf = map(pages * PAGE, PROT_READ | PROT_WRITE);

	ASSERT_NE(NULL, buf);
	memset(buf, 1, pages * PAGE);
	ASSERT_EQ(0, munmap(buf + hole * PAGE, PAGE));
	EXPECT_EQ(-EFAULT, pin(self->fd, buf, pages * PAGE, 1, self->got, NULL));
	EXPECT_EQ(hole, pins_since_start(_metadata, self));
	munmap(buf, pages * PAGE);
}

TEST_F(pin, hole)
{
	pin_across_hole(_metadata, self, 8, 5);
}

TEST_F(pin, hole_after_first_batch)
{
	pin_across_hole(_metadata, self, 1100, 700);
}

TEST_F(pin, bad_ranges)
{
	char *buf = map(2 * PAGE, PROT_READ | PROT_WRITE);
	char *unmapped = buf + PAGE;

	ASSERT_NE(NULL, buf);
	buf[0] = 1;
	ASSERT_EQ(0, munmap(unmapped, PAGE));
	EXPECT_EQ(-EINVAL, pin(self->fd, buf, 0, 1, self->got, NULL));
	EXPECT_EQ(-EINVAL, pin(self->fd, (void *)(UINTPTR_MAX - PAGE + 1), 2 * PAGE, 0,
			       self->got, NULL));
	EXPECT_EQ(-EFAULT, pin(self->fd, unmapped, PAGE, 0, self->got, NULL));
	EXPECT_EQ(-EFAULT, pin(self->fd, (void *)0xffff888000000000UL, PAGE, 0,
			       self->got, NULL));
	EXPECT_EQ(-EFAULT, pin(self->fd, (void *)(UINTPTR_MAX - PAGE + 1), PAGE - 1, 0,
			       self->got, NULL));
	EXPECT_EQ(0, pins_since_start(_metadata, self));
	/* Far larger than the mapping: released after its page was pinned. */
	EXPECT_EQ(-EFAULT, pin(self->fd, buf, 1UL << 46, 0, self->got, NULL));
	EXPECT_EQ(1, pins_since_start(_metadata, self));
	munmap(buf, PAGE);
}

TEST_F(pin, count_without_copy)
{
	char *buf = map(PAGE, PROT_READ | PROT_WRITE);
	__u32 nr = 0;

	ASSERT_NE(NULL, buf);
	buf[0] = 1;
	EXPECT_EQ(0, pin(self->fd, buf, PAGE, 1, NULL, &nr));
	EXPECT_EQ(1, nr);
	EXPECT_EQ(1, pins_since_start(_metadata, self));
	munmap(buf, PAGE);
}

/*
 * Fails each slab allocation of a pin in turn (fail-nth with failslab):
 * every failure is ENOMEM and releases what was pinned, some after pinning
 * had started.
 */
TEST_F(pin, out_of_memory)
{
	size_t pages = 1200, i;
	char *buf = map(pages * PAGE, PROT_READ | PROT_WRITE);
	int fail_nth, nth, failures = 0, late_failures = 0, ret = -ENOMEM;
	char value[16];

	ASSERT_NE(NULL, buf);
	for (i = pages; i > 0; i--)
		buf[(i - 1) * PAGE] = 1;
	/* GFP_KERNEL allocations are spared unless told otherwise. */
	ASSERT_EQ(0, write_file("/sys/kernel/debug/failslab/ignore-gfp-wait", "N"));
	ASSERT_EQ(0, write_file("/sys/kernel/debug/failslab/verbose", "0"));
	fail_nth = open("/proc/thread-self/fail-nth", O_RDWR);
	ASSERT_LE(0, fail_nth);

	for (nth = 1; ret == -ENOMEM && nth < 100; nth++) {
		unsigned long before = vmstat_value("nr_foll_pin_acquired");

		snprintf(value, sizeof(value), "%d", nth);
		ASSERT_LT(0, pwrite(fail_nth, value, strlen(value), 0));
		ret = pin(self->fd, buf, pages * PAGE, 1, self->got, NULL);
		ASSERT_LT(0, pwrite(fail_nth, "0", 1, 0));
		ASSERT_TRUE(ret == 0 || ret == -ENOMEM) TH_LOG("allocation %d: %d", nth, ret);
		if (ret == -ENOMEM) {
			failures++;
			late_failures += vmstat_value("nr_foll_pin_acquired") != before;
		}
		pins_since_start(_metadata, self);
	}
	close(fail_nth);
	write_file("/sys/kernel/debug/failslab/ignore-gfp-wait", "Y");
	TH_LOG("%d allocations failed, %d after pinning had started",
	       failures, late_failures);
	EXPECT_EQ(0, ret);
	EXPECT_LT(0, failures);
	EXPECT_LT(0, late_failures);
	munmap(buf, pages * PAGE);
}

TEST_HARNESS_MAIN
