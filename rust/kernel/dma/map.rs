// SPDX-License-Identifier: GPL-2.0

//! Streaming DMA mappings of whole range lists, one code path for every DMA backend.
//!
//! C header: [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h)
//!
//! [`DmaMapping`] maps the physical ranges of memory ([`DmaMemory`]), owned or borrowed, for a
//! bound device and gives the driver the DMA ranges to program into the hardware. It picks the
//! path by itself:
//!
//! - [`DmaPath::Iova`]: when the device sits behind an IOMMU with a translating DMA domain and
//!   the ranges meet on IOVA granules, one IOVA allocation for the total size, the ranges linked
//!   one after the other, up to 32 per `dma_iova_link_phys_vec()` call (one IO page table walk
//!   each where the IOMMU driver uses the generic page table), and one `dma_iova_sync()`: the
//!   result is one contiguous DMA range;
//! - otherwise range by range with `dma_map_phys()`: [`DmaPath::Direct`], [`DmaPath::Bounce`]
//!   (swiotlb) or [`DmaPath::Iommu`], DMA-contiguous results coalesced, and the per-range DMA
//!   addresses kept only when `dma_need_unmap()` says unmapping needs them.
//!
//! A mapping borrows the bound device, like [`pci::Bar`](crate::pci::Bar): making and dropping it
//! allocates nothing on the IOVA path, and only with the caller's flags on the others, so that it
//! can be made and dropped in atomic context wherever the C API can. [`DmaMapping::into_devres`]
//! turns a mapping of owned memory into a device-managed one, unmapped at unbind at the latest,
//! for mappings that must outlive the borrow.
//!
//! # What the types guarantee
//!
//! - The memory stays valid and mapped, and the mapping undone exactly once, for as long as the
//!   mapping lives; owned memory is dropped after it is unmapped, borrowed memory stays borrowed
//!   until then. Safe code cannot free or reuse mapped memory through the mapping's owner.
//! - The DMA ranges are borrowed from the live mapping. A [`DmaRange`] is plain data that can be
//!   copied, like any address a driver writes into a device register: no type stops a driver
//!   from handing a device an address after the mapping is gone, just as safe MMIO writes can
//!   hand it any address. Keeping the device from using a range after unmap is the driver's job.
//! - Leaking a mapping ([`core::mem::forget`]) leaks the mapping: the device keeps its access.
//!   For owned memory the memory leaks too; for borrowed memory the borrow ends, and the memory
//!   may be reused while the device can still reach it. Do not leak mappings of borrowed memory.
//!
//! # Attributes
//!
//! A streaming mapping takes `DMA_ATTR_WEAK_ORDERING`, `DMA_ATTR_SKIP_CPU_SYNC`,
//! `DMA_ATTR_NO_WARN`, `DMA_ATTR_PRIVILEGED` and, for device memory, `DMA_ATTR_MMIO`. Any other
//! bit, such as an allocation attribute or one of those a negation (`!DMA_ATTR_MMIO`) sets, is
//! [`EINVAL`].

use crate::{
    alloc::Flags,
    bindings,
    device::{
        Bound,
        Device, //
    },
    devres::DevresLt,
    dma::{
        attrs,
        iova::{
            check_streaming,
            iova_granule, //
        },
        phyr::{
            list::{
                PhyrList,
                PhyrRanges, //
            },
            source::{
                KernelAllocator,
                PhyrSource, //
            },
            user::UserPhyrs,
            DmaRange,
            Phyr,
            SegmentLimits,
            Split, //
        },
        Attrs,
        DataDirection,
        DmaAddress, //
    },
    error::to_result,
    num::casts::FromSafeCast,
    page::{
        Page,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::Arc,
    transmute::{
        AsBytes,
        FromBytes, //
    },
    types::{
        CovariantForLt,
        ForLt, //
    },
};
use core::{
    iter::Copied,
    ops::{
        Deref,
        DerefMut, //
    },
    slice, //
};

/// Memory that a [`DmaMapping`] may own, or borrow, while the device accesses it.
///
/// # Safety
///
/// For as long as a value lives, wherever it is moved, the ranges that [`PhyrRanges::ranges`]
/// yields are the same every time, and their memory stays valid and is not used for anything
/// else than the value's own contents, whose every bit pattern is valid. If
/// [`DmaMemory::MMIO`] is true, no range overlaps system RAM, otherwise every range is system
/// RAM. If [`DmaMemory::device_may_write`] returns false, the device must only read it.
pub unsafe trait DmaMemory: PhyrRanges + Send {
    /// Whether the ranges are device memory (PCI peer-to-peer), mapped with `DMA_ATTR_MMIO`.
    const MMIO: bool = false;

    /// Whether the memory may be mapped for the device to write into it.
    fn device_may_write(&self) -> bool {
        true
    }
}

// SAFETY: The pages stay pinned, and the ranges unchanged, until `UserPhyrs` is dropped; pages
// pinned without `FOLL_WRITE` are reported as read-only.
unsafe impl DmaMemory for UserPhyrs {
    fn device_may_write(&self) -> bool {
        self.pinned_for_write()
    }
}

/// Whole pages owned for DMA, listed in their order; physically adjacent pages coalesce.
///
/// # Examples
///
/// ```
/// use kernel::dma::{map::Pages, phyr::list::PhyrRanges};
/// use kernel::page::{Page, PAGE_SIZE};
///
/// let mut pages = KVec::new();
/// for _ in 0..3 {
///     pages.push(Page::alloc_page(GFP_KERNEL)?, GFP_KERNEL)?;
/// }
/// let pages = Pages::new(pages, GFP_KERNEL)?;
/// assert_eq!(pages.ranges().map(|range| range.size()).sum::<usize>(), 3 * PAGE_SIZE);
/// # Ok::<(), Error>(())
/// ```
///
/// # Invariants
///
/// `ranges` are the physical ranges of `pages`.
pub struct Pages {
    pages: KVec<Page>,
    ranges: PhyrList,
}

impl Pages {
    /// Takes `pages` and lists their physical ranges.
    pub fn new(pages: KVec<Page>, flags: Flags) -> Result<Self> {
        let mut ranges = PhyrList::new();
        // The pages themselves, not the vector's buffer of page handles.
        pages.as_slice().append_ranges(&mut ranges, flags)?;
        // INVARIANT: `ranges` were just listed from `pages`.
        Ok(Self { pages, ranges })
    }

    /// Returns the pages.
    pub fn into_inner(self) -> KVec<Page> {
        self.pages
    }
}

impl PhyrRanges for Pages {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }
}

// SAFETY: The pages are owned, never freed before `self`, and listed once (type invariant);
// the contents of a page are plain bytes.
unsafe impl DmaMemory for Pages {}

/// A kernel buffer (a `Box` or `Vec` of a [`KernelAllocator`]) of plain data owned for DMA,
/// with its physical ranges listed once.
///
/// It dereferences to the buffer's contents, never to the buffer itself, so that the memory
/// cannot be reallocated while a device may access it.
///
/// # Invariants
///
/// `ranges` are the physical ranges of the contents of `buffer`.
pub struct KernelBuffer<B> {
    buffer: B,
    ranges: PhyrList,
}

impl<B: PhyrSource + Deref> KernelBuffer<B> {
    /// Takes `buffer` and lists its physical ranges.
    pub fn new(buffer: B, flags: Flags) -> Result<Self> {
        let mut ranges = PhyrList::new();
        buffer.append_ranges(&mut ranges, flags)?;
        // INVARIANT: `ranges` were just listed from `buffer`.
        Ok(Self { buffer, ranges })
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> B {
        self.buffer
    }
}

impl<B: Deref> Deref for KernelBuffer<B> {
    type Target = B::Target;

    fn deref(&self) -> &B::Target {
        &self.buffer
    }
}

impl<B: DerefMut> DerefMut for KernelBuffer<B> {
    fn deref_mut(&mut self) -> &mut B::Target {
        &mut self.buffer
    }
}

impl<B> PhyrRanges for KernelBuffer<B> {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }
}

// SAFETY: The contents of a `Box` stay in place while it lives; `KernelBuffer` never hands out
// the `Box` itself, and lists the ranges once. Every bit pattern is a valid `T`.
unsafe impl<T, A> DmaMemory for KernelBuffer<Box<T, A>>
where
    T: ?Sized + AsBytes + FromBytes + Send,
    A: KernelAllocator,
{
}

// SAFETY: As for `Box` above: only `&mut` access to the `Vec` itself could reallocate it.
unsafe impl<T, A> DmaMemory for KernelBuffer<Vec<T, A>>
where
    T: AsBytes + FromBytes + Send,
    A: KernelAllocator,
{
}

/// Device memory, such as a PCI BAR of another device, for peer-to-peer DMA.
///
/// Mapped with `DMA_ATTR_MMIO`: never bounced through swiotlb, never mixed with RAM.
///
/// # Invariants
///
/// No range of `ranges` overlaps system RAM.
pub struct MmioRanges {
    ranges: PhyrList,
}

impl MmioRanges {
    /// Takes the ranges of device memory in `ranges`.
    ///
    /// Returns [`EINVAL`] if a range overlaps system RAM.
    ///
    /// # Safety
    ///
    /// The device memory must stay valid (the device that owns it bound, the BAR assigned)
    /// until the returned value is dropped, must never be mapped cacheable, and must be
    /// reachable through the host bridge at its CPU physical address, as the p2pdma code
    /// decides for `DMA_ATTR_MMIO` (`pci_p2pdma_map_type()`); peers behind a common switch use
    /// bus addresses ([`DmaRange::from_bus_address`]) instead.
    pub unsafe fn new(ranges: PhyrList) -> Result<Self> {
        for range in ranges.ranges() {
            // SAFETY: `region_intersects()` only walks the resource tree.
            let intersects = unsafe {
                bindings::region_intersects(
                    range.paddr(),
                    range.size(),
                    // CAST: resource flags and descriptors are small constants.
                    bindings::IORESOURCE_SYSTEM_RAM as crate::ffi::c_ulong,
                    bindings::IORES_DESC_NONE as crate::ffi::c_ulong,
                )
            };
            if intersects != bindings::REGION_DISJOINT as i32 {
                return Err(EINVAL);
            }
        }
        // INVARIANT: no range overlaps system RAM.
        Ok(Self { ranges })
    }
}

impl PhyrRanges for MmioRanges {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }
}

// SAFETY: The caller of `MmioRanges::new` keeps the memory valid; no range is RAM (type
// invariant).
unsafe impl DmaMemory for MmioRanges {
    const MMIO: bool = true;
}

// SAFETY: The shared borrow keeps `M` alive, and so its ranges valid and unchanged (`M:
// DmaMemory`), for as long as the reference lives. Others may read the memory meanwhile, so the
// device may only read it.
unsafe impl<M: DmaMemory + Sync + ?Sized> DmaMemory for &M {
    const MMIO: bool = M::MMIO;

    fn device_may_write(&self) -> bool {
        false
    }
}

// SAFETY: The exclusive borrow keeps `M` alive, its ranges unchanged and its contents unused by
// anything else for as long as the reference lives.
unsafe impl<M: DmaMemory + ?Sized> DmaMemory for &mut M {
    const MMIO: bool = M::MMIO;

    fn device_may_write(&self) -> bool {
        (**self).device_may_write()
    }
}

// SAFETY: A reference count keeps `M` alive, and so its ranges valid and unchanged, for as long as
// the `Arc` lives. Other owners may read the memory meanwhile, so the device may only read it.
unsafe impl<M: DmaMemory + Sync> DmaMemory for Arc<M> {
    const MMIO: bool = M::MMIO;

    fn device_may_write(&self) -> bool {
        false
    }
}

/// The way a [`DmaMapping`] was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaPath {
    /// One IOVA allocation with every range linked into it: one contiguous DMA range.
    Iova,
    /// Range by range through the IOMMU, because the ranges do not meet on IOVA granules.
    Iommu,
    /// Range by range, without translation (no IOMMU, or an identity domain).
    Direct,
    /// Range by range, with at least one range bounced through swiotlb.
    Bounce,
}

/// Returns the segment limits that `dev` imposes on each DMA range it is given: its maximum
/// segment size (`dma_get_max_seg_size()`) and segment boundary (`dma_get_seg_boundary()`),
/// cut on `granule` (e.g. the device's own page size) where a range must be cut.
///
/// Returns [`EINVAL`] if `granule` is not a power of two or does not fit in a segment.
pub fn segment_limits(dev: &Device<Bound>, granule: usize) -> Result<SegmentLimits> {
    // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device`.
    let (max_size, boundary) = unsafe {
        (
            bindings::dma_get_max_seg_size(dev.as_raw()),
            bindings::dma_get_seg_boundary(dev.as_raw()),
        )
    };
    SegmentLimits::new(
        usize::from_safe_cast(max_size),
        u64::from_safe_cast(boundary),
        granule,
    )
}

/// Returns the largest size of a mapping of `dev` that does not cost more than smaller ones
/// (`dma_opt_mapping_size()`), e.g. the size of an IOVA range the IOVA caches keep, or of a
/// swiotlb segment: what a driver caps its transfers at.
pub fn opt_mapping_size(dev: &Device<Bound>) -> usize {
    // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device`.
    unsafe { bindings::dma_opt_mapping_size(dev.as_raw()) }
}

/// An IOVA range with every range of the memory linked into it, one after the other.
struct Linked {
    state: bindings::dma_iova_state,
    /// All of the IOVA range, the one DMA range of the mapping.
    range: DmaRange,
}

/// Ranges mapped one by one with `dma_map_phys()`.
struct EachMapped {
    /// The DMA ranges, coalesced.
    ranges: KVec<DmaRange>,
    /// The mapped ranges, for unmapping and syncing.
    units: KVec<DmaRange>,
}

/// How the memory of a mapping is mapped. The IOVA path holds no vector: nothing to free.
enum Ranges {
    Linked(Linked),
    EachMapped(EachMapped),
}

/// The mapped state of a [`DmaMapping`], undone when it is dropped.
///
/// # Invariants
///
/// - If `ranges` is [`Ranges::Linked`], its state was allocated for `dev` and all of its range
///   is linked, the ranges of the memory one after the other, with `direction` and `attrs`.
/// - Otherwise every range of `units` is mapped by `dma_map_phys()` for `dev` with `direction`
///   and `attrs`, and `ranges` are the same bytes, coalesced; `units` is empty only if
///   `dma_need_unmap()` returned false after the mapping, and no unmap and no sync is needed.
/// - `size` is the sum of the sizes of the DMA ranges.
struct Mapped<'a> {
    dev: &'a Device<Bound>,
    direction: DataDirection,
    attrs: Attrs,
    ranges: Ranges,
    size: usize,
}

impl<'a> Mapped<'a> {
    /// Maps `memory` for `dev`, by the IOVA path when possible, range by range otherwise.
    fn new<S: DmaMemory>(
        dev: &'a Device<Bound>,
        memory: &S,
        direction: DataDirection,
        attrs: Attrs,
        flags: Flags,
    ) -> Result<Self> {
        // The ranges meet on IOVA granules if every range but the first starts on one and
        // every range but the last ends on one: the inner boundaries, ORed together, have no bit
        // below the granule. A single range has none, and needs no granule to tell.
        let mut inner: Option<u64> = None;
        let mut size = 0usize;
        let mut first = None;
        let mut last_end = None;
        for range in memory.ranges() {
            if let Some(end) = last_end {
                *inner.get_or_insert(0) |= end | range.paddr();
            }
            first.get_or_insert(range);
            size = size.checked_add(range.size()).ok_or(EOVERFLOW)?;
            last_end = Some(range.end());
        }
        let first = first.ok_or(EINVAL)?;
        let meet = inner.is_none_or(|bits| {
            iova_granule(dev).is_some_and(|granule| bits & (u64::from_safe_cast(granule) - 1) == 0)
        });
        if meet {
            let mut state = bindings::dma_iova_state::default();
            // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device` and `state`
            // is a valid `struct dma_iova_state`, which the call initializes.
            if unsafe {
                bindings::dma_iova_try_alloc(dev.as_raw(), &mut state, first.paddr(), size)
            } {
                // A single range, or ranges stored as a `struct phys_vec` array, are linked
                // in one call, without walking the memory again.
                let whole = memory
                    .as_phys_vecs()
                    .or(inner.is_none().then_some(slice::from_ref(&first)));
                let linked = link_all(dev, memory, whole, state, size, direction, attrs)?;
                // INVARIANT: all of the memory is linked into `linked`, of `size` bytes.
                return Ok(Self {
                    dev,
                    direction,
                    attrs,
                    ranges: Ranges::Linked(linked),
                    size,
                });
            }
            // A failed allocation leaves `state` behind here: the fallback never sees it.
        }
        // A single mapping is limited, e.g. to a swiotlb segment when bouncing.
        // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device`.
        let max_size = unsafe { bindings::dma_max_mapping_size(dev.as_raw()) };
        let limits = SegmentLimits::new(max_size, u64::MAX, PAGE_SIZE)?;
        let count = Split::new(memory.ranges(), limits).count();
        let mut each = EachMapped {
            ranges: KVec::with_capacity(count, flags)?,
            units: KVec::with_capacity(count, flags)?,
        };
        // INVARIANT: nothing is mapped yet; `map_each` records what it maps as it goes.
        let mut mapped = Self {
            dev,
            direction,
            attrs,
            ranges: Ranges::EachMapped(EachMapped {
                ranges: KVec::new(),
                units: KVec::new(),
            }),
            size,
        };
        let result = mapped.map_each(&mut each, Split::new(memory.ranges(), limits));
        // SAFETY: `dev.as_raw()` is a valid pointer to a bound `struct device`.
        if result.is_ok() && !unsafe { bindings::dma_need_unmap(dev.as_raw()) } {
            // INVARIANT: unmapping does not need the addresses, and syncing needs none.
            each.units = KVec::new();
        }
        // INVARIANT: `each` records every range mapped, for `drop` to unmap them on error too.
        mapped.ranges = Ranges::EachMapped(each);
        result.map(|()| mapped)
    }

    /// Maps every range of `ranges` with `dma_map_phys()`, into `each`, which has room for all
    /// of them. What was mapped stays recorded on error, for `drop` to unmap.
    fn map_each(&self, each: &mut EachMapped, ranges: impl Iterator<Item = Phyr>) -> Result {
        let dev = self.dev.as_raw();
        for range in ranges {
            // SAFETY: `dev` is a valid pointer to a bound `struct device`, the direction is
            // valid, and the memory stays valid while the mapping lives.
            let addr = unsafe {
                bindings::dma_map_phys(
                    dev,
                    range.paddr(),
                    range.size(),
                    self.direction.into(),
                    self.attrs.as_raw(),
                )
            };
            // SAFETY: As above.
            if unsafe { bindings::dma_mapping_error(dev, addr) } != 0 {
                return Err(ENOMEM);
            }
            // SAFETY: `addr` is the mapping of `range`, until it is unmapped in `drop`.
            let unit = unsafe { DmaRange::from_bus_address(addr, range.size()) };
            let recorded = unit.and_then(|unit| {
                each.units
                    .push_within_capacity(unit)
                    .map_err(|_| ENOMEM)
                    .map(|()| unit)
            });
            // INVARIANT: the mapped range is recorded, for `drop` to unmap; `units` and `ranges`
            // have room for every range.
            let unit = match recorded {
                Ok(unit) => unit,
                Err(e) => {
                    // SAFETY: `addr` was just mapped with these arguments, and is not recorded.
                    unsafe { self.unmap_one(addr, range.size()) };
                    return Err(e);
                }
            };
            match each.ranges.last_mut() {
                Some(last) if last.end() == unit.dma_addr() => {
                    // SAFETY: Two adjacent mapped ranges are one mapped range.
                    *last = unsafe {
                        DmaRange::from_bus_address(last.dma_addr(), last.size() + unit.size())?
                    };
                }
                _ => each.ranges.push_within_capacity(unit).map_err(|_| ENOMEM)?,
            }
        }
        Ok(())
    }

    /// Returns the DMA ranges of the mapping.
    fn ranges(&self) -> &[DmaRange] {
        match &self.ranges {
            Ranges::Linked(linked) => slice::from_ref(&linked.range),
            Ranges::EachMapped(each) => &each.ranges,
        }
    }

    /// Returns the path the mapping took. Range by range, asks whether the device is behind an
    /// IOMMU and, without one, looks up every mapped range in the swiotlb pools: a cost only
    /// paid when asked.
    fn path(&self) -> DmaPath {
        let Ranges::EachMapped(each) = &self.ranges else {
            return DmaPath::Iova;
        };
        if iova_granule(self.dev).is_some() {
            return DmaPath::Iommu;
        }
        let dev = self.dev.as_raw();
        let bounced = each.units.iter().any(|unit| {
            // SAFETY: `dev` is a valid pointer to a bound `struct device`; the functions only
            // compute an address and look it up in the swiotlb pools.
            unsafe {
                let phys = bindings::dma_to_phys(dev, unit.dma_addr());
                !bindings::swiotlb_find_pool(dev, phys).is_null()
            }
        });
        if bounced {
            DmaPath::Bounce
        } else {
            DmaPath::Direct
        }
    }

    /// Unmaps one range mapped by `dma_map_phys()`.
    ///
    /// # Safety
    ///
    /// `addr` must be a live mapping of `size` bytes for `self.dev`, with `self.direction` and
    /// `self.attrs`, and not be used afterwards.
    unsafe fn unmap_one(&self, addr: DmaAddress, size: usize) {
        // SAFETY: By the safety requirements.
        unsafe {
            bindings::dma_unmap_phys(
                self.dev.as_raw(),
                addr,
                size,
                self.direction.into(),
                self.attrs.as_raw(),
            )
        }
    }

    /// Calls `sync` on the bytes `offset..offset + size` of the mapping, whose memory has the
    /// physical ranges `memory`, piece by piece: the DMA API syncs a physically contiguous
    /// range, and a range that swiotlb bounced one mapping (or IOVA granule) at a time.
    fn sync(
        &self,
        memory: impl Iterator<Item = Phyr>,
        offset: usize,
        size: usize,
        sync: unsafe extern "C" fn(
            *mut bindings::device,
            DmaAddress,
            usize,
            bindings::dma_data_direction,
        ),
    ) -> Result {
        let end = offset.checked_add(size).ok_or(ERANGE)?;
        if size == 0 || end > self.size {
            return Err(ERANGE);
        }
        let sync_pieces = |pieces: &mut dyn Iterator<Item = DmaRange>| {
            let mut start = 0;
            for piece in pieces {
                let piece_end = start + piece.size();
                if start < end && offset < piece_end {
                    let from = offset.max(start);
                    let to = end.min(piece_end);
                    // CAST: an offset inside a mapped piece fits in a DMA address.
                    let addr = piece.dma_addr() + (from - start) as DmaAddress;
                    // SAFETY: `piece` is mapped for the bound `self.dev` (type invariant); the
                    // synced bytes are inside it.
                    unsafe { sync(self.dev.as_raw(), addr, to - from, self.direction.into()) };
                }
                start = piece_end;
            }
        };
        let linked = match &self.ranges {
            Ranges::Linked(linked) => linked,
            Ranges::EachMapped(each) => {
                let units = if each.units.is_empty() {
                    &each.ranges
                } else {
                    &each.units
                };
                sync_pieces(&mut units.iter().copied());
                return Ok(());
            }
        };
        // Linking did the cache maintenance; later ownership changes only matter for a
        // non-coherent device or where dma-iommu bounced parts of a range: elsewhere, a sync
        // would cost a call for nothing.
        // SAFETY: `self.dev` is a valid `struct device`.
        let coherent = unsafe { bindings::dev_is_dma_coherent(self.dev.as_raw()) };
        // CAST: the flag is the top bit of the 64-bit size field.
        let bounced = linked.state.__size & bindings::DMA_IOVA_USE_SWIOTLB as u64 != 0;
        if coherent && !bounced {
            return Ok(());
        }
        let mut cuts = SegmentLimits::new(usize::MAX, u64::MAX, 1)?;
        if bounced {
            // SAFETY: `self.dev` is a valid `struct device`.
            let boundary = unsafe { bindings::dma_get_merge_boundary(self.dev.as_raw()) };
            // CAST: the merge boundary is a mask of the low bits of an address.
            cuts = SegmentLimits::new(usize::MAX, boundary as u64, 1)?;
        }
        // The links, one per range of the memory, one after the other.
        let mut link_offset = 0;
        let links = memory.filter_map(|range| {
            // CAST: an offset into the IOVA range fits in a DMA address.
            let addr = linked.range.dma_addr() + link_offset as DmaAddress;
            link_offset += range.size();
            // SAFETY: `range` is linked at this offset of the IOVA range, which stays linked
            // while `self` lives.
            unsafe { DmaRange::from_bus_address(addr, range.size()) }.ok()
        });
        sync_pieces(&mut Split::new(links, cuts));
        Ok(())
    }
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        if let Ranges::Linked(linked) = &mut self.ranges {
            // SAFETY: The state was allocated for the bound `self.dev` with all of its range
            // linked (type invariant).
            unsafe {
                bindings::dma_iova_destroy(
                    self.dev.as_raw(),
                    &mut linked.state,
                    linked.range.size(),
                    self.direction.into(),
                    self.attrs.as_raw(),
                )
            };
        } else if let Ranges::EachMapped(each) = &self.ranges {
            for unit in each.units.iter() {
                // SAFETY: Every unit is a live mapping (type invariant), unmapped only here.
                unsafe { self.unmap_one(unit.dma_addr(), unit.size()) };
            }
        }
    }
}

/// Ranges linked per call of `dma_iova_link_phys_vec()`, gathered on the stack (512 bytes).
const LINK_BATCH: usize = 32;

/// Links every range of `memory` into `state`, a fresh allocation of `size` bytes for `dev`: in
/// one call if the caller has them all in `whole`, [`LINK_BATCH`] decoded ranges per call
/// otherwise (one IO page table walk per call where the IOMMU driver uses the generic page table),
/// and makes them usable by the device with one `dma_iova_sync()`. On error, undoes the links and
/// frees the allocation.
fn link_all<S: DmaMemory>(
    dev: &Device<Bound>,
    memory: &S,
    whole: Option<&[Phyr]>,
    mut state: bindings::dma_iova_state,
    size: usize,
    direction: DataDirection,
    attrs: Attrs,
) -> Result<Linked> {
    let raw = dev.as_raw();
    let link = |state: &mut bindings::dma_iova_state, batch: &[Phyr], offset| {
        let count = u32::try_from(batch.len())?;
        // SAFETY: `state` was allocated for the bound `dev`, of `size` bytes; the ranges meet on
        // IOVA granules and are linked one after the other from `offset`, inside the allocation;
        // the memory stays valid while the mapping lives (`DmaMemory`). `Phyr` is a transparent
        // `struct phys_vec`. On error, nothing of `batch` stays linked.
        to_result(unsafe {
            bindings::dma_iova_link_phys_vec(
                raw,
                state,
                batch.as_ptr().cast(),
                count,
                offset,
                direction.into(),
                attrs.as_raw(),
            )
        })
    };
    let mut offset = 0;
    let mut result = Ok(());
    if let Some(all) = whole {
        result = link(&mut state, all, 0);
        if result.is_ok() {
            offset = size;
        }
    } else {
        let mut ranges = memory.ranges();
        while let Some(first) = ranges.next() {
            // Every slot a call passes is filled from `ranges`.
            let mut batch = [first; LINK_BATCH];
            let (mut count, mut bytes) = (1, first.size());
            // `zip` takes a slot before a range: no range is lost when the batch is full.
            for (slot, range) in batch[1..].iter_mut().zip(&mut ranges) {
                *slot = range;
                count += 1;
                bytes += range.size();
            }
            result = link(&mut state, &batch[..count], offset);
            if result.is_err() {
                break;
            }
            offset += bytes;
        }
    }
    if result.is_ok() {
        // SAFETY: As above; `0..size` is linked.
        result = to_result(unsafe { bindings::dma_iova_sync(raw, &mut state, 0, size) });
    }
    // SAFETY: `state.addr..state.addr + size` is the allocated IOVA range.
    let range = result.and_then(|()| unsafe { DmaRange::from_bus_address(state.addr, size) });
    match range {
        Ok(range) => Ok(Linked { state, range }),
        Err(e) => {
            // SAFETY: `state` was allocated for the bound `dev`; `0..offset` is linked.
            unsafe {
                bindings::dma_iova_destroy(
                    raw,
                    &mut state,
                    offset,
                    direction.into(),
                    attrs.as_raw(),
                )
            };
            Err(e)
        }
    }
}

/// The DMA mapping of memory, owned or borrowed, for one bound device and one direction.
///
/// It borrows the bound device for `'a`, and can live in driver data that does
/// (`type Data<'bound>`). Dropping it unmaps the memory, then drops the memory it holds (the
/// memory itself, or a borrow of it). [`DmaMapping::into_devres`] makes a mapping of owned memory
/// device-managed. See the [module documentation](self) for what the types guarantee.
///
/// # Invariants
///
/// `mapped` maps the ranges of `memory`, and is declared first so that it is dropped, unmapping
/// them, before `memory`.
///
/// # Examples
///
/// ```
/// use kernel::device::{Bound, Device};
/// use kernel::dma::{map::{DmaMapping, KernelBuffer}, Attrs, DataDirection};
///
/// /// Maps a buffer for the device to read and returns the address and length of every DMA
/// /// segment, whatever the DMA backend.
/// fn map_for_device(dev: &Device<Bound>) -> Result<KVec<(u64, usize)>> {
///     let buffer = KernelBuffer::new(VVec::from_elem(0x5au8, 3 * 4096, GFP_KERNEL)?,
///                                    GFP_KERNEL)?;
///     // Borrowed: `buffer` cannot be dropped or written while it is mapped.
///     let mapping = DmaMapping::new(dev, &buffer, DataDirection::ToDevice, Attrs::default(),
///                                   GFP_ATOMIC)?;
///     let mut segments = KVec::new();
///     for range in mapping.dma_ranges() {
///         segments.push((range.dma_addr(), range.size()), GFP_KERNEL)?;
///     }
///     assert_eq!(segments.iter().map(|s| s.1).sum::<usize>(), 3 * 4096);
///     Ok(segments)
/// }
/// ```
pub struct DmaMapping<'a, S: DmaMemory> {
    // Drop order: unmap before the memory goes.
    mapped: Mapped<'a>,
    memory: S,
}

impl<S: DmaMemory + 'static> ForLt for DmaMapping<'static, S> {
    type Of<'a> = DmaMapping<'a, S>;
}

// SAFETY: `DmaMapping<'a, S>` is covariant over `'a`: it holds `&'a Device<Bound>`, which is.
unsafe impl<S: DmaMemory + 'static> CovariantForLt for DmaMapping<'static, S> {}

/// A device-managed DMA mapping, unmapped when dropped or when the device is unbound.
///
/// See [`DmaMapping::into_devres`].
pub type DevresDmaMapping<S> = DevresLt<DmaMapping<'static, S>>;

impl<'a, S: DmaMemory> DmaMapping<'a, S> {
    /// Maps `memory` for `dev` in `direction`, with `attrs`.
    ///
    /// Allocates nothing on the IOVA path, and with `flags` only on the others (the lists of DMA
    /// ranges): with `GFP_ATOMIC` or `GFP_NOWAIT` it does not sleep, and can be used under a
    /// spinlock or in interrupt context.
    ///
    /// [`DmaMemory::MMIO`] memory is mapped with `DMA_ATTR_MMIO`; asking for it on RAM is an
    /// error. Errors: [`EINVAL`] (no range, [`DataDirection::None`], an attribute that is not
    /// a streaming one, `DMA_ATTR_MMIO` on RAM, a direction the device writes in on memory it may
    /// only read), [`EOVERFLOW`] (more than `usize::MAX` bytes), [`EPERM`] (MMIO that the IOVA
    /// path would bounce), [`ENOMEM`] (no memory, no IOVA space, no mapping under the DMA mask,
    /// or MMIO that would be bounced otherwise). Nothing stays mapped on error, and the memory is
    /// dropped.
    pub fn new(
        dev: &'a Device<Bound>,
        memory: S,
        direction: DataDirection,
        attrs: Attrs,
        flags: Flags,
    ) -> Result<Self> {
        check_streaming(direction, attrs)?;
        let mmio = attrs::DMA_ATTR_MMIO;
        let device_writes = direction != DataDirection::ToDevice;
        if (!S::MMIO && attrs.contains(mmio)) || (device_writes && !memory.device_may_write()) {
            return Err(EINVAL);
        }
        let attrs = if S::MMIO { attrs | mmio } else { attrs };
        let mapped = Mapped::new(dev, &memory, direction, attrs, flags)?;
        // INVARIANT: `mapped` maps the ranges of `memory`.
        Ok(Self { mapped, memory })
    }

    /// Returns the device the memory is mapped for.
    pub fn device(&self) -> &'a Device<Bound> {
        self.mapped.dev
    }

    /// Returns the DMA ranges, in the order of the memory's bytes, to program into the device.
    pub fn dma_ranges(&self) -> &[DmaRange] {
        self.mapped.ranges()
    }

    /// Returns the DMA ranges of the bytes `offset..offset + size` of the mapping, in order: what
    /// one command moves when a device takes a request in several.
    ///
    /// Returns [`ERANGE`] if the bytes are empty or not all mapped.
    pub fn dma_ranges_of(
        &self,
        offset: usize,
        size: usize,
    ) -> Result<impl Iterator<Item = DmaRange> + '_> {
        let end = offset
            .checked_add(size)
            .filter(|&end| size > 0 && end <= self.size())
            .ok_or(ERANGE)?;
        let mut start = 0;
        let parts = self.dma_ranges().iter().map_while(move |range| {
            if start >= end {
                return None;
            }
            let (from, to) = (offset.max(start), end.min(start + range.size()));
            let part = (from < to).then(|| {
                // CAST: an offset inside a mapped range fits in a DMA address.
                let addr = range.dma_addr() + (from - start) as DmaAddress;
                // SAFETY: The bytes are a non-empty part of a range mapped for the device,
                // which stays mapped while `self` lives.
                unsafe { DmaRange::from_bus_address(addr, to - from) }
            });
            start += range.size();
            // A part of a valid range cannot overflow: `ok()` drops nothing.
            Some(part.and_then(Result::ok))
        });
        Ok(parts.flatten())
    }

    /// Returns the DMA ranges cut into the segments that `limits` allow, for PRP lists or
    /// scatter/gather descriptors.
    pub fn segments(
        &self,
        limits: SegmentLimits,
    ) -> Split<Copied<slice::Iter<'_, DmaRange>>, DmaRange> {
        Split::new(self.dma_ranges().iter().copied(), limits)
    }

    /// Returns the path the mapping took.
    ///
    /// Without an IOMMU, tells [`DmaPath::Direct`] from [`DmaPath::Bounce`] by looking up every
    /// DMA range in the swiotlb pools; making the mapping does not pay for it.
    pub fn path(&self) -> DmaPath {
        self.mapped.path()
    }

    /// Returns the number of bytes mapped.
    pub fn size(&self) -> usize {
        self.mapped.size
    }

    /// Unmaps the memory and gives it back, e.g. to map it again for the next request.
    pub fn into_memory(self) -> S {
        let Self { mapped, memory } = self;
        drop(mapped);
        memory
    }

    /// Returns the mapped memory.
    ///
    /// # Safety
    ///
    /// The device must not write the bytes that the caller reads while the reference lives;
    /// bytes the device wrote are read after [`DmaMapping::sync_for_cpu`].
    pub unsafe fn memory(&self) -> &S {
        &self.memory
    }

    /// Gives the bytes `offset..offset + size` of the mapping to the CPU, after the device
    /// wrote them: for devices that are not cache-coherent, and to copy swiotlb bounce buffers
    /// back.
    ///
    /// Returns [`ERANGE`] outside the mapping.
    pub fn sync_for_cpu(&self, offset: usize, size: usize) -> Result {
        self.mapped.sync(
            self.memory.ranges(),
            offset,
            size,
            bindings::dma_sync_single_for_cpu,
        )
    }

    /// Gives the bytes `offset..offset + size` of the mapping back to the device after the CPU
    /// wrote them.
    ///
    /// Returns [`ERANGE`] outside the mapping.
    pub fn sync_for_device(&self, offset: usize, size: usize) -> Result {
        self.mapped.sync(
            self.memory.ranges(),
            offset,
            size,
            bindings::dma_sync_single_for_device,
        )
    }
}

impl<'a, S: DmaMemory + 'static> DmaMapping<'a, S> {
    /// Makes the mapping device-managed: it can then outlive the borrow of the device, e.g. in
    /// a long-lived object shared with other contexts, and is unmapped, and its memory dropped,
    /// when it is dropped or when the device is unbound, whichever comes first.
    ///
    /// Only owned memory can be handed over: a borrow would end before the device is unbound.
    /// May sleep: the mapping is registered with the device's managed resources.
    pub fn into_devres(self) -> Result<DevresDmaMapping<S>> {
        let dev = self.device();
        // SAFETY: A `DmaMapping` of `'static` memory only holds a reference to the device, which
        // stays valid for the device's full bound scope, not just for `'a`.
        unsafe { DevresLt::new(dev, self) }
    }
}

impl<S: DmaMemory + DerefMut> DmaMapping<'_, S> {
    /// Returns the mapped memory for the CPU to write; the device sees the writes after
    /// [`DmaMapping::sync_for_device`].
    ///
    /// # Safety
    ///
    /// The device must not access the bytes that the caller accesses while the reference lives.
    pub unsafe fn memory_mut(&mut self) -> &mut S::Target {
        &mut self.memory
    }
}

#[cfg(all(CONFIG_RUST_DMA_KUNIT_TEST, CONFIG_PCI))]
mod tests;
