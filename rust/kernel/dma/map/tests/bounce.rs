// SPDX-License-Identifier: GPL-2.0

//! The bounce path of the two-step API: the `edu` device marked untrusted, as the PCI core marks
//! a device behind an external-facing port, so that dma-iommu bounces through swiotlb every IOVA
//! granule that a link or a mapping covers only in part.
//!
//! dma-iommu needs a swiotlb pool for that, which x86 makes only for memory above 4 GiB unless
//! asked with `iommu=soft`; without one it refuses such links. The machines of the harness say
//! which they are on the kernel command line.

use super::*;

/// Marks the `edu` device untrusted while it lives, as a driver would set it up for that:
/// swiotlb keeping the offset inside an IOVA granule of what it bounces (dma-iommu links a bounce
/// buffer at the IOVA of the bounced bytes, which keeps their offset inside the granule, and
/// swiotlb keeps only the bits of the device's `min_align_mask`). Restores both when dropped.
struct Untrusted<'a> {
    dev: &'a Device<Bound>,
    was: crate::ffi::c_uint,
    min_align_mask: crate::ffi::c_uint,
}

impl<'a> Untrusted<'a> {
    fn new(dev: &'a Device<Bound>) -> Result<Self> {
        // SAFETY: `dev` is bound; the test body makes no mapping meanwhile.
        let min_align_mask = unsafe {
            let parms = (*dev.as_raw()).dma_parms;
            check(!parms.is_null(), "DMA parameters of a PCI device")?;
            let was = (*parms).min_align_mask;
            // CAST: a merge boundary is the mask of an IOVA granule, much less than 4 GiB.
            let granule_mask = bindings::dma_get_merge_boundary(dev.as_raw()) as u32;
            bindings::dma_set_min_align_mask(dev.as_raw(), was | granule_mask);
            was
        };
        let was = Self::set(dev, 1);
        Ok(Self {
            dev,
            was,
            min_align_mask,
        })
    }

    /// Sets the `untrusted` flag of the PCI device `dev` to `value`, returns its former value.
    fn set(dev: &Device<Bound>, value: crate::ffi::c_uint) -> crate::ffi::c_uint {
        // SAFETY: `dev` is the bound `edu` device (probe checked its IDs), which is embedded in
        // its `struct pci_dev`, valid while `dev` is bound. The test's driver owns the device, so
        // nothing else writes the bit-field word that holds the flag meanwhile; dma-iommu reads
        // the flag at each map and link.
        unsafe {
            let pdev = crate::container_of!(dev.as_raw(), bindings::pci_dev, dev);
            let was = bindings::pci_dev::untrusted_raw(pdev);
            bindings::pci_dev::set_untrusted_raw(pdev, value);
            was
        }
    }
}

impl Drop for Untrusted<'_> {
    fn drop(&mut self) {
        Self::set(self.dev, self.was);
        // SAFETY: `self.dev` is bound; the test body makes no mapping meanwhile.
        unsafe { bindings::dma_set_min_align_mask(self.dev.as_raw(), self.min_align_mask) };
    }
}

/// Whether the kernel command line asks for a swiotlb pool behind the IOMMU (`iommu=soft`).
fn pool_asked() -> bool {
    // SAFETY: `saved_command_line` is set up early at boot and never changes afterwards.
    let line = unsafe { CStr::from_char_ptr(*ptr::addr_of!(bindings::saved_command_line)) };
    line.to_str()
        .is_ok_and(|line| line.split(' ').any(|arg| arg == "iommu=soft"))
}

/// Writes `byte(offset)` at every offset of the concatenated ranges of `memory`.
fn fill(memory: &PageRanges, byte: impl Fn(usize) -> u8) -> Result {
    let mut offset = 0;
    for range in memory.ranges.iter() {
        let page_mask = u64::from_safe_cast(PAGE_SIZE) - 1;
        let page = memory
            .pages
            .iter()
            .find(|page| page.phys_addr() == range.paddr() & !page_mask)
            .ok_or(EINVAL)?;
        let mut bytes = KVec::with_capacity(range.size(), GFP_KERNEL)?;
        for index in 0..range.size() {
            bytes.push(byte(offset + index), GFP_KERNEL)?;
        }
        // CAST: the offset inside a page fits in a `usize`.
        let in_page = (range.paddr() & page_mask) as usize;
        // SAFETY: `bytes` holds `range.size()` bytes, and the range is inside the page.
        unsafe { page.write_raw(bytes.as_ptr(), in_page, range.size())? };
        offset += range.size();
    }
    Ok(())
}

/// Bytes the CPU writes after mapping, never zero, unlike the sink's and unlike [`pattern`].
fn fresh(offset: usize) -> u8 {
    // CAST: `offset % 251 + 1` is at most 251.
    (offset % 251 + 1) as u8
}

/// Maps the ranges `layout` (page index, offset, size) of `pages` fresh pages for the device to
/// read, and the same layout of zeroed pages for it to write; writes new bytes into the source
/// after mapping it, moves them through the device with the mappings' syncs, and checks the path
/// (`path`), the bytes, and that swiotlb holds slots while the mappings live exactly when they
/// bounce (`bounce`), and none after. The first range starts inside a page, so that the first
/// byte of the sink is bounced whenever anything is.
fn round_trip(
    edu: &Edu<'_>,
    outcome: &mut Outcome,
    pages: usize,
    layout: &[(usize, usize, usize)],
    path: DmaPath,
    bounce: bool,
) -> Result {
    let used = swiotlb_used(edu.dev);
    let src_memory = PageRanges::new(pages)?.with_ranges(layout)?;
    let dst_memory = PageRanges::new(pages)?.with_ranges(layout)?;
    fill(&dst_memory, |_| 0)?;
    let src = DmaMapping::new(
        edu.dev,
        src_memory,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let dst = DmaMapping::new(
        edu.dev,
        dst_memory,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check(
        src.path() == path && dst.path() == path,
        "path of the untrusted device",
    )?;
    let during = swiotlb_used(edu.dev);
    check(
        bounce == (during.unwrap_or(0) > used.unwrap_or(0)),
        "swiotlb slots in use exactly when the mappings bounce",
    )?;
    for range in Iterator::chain(src.dma_ranges().iter(), dst.dma_ranges()) {
        outcome.dma_addrs.push(range.dma_addr(), GFP_KERNEL)?;
    }
    // SAFETY: The device does not access the source before the sync below.
    fill(unsafe { src.memory() }, fresh)?;
    let size = src.size();
    let mut offset = 0;
    while offset < size {
        let (src_addr, src_len) = dma_at(src.dma_ranges(), offset)?;
        let (dst_addr, dst_len) = dma_at(dst.dma_ranges(), offset)?;
        let len = src_len.min(dst_len).min(EDU_BUFFER_SIZE);
        src.sync_for_device(offset, len)?;
        edu.dma(src_addr, len, false)?;
        edu.dma(dst_addr, len, true)?;
        // SAFETY: The device is done writing the sink.
        let sink = unsafe { dst.memory() };
        if bounce && offset == 0 {
            check(
                sink.byte_at(0)? == 0,
                "bounced bytes reach the memory only at the sync",
            )?;
        }
        dst.sync_for_cpu(offset, len)?;
        for index in offset..offset + len {
            check(
                sink.byte_at(index)? == fresh(index),
                "bytes through the device",
            )?;
        }
        offset += len;
    }
    drop(src);
    drop(dst);
    check(swiotlb_used(edu.dev) == used, "swiotlb slots given back")
}

/// Links a range that starts inside a granule and one that ends inside one into an IOVA space;
/// the device writes them. Both are bounced: the memory gets the bytes when they are unlinked.
fn space_round_trip(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let used = swiotlb_used(edu.dev);
    // 4096 bytes in all: what the device writes at once.
    let memory = PageRanges::new(2)?.with_ranges(&[(0, 100, PAGE_SIZE - 100), (1, 0, 100)])?;
    fill(&memory, |_| 0)?;
    let size = EDU_BUFFER_SIZE;
    let mut space = IovaSpace::try_alloc(
        edu.dev,
        memory.ranges[0].paddr(),
        size,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?
    .ok_or(EINVAL)?;
    // SAFETY: `memory` outlives `space`, which is dropped below.
    unsafe { space.link(0, &memory.ranges)? };
    let range = space.sync(0, size)?;
    outcome.dma_addrs.push(range.dma_addr(), GFP_KERNEL)?;
    check(
        swiotlb_used(edu.dev).unwrap_or(0) > used.unwrap_or(0),
        "links inside granules are bounced",
    )?;
    // The device's buffer takes `pattern` from a page, then goes into the links.
    let source = DmaMapping::new(
        edu.dev,
        PageRanges::new(1)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let (source_addr, _) = dma_at(source.dma_ranges(), 0)?;
    edu.dma(source_addr, PAGE_SIZE, false)?;
    edu.dma(range.dma_addr(), size, true)?;
    for index in 0..size {
        check(
            memory.byte_at(index)? == 0,
            "bounced links keep the memory untouched until unlinked",
        )?;
    }
    drop(space);
    for index in 0..size {
        check(
            memory.byte_at(index)? == pattern(index),
            "unlinking copies the bounced bytes back",
        )?;
    }
    check(swiotlb_used(edu.dev) == used, "swiotlb slots given back")
}

/// Ranges that meet on IOVA granules, the first starting and the last ending inside one: one
/// IOVA range whose first and last granules are bounced.
const MEETING: [(usize, usize, usize); 4] = [
    (0, 100, PAGE_SIZE - 100),
    (1, 0, PAGE_SIZE),
    (2, 0, PAGE_SIZE),
    (3, 0, 500),
];
/// Ranges smaller than a granule, inside pages: mapped range by range, each bounced.
const SUB_GRANULE: [(usize, usize, usize); 3] = [(0, 100, 200), (1, 8, 64), (2, 0, PAGE_SIZE)];
/// One range of 64 bytes: one IOVA granule, bounced.
const TINY: [(usize, usize, usize); 1] = [(0, 8, 64)];

pub(super) fn untrusted_device(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let _untrusted = Untrusted::new(edu.dev)?;
    let expected = expected_path().ok_or(EINVAL)?;
    // SAFETY: `edu.dev` is a valid `struct device`.
    let pool = unsafe { bindings::is_swiotlb_active(edu.dev.as_raw()) };
    match expected {
        DmaPath::Iova if pool_asked() => {
            check(pool, "a swiotlb pool with iommu=soft")?;
            round_trip(edu, outcome, 4, &MEETING, DmaPath::Iova, true)?;
            round_trip(edu, outcome, 3, &SUB_GRANULE, DmaPath::Iommu, true)?;
            round_trip(edu, outcome, 1, &TINY, DmaPath::Iova, true)?;
            space_round_trip(edu, outcome)
        }
        DmaPath::Iova => {
            check(!pool, "no swiotlb pool in 1 GiB without iommu=soft")?;
            refused(edu)
        }
        // An identity domain: the device is trusted with all memory anyway.
        DmaPath::Direct => {
            round_trip(edu, outcome, 4, &MEETING, DmaPath::Direct, false)?;
            round_trip(edu, outcome, 3, &SUB_GRANULE, DmaPath::Direct, false)
        }
        // No IOMMU, swiotlb=force: everything bounces, trusted or not.
        DmaPath::Bounce | DmaPath::Iommu => {
            round_trip(edu, outcome, 4, &MEETING, DmaPath::Bounce, true)?;
            round_trip(edu, outcome, 3, &SUB_GRANULE, DmaPath::Bounce, true)
        }
    }
}

/// Without bounce buffers, dma-iommu refuses to give an untrusted device a granule it would share
/// with other memory: such mappings and links fail, and leave nothing behind; whole granules
/// still map.
fn refused(edu: &Edu<'_>) -> Result {
    let used = swiotlb_used(edu.dev);
    for (pages, layout) in [(4, &MEETING[..]), (3, &SUB_GRANULE[..]), (1, &TINY[..])] {
        let mapping = DmaMapping::new(
            edu.dev,
            PageRanges::new(pages)?.with_ranges(layout)?,
            DataDirection::ToDevice,
            Attrs::default(),
            GFP_KERNEL,
        );
        check(
            mapping.err() == Some(ENOMEM),
            "no bounce buffers for an untrusted device: ENOMEM",
        )?;
    }
    let memory = PageRanges::new(1)?;
    let head = Phyr::new(memory.pages[0].phys_addr() + 100, 200)?;
    let mut space = IovaSpace::try_alloc(
        edu.dev,
        head.paddr(),
        head.size(),
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?
    .ok_or(EINVAL)?;
    // SAFETY: `memory` outlives `space`; the link is refused.
    let link = unsafe { space.link(0, slice::from_ref(&head)) };
    check(link == Err(ENOMEM), "a link that needs bouncing: ENOMEM")?;
    check(
        space.sync(0, head.size()) == Err(ENOENT),
        "nothing linked after the refusal",
    )?;
    drop(space);
    check(swiotlb_used(edu.dev) == used, "no swiotlb slot taken")?;
    let whole = DmaMapping::new(
        edu.dev,
        PageRanges::new(2)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check(whole.path() == DmaPath::Iova, "whole pages map untrusted")
}
