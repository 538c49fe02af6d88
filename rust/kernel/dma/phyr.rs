// SPDX-License-Identifier: GPL-2.0

//! Physical address ranges and the DMA address ranges they are mapped to.
//!
//! A [`Phyr`] is one range of CPU physical addresses, the unit that the two-step DMA API links
//! into an IOVA range or maps directly. It has the layout of the C `struct phys_vec`. A
//! [`DmaRange`] is a range of addresses as a device sees them. The two are distinct types: a
//! physical range becomes a DMA range only by being mapped for a device.
//!
//! C header: [`include/linux/types.h`](srctree/include/linux/types.h)

use crate::{
    bindings,
    dma::DmaAddress,
    io::PhysAddr,
    num::casts::FromSafeCast,
    prelude::*, //
};

pub mod list;
pub mod source;
pub mod user;

/// A non-empty range of CPU physical addresses.
///
/// # Invariants
///
/// `self.0.len` is non-zero, fits in a [`PhysAddr`], and `self.0.paddr + self.0.len` does not
/// overflow [`PhysAddr`].
///
/// # Examples
///
/// ```
/// use kernel::dma::phyr::Phyr;
///
/// let range = Phyr::new(0x10_0000, 0x2000)?;
/// assert_eq!(range.paddr(), 0x10_0000);
/// assert_eq!(range.size(), 0x2000);
/// assert_eq!(range.end(), 0x10_2000);
///
/// assert_eq!(Phyr::new(0x10_0000, 0), Err(EINVAL));
/// # Ok::<(), Error>(())
/// ```
// Transparent, so that a slice of `Phyr` is an array of `struct phys_vec` for C.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Phyr(bindings::phys_vec);

impl Phyr {
    /// Creates the range of `size` bytes starting at `paddr`.
    ///
    /// Returns [`EINVAL`] if `size` is zero and [`EOVERFLOW`] if `paddr + size` exceeds
    /// [`PhysAddr::MAX`]: the byte at `PhysAddr::MAX` cannot be part of a range.
    pub fn new(paddr: PhysAddr, size: usize) -> Result<Self> {
        check_range(widen(paddr), size, widen(PhysAddr::MAX))?;
        // INVARIANT: `size` is non-zero, fits in a `PhysAddr` and `paddr + size` does not
        // overflow, as checked.
        Ok(Self(bindings::phys_vec { paddr, len: size }))
    }

    /// Creates a range the caller knows to be valid, such as a part of a valid range.
    ///
    /// # Safety
    ///
    /// `size` must be non-zero and `paddr + size` must not overflow [`PhysAddr`].
    pub(crate) unsafe fn from_valid(paddr: PhysAddr, size: usize) -> Self {
        debug_assert!(Self::new(paddr, size).is_ok());
        // INVARIANT: by the safety requirements.
        Self(bindings::phys_vec { paddr, len: size })
    }

    /// Returns the first physical address of the range.
    #[inline]
    pub fn paddr(&self) -> PhysAddr {
        self.0.paddr
    }

    /// Returns the size of the range in bytes, which is never zero.
    #[inline]
    pub fn size(&self) -> usize {
        self.0.len
    }

    /// Returns the physical address just past the end of the range.
    #[inline]
    pub fn end(&self) -> PhysAddr {
        // CAST: by the type invariant, `len` fits in a `PhysAddr`, and the addition does not
        // overflow.
        self.0.paddr + self.0.len as PhysAddr
    }

    /// Returns the range covering `self` and `next` if `next` starts where `self` ends and the
    /// union is a valid [`Phyr`].
    pub fn join(&self, next: &Self) -> Option<Self> {
        if self.end() != next.paddr() {
            return None;
        }
        Self::new(self.paddr(), self.size().checked_add(next.size())?).ok()
    }
}

impl PartialEq for Phyr {
    fn eq(&self, other: &Self) -> bool {
        self.paddr() == other.paddr() && self.size() == other.size()
    }
}

impl Eq for Phyr {}

impl core::fmt::Debug for Phyr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Phyr({:#x}..{:#x})", self.paddr(), self.end())
    }
}

/// A non-empty range of DMA addresses: addresses as one device sees them.
///
/// It is what a DMA mapping of [`Phyr`]s gives, and there is no conversion from a [`Phyr`]: a
/// CPU physical address is not a DMA address, and a device may see memory at another address,
/// through an IOMMU or a bus offset, or not at all. The only other way to a `DmaRange` is
/// [`DmaRange::from_bus_address`], for memory that a device reaches by its bus address without a
/// mapping, such as a peer device's BAR for PCI peer-to-peer DMA.
///
/// # Invariants
///
/// `self.size` is non-zero, fits in a [`DmaAddress`], and `self.addr + self.size` does not
/// overflow [`DmaAddress`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DmaRange {
    addr: DmaAddress,
    size: usize,
}

impl DmaRange {
    /// Creates the range of `size` bytes at bus address `addr`, which a device reaches without
    /// any DMA mapping.
    ///
    /// Returns [`EINVAL`] if `size` is zero and [`EOVERFLOW`] if the range wraps past
    /// [`DmaAddress::MAX`].
    ///
    /// # Safety
    ///
    /// `addr..addr + size` must be bus addresses that the devices this range is given to can
    /// access without a DMA mapping, e.g. the bus addresses of a peer device's BAR when PCI
    /// peer-to-peer transactions go directly between the two devices, and the memory behind them
    /// must stay accessible for as long as a device may use the range.
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::dma::{
    ///     phyr::DmaRange,
    ///     DmaAddress, //
    /// };
    ///
    /// // SAFETY: The range is not given to any device.
    /// let range = unsafe { DmaRange::from_bus_address(0xfe00_0000, 0x1000) }?;
    /// assert_eq!(range.dma_addr(), 0xfe00_0000);
    /// assert_eq!(range.end(), 0xfe00_1000);
    /// // SAFETY: As above.
    /// assert_eq!(unsafe { DmaRange::from_bus_address(DmaAddress::MAX, 1) }, Err(EOVERFLOW));
    /// # Ok::<(), Error>(())
    /// ```
    pub unsafe fn from_bus_address(addr: DmaAddress, size: usize) -> Result<Self> {
        check_range(widen(addr), size, widen(DmaAddress::MAX))?;
        // INVARIANT: `size` is non-zero, fits in a `DmaAddress` and `addr + size` does not
        // overflow, as checked.
        Ok(Self { addr, size })
    }

    /// Returns the first DMA address of the range, the one to give the device.
    #[inline]
    pub fn dma_addr(&self) -> DmaAddress {
        self.addr
    }

    /// Returns the size of the range in bytes, which is never zero.
    #[inline]
    pub fn size(&self) -> usize {
        self.size
    }

    /// Returns the DMA address just past the end of the range.
    #[inline]
    pub fn end(&self) -> DmaAddress {
        // CAST: by the type invariant, `size` fits in a `DmaAddress`, and the addition does not
        // overflow.
        self.addr + self.size as DmaAddress
    }
}

impl core::fmt::Debug for DmaRange {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "DmaRange({:#x}..{:#x})", self.dma_addr(), self.end())
    }
}

/// A range of addresses that [`Split`] can cut: a [`Phyr`] or a [`DmaRange`].
pub trait AddrRange: Copy + private::Sealed {
    /// Returns the first address of the range widened to `u64`, as 64-bit hardware descriptors
    /// take it, whatever the width of the address type.
    fn start_u64(&self) -> u64;
}

impl AddrRange for Phyr {
    fn start_u64(&self) -> u64 {
        widen(self.paddr())
    }
}

impl AddrRange for DmaRange {
    fn start_u64(&self) -> u64 {
        widen(self.addr)
    }
}

/// Widens an address to `u64`, whether its type is `u32` or `u64` in this configuration.
fn widen<A: Into<u64>>(addr: A) -> u64 {
    addr.into()
}

/// Returns [`EINVAL`] if `size` is zero and [`EOVERFLOW`] if `start + size` exceeds `max`, the
/// largest address of the range's address type.
fn check_range(start: u64, size: usize, max: u64) -> Result {
    if size == 0 {
        return Err(EINVAL);
    }
    match start.checked_add(u64::from_safe_cast(size)) {
        Some(end) if end <= max => Ok(()),
        _ => Err(EOVERFLOW),
    }
}

mod private {
    /// The operations [`Split`](super::Split) needs, out of reach of other crates.
    pub trait Sealed: Sized {
        /// Returns the size of the range in bytes.
        fn size(&self) -> usize;

        /// Returns the `size` bytes of the range that start `offset` bytes into it.
        ///
        /// # Safety
        ///
        /// `size` must be non-zero and `offset + size` at most `self.size()`.
        unsafe fn part(&self, offset: usize, size: usize) -> Self;
    }
}

impl private::Sealed for Phyr {
    fn size(&self) -> usize {
        self.0.len
    }

    unsafe fn part(&self, offset: usize, size: usize) -> Self {
        // CAST: `offset` is less than the range's size, which fits in a `PhysAddr`.
        let paddr = self.paddr() + offset as PhysAddr;
        // SAFETY: by the safety requirements, a non-empty part of a valid range.
        unsafe { Self::from_valid(paddr, size) }
    }
}

impl private::Sealed for DmaRange {
    fn size(&self) -> usize {
        self.size
    }

    unsafe fn part(&self, offset: usize, size: usize) -> Self {
        debug_assert!(size > 0 && offset.checked_add(size).is_some_and(|end| end <= self.size));
        // INVARIANT: by the safety requirements, a non-empty part of a valid range.
        Self {
            // CAST: `offset` is less than the range's size, which fits in a `DmaAddress`.
            addr: self.addr + offset as DmaAddress,
            size,
        }
    }
}

/// The segments a device takes: how large, where they may not cross, how they are cut.
///
/// The limits apply to the addresses the device sees: use them on physical ranges only where
/// those are the DMA addresses (direct mapping without offset), otherwise on the mapped ranges.
///
/// # Invariants
///
/// `granule` is a power of two and `max_size >= granule`. `boundary_mask` is all ones (no
/// boundary) or `boundary_mask + 1` is a power of two no smaller than `granule`.
#[derive(Clone, Copy, Debug)]
pub struct SegmentLimits {
    max_size: usize,
    boundary_mask: u64,
    granule: usize,
}

impl SegmentLimits {
    /// Creates the limits of a device whose segments are at most `max_size` bytes, never cross an
    /// address multiple of `boundary_mask + 1` (no boundary if the mask is all ones), and are cut,
    /// when a range must be cut, on multiples of `granule`, e.g. `dma_get_merge_boundary() + 1`
    /// or the controller page size.
    ///
    /// Returns [`EINVAL`] if `granule` or `boundary_mask + 1` is not a power of two, or if a
    /// granule does not fit in a segment or between two boundaries.
    pub fn new(max_size: usize, boundary_mask: u64, granule: usize) -> Result<Self> {
        let boundary = boundary_mask.wrapping_add(1);
        if !granule.is_power_of_two()
            || !(boundary == 0 || boundary.is_power_of_two())
            || max_size < granule
            || (boundary != 0 && boundary < u64::from_safe_cast(granule))
        {
            return Err(EINVAL);
        }
        // INVARIANT: checked above.
        Ok(Self {
            max_size,
            boundary_mask,
            granule,
        })
    }

    /// Returns the size of the first segment of `range`.
    fn first_segment<R: AddrRange>(&self, range: &R) -> usize {
        let start = range.start_u64();
        let to_boundary = ((start | self.boundary_mask) - start).saturating_add(1);
        let size = range.size().min(self.max_size);
        let size = usize::try_from(to_boundary).map_or(size, |to_boundary| size.min(to_boundary));
        if size == range.size() {
            return size;
        }
        // Cut on a granule. The segment stays non-empty: it either ends on a boundary, which
        // the invariants make a multiple of the granule, or has `max_size >= granule` bytes.
        let granule = u64::from_safe_cast(self.granule);
        let cut = (start + u64::from_safe_cast(size)) & !(granule - 1);
        // CAST: `cut - start <= size`, which is a `usize`.
        (cut - start) as usize
    }
}

/// Iterator adaptor that cuts ranges, physical or DMA, into the segments a device takes; see
/// [`SegmentLimits`]. It never merges ranges.
///
/// # Examples
///
/// ```
/// use kernel::dma::phyr::{
///     Phyr,
///     SegmentLimits,
///     Split, //
/// };
///
/// // 8 KiB segments that do not cross 16 KiB boundaries, cut on 4 KiB.
/// let limits = SegmentLimits::new(0x2000, 0x3fff, 0x1000)?;
/// let ranges = [Phyr::new(0x3800, 0x5000)?];
/// let mut segments = Split::new(ranges.into_iter(), limits);
/// assert_eq!(segments.next(), Some(Phyr::new(0x3800, 0x800)?));
/// assert_eq!(segments.next(), Some(Phyr::new(0x4000, 0x2000)?));
/// assert_eq!(segments.next(), Some(Phyr::new(0x6000, 0x2000)?));
/// assert_eq!(segments.next(), Some(Phyr::new(0x8000, 0x800)?));
/// assert_eq!(segments.next(), None);
/// # Ok::<(), Error>(())
/// ```
pub struct Split<I, R> {
    ranges: I,
    limits: SegmentLimits,
    rest: Option<R>,
}

impl<R: AddrRange, I: Iterator<Item = R>> Split<I, R> {
    /// Cuts the ranges of `ranges` into segments within `limits`.
    pub fn new(ranges: I, limits: SegmentLimits) -> Self {
        Self {
            ranges,
            limits,
            rest: None,
        }
    }
}

impl<R: AddrRange, I: Iterator<Item = R>> Iterator for Split<I, R> {
    type Item = R;

    fn next(&mut self) -> Option<R> {
        let range = self.rest.take().or_else(|| self.ranges.next())?;
        let size = self.limits.first_segment(&range);
        if size < range.size() {
            // SAFETY: `first_segment()` returns a non-zero size, less than the range's here, so
            // the rest is a non-empty part of `range`.
            self.rest = Some(unsafe { range.part(size, range.size() - size) });
        }
        // SAFETY: `first_segment()` returns the size of a non-empty part of `range`.
        Some(unsafe { range.part(0, size) })
    }
}

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
mod testing;

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
#[kunit_tests(rust_kernel_dma_phyr)]
mod tests {
    use super::testing::TestRng;
    use super::*;

    #[test]
    fn new_keeps_address_and_size() -> Result {
        let range = Phyr::new(0x1234_5000, 0x3000)?;
        assert_eq!(range.paddr(), 0x1234_5000);
        assert_eq!(range.size(), 0x3000);
        assert_eq!(range.end(), 0x1234_8000);
        Ok(())
    }

    #[test]
    fn new_rejects_zero_size() {
        assert_eq!(Phyr::new(0x1000, 0), Err(EINVAL));
    }

    #[test]
    fn new_accepts_range_ending_at_top() -> Result {
        let range = Phyr::new(PhysAddr::MAX - 0xfff, 0xfff)?;
        assert_eq!(range.end(), PhysAddr::MAX);
        Ok(())
    }

    #[test]
    fn new_rejects_overflow() {
        assert_eq!(Phyr::new(PhysAddr::MAX - 0xfff, 0x1000), Err(EOVERFLOW));
        assert_eq!(Phyr::new(1, usize::MAX), Err(EOVERFLOW));
    }

    #[test]
    fn join_only_contiguous() -> Result {
        let low = Phyr::new(0x1000, 0x1000)?;
        let high = Phyr::new(0x2000, 0x10)?;
        assert_eq!(low.join(&high), Some(Phyr::new(0x1000, 0x1010)?));
        assert_eq!(high.join(&low), None);
        assert_eq!(low.join(&Phyr::new(0x2001, 1)?), None);
        Ok(())
    }

    #[test]
    fn segment_limits_reject_bad_values() {
        assert_eq!(
            SegmentLimits::new(0x1000, u64::MAX, 0x3000).err(),
            Some(EINVAL)
        );
        assert_eq!(
            SegmentLimits::new(0x800, u64::MAX, 0x1000).err(),
            Some(EINVAL)
        );
        assert_eq!(
            SegmentLimits::new(0x1000, 0x2fff, 0x1000).err(),
            Some(EINVAL)
        );
        assert_eq!(
            SegmentLimits::new(0x1000, 0x7ff, 0x1000).err(),
            Some(EINVAL)
        );
        assert!(SegmentLimits::new(0x1000, 0xfff, 0x1000).is_ok());
    }

    fn split(ranges: &[Phyr], limits: SegmentLimits) -> Result<KVec<Phyr>> {
        let mut segments = KVec::new();
        for segment in Split::new(ranges.iter().copied(), limits) {
            segments.push(segment, GFP_KERNEL)?;
        }
        Ok(segments)
    }

    #[test]
    fn split_exact_cases() -> Result {
        let unlimited = SegmentLimits::new(usize::MAX, u64::MAX, 1)?;
        let ranges = [Phyr::new(0x1234, 0x10_0000)?, Phyr::new(0x10_1234, 1)?];
        assert_eq!(split(&ranges, unlimited)?[..], ranges[..]);

        // 4 KiB segments cut on 4 KiB: an unaligned start gives a short first segment.
        let pages = SegmentLimits::new(0x1000, u64::MAX, 0x1000)?;
        assert_eq!(
            split(&[Phyr::new(0x1100, 0x3000)?], pages)?[..],
            [
                Phyr::new(0x1100, 0xf00)?,
                Phyr::new(0x2000, 0x1000)?,
                Phyr::new(0x3000, 0x1000)?,
                Phyr::new(0x4000, 0x100)?,
            ]
        );

        // Near the top of the address space and as large as a range can be.
        let top = [
            Phyr::new(PhysAddr::MAX - 0x1fff, 0x1fff)?,
            Phyr::new(0, usize::MAX)?,
        ];
        assert_eq!(split(&top, unlimited)?[..], top[..]);
        assert_eq!(
            split(&top[..1], pages)?[..],
            [
                Phyr::new(PhysAddr::MAX - 0x1fff, 0x1000)?,
                Phyr::new(PhysAddr::MAX - 0xfff, 0xfff)?
            ]
        );

        // Every byte a segment of its own.
        let bytes = SegmentLimits::new(1, 0, 1)?;
        assert_eq!(
            split(&[Phyr::new(0x10, 2)?], bytes)?[..],
            [Phyr::new(0x10, 1)?, Phyr::new(0x11, 1)?]
        );

        // Never merged, even when contiguous and small.
        let contiguous = [Phyr::new(0x1000, 0x10)?, Phyr::new(0x1010, 0x10)?];
        assert_eq!(split(&contiguous, pages)?[..], contiguous[..]);
        Ok(())
    }

    #[test]
    fn dma_range_checks_and_splits() -> Result {
        // SAFETY: None of these ranges is given to a device.
        let bus = |addr, size| unsafe { DmaRange::from_bus_address(addr, size) };
        assert_eq!(bus(0x1000, 0), Err(EINVAL));
        assert_eq!(bus(DmaAddress::MAX, 1), Err(EOVERFLOW));
        assert_eq!(bus(DmaAddress::MAX - 0xfff, 0xfff)?.end(), DmaAddress::MAX);

        let limits = SegmentLimits::new(0x1000, 0xffff, 0x1000)?;
        let mut segments = Split::new(core::iter::once(bus(0xf800, 0x1900)?), limits);
        assert_eq!(segments.next(), Some(bus(0xf800, 0x800)?));
        assert_eq!(segments.next(), Some(bus(0x1_0000, 0x1000)?));
        assert_eq!(segments.next(), Some(bus(0x1_1000, 0x100)?));
        assert_eq!(segments.next(), None);
        Ok(())
    }

    #[test]
    fn split_random_invariants() -> Result {
        let mut rng = TestRng::new("split_random_invariants", 0x5eed_5b11);
        for _ in 0..2000 {
            let granule_shift = rng.range(0, 16);
            let granule = 1u64 << granule_shift;
            let max_size = usize::try_from(rng.range(1, 64) * granule + rng.range(0, 3))?;
            let boundary_mask = match rng.range(0, 2) {
                0 => u64::MAX,
                shift => (1u64 << rng.range(granule_shift, 32 + shift)) - 1,
            };
            let limits = SegmentLimits::new(max_size, boundary_mask, usize::try_from(granule)?)?;
            let range = Phyr::new(
                rng.range(0, 1 << 40),
                usize::try_from(rng.range(1, 1 << 18))?,
            )?;

            let mut next = range.paddr();
            for segment in Split::new(core::iter::once(range), limits) {
                assert_eq!(segment.paddr(), next);
                assert!(segment.size() <= max_size);
                assert_eq!(
                    segment.paddr() & !boundary_mask,
                    (segment.end() - 1) & !boundary_mask
                );
                if segment.end() != range.end() {
                    // Cut on a granule, and no longer segment was possible: it ends on a
                    // boundary or one more granule would exceed the maximum size.
                    assert_eq!(segment.end() % granule, 0);
                    assert!(
                        segment.end() & boundary_mask == 0
                            || u64::from_safe_cast(segment.size()) + granule
                                > u64::from_safe_cast(max_size)
                    );
                }
                next = segment.end();
            }
            assert_eq!(next, range.end());
        }
        Ok(())
    }
}
