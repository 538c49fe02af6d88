// SPDX-License-Identifier: GPL-2.0

//! The two-step DMA mapping state: an IOVA range that ranges are linked into and unlinked from.
//!
//! C header: [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h)
//!
//! [`IovaSpace`] is for drivers that link and unlink ranges one by one over the life of an
//! allocation, the way `mm/hmm.c` does. Drivers that map a whole list at once use
//! [`DmaMapping`](super::map::DmaMapping), which takes this path by itself when it can.
//!
//! The rules that the C functions leave to `WARN_ON` and to their documentation are checked
//! here and return errors, in terms of the IOVA granule (the IOMMU page size, one more than
//! [`dma_get_merge_boundary()`]):
//!
//! - a link at offset zero may start inside a granule, at the offset inside a granule of the
//!   physical address given at allocation ([`EINVAL`]);
//! - any other link starts on a granule boundary of both the IOVA and the physical address, and
//!   only a link that ends the space may end inside a granule ([`EINVAL`]);
//! - links stay inside the allocated size ([`ERANGE`]) and do not overlap ([`EBUSY`]);
//! - an unlink covers whole links ([`ENOENT`] where nothing is linked, [`EINVAL`] where it
//!   would cut a link);
//! - the device only gets a DMA range from [`IovaSpace::sync`], of linked bytes ([`ENOENT`]):
//!   on a device that is not cache-coherent, the sync completes the cache maintenance that
//!   linking started, besides syncing the IOTLB;
//! - dropping the space unlinks what is still linked, then frees the IOVA range.
//!
//! For an untrusted device (behind an external-facing port), dma-iommu bounces through swiotlb
//! every link that starts or ends inside a granule: the device sees the memory as it was when
//! linked, and the memory gets what the device wrote when the link is unlinked; a space has no
//! CPU syncs in between. Without a swiotlb pool such links fail with [`ENOMEM`]. swiotlb keeps
//! the offset inside its granule of what it bounces only where the device's minimum alignment
//! mask covers the granule (`dma_set_min_align_mask()`): elsewhere a link that starts inside a
//! granule fails.
//!
//! A link that fails leaves nothing behind. When the IOVA path is not available,
//! [`IovaSpace::try_alloc`] returns `None`: no state exists that a fallback could reuse.
//!
//! [`dma_get_merge_boundary()`]: srctree/include/linux/dma-mapping.h

use crate::{
    alloc::Flags,
    bindings,
    bitmap::BitmapVec,
    device::{
        Bound,
        Device, //
    },
    dma::{
        phyr::{
            DmaRange,
            Phyr, //
        },
        Attrs,
        DataDirection,
        DmaAddress, //
    },
    error::to_result,
    io::PhysAddr,
    prelude::*,
};

/// Returns the IOVA granule of `dev`: the smallest IOMMU page size of its DMA domain, or `None`
/// when the device does not sit behind an IOMMU that merges ranges.
pub(crate) fn iova_granule(dev: &Device<Bound>) -> Option<usize> {
    // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device`.
    let boundary = unsafe { bindings::dma_get_merge_boundary(dev.as_raw()) };
    // CAST: the merge boundary is a mask of the low bits of an address, less than `usize::MAX`.
    (boundary != 0).then(|| boundary as usize + 1)
}

/// The attributes that make sense for a streaming mapping.
const STREAMING_ATTRS: u32 = bindings::DMA_ATTR_WEAK_ORDERING
    | bindings::DMA_ATTR_SKIP_CPU_SYNC
    | bindings::DMA_ATTR_NO_WARN
    | bindings::DMA_ATTR_PRIVILEGED
    | bindings::DMA_ATTR_MMIO;

/// Rejects what the streaming mapping functions of the C API do not take: no direction, or an
/// attribute that is not a streaming one.
pub(crate) fn check_streaming(direction: DataDirection, attrs: Attrs) -> Result {
    if direction == DataDirection::None || attrs.0 & !STREAMING_ATTRS != 0 {
        return Err(EINVAL);
    }
    Ok(())
}

/// An allocated IOVA range of a device, with the links made into it.
///
/// # Invariants
///
/// - `state` was filled by a successful `dma_iova_try_alloc()` for `dev`, of `size` bytes, and
///   is freed only when `self` is dropped.
/// - `linked` has a bit per granule of the IOVA range, starting at the granule of
///   `state.addr`; a bit is set exactly when the granule is mapped by a link made through
///   `self`. `starts` has the same layout and marks the first granule of every link.
/// - `granule` is the IOVA granule of `dev`, a power of two.
///
/// # Examples
///
/// ```
/// use kernel::device::{Bound, Device};
/// use kernel::dma::{iova::IovaSpace, phyr::{DmaRange, Phyr}, Attrs, DataDirection};
///
/// /// Links `pages` one page after the other, makes them usable by the device, and returns
/// /// the space, whose drop unlinks them and frees the IOVA range, with the DMA range to give
/// /// the device.
/// ///
/// /// # Safety
/// ///
/// /// The pages must stay allocated until the space is dropped.
/// unsafe fn link_pages<'a>(
///     dev: &'a Device<Bound>,
///     pages: &[Phyr],
/// ) -> Result<(IovaSpace<'a>, DmaRange)> {
///     let size = pages.iter().map(|page| page.size()).sum();
///     let mut space = IovaSpace::try_alloc(dev, 0, size, DataDirection::ToDevice,
///                                          Attrs::default(), GFP_KERNEL)?
///         .ok_or(ENOTSUPP)?;
///     // SAFETY: The caller keeps the pages allocated while they are linked.
///     unsafe { space.link(0, pages)? };
///     // The links are only usable by the device after the sync, which gives their DMA range.
///     let range = space.sync(0, size)?;
///     Ok((space, range))
/// }
/// ```
pub struct IovaSpace<'a> {
    dev: &'a Device<Bound>,
    state: bindings::dma_iova_state,
    size: usize,
    granule: usize,
    direction: DataDirection,
    attrs: Attrs,
    linked: BitmapVec,
    starts: BitmapVec,
}

impl<'a> IovaSpace<'a> {
    /// Allocates an IOVA range of `size` bytes for `dev`, whose first link will be of a physical
    /// address with the offset inside a granule of `paddr` (zero for links that start on a page).
    ///
    /// Every link into the space uses `direction` and `attrs`, and so does every unlink.
    ///
    /// Returns `Ok(None)` when the device does not use the IOVA path (no IOMMU, an identity
    /// domain, or no IOVA range of that size under the DMA mask): map with the single-range API
    /// instead. Errors: [`EINVAL`] for a zero size, [`DataDirection::None`] or an attribute that
    /// is not a streaming one, [`ENOMEM`].
    pub fn try_alloc(
        dev: &'a Device<Bound>,
        paddr: PhysAddr,
        size: usize,
        direction: DataDirection,
        attrs: Attrs,
        flags: Flags,
    ) -> Result<Option<Self>> {
        check_streaming(direction, attrs)?;
        if size == 0 {
            return Err(EINVAL);
        }
        let Some(granule) = iova_granule(dev) else {
            return Ok(None);
        };
        // CAST: the offset inside a granule is less than the granule, a `usize`.
        let head = (paddr % granule as PhysAddr) as usize;
        let granules = head.checked_add(size).ok_or(EOVERFLOW)?.div_ceil(granule);
        let linked = BitmapVec::new(granules, flags)?;
        let starts = BitmapVec::new(granules, flags)?;
        let mut state = bindings::dma_iova_state::default();
        // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device` and `state` is a
        // valid `struct dma_iova_state`, which the call initializes.
        if !unsafe { bindings::dma_iova_try_alloc(dev.as_raw(), &mut state, paddr, size) } {
            return Ok(None);
        }
        // INVARIANT: `state` was just allocated for `dev`, of `size` bytes, nothing is linked
        // yet, and `granule` is the granule of `dev`.
        Ok(Some(Self {
            dev,
            state,
            size,
            granule,
            direction,
            attrs,
            linked,
            starts,
        }))
    }

    /// Returns the size of the space in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Returns the IOVA granule the rules of the space are stated in.
    pub fn granule(&self) -> usize {
        self.granule
    }

    fn check_bounds(&self, offset: usize, size: usize) -> Result {
        match offset.checked_add(size) {
            Some(end) if size > 0 && end <= self.size => Ok(()),
            _ => Err(ERANGE),
        }
    }

    /// Returns the offset of the space's start inside its first granule.
    fn head(&self) -> usize {
        // CAST: the granule is a small power of two, and the offset inside it a `usize`.
        (self.state.addr % self.granule as DmaAddress) as usize
    }

    /// Returns the granules `first..last` that the bytes `offset..offset + size` touch.
    fn granules(&self, offset: usize, size: usize) -> (usize, usize) {
        let start = self.head() + offset;
        (start / self.granule, (start + size).div_ceil(self.granule))
    }

    /// Whether the bytes of the space from `offset` on start on a granule, or at the start of
    /// the space.
    fn on_granule(&self, offset: usize) -> bool {
        offset == 0 || (self.head() + offset) % self.granule == 0
    }

    /// Whether the bytes of the space up to `end` end on a granule, or at the end of the space.
    fn ends_on_granule(&self, end: usize) -> bool {
        end == self.size || (self.head() + end) % self.granule == 0
    }

    fn is_linked(&self, granule: usize) -> bool {
        self.linked.next_bit(granule) == Some(granule)
    }

    /// Whether every granule of `first..last` is linked.
    fn all_linked(&self, first: usize, last: usize) -> bool {
        self.linked
            .next_zero_bit(first)
            .is_none_or(|bit| bit >= last)
    }

    fn is_start(&self, granule: usize) -> bool {
        self.starts.next_bit(granule) == Some(granule)
    }

    /// Links `ranges` one after the other from `offset` in the space, each a link of its own,
    /// with one call into the IOMMU driver (`dma_iova_link_phys_vec()`: one IO page table walk
    /// where the driver uses the generic page table). The device may only use them after
    /// [`IovaSpace::sync`], which gives their DMA range.
    ///
    /// Errors: see the [module documentation](self) for the rules, each range a link, and the
    /// errors of `dma_iova_link()` ([`ENOMEM`], [`EPERM`] where MMIO would have to be bounced);
    /// [`EINVAL`] for no range. On error, nothing of `ranges` stays linked.
    ///
    /// # Safety
    ///
    /// The memory of `ranges` must stay valid, and not be reused for anything else, until it is
    /// unlinked or the space is dropped. It must be system RAM, or device memory if the space
    /// was allocated with `DMA_ATTR_MMIO` (see [`MmioRanges`](super::map::MmioRanges)), and
    /// the device may only read it if the direction says so.
    pub unsafe fn link(&mut self, offset: usize, ranges: &[Phyr]) -> Result {
        let count = u32::try_from(ranges.len()).map_err(|_| EINVAL)?;
        if count == 0 {
            return Err(EINVAL);
        }
        // CAST: the granule is a small power of two.
        let granule = self.granule as PhysAddr;
        let mut end = offset;
        for range in ranges {
            let (start, size) = (end, range.size());
            self.check_bounds(start, size)?;
            let phys_head = range.paddr() % granule;
            if start == 0 {
                // CAST: the offset inside a granule is less than the granule, a `usize`.
                if phys_head as usize != self.head() {
                    return Err(EINVAL);
                }
            } else if phys_head != 0 || !self.on_granule(start) {
                return Err(EINVAL);
            }
            end = start + size;
            if !self.ends_on_granule(end) {
                return Err(EINVAL);
            }
        }
        let (first, last) = self.granules(offset, end - offset);
        if self.linked.next_bit(first).is_some_and(|bit| bit < last) {
            return Err(EBUSY);
        }
        // SAFETY: `self.dev` is bound, `self.state` was allocated for it (type invariant), the
        // ranges are inside the space, one after the other on its granules, and overlap no link,
        // as checked above; the caller keeps the memory valid while it is linked. `Phyr` is a
        // transparent `struct phys_vec`.
        to_result(unsafe {
            bindings::dma_iova_link_phys_vec(
                self.dev.as_raw(),
                &mut self.state,
                ranges.as_ptr().cast(),
                count,
                offset,
                self.direction.into(),
                self.attrs.as_raw(),
            )
        })?;
        // INVARIANT: the granules of the new links are marked, and the first one of each as a
        // start.
        (first..last).for_each(|bit| self.linked.set_bit(bit));
        let mut start = offset;
        for range in ranges {
            let (link_start, _) = self.granules(start, range.size());
            self.starts.set_bit(link_start);
            start += range.size();
        }
        Ok(())
    }

    /// Makes the links in `offset..offset + size` usable by the device, and returns their DMA
    /// range: `dma_iova_sync()` syncs the IOTLB and, on devices that are not cache-coherent,
    /// completes the CPU cache maintenance that linking started. Only then is the range given
    /// out. The IOTLB is synced once for the whole range, however many links it holds.
    ///
    /// Errors: [`ERANGE`] outside the space, [`ENOENT`] where a byte of the range is not linked,
    /// or the error of `dma_iova_sync()`.
    pub fn sync(&mut self, offset: usize, size: usize) -> Result<DmaRange> {
        self.check_bounds(offset, size)?;
        let (first, last) = self.granules(offset, size);
        if !self.all_linked(first, last) {
            return Err(ENOENT);
        }
        // SAFETY: `self.dev` is bound and `self.state` was allocated for it (type invariant);
        // the range is inside the space and linked.
        to_result(unsafe {
            bindings::dma_iova_sync(self.dev.as_raw(), &mut self.state, offset, size)
        })?;
        // CAST: an offset into the space fits in a DMA address.
        let addr = self.state.addr + offset as DmaAddress;
        // SAFETY: The bytes are inside the IOVA range of the space, linked and synced for `dev`.
        unsafe { DmaRange::from_bus_address(addr, size) }
    }

    /// Unlinks the links in `offset..offset + size`, which must be one or more whole links.
    ///
    /// Errors: [`ERANGE`] outside the space, [`ENOENT`] where nothing is linked, [`EINVAL`]
    /// where the range would cut a link. Nothing is unlinked on error.
    pub fn unlink(&mut self, offset: usize, size: usize) -> Result {
        self.check_bounds(offset, size)?;
        let (first, last) = self.granules(offset, size);
        if !self.all_linked(first, last) {
            return Err(ENOENT);
        }
        let cuts_next = last < self.linked.len() && self.is_linked(last) && !self.is_start(last);
        if !self.on_granule(offset)
            || !self.ends_on_granule(offset + size)
            || !self.is_start(first)
            || cuts_next
        {
            return Err(EINVAL);
        }
        self.unlink_granules(first, last);
        Ok(())
    }

    /// Unlinks the granules `first..last`, all linked, where no link extends outside them.
    fn unlink_granules(&mut self, first: usize, last: usize) {
        let head = self.head();
        let offset = (first * self.granule).saturating_sub(head);
        let end = (last * self.granule - head).min(self.size);
        // SAFETY: `self.dev` is bound, `self.state` was allocated for it (type invariant) and
        // `offset..end` covers exactly the whole links of the granules `first..last`.
        unsafe {
            bindings::dma_iova_unlink(
                self.dev.as_raw(),
                &mut self.state,
                offset,
                end - offset,
                self.direction.into(),
                self.attrs.as_raw(),
            )
        };
        // INVARIANT: the granules are no longer mapped.
        for bit in first..last {
            self.linked.clear_bit(bit);
            self.starts.clear_bit(bit);
        }
    }
}

impl Drop for IovaSpace<'_> {
    fn drop(&mut self) {
        // Unlink what is still linked, one run of adjacent links at a time.
        while let Some(first) = self.linked.next_bit(0) {
            let last = self
                .linked
                .next_zero_bit(first)
                .unwrap_or(self.linked.len());
            self.unlink_granules(first, last);
        }
        // SAFETY: `self.dev` is bound and `self.state` was allocated for it (type invariant);
        // nothing is linked any more.
        unsafe { bindings::dma_iova_free(self.dev.as_raw(), &mut self.state) };
    }
}
