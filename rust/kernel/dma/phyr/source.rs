// SPDX-License-Identifier: GPL-2.0

//! Physical ranges of pages and kernel buffers.
//!
//! [`PhyrSource`] appends the physical ranges of a piece of memory to a list of ranges. A list
//! records addresses only and borrows nothing: the memory must stay allocated, and not be
//! accessed in ways that conflict with the device, for as long as its ranges are used, which a
//! DMA mapping of them has to guarantee.
//!
//! C headers: [`include/linux/mm.h`](srctree/include/linux/mm.h),
//! [`include/linux/slab.h`](srctree/include/linux/slab.h),
//! [`include/linux/vmalloc.h`](srctree/include/linux/vmalloc.h)

use super::{
    list::PhyrPush,
    Phyr, //
};
use crate::{
    alloc::{
        allocator::{
            KVmalloc,
            Kmalloc,
            Vmalloc, //
        },
        Allocator,
        Box,
        Flags,
        Vec, //
    },
    bindings,
    io::PhysAddr,
    num::casts::FromSafeCast,
    page::{
        Page,
        PAGE_SIZE, //
    },
    prelude::*, //
};
use core::{
    mem::size_of_val,
    ptr::{
        self,
        NonNull, //
    },
};

/// Memory whose physical ranges can be listed.
///
/// # Examples
///
/// ```
/// use kernel::{
///     dma::phyr::{
///         list::{
///             PhyrList,
///             PhyrRanges, //
///         },
///         source::PhyrSource, //
///     },
///     page::PAGE_SIZE,
///     prelude::*,
/// };
///
/// // A kmalloc'ed buffer is physically contiguous: one range.
/// let buffer = KVec::from_elem(0u8, 3 * PAGE_SIZE, GFP_KERNEL)?;
/// let mut list = PhyrList::new();
/// buffer.append_ranges(&mut list, GFP_KERNEL)?;
/// assert_eq!(list.ranges().count(), 1);
/// assert_eq!(list.ranges().map(|range| range.size()).sum::<usize>(), 3 * PAGE_SIZE);
/// # Ok::<(), Error>(())
/// ```
pub trait PhyrSource {
    /// Appends the physical ranges of the memory, in the order of its bytes, to `list`, where
    /// contiguous ranges coalesce. Memory of size zero has no range.
    ///
    /// On error ([`ENOMEM`] when the list cannot grow), `list` keeps the ranges appended before
    /// it.
    fn append_ranges<L: PhyrPush>(&self, list: &mut L, flags: Flags) -> Result;
}

impl PhyrSource for Page {
    fn append_ranges<L: PhyrPush>(&self, list: &mut L, flags: Flags) -> Result {
        list.push(Phyr::new(self.phys_addr(), PAGE_SIZE)?, flags)
    }
}

impl PhyrSource for [Page] {
    fn append_ranges<L: PhyrPush>(&self, list: &mut L, flags: Flags) -> Result {
        self.iter()
            .try_for_each(|page| page.append_ranges(list, flags))
    }
}

/// Allocators whose memory [`PhyrSource`] lists: [`Kmalloc`] (physically contiguous, one range),
/// [`Vmalloc`] (page by page) and [`KVmalloc`] (either). Sealed.
pub trait KernelAllocator: Allocator + private::Sealed {}

impl KernelAllocator for Kmalloc {}
impl KernelAllocator for Vmalloc {}
impl KernelAllocator for KVmalloc {}

mod private {
    pub trait Sealed {}

    impl Sealed for super::Kmalloc {}
    impl Sealed for super::Vmalloc {}
    impl Sealed for super::KVmalloc {}
}

/// Appends the ranges of the `size` bytes at `ptr`: one range for kmalloc memory, which is
/// physically contiguous, page by page for vmalloc memory.
///
/// # Safety
///
/// If `size` is non-zero, `ptr..ptr + size` must be inside a live allocation of a
/// [`KernelAllocator`].
unsafe fn append_allocation<L: PhyrPush>(
    list: &mut L,
    ptr: *const u8,
    size: usize,
    flags: Flags,
) -> Result {
    if size == 0 {
        return Ok(());
    }
    // SAFETY: `is_vmalloc_addr()` only compares an address with the vmalloc area.
    if !unsafe { bindings::is_vmalloc_addr(ptr.cast()) } {
        // SAFETY: `virt_to_phys()` only computes an address. By the safety requirements, `ptr`
        // is then a kmalloc'ed address, in the kernel's direct mapping, where the allocation is
        // physically contiguous.
        let paddr = unsafe { bindings::virt_to_phys(ptr.cast_mut().cast()) };
        return list.push(Phyr::new(paddr, size)?, flags);
    }
    let mut offset = 0;
    while offset < size {
        let addr = ptr.wrapping_add(offset);
        let in_page = addr.addr() % PAGE_SIZE;
        let chunk = (PAGE_SIZE - in_page).min(size - offset);
        // SAFETY: By the safety requirements, `addr` is inside a live vmalloc allocation (never
        // null), which stays allocated while its page is used here.
        let page = unsafe { Vmalloc::to_page(NonNull::new_unchecked(addr.cast_mut())) };
        let paddr = page.phys_addr() + PhysAddr::from_safe_cast(in_page);
        list.push(Phyr::new(paddr, chunk)?, flags)?;
        offset += chunk;
    }
    Ok(())
}

impl<T: ?Sized, A: KernelAllocator> PhyrSource for Box<T, A> {
    fn append_ranges<L: PhyrPush>(&self, list: &mut L, flags: Flags) -> Result {
        let data: &T = self;
        // SAFETY: `data` is the contents of the box, allocated by `A`.
        unsafe { append_allocation(list, ptr::from_ref(data).cast(), size_of_val(data), flags) }
    }
}

impl<T, A: KernelAllocator> PhyrSource for Vec<T, A> {
    fn append_ranges<L: PhyrPush>(&self, list: &mut L, flags: Flags) -> Result {
        // SAFETY: The elements of the vector are in its buffer, allocated by `A`.
        unsafe { append_allocation(list, self.as_ptr().cast(), size_of_val(&self[..]), flags) }
    }
}

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
#[kunit_tests(rust_kernel_dma_phyr_source)]
mod tests {
    use super::*;
    use crate::{
        dma::phyr::list::{
            PhyrList,
            PhyrRanges, //
        },
        page::PAGE_SHIFT,
    };

    /// Returns the bytes of physical memory in `ranges`, read through the pages' kernel mapping.
    fn read_physical(ranges: impl Iterator<Item = Phyr>) -> Result<KVec<u8>> {
        let mut bytes = KVec::new();
        for range in ranges {
            let mut paddr = range.paddr();
            while paddr < range.end() {
                // CAST: an offset inside a page, and a page frame number of a physical address.
                let in_page = (paddr % PAGE_SIZE as PhysAddr) as usize;
                let chunk = (PAGE_SIZE - in_page).min((range.end() - paddr) as usize);
                // SAFETY: `paddr` is the address of RAM that the test owns, so its page frame
                // has a `struct page`.
                let page = unsafe { bindings::pfn_to_page((paddr >> PAGE_SHIFT) as usize) };
                // SAFETY: `page` is a valid page of RAM; the mapping is undone below.
                let vaddr = unsafe { bindings::kmap_local_page(page) };
                // SAFETY: `vaddr` maps the whole page and `in_page + chunk <= PAGE_SIZE`.
                let slice =
                    unsafe { core::slice::from_raw_parts(vaddr.cast::<u8>().add(in_page), chunk) };
                let pushed = bytes.extend_from_slice(slice, GFP_KERNEL);
                // SAFETY: `vaddr` was mapped by `kmap_local_page()` above; `slice` is unused.
                unsafe { bindings::kunmap_local(vaddr) };
                pushed?;
                paddr += chunk as PhysAddr;
            }
        }
        Ok(bytes)
    }

    fn pattern(len: usize) -> impl Iterator<Item = u8> {
        // CAST: truncation to a byte is the pattern.
        (0..len).map(|i| (i * 7 + i / 251) as u8)
    }

    #[test]
    fn pages() -> Result {
        let pages = [
            Page::alloc_page(GFP_KERNEL)?,
            Page::alloc_page(GFP_KERNEL)?,
            Page::alloc_page(GFP_KERNEL)?,
        ];
        let mut list = PhyrList::new();
        pages.append_ranges(&mut list, GFP_KERNEL)?;

        let mut model = KVec::<Phyr>::new();
        for page in &pages {
            model.push(Phyr::new(page.phys_addr(), PAGE_SIZE)?, GFP_KERNEL)?;
        }
        // The same ranges after coalescing, whatever the list's layout.
        let mut single = KVec::<Phyr>::new();
        pages.append_ranges(&mut single, GFP_KERNEL)?;
        assert!(list.ranges().eq(single.ranges()));
        assert_eq!(
            list.ranges().map(|range| range.size()).sum::<usize>(),
            3 * PAGE_SIZE
        );
        // Every page is covered by a range at its address.
        for expected in model {
            assert!(list
                .ranges()
                .any(|range| range.paddr() <= expected.paddr() && expected.end() <= range.end()));
        }
        Ok(())
    }

    #[test]
    fn kmalloc_buffers() -> Result {
        let mut vec = KVec::new();
        for byte in pattern(3000) {
            vec.push(byte, GFP_KERNEL)?;
        }
        let mut list = PhyrList::new();
        vec.append_ranges(&mut list, GFP_KERNEL)?;
        assert_eq!(list.ranges().count(), 1);
        assert_eq!(read_physical(list.ranges())?[..], vec[..]);

        let boxed = KBox::new([0x5au8; 100], GFP_KERNEL)?;
        let mut ranges = KVec::<Phyr>::new();
        boxed.append_ranges(&mut ranges, GFP_KERNEL)?;
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].size(), 100);
        assert_eq!(read_physical(ranges.ranges())?[..], boxed[..]);

        // Empty buffers have no range.
        let mut none = KVec::<Phyr>::new();
        KVec::<u64>::new().append_ranges(&mut none, GFP_KERNEL)?;
        KBox::new((), GFP_KERNEL)?.append_ranges(&mut none, GFP_KERNEL)?;
        assert!(none.is_empty());
        Ok(())
    }

    #[test]
    fn vmalloc_buffers() -> Result {
        const SIZE: usize = 64 * PAGE_SIZE + 123;
        let mut vec = VVec::with_capacity(SIZE, GFP_KERNEL)?;
        for byte in pattern(SIZE) {
            vec.push(byte, GFP_KERNEL)?;
        }
        let mut list = PhyrList::new();
        vec.append_ranges(&mut list, GFP_KERNEL)?;
        let mut model = KVec::<Phyr>::new();
        vec.append_ranges(&mut model, GFP_KERNEL)?;
        assert!(list.ranges().eq(model.ranges()));
        assert!(list.ranges().count() <= 65);
        assert_eq!(list.ranges().map(|range| range.size()).sum::<usize>(), SIZE);
        // Ranges are never contiguous with the next one: they were coalesced.
        assert!(list
            .ranges()
            .zip(list.ranges().skip(1))
            .all(|(range, next)| range.end() != next.paddr()));
        assert_eq!(read_physical(list.ranges())?[..], vec[..]);

        let boxed = VBox::new([0xa5u8; 512], GFP_KERNEL)?;
        let mut ranges = KVec::<Phyr>::new();
        boxed.append_ranges(&mut ranges, GFP_KERNEL)?;
        assert_eq!(read_physical(ranges.ranges())?[..], boxed[..]);

        // kvmalloc memory, whichever allocator served it.
        let mut kvvec = KVVec::new();
        for byte in pattern(SIZE) {
            kvvec.push(byte, GFP_KERNEL)?;
        }
        let mut ranges = KVec::<Phyr>::new();
        kvvec.append_ranges(&mut ranges, GFP_KERNEL)?;
        assert_eq!(read_physical(ranges.ranges())?[..], kvvec[..]);
        Ok(())
    }
}
