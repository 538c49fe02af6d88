// SPDX-License-Identifier: GPL-2.0

//! Pinned user memory as physical ranges.
//!
//! [`UserPhyrs`] pins a range of a user process's memory for DMA and holds it as the physical
//! ranges it occupies, whole folios and huge pages as single ranges, without keeping an array of
//! pages. Dropping it unpins the memory range by range.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)

use super::{
    list::{
        PhyrList,
        PhyrPush,
        PhyrRanges, //
    },
    Phyr, //
};
use crate::{
    alloc::{
        Flags,
        KVec, //
    },
    bindings,
    dma::DataDirection,
    io::PhysAddr,
    page::{
        PAGE_MASK,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    task::might_sleep,
    uaccess::UserPtr, //
};

/// Pages pinned by one call to `pin_user_pages_fast()`: a page of page pointers, which is the
/// number of pages a PMD maps, so that the fast path takes a PMD-sized huge page in one call.
const BATCH_PAGES: usize = PAGE_SIZE / size_of::<*mut bindings::page>();

/// Pages unpinned by one call to `unpin_user_page_range_dirty_lock()`, which needs their
/// `struct page`s to be contiguous: a naturally aligned block of the largest buddy order is,
/// in every memory model.
const UNPIN_BLOCK_PAGES: usize = 1 << bindings::MAX_PAGE_ORDER;

/// User memory pinned for DMA, as physical ranges.
///
/// The ranges are kept in a [`PhyrList`], and the object can be used wherever [`PhyrRanges`]
/// are taken. The pins are meant to be short-lived, as for direct I/O: the pages are pinned
/// without `FOLL_LONGTERM`.
///
/// # Invariants
///
/// Every page that a range of `self.ranges` touches was pinned with `FOLL_PIN`, with
/// `FOLL_WRITE` if `self.write`, once for each time a range touches it, and is unpinned only by
/// dropping `self`. Ranges start and end on page boundaries except for the start of the first
/// and the end of the last, so no page is touched by two ranges.
///
/// # Examples
///
/// ```no_run
/// use kernel::{
///     dma::{
///         phyr::{
///             list::PhyrRanges,
///             user::UserPhyrs, //
///         },
///         DataDirection, //
///     },
///     prelude::*,
///     uaccess::UserPtr,
/// };
///
/// fn count_ranges(buf: UserPtr, len: usize) -> Result<usize> {
///     // The device will write into the buffer: pin it for writing.
///     let pinned = UserPhyrs::pin(buf, len, DataDirection::FromDevice, GFP_KERNEL)?;
///     Ok(pinned.ranges().count())
///     // `pinned` is dropped here: the pages are marked dirty and unpinned.
/// }
/// ```
pub struct UserPhyrs {
    ranges: PhyrList,
    write: bool,
}

impl UserPhyrs {
    /// Pins the `len` bytes of the current process's memory at `start` for DMA in `direction`.
    ///
    /// The pages are pinned for writing unless the device only reads them
    /// ([`DataDirection::ToDevice`]). `flags` are for the allocations of the range list; the
    /// call may sleep whatever they are.
    ///
    /// Returns [`EINVAL`] if `len` is zero, if the range wraps around the address space or if
    /// `direction` is [`DataDirection::None`]; [`EFAULT`] if the current task has no user
    /// memory or a part of the range is not user memory, is not mapped or is not accessible as
    /// requested (a read-only mapping pinned for writing); [`ENOMEM`] if memory runs out; or
    /// another error of `pin_user_pages_fast()`, such as [`EINTR`] on a fatal signal. On error,
    /// every page pinned so far is unpinned.
    pub fn pin(start: UserPtr, len: usize, direction: DataDirection, flags: Flags) -> Result<Self> {
        might_sleep();
        let write = match direction {
            DataDirection::ToDevice => false,
            DataDirection::FromDevice | DataDirection::Bidirectional => true,
            DataDirection::None => return Err(EINVAL),
        };
        let start = start.as_const_ptr().addr();
        let end = start.checked_add(len).filter(|_| len > 0).ok_or(EINVAL)?;
        let first_page = start & PAGE_MASK;
        let total_pages = (end - first_page).div_ceil(PAGE_SIZE);
        // A last page reaching past the top of the address space is not user memory.
        total_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|size| first_page.checked_add(size))
            .ok_or(EFAULT)?;
        // Kernel threads have no user memory; GUP expects the current task to have some. Asked of
        // C, not of `CurrentTask::mm()`: with CONFIG_SCHEDSTATS=n, bindgen lays `task_struct` out
        // differently from C and the Rust side reads `mm` at the wrong offset.
        // SAFETY: The current task is valid while it runs.
        let mm = unsafe { bindings::get_task_mm(bindings::get_current()) };
        if mm.is_null() {
            return Err(EFAULT);
        }
        // SAFETY: `get_task_mm()` took a reference to `mm`, which is dropped here.
        unsafe { bindings::mmput(mm) };
        let gup_flags = if write { bindings::FOLL_WRITE } else { 0 };

        let mut batch =
            KVec::<*mut bindings::page>::with_capacity(total_pages.min(BATCH_PAGES), flags)?;
        // INVARIANT: no range yet. Returning early drops `pinned`, which unpins the ranges
        // recorded so far.
        let mut pinned = Self {
            ranges: PhyrList::new(),
            write,
        };
        let mut page_addr = first_page;
        let mut pages_left = total_pages;
        while pages_left > 0 {
            let wanted = pages_left.min(BATCH_PAGES);
            // SAFETY: `batch` has room for `wanted` page pointers, and the current task has
            // user memory. An address that is not mapped user memory makes the call fail.
            let ret = unsafe {
                bindings::pin_user_pages_fast(
                    page_addr,
                    // CAST: `wanted <= BATCH_PAGES`, a small number.
                    wanted as c_int,
                    gup_flags,
                    batch.as_mut_ptr(),
                )
            };
            let count = match usize::try_from(ret) {
                Ok(0) => return Err(EFAULT),
                Ok(count) => count,
                Err(_) => return Err(Error::from_errno(ret)),
            };
            for i in 0..count {
                let lo = start.max(page_addr);
                let hi = end.min(page_addr + PAGE_SIZE);
                // SAFETY: `pin_user_pages_fast()` stored `count` pinned pages in `batch`;
                // `batch[i]` is pinned and not recorded yet, and holds the bytes
                // `page_addr..page_addr + PAGE_SIZE` of the range to pin, of which `lo..hi`
                // are in the range.
                let recorded = unsafe {
                    pinned.record(*batch.as_ptr().add(i), lo - page_addr, hi - lo, flags)
                };
                if let Err(e) = recorded {
                    // SAFETY: `batch[i..count]` are pinned pages that no range records.
                    unsafe { bindings::unpin_user_pages(batch.as_mut_ptr().add(i), count - i) };
                    return Err(e);
                }
                page_addr += PAGE_SIZE;
            }
            pages_left -= count;
        }
        Ok(pinned)
    }

    /// Records the `size` bytes at `offset` in `page` as the next range.
    ///
    /// # Safety
    ///
    /// `page` must be pinned as the invariants of [`UserPhyrs`] describe and recorded by no
    /// range, and hold the next bytes of the pinned memory after the ranges recorded so far:
    /// `offset` is zero except for the first page, and `offset + size` is `PAGE_SIZE` except
    /// for the last.
    unsafe fn record(
        &mut self,
        page: *mut bindings::page,
        offset: usize,
        size: usize,
        flags: Flags,
    ) -> Result {
        // SAFETY: `page` is a valid page: it is pinned, by the safety requirements.
        let paddr = unsafe { bindings::page_to_phys(page) };
        // CAST: `offset` is less than `PAGE_SIZE`.
        let range = Phyr::new(paddr + offset as PhysAddr, size)?;
        // INVARIANT: `range` touches `page` only, pinned once and not recorded before, and
        // starts or ends inside the page only for the first or the last page.
        self.ranges.push(range, flags)
    }

    /// Whether the memory was pinned for the device to write into it.
    pub fn pinned_for_write(&self) -> bool {
        self.write
    }
}

impl PhyrRanges for UserPhyrs {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }
}

/// Unpinning may sleep (it locks the pages to mark them dirty): drop [`UserPhyrs`] in process
/// context.
impl Drop for UserPhyrs {
    fn drop(&mut self) {
        for range in self.ranges.ranges() {
            // CAST: page frame numbers of physical addresses fit in an `unsigned long`.
            let mut pfn = (range.paddr() >> PAGE_SHIFT) as usize;
            let end_pfn = ((range.end() - 1) >> PAGE_SHIFT) as usize + 1;
            while pfn < end_pfn {
                let pages = (UNPIN_BLOCK_PAGES - pfn % UNPIN_BLOCK_PAGES).min(end_pfn - pfn);
                // SAFETY: by the type invariants, the pages of `range` are pinned, once for
                // this range, so they are valid pages; `pfn..pfn + pages` stays inside an
                // aligned block of the largest buddy order, whose `struct page`s are
                // contiguous. Unpinning hands the pins back, marking the pages dirty if the
                // device may have written them.
                unsafe {
                    bindings::unpin_user_page_range_dirty_lock(
                        bindings::pfn_to_page(pfn),
                        pages,
                        self.write,
                    )
                };
                pfn += pages;
            }
        }
    }
}

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
#[kunit_tests(rust_kernel_dma_phyr_user)]
mod tests {
    use super::*;

    // Input rejected before any page is looked at, and the test's kernel thread, which has no
    // user memory; pinning real user memory is tested by the `pin_user` kselftest.
    fn pin(addr: usize, len: usize, direction: DataDirection) -> Result {
        UserPhyrs::pin(UserPtr::from_addr(addr), len, direction, GFP_KERNEL).map(drop)
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(pin(0x10_0000, PAGE_SIZE, DataDirection::None), Err(EINVAL));
        assert_eq!(pin(0x10_0000, 0, DataDirection::ToDevice), Err(EINVAL));
        assert_eq!(
            pin(
                usize::MAX - PAGE_SIZE + 1,
                PAGE_SIZE,
                DataDirection::ToDevice
            ),
            Err(EINVAL)
        );
        // The last page would end past the top of the address space.
        assert_eq!(
            pin(usize::MAX - PAGE_SIZE + 1, 1, DataDirection::FromDevice),
            Err(EFAULT)
        );
        assert_eq!(
            pin(0x10_0000, PAGE_SIZE, DataDirection::Bidirectional),
            Err(EFAULT)
        );
    }
}
