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
    uaccess::UserPtr, //
};

/// Pages pinned by one call to `pin_user_pages_fast()`: a PMD's worth, so that the fast path
/// handles a huge page of that size in one call.
const BATCH_PAGES: usize = 1 << (bindings::PMD_SHIFT - bindings::PAGE_SHIFT);

/// User memory pinned for DMA, as physical ranges.
///
/// The ranges are kept in `L`, a [`PhyrList`] unless chosen otherwise, and the object can be
/// used wherever [`PhyrRanges`] are taken.
///
/// # Invariants
///
/// Every page that a range of `self.ranges` touches was pinned with `FOLL_PIN` once for that
/// range, with `FOLL_WRITE` if `self.write`, and is unpinned only by dropping `self`. Ranges
/// start and end on page boundaries except for the start of the first and the end of the last.
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
///     let pinned: UserPhyrs = UserPhyrs::pin(buf, len, DataDirection::FromDevice, GFP_KERNEL)?;
///     Ok(pinned.ranges().count())
///     // `pinned` is dropped here: the pages are marked dirty and unpinned.
/// }
/// ```
pub struct UserPhyrs<L: PhyrPush + Default = PhyrList> {
    ranges: L,
    write: bool,
}

impl<L: PhyrPush + Default> UserPhyrs<L> {
    /// Pins the `len` bytes of the current process's memory at `start` for DMA in `direction`.
    ///
    /// The pages are pinned for writing unless the device only reads them
    /// ([`DataDirection::ToDevice`]). `flags` are for the allocations of the range list.
    ///
    /// Returns [`EINVAL`] if `len` is zero, if the range wraps around the address space or if
    /// `direction` is [`DataDirection::None`], [`EFAULT`] if a part of the range is not user
    /// memory, not mapped or not accessible as requested (a read-only mapping pinned for
    /// writing) and [`ENOMEM`]
    /// if memory runs out. On error, every page pinned so far is unpinned.
    pub fn pin(start: UserPtr, len: usize, direction: DataDirection, flags: Flags) -> Result<Self> {
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
        let gup_flags = if write { bindings::FOLL_WRITE } else { 0 };

        let mut batch =
            KVec::<*mut bindings::page>::with_capacity(total_pages.min(BATCH_PAGES), flags)?;
        // INVARIANT: no range yet. Returning early drops `pinned`, which unpins the ranges
        // recorded so far.
        let mut pinned = Self {
            ranges: L::default(),
            write,
        };
        let mut page_addr = first_page;
        let mut pages_left = total_pages;
        while pages_left > 0 {
            let wanted = pages_left.min(BATCH_PAGES);
            // SAFETY: `batch` has room for `wanted` page pointers. Bad user addresses make the
            // call fail, never misbehave.
            let ret = unsafe {
                bindings::pin_user_pages_fast(
                    page_addr,
                    // CAST: `wanted <= BATCH_PAGES`, a small number.
                    wanted as c_int,
                    gup_flags,
                    batch.as_mut_ptr(),
                )
            };
            // A zero return is a range that cannot be pinned without an error code.
            let count = usize::try_from(ret)
                .ok()
                .filter(|&count| count > 0)
                .ok_or(if ret < 0 {
                    Error::from_errno(ret)
                } else {
                    EFAULT
                })?;
            // SAFETY: `pin_user_pages_fast()` stored `count` valid page pointers in `batch`.
            let pages = unsafe { core::slice::from_raw_parts(batch.as_ptr(), count) };
            for (i, &page) in pages.iter().enumerate() {
                let lo = start.max(page_addr);
                let hi = end.min(page_addr + PAGE_SIZE);
                let recorded = pinned.record(page, lo - page_addr, hi - lo, flags);
                if let Err(e) = recorded {
                    // SAFETY: `pages[i..]` are pinned and no range records them.
                    unsafe {
                        bindings::unpin_user_pages(pages[i..].as_ptr().cast_mut(), count - i)
                    };
                    return Err(e);
                }
                page_addr += PAGE_SIZE;
            }
            pages_left -= count;
        }
        Ok(pinned)
    }

    /// Records the `size` bytes at `offset` in the pinned `page` as the next range.
    fn record(
        &mut self,
        page: *mut bindings::page,
        offset: usize,
        size: usize,
        flags: Flags,
    ) -> Result {
        // SAFETY: `page` is a valid page, pinned by the caller.
        let paddr = unsafe { bindings::page_to_phys(page) };
        // CAST: `offset` is less than `PAGE_SIZE`.
        let range = Phyr::new(paddr + offset as PhysAddr, size)?;
        // INVARIANT: `page` is pinned once for this range, which touches no other page;
        // `offset` is non-zero only for the first range, `offset + size` is less than
        // `PAGE_SIZE` only for the last.
        self.ranges.push(range, flags)
    }
}

impl<L: PhyrPush + Default> PhyrRanges for UserPhyrs<L> {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }
}

impl<L: PhyrPush + Default> Drop for UserPhyrs<L> {
    fn drop(&mut self) {
        for range in self.ranges.ranges() {
            // CAST: page frame numbers of physical addresses fit in an `unsigned long`.
            let first = (range.paddr() >> PAGE_SHIFT) as usize;
            let last = ((range.end() - 1) >> PAGE_SHIFT) as usize;
            // SAFETY: by the type invariants, the pages of `range` are pinned, once each for
            // this range, so they are valid pages; unpinning them hands the pins back, marking
            // the pages dirty if they were pinned for the device to write.
            unsafe {
                bindings::unpin_user_page_range_dirty_lock(
                    bindings::pfn_to_page(first),
                    last - first + 1,
                    self.write,
                )
            };
        }
    }
}

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
#[kunit_tests(rust_kernel_dma_phyr_user)]
mod tests {
    use super::*;

    // Input rejected before any page is looked at; pinning real user memory is tested by the
    // `pin_user` kselftest, from a process.
    fn pin(addr: usize, len: usize, direction: DataDirection) -> Result {
        UserPhyrs::<PhyrList>::pin(UserPtr::from_addr(addr), len, direction, GFP_KERNEL).map(drop)
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
    }
}
