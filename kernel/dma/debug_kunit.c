// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests of DMA-API debugging for the IOVA-based DMA API, on QEMU's edu
 * device (-device edu): each misuse of dma_iova_link(), dma_iova_unlink(),
 * dma_iova_free() and dma_iova_destroy() is counted, correct use is not.
 *
 * The machine names the DMA path the edu device gets with the kernel
 * argument dma_debug_kunit.path= (iova, direct or bounce). Where it is not
 * iova, each case checks that dma_iova_try_alloc() fails, and no more.
 *
 * The suite counts errors without reporting them, so that the misuses it
 * makes on purpose leave no warning in the kernel log.
 */

#include <kunit/test.h>
#include <linux/dma-map-ops.h>
#include <linux/dma-mapping.h>
#include <linux/iommu.h>
#include <linux/pci.h>

#include "debug.h"

#undef MODULE_PARAM_PREFIX
#define MODULE_PARAM_PREFIX "dma_debug_kunit."

static char *expected_path = "";
module_param_named(path, expected_path, charp, 0444);
MODULE_PARM_DESC(path, "DMA path of the edu device: iova, direct or bounce");

#define EDU_VENDOR	0x1234
#define EDU_DEVICE	0x11e8
#define TEST_PAGES	4

struct iova_test {
	struct pci_dev *pdev;
	struct device *dev;
	struct page *pages;
	phys_addr_t phys;
	struct dma_iova_state state;
	u32 errors;
};

static int iova_test_init(struct kunit *test)
{
	struct iova_test *t;

	t = kunit_kzalloc(test, sizeof(*t), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, t);
	t->pdev = pci_get_device(EDU_VENDOR, EDU_DEVICE, NULL);
	KUNIT_ASSERT_NOT_NULL_MSG(test, t->pdev,
				  "no edu device (QEMU -device edu)");
	t->dev = &t->pdev->dev;
	t->pages = alloc_pages(GFP_KERNEL | __GFP_ZERO,
			       get_order(TEST_PAGES * PAGE_SIZE));
	KUNIT_ASSERT_NOT_NULL(test, t->pages);
	t->phys = page_to_phys(t->pages);
	t->errors = dma_debug_error_count();
	test->priv = t;
	return 0;
}

static void iova_test_exit(struct kunit *test)
{
	struct iova_test *t = test->priv;

	if (!t)
		return;
	if (t->pages)
		__free_pages(t->pages, get_order(TEST_PAGES * PAGE_SIZE));
	pci_dev_put(t->pdev);
}

/*
 * Allocates @pages pages of IOVA space for the edu device where the machine
 * gives it the IOVA path, and checks that the allocation fails elsewhere.
 * Returns whether the space was allocated.
 */
static bool alloc_space(struct kunit *test, struct iova_test *t,
			unsigned int pages)
{
	bool iova_expected = !strcmp(expected_path, "iova");
	bool iova;

	KUNIT_ASSERT_TRUE_MSG(test, iova_expected ||
			      !strcmp(expected_path, "direct") ||
			      !strcmp(expected_path, "bounce"),
			      "dma_debug_kunit.path=%s: not iova, direct or bounce",
			      expected_path);
	iova = dma_iova_try_alloc(t->dev, &t->state, t->phys,
				  pages * PAGE_SIZE);
	KUNIT_ASSERT_EQ_MSG(test, iova, iova_expected,
			    "dma_iova_try_alloc() %s where the DMA path is %s",
			    iova ? "succeeded" : "failed", expected_path);
	return iova;
}

/* Checks that @n errors were counted since the last check. */
static void expect_new_errors(struct kunit *test, struct iova_test *t, u32 n)
{
	u32 count = dma_debug_error_count();

	KUNIT_EXPECT_EQ_MSG(test, count - t->errors, n,
			    "DMA-API debug counted %u new errors, not %u",
			    count - t->errors, n);
	t->errors = count;
}

static phys_addr_t page_phys(struct iova_test *t, unsigned int i)
{
	return t->phys + i * PAGE_SIZE;
}

static dma_addr_t page_dma(struct iova_test *t, unsigned int i)
{
	return t->state.addr + i * PAGE_SIZE;
}

/* Unmaps IOVA behind the DMA API, as a driver's misuse leaves it. */
static void unmap_behind(struct kunit *test, struct iova_test *t,
			 unsigned int first, unsigned int pages)
{
	size_t size = pages * PAGE_SIZE;

	KUNIT_EXPECT_EQ(test, iommu_unmap(iommu_get_dma_domain(t->dev),
					  page_dma(t, first), size), size);
}

static void link_page(struct kunit *test, struct iova_test *t, unsigned int i,
		      size_t size)
{
	KUNIT_ASSERT_EQ(test, dma_iova_link(t->dev, &t->state, page_phys(t, i),
					    i * PAGE_SIZE, size,
					    DMA_BIDIRECTIONAL, 0), 0);
}

/*
 * Links, syncs and unlinks the way the API allows, single links and a range
 * list, whole links and a run of several links at once: nothing is counted.
 */
static void iova_correct_use_is_silent(struct kunit *test)
{
	struct iova_test *t = test->priv;
	struct phys_vec vecs[TEST_PAGES - 1];
	unsigned int i;

	if (!alloc_space(test, t, TEST_PAGES))
		return;
	link_page(test, t, 0, PAGE_SIZE);
	for (i = 1; i < TEST_PAGES; i++)
		vecs[i - 1] = (struct phys_vec){ page_phys(t, i), PAGE_SIZE };
	KUNIT_ASSERT_EQ(test, dma_iova_link_phys_vec(t->dev, &t->state, vecs,
						     ARRAY_SIZE(vecs),
						     PAGE_SIZE,
						     DMA_BIDIRECTIONAL, 0), 0);
	KUNIT_ASSERT_EQ(test, dma_iova_sync(t->dev, &t->state, 0,
					    TEST_PAGES * PAGE_SIZE), 0);
	for (i = 0; i < TEST_PAGES; i++) {
		dma_sync_single_for_cpu(t->dev, page_dma(t, i), PAGE_SIZE,
					DMA_BIDIRECTIONAL);
		dma_sync_single_for_device(t->dev, page_dma(t, i) + 64, 128,
					   DMA_BIDIRECTIONAL);
	}
	/* Each range of the list is a link of its own */
	dma_iova_unlink(t->dev, &t->state, 2 * PAGE_SIZE, PAGE_SIZE,
			DMA_BIDIRECTIONAL, 0);
	/* A run of links: the single link and the list's first range */
	dma_iova_unlink(t->dev, &t->state, 0, 2 * PAGE_SIZE,
			DMA_BIDIRECTIONAL, 0);
	dma_iova_unlink(t->dev, &t->state, 3 * PAGE_SIZE, PAGE_SIZE,
			DMA_BIDIRECTIONAL, 0);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 0);

	/* dma_iova_destroy() unlinks all of a run of links */
	if (!alloc_space(test, t, TEST_PAGES))
		return;
	for (i = 0; i < TEST_PAGES; i++)
		link_page(test, t, i, PAGE_SIZE);
	KUNIT_ASSERT_EQ(test, dma_iova_sync(t->dev, &t->state, 0,
					    TEST_PAGES * PAGE_SIZE), 0);
	dma_iova_destroy(t->dev, &t->state, TEST_PAGES * PAGE_SIZE,
			 DMA_BIDIRECTIONAL, 0);
	expect_new_errors(test, t, 0);
}

/* An unlink of IOVA that the IOMMU maps but no dma_iova_link() linked */
static void iova_unlink_never_linked(struct kunit *test)
{
	struct iova_test *t = test->priv;

	if (!alloc_space(test, t, 1))
		return;
	KUNIT_ASSERT_EQ(test, iommu_map(iommu_get_dma_domain(t->dev),
					page_dma(t, 0), page_phys(t, 0),
					PAGE_SIZE, IOMMU_READ | IOMMU_WRITE,
					GFP_KERNEL), 0);
	dma_iova_unlink(t->dev, &t->state, 0, PAGE_SIZE, DMA_BIDIRECTIONAL, 0);
	expect_new_errors(test, t, 1);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 0);
}

/*
 * Unlinks of another size than the link's, and one with another direction.
 * The sizes differ inside the last IOVA granule, so that the IOMMU unmaps
 * exactly what it mapped: some IOMMU drivers cannot split a mapping.
 */
static void iova_unlink_mismatch(struct kunit *test)
{
	struct iova_test *t = test->priv;

	/* Ends inside the link: the link is reported and forgotten */
	if (!alloc_space(test, t, 1))
		return;
	link_page(test, t, 0, PAGE_SIZE);
	dma_iova_unlink(t->dev, &t->state, 0, PAGE_SIZE - 64,
			DMA_BIDIRECTIONAL, 0);
	expect_new_errors(test, t, 1);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 0);

	/* Goes on after the link, where nothing is linked */
	if (!alloc_space(test, t, 1))
		return;
	link_page(test, t, 0, PAGE_SIZE - 64);
	dma_iova_unlink(t->dev, &t->state, 0, PAGE_SIZE, DMA_BIDIRECTIONAL, 0);
	expect_new_errors(test, t, 1);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 0);

	if (!alloc_space(test, t, 1))
		return;
	link_page(test, t, 0, PAGE_SIZE);
	dma_iova_unlink(t->dev, &t->state, 0, PAGE_SIZE, DMA_TO_DEVICE, 0);
	expect_new_errors(test, t, 1);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 0);
}

/* dma_iova_free() and dma_iova_destroy() with links left in the space */
static void iova_free_with_links(struct kunit *test)
{
	struct iova_test *t = test->priv;
	struct phys_vec vecs[2];
	dma_addr_t linked;

	if (!alloc_space(test, t, 2))
		return;
	vecs[0] = (struct phys_vec){ page_phys(t, 0), PAGE_SIZE };
	vecs[1] = (struct phys_vec){ page_phys(t, 1), PAGE_SIZE };
	KUNIT_ASSERT_EQ(test, dma_iova_link_phys_vec(t->dev, &t->state, vecs,
						     2, 0, DMA_BIDIRECTIONAL,
						     0), 0);
	linked = page_dma(t, 1);
	unmap_behind(test, t, 0, 2);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 1);
	/* The report forgot the links: syncing one is an error now */
	dma_sync_single_for_cpu(t->dev, linked, PAGE_SIZE, DMA_BIDIRECTIONAL);
	expect_new_errors(test, t, 1);

	/* destroy unlinks the first page only and frees the space */
	if (!alloc_space(test, t, 2))
		return;
	link_page(test, t, 0, PAGE_SIZE);
	link_page(test, t, 1, PAGE_SIZE);
	unmap_behind(test, t, 1, 1);
	dma_iova_destroy(t->dev, &t->state, PAGE_SIZE, DMA_BIDIRECTIONAL, 0);
	expect_new_errors(test, t, 1);
}

/* Syncs of a link are accepted while it is linked and counted after */
static void iova_sync_after_unlink(struct kunit *test)
{
	struct iova_test *t = test->priv;
	dma_addr_t addr;

	if (!alloc_space(test, t, 1))
		return;
	addr = page_dma(t, 0);
	link_page(test, t, 0, PAGE_SIZE);
	dma_sync_single_for_cpu(t->dev, addr, PAGE_SIZE, DMA_BIDIRECTIONAL);
	dma_sync_single_for_device(t->dev, addr, PAGE_SIZE, DMA_BIDIRECTIONAL);
	expect_new_errors(test, t, 0);
	dma_iova_unlink(t->dev, &t->state, 0, PAGE_SIZE, DMA_BIDIRECTIONAL, 0);
	expect_new_errors(test, t, 0);
	dma_sync_single_for_cpu(t->dev, addr, PAGE_SIZE, DMA_BIDIRECTIONAL);
	expect_new_errors(test, t, 1);
	dma_sync_single_for_device(t->dev, addr, PAGE_SIZE, DMA_BIDIRECTIONAL);
	expect_new_errors(test, t, 1);
	dma_iova_free(t->dev, &t->state);
	expect_new_errors(test, t, 0);
}

/* The state of the driver below, which leaves a link behind at unbind */
static struct dma_iova_state leaked_state;
static phys_addr_t leaked_phys;
static bool leaked_linked;

static int leaking_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	int ret;

	if (!dma_iova_try_alloc(&pdev->dev, &leaked_state, leaked_phys,
				PAGE_SIZE))
		return -ENODEV;
	ret = dma_iova_link(&pdev->dev, &leaked_state, leaked_phys, 0,
			    PAGE_SIZE, DMA_BIDIRECTIONAL, 0);
	if (ret) {
		dma_iova_free(&pdev->dev, &leaked_state);
		return ret;
	}
	leaked_linked = true;
	return 0;
}

static const struct pci_device_id leaking_ids[] = {
	{ PCI_DEVICE(EDU_VENDOR, EDU_DEVICE) },
	{ }
};

static struct pci_driver leaking_driver = {
	.name = "dma_debug_kunit_leak",
	.id_table = leaking_ids,
	.probe = leaking_probe,
};

/* A driver unbound with a link left is reported, and the link forgotten */
static void iova_unbind_with_links(struct kunit *test)
{
	struct iova_test *t = test->priv;
	struct iommu_domain *domain;

	if (!alloc_space(test, t, 1))
		return;
	dma_iova_free(t->dev, &t->state);
	KUNIT_ASSERT_NULL_MSG(test, READ_ONCE(t->dev->driver),
			      "the edu device is bound to %s",
			      dev_driver_string(t->dev));

	leaked_phys = page_phys(t, 0);
	leaked_linked = false;
	KUNIT_ASSERT_EQ(test, pci_register_driver(&leaking_driver), 0);
	KUNIT_EXPECT_TRUE_MSG(test, leaked_linked,
			      "the leaking driver did not probe the edu device");
	pci_unregister_driver(&leaking_driver);
	if (!leaked_linked)
		return;
	expect_new_errors(test, t, 1);

	domain = iommu_get_dma_domain(t->dev);
	KUNIT_EXPECT_EQ(test, iommu_unmap(domain, leaked_state.addr, PAGE_SIZE),
			PAGE_SIZE);
	dma_iova_free(t->dev, &leaked_state);
	expect_new_errors(test, t, 0);
}

static int iova_suite_init(struct kunit_suite *suite)
{
	dma_debug_set_quiet(true);
	return 0;
}

static void iova_suite_exit(struct kunit_suite *suite)
{
	dma_debug_set_quiet(false);
}

static struct kunit_case dma_debug_iova_cases[] = {
	KUNIT_CASE(iova_correct_use_is_silent),
	KUNIT_CASE(iova_unlink_never_linked),
	KUNIT_CASE(iova_unlink_mismatch),
	KUNIT_CASE(iova_free_with_links),
	KUNIT_CASE(iova_sync_after_unlink),
	KUNIT_CASE(iova_unbind_with_links),
	{}
};

static struct kunit_suite dma_debug_iova_suite = {
	.name = "dma_debug_iova",
	.init = iova_test_init,
	.exit = iova_test_exit,
	.suite_init = iova_suite_init,
	.suite_exit = iova_suite_exit,
	.test_cases = dma_debug_iova_cases,
};

kunit_test_suite(dma_debug_iova_suite);

MODULE_DESCRIPTION("KUnit tests of DMA-API debugging for the IOVA-based API");
MODULE_LICENSE("GPL");
