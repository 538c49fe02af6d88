// SPDX-License-Identifier: GPL-2.0

//! Physical address ranges.
//!
//! A [`Phyr`] is one range of CPU physical addresses, the unit that the two-step DMA API links
//! into an IOVA range or maps directly. It has the layout of the C `struct phys_vec`.
//!
//! C header: [`include/linux/types.h`](srctree/include/linux/types.h)

use crate::{
    bindings,
    io::PhysAddr,
    prelude::*, //
};

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
    /// [`PhysAddr::MAX`], so a range cannot end exactly at the top of the address space.
    pub fn new(paddr: PhysAddr, size: usize) -> Result<Self> {
        if size == 0 {
            return Err(EINVAL);
        }
        PhysAddr::try_from(size)
            .ok()
            .and_then(|size| paddr.checked_add(size))
            .ok_or(EOVERFLOW)?;

        // INVARIANT: `size` is non-zero, fits in a `PhysAddr` and `paddr + size` does not
        // overflow, all checked above.
        Ok(Self(bindings::phys_vec { paddr, len: size }))
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

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
#[kunit_tests(rust_kernel_dma_phyr)]
mod tests {
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
}
