// SPDX-License-Identifier: GPL-2.0

//! KUnit tests of DMA mappings on a real device: QEMU's `edu` device, whose DMA engine copies
//! between memory and a 4 KiB buffer inside the device, behind whatever IOMMU the machine has.
//!
//! The test registers a driver for the device; its probe runs the test body with the bound
//! device. The body reports errors rather than asserting, since a KUnit assertion would end the
//! test thread inside the driver core.
//!
//! The expected DMA path comes from the kernel command line (`rust_dma_kunit.path=iova`,
//! `direct` or `bounce`), set by whoever boots the machine, independently of this code.

use super::*;
use crate::{
    device::Core,
    device_id::IdArray,
    dma::{
        iova::IovaSpace,
        phyr::list::PhyrPush, //
    },
    driver,
    io::Io,
    new_spinlock,
    num::casts::FromSafeCast,
    page::{
        Page,
        PAGE_SIZE, //
    },
    pci,
    sync::{
        aref::ARef,
        atomic::{
            Acquire,
            Atomic,
            Release, //
        },
    },
    time::{
        delay::fsleep,
        Delta, //
    },
};
use core::{
    ptr,
    slice, //
};

mod bounce;
mod faults;

const EDU_VENDOR: u16 = 0x1234;
const EDU_DEVICE: u16 = 0x11e8;
const EDU_BAR_SIZE: usize = 0x100;
const EDU_DMA_SRC: usize = 0x80;
const EDU_DMA_DST: usize = 0x88;
const EDU_DMA_COUNT: usize = 0x90;
const EDU_DMA_CMD: usize = 0x98;
const EDU_DMA_RUN: u32 = 1;
const EDU_DMA_TO_RAM: u32 = 2;
/// The device address of the DMA buffer inside the device.
const EDU_BUFFER: u32 = 0x40000;
const EDU_BUFFER_SIZE: usize = 4096;

/// The bound `edu` device and its registers.
struct Edu<'a> {
    dev: &'a Device<Bound>,
    bar: pci::Bar<'a, EDU_BAR_SIZE>,
    bar_start: bindings::resource_size_t,
}

impl Edu<'_> {
    /// Copies `len` bytes between the device's buffer and the DMA address `addr`.
    fn dma(&self, addr: u64, len: usize, to_ram: bool) -> Result {
        if len > EDU_BUFFER_SIZE {
            return Err(EINVAL);
        }
        // The PCI BAR takes 32-bit accesses, which set the whole 64-bit register.
        let addr = u32::try_from(addr).map_err(|_| ERANGE)?;
        let (src, dst) = if to_ram {
            (EDU_BUFFER, addr)
        } else {
            (addr, EDU_BUFFER)
        };
        self.bar.write32(src, EDU_DMA_SRC);
        self.bar.write32(dst, EDU_DMA_DST);
        // CAST: `len` is at most `EDU_BUFFER_SIZE`.
        self.bar.write32(len as u32, EDU_DMA_COUNT);
        let direction = if to_ram { EDU_DMA_TO_RAM } else { 0 };
        self.bar.write32(EDU_DMA_RUN | direction, EDU_DMA_CMD);
        // QEMU runs a transfer 100 ms (virtual time) after it is started.
        for _ in 0..300 {
            if self.bar.read32(EDU_DMA_CMD) & EDU_DMA_RUN == 0 {
                return Ok(());
            }
            fsleep(Delta::from_millis(10));
        }
        Err(ETIMEDOUT)
    }
}

/// What a test body leaves behind for the test after the device is unbound.
struct Outcome {
    body: fn(&Edu<'_>, &mut Outcome) -> Result,
    result: Result,
    /// A mapping kept alive past unbind.
    kept: Option<DevresDmaMapping<PageRanges>>,
    /// DMA addresses that must not translate once the device is unbound.
    dma_addrs: KVec<u64>,
    dev: Option<ARef<Device>>,
    /// The swiotlb slots in use when the device was bound.
    swiotlb_used: Option<i64>,
}

/// The outcome of the test that is running, while its driver is registered.
static OUTCOME: Atomic<*mut Outcome> = Atomic::new(ptr::null_mut());

struct EduTest;

// Not `pci_device_table!`: the kernel crate exports its statics, and a module alias is of no use
// to a test driver. QEMU's `edu` device has the class code 0x00ff00; probe checks its IDs.
static EDU_TABLE: IdArray<pci::DeviceId, (), 1> =
    IdArray::new([(pci::DeviceId::from_class(0x00ff00, 0xffff00), &())]);

impl pci::Driver for EduTest {
    type IdInfo = ();
    type Data<'bound> = ();
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &EDU_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        if pdev.vendor_id().as_raw() != EDU_VENDOR || pdev.device_id() != EDU_DEVICE {
            return Err(ENODEV);
        }
        let outcome = OUTCOME.load(Acquire);
        if outcome.is_null() {
            return Err(ENODEV);
        }
        // SAFETY: `with_edu` keeps the outcome alive and untouched while the driver is
        // registered, and probing runs in its thread.
        let outcome = unsafe { &mut *outcome };
        pdev.enable_device_mem()?;
        pdev.set_master();
        let edu = Edu {
            dev: pdev.as_ref(),
            bar: pdev.iomap_region_sized::<EDU_BAR_SIZE>(0, c"rust_dma_kunit")?,
            bar_start: pdev.resource_start(0)?,
        };
        outcome.dev = Some(edu.dev.into());
        outcome.swiotlb_used = swiotlb_used(edu.dev);
        outcome.result = (outcome.body)(&edu, outcome);
        Ok(())
    }
}

/// Binds the `edu` device, runs `body` with it, unbinds it, and returns what `body` returned.
fn with_edu(outcome: &mut Outcome) -> Result {
    outcome.result = Err(ENODEV);
    OUTCOME.store(ptr::from_mut(outcome), Release);
    let registration = KBox::pin_init(
        driver::Registration::<pci::Adapter<EduTest>>::new(
            c"rust_dma_kunit_edu",
            crate::module::this_module::<crate::LocalModule>(),
        ),
        GFP_KERNEL,
    );
    drop(registration);
    OUTCOME.store(ptr::null_mut(), Release);
    if let Err(e) = outcome.result {
        pr_err!("test body failed: {:?}\n", e);
    }
    outcome.result
}

impl Outcome {
    fn new(body: fn(&Edu<'_>, &mut Outcome) -> Result) -> Self {
        Self {
            body,
            result: Err(ENODEV),
            kept: None,
            dma_addrs: KVec::new(),
            dev: None,
            swiotlb_used: None,
        }
    }
}

/// Marks the running KUnit case as skipped.
fn skip() {
    // SAFETY: Called from a KUnit case, whose `struct kunit` lives as long as the case runs.
    unsafe {
        let test = bindings::kunit_get_current_test();
        if !test.is_null() {
            (*test).status = bindings::kunit_status_KUNIT_SKIPPED;
        }
    }
}

/// Logs a failed check and fails the test body.
fn check(ok: bool, what: &str) -> Result {
    if !ok {
        pr_err!("check failed: {}\n", what);
        return Err(EBADE);
    }
    Ok(())
}

/// The DMA path the kernel command line says this machine must take.
fn expected_path() -> Option<DmaPath> {
    // SAFETY: `saved_command_line` is set up early at boot and never changes afterwards.
    let line = unsafe { CStr::from_char_ptr(*ptr::addr_of!(bindings::saved_command_line)) };
    let line = line.to_str().ok()?;
    let value = line
        .split(' ')
        .find_map(|arg| arg.strip_prefix("rust_dma_kunit.path="))?;
    match value {
        "iova" => Some(DmaPath::Iova),
        "direct" => Some(DmaPath::Direct),
        "bounce" => Some(DmaPath::Bounce),
        _ => None,
    }
}

/// Memory of whole pages with ranges chosen by the test, possibly repeating a page, kept in a
/// plain array: mapped with one call to link them all (kernel buffers, with their encoded
/// lists, are linked in batches).
///
/// # Invariants
///
/// Every range of `ranges` is inside one of `pages`.
struct PageRanges {
    pages: KVec<Page>,
    ranges: KVec<Phyr>,
}

impl PageRanges {
    /// Allocates `count` pages, none right after the previous one, fills them with
    /// [`pattern`] as one buffer, and lists them one range per page.
    fn new(count: usize) -> Result<Self> {
        let mut pages = KVec::with_capacity(count, GFP_KERNEL)?;
        let mut ranges = KVec::new();
        let mut bytes = KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?;
        // Pages right after the previous one are set aside, so that every page is one range.
        let mut set_aside = KVec::new();
        for index in 0..count {
            let mut page = Page::alloc_page(GFP_KERNEL)?;
            while pages.last().is_some_and(|last: &Page| {
                page.phys_addr() == last.phys_addr() + u64::from_safe_cast(PAGE_SIZE)
            }) {
                set_aside.push(page, GFP_KERNEL)?;
                page = Page::alloc_page(GFP_KERNEL)?;
            }
            for (offset, byte) in bytes.iter_mut().enumerate() {
                *byte = pattern(index * PAGE_SIZE + offset);
            }
            // SAFETY: `bytes` holds `PAGE_SIZE` bytes.
            unsafe { page.write_raw(bytes.as_ptr(), 0, PAGE_SIZE)? };
            ranges.push(Phyr::new(page.phys_addr(), PAGE_SIZE)?, GFP_KERNEL)?;
            pages.push(page, GFP_KERNEL)?;
        }
        // INVARIANT: every range is one of the pages.
        Ok(Self { pages, ranges })
    }

    /// Replaces the ranges with `ranges`, given as (page index, offset, size).
    fn with_ranges(mut self, ranges: &[(usize, usize, usize)]) -> Result<Self> {
        let mut list = KVec::new();
        for &(index, offset, size) in ranges {
            let page = self.pages.get(index).ok_or(EINVAL)?;
            check(offset + size <= PAGE_SIZE, "range inside its page")?;
            list.push(
                Phyr::new(page.phys_addr() + u64::from_safe_cast(offset), size)?,
                GFP_KERNEL,
            )?;
        }
        // INVARIANT: every range is inside one of the pages, as checked above.
        self.ranges = list;
        Ok(self)
    }

    /// Reads the byte at `offset` into the concatenated ranges.
    fn byte_at(&self, offset: usize) -> Result<u8> {
        let mut start = 0;
        for range in self.ranges.ranges() {
            if offset < start + range.size() {
                let paddr = range.paddr() + u64::from_safe_cast(offset - start);
                let page = self
                    .pages
                    .iter()
                    .find(|page| page.phys_addr() == paddr & !(u64::from_safe_cast(PAGE_SIZE) - 1))
                    .ok_or(EINVAL)?;
                let mut byte = 0u8;
                // CAST: the offset inside a page fits in a `usize`.
                let in_page = (paddr % u64::from_safe_cast(PAGE_SIZE)) as usize;
                // SAFETY: `byte` is one writable byte.
                unsafe { page.read_raw(&mut byte, in_page, 1)? };
                return Ok(byte);
            }
            start += range.size();
        }
        Err(ERANGE)
    }
}

impl PhyrRanges for PageRanges {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }

    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        self.ranges.as_phys_vecs()
    }
}

// SAFETY: Every range is inside a page owned by `self` (type invariant), and the list is only
// replaced through `&mut self`, before any mapping borrows it.
unsafe impl DmaMemory for PageRanges {}

fn pattern(offset: usize) -> u8 {
    // CAST: keep the low byte of a mix of the offset.
    (offset.wrapping_mul(31) ^ (offset >> 9)) as u8
}

/// A zeroed vmalloc'ed buffer for the device to write into.
fn sink(len: usize) -> Result<KernelBuffer<VVec<u8>>> {
    KernelBuffer::new(VVec::from_elem(0u8, len, GFP_KERNEL)?, GFP_KERNEL)
}

/// Returns the DMA address of the byte at `offset` of a mapping and how many bytes from there
/// are DMA-contiguous.
fn dma_at(ranges: &[DmaRange], offset: usize) -> Result<(u64, usize)> {
    let mut start = 0;
    for range in ranges {
        if offset < start + range.size() {
            let inside = offset - start;
            return Ok((
                range.dma_addr() + u64::from_safe_cast(inside),
                range.size() - inside,
            ));
        }
        start += range.size();
    }
    Err(ERANGE)
}

/// The IOMMU domain of `dev`, if it has one that translates.
fn domain(dev: &Device) -> *mut bindings::iommu_domain {
    // SAFETY: `dev.as_raw()` is a valid `struct device`.
    unsafe { bindings::iommu_get_domain_for_dev(dev.as_raw()) }
}

fn iova_to_phys(dev: &Device, addr: u64) -> u64 {
    let domain = domain(dev);
    if domain.is_null() {
        return 0;
    }
    // SAFETY: `domain` is the live domain of `dev`.
    unsafe { bindings::iommu_iova_to_phys(domain, addr) }
}

/// Checks that the mapping took the expected path and that every page of every range reaches
/// the right physical page: through the IOMMU's page table for a translated path, at the same
/// address for the direct path, and inside swiotlb for the bounce path. Records the DMA
/// addresses checked.
fn check_mapping<S: DmaMemory>(
    dev: &Device<Bound>,
    mapping: &DmaMapping<'_, S>,
    outcome: &mut Outcome,
) -> Result {
    let expected = expected_path();
    check(
        expected.is_some(),
        "rust_dma_kunit.path= on the command line",
    )?;
    // Every memory of these tests meets on IOVA granules.
    check_mapping_on(dev, mapping, outcome, expected.ok_or(EINVAL)?)
}

/// Checks as [`check_mapping`] does that the mapping took the path `expected`.
fn check_mapping_on<S: DmaMemory>(
    dev: &Device<Bound>,
    mapping: &DmaMapping<'_, S>,
    outcome: &mut Outcome,
    expected: DmaPath,
) -> Result {
    let path = mapping.path();
    check(path == expected, "path of the machine")?;
    let ranges = mapping.dma_ranges();
    let mut offset = 0;
    // SAFETY: Only the list of ranges is read, not the mapped bytes.
    let memory = unsafe { mapping.memory() };
    for range in memory.ranges() {
        let mut inside = 0;
        while inside < range.size() {
            let (addr, _) = dma_at(ranges, offset + inside)?;
            let paddr = range.paddr() + u64::from_safe_cast(inside);
            match path {
                DmaPath::Iova | DmaPath::Iommu => check(
                    iova_to_phys(dev, addr) == paddr,
                    "IOVA translates to its page",
                )?,
                DmaPath::Direct => check(addr == paddr, "direct DMA address")?,
                DmaPath::Bounce => check(in_swiotlb(dev, addr), "bounced DMA address")?,
            }
            outcome.dma_addrs.push(addr, GFP_KERNEL)?;
            // CAST: the offset inside a page fits in a `usize`.
            let step = PAGE_SIZE - (paddr % u64::from_safe_cast(PAGE_SIZE)) as usize;
            inside += step.min(range.size() - inside);
        }
        offset += range.size();
    }
    check(offset == mapping.size(), "mapped size")
}

/// Whether the DMA address `addr` of `dev` is in a swiotlb pool.
fn in_swiotlb(dev: &Device<Bound>, addr: DmaAddress) -> bool {
    // SAFETY: `dev` is bound; the functions only compute an address and look it up.
    unsafe {
        let phys = bindings::dma_to_phys(dev.as_raw(), addr);
        !bindings::swiotlb_find_pool(dev.as_raw(), phys).is_null()
    }
}

/// Returns the number of slots in use in the swiotlb pool of `dev`, if it has one.
#[cfg(all(CONFIG_SWIOTLB, CONFIG_DEBUG_FS))]
fn swiotlb_used(dev: &Device) -> Option<i64> {
    // SAFETY: `dev.as_raw()` is a valid `struct device`; its swiotlb pool, if any, lives as long
    // as the system, and its counter is read atomically by a volatile read of the aligned word.
    unsafe {
        let mem = (*dev.as_raw()).dma_io_tlb_mem;
        (!mem.is_null()).then(|| ptr::read_volatile(&raw const (*mem).total_used.counter))
    }
}

#[cfg(not(all(CONFIG_SWIOTLB, CONFIG_DEBUG_FS)))]
fn swiotlb_used(_dev: &Device) -> Option<i64> {
    None
}

/// Checks that none of the recorded DMA addresses translates any more.
fn check_unmapped(outcome: &Outcome) -> Result {
    let dev = outcome.dev.as_ref().ok_or(ENODEV)?;
    for &addr in outcome.dma_addrs.iter() {
        check(iova_to_phys(dev, addr) == 0, "no translation after unmap")?;
    }
    Ok(())
}

/// Copies `len` bytes at `offset` of `src` through the device into `dst` at the same offset,
/// and checks them.
fn copy_through_device<S: DmaMemory>(
    edu: &Edu<'_>,
    src: &DmaMapping<'_, S>,
    src_byte: impl Fn(usize) -> Result<u8>,
    dst: &DmaMapping<'_, KernelBuffer<VVec<u8>>>,
    offset: usize,
    len: usize,
) -> Result {
    let (src_addr, src_len) = dma_at(src.dma_ranges(), offset)?;
    let (dst_addr, dst_len) = dma_at(dst.dma_ranges(), offset)?;
    let len = len.min(src_len).min(dst_len).min(EDU_BUFFER_SIZE);
    src.sync_for_device(offset, len)?;
    edu.dma(src_addr, len, false)?;
    edu.dma(dst_addr, len, true)?;
    // SAFETY: The device is idle: its transfers are done.
    let dst_memory = unsafe { dst.memory() };
    if dst.path() == DmaPath::Bounce {
        // The device wrote into the bounce buffer: the memory has not seen it yet.
        check(
            dst_memory[offset..offset + len]
                .iter()
                .all(|&byte| byte == 0),
            "bounced data stays in swiotlb until the sync",
        )?;
    }
    dst.sync_for_cpu(offset, len)?;
    for index in offset..offset + len {
        check(
            dst_memory[index] == src_byte(index)?,
            "data through the device",
        )?;
    }
    Ok(())
}

/// Maps `memory` and a sink of the same size, checks both mappings, and copies the chunks at
/// `offsets` through the device.
fn map_and_copy(
    edu: &Edu<'_>,
    outcome: &mut Outcome,
    memory: PageRanges,
    offsets: &[usize],
) -> Result {
    let src = DmaMapping::new(
        edu.dev,
        memory,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let dst = DmaMapping::new(
        edu.dev,
        sink(src.size())?,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &src, outcome)?;
    check_mapping(edu.dev, &dst, outcome)?;
    for &offset in offsets {
        copy_through_device(
            edu,
            &src,
            // SAFETY: The device only reads `src`.
            |at| unsafe { src.memory() }.byte_at(at),
            &dst,
            offset,
            PAGE_SIZE,
        )?;
    }
    Ok(())
}

fn one_page(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    map_and_copy(edu, outcome, PageRanges::new(1)?, &[0])
}

fn unaligned_first_range(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let memory = PageRanges::new(3)?.with_ranges(&[
        (0, 100, PAGE_SIZE - 100),
        (1, 0, PAGE_SIZE),
        (2, 0, 500),
    ])?;
    map_and_copy(
        edu,
        outcome,
        memory,
        &[0, PAGE_SIZE - 100, 2 * PAGE_SIZE - 100],
    )
}

fn scattered_pages(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    map_and_copy(
        edu,
        outcome,
        PageRanges::new(512)?,
        &[0, 255 * PAGE_SIZE, 511 * PAGE_SIZE],
    )?;
    // Scattered pages in an encoded list: linked in several batches of decoded ranges.
    let pages = Pages::new(PageRanges::new(100)?.pages, GFP_KERNEL)?;
    check(
        pages.ranges().count() == 100 && pages.as_phys_vecs().is_none(),
        "100 ranges in an encoded list",
    )?;
    let mapping = DmaMapping::new(
        edu.dev,
        pages,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &mapping, outcome)
}

fn huge_contiguous(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    const SIZE: usize = 2 << 20;
    let mut buffer = KVec::with_capacity(SIZE, GFP_KERNEL)?;
    for offset in 0..SIZE {
        buffer.push(pattern(offset), GFP_KERNEL)?;
    }
    let buffer = KernelBuffer::new(buffer, GFP_KERNEL)?;
    check(
        buffer.ranges().count() == 1,
        "kmalloc'ed memory is one range",
    )?;
    let src = DmaMapping::new(
        edu.dev,
        buffer,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let dst = DmaMapping::new(
        edu.dev,
        sink(SIZE)?,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &src, outcome)?;
    check_mapping(edu.dev, &dst, outcome)?;
    if src.path() == DmaPath::Iova {
        check(src.dma_ranges().len() == 1, "one DMA range")?;
        check(
            dst.dma_ranges().len() == 1,
            "one DMA range for the vmalloc'ed sink",
        )?;
    }
    for offset in [0, SIZE / 2 + 100, SIZE - PAGE_SIZE] {
        copy_through_device(
            edu,
            &src,
            // SAFETY: The device only reads `src`.
            |at| Ok(unsafe { src.memory() }[at]),
            &dst,
            offset,
            PAGE_SIZE,
        )?;
    }
    Ok(())
}

fn many_ranges(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    // 4096 ranges: 16 MiB of single pages, more than one page of list chunks.
    let mapping = DmaMapping::new(
        edu.dev,
        PageRanges::new(4096)?,
        DataDirection::Bidirectional,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &mapping, outcome)?;
    // SAFETY: Only the list of ranges is read.
    let memory = unsafe { mapping.memory() };
    check(memory.ranges().count() == 4096, "4096 ranges")?;
    let mut total = 0;
    let limits = SegmentLimits::new(EDU_BUFFER_SIZE, u64::MAX, 1)?;
    for segment in mapping.segments(limits) {
        check(
            segment.size() <= EDU_BUFFER_SIZE,
            "segments within the limit",
        )?;
        total += segment.size();
    }
    check(total == mapping.size(), "segments cover the mapping")?;

    // Byte ranges of the mapping, as a device taking it in several commands sees them.
    let ranges = mapping.dma_ranges();
    let size = mapping.size();
    for (offset, len) in [
        (0, size),
        (1, 1),
        (4095, 2),
        (5000, 3 * 4096 + 7),
        (size - 1, 1),
    ] {
        let mut at = offset;
        for part in mapping.dma_ranges_of(offset, len)? {
            let (addr, room) = dma_at(ranges, at)?;
            check(
                part.dma_addr() == addr,
                "a part starts at its byte's address",
            )?;
            check(part.size() <= room, "a part stays in its range")?;
            at += part.size();
        }
        check(at == offset + len, "the parts cover the byte range")?;
    }
    for (offset, len) in [(0, 0), (size, 1), (size - 1, 2), (usize::MAX, 2)] {
        check(
            mapping.dma_ranges_of(offset, len).err() == Some(ERANGE),
            "byte ranges outside the mapping are ERANGE",
        )?;
    }
    Ok(())
}

fn bad_requests(edu: &Edu<'_>, _outcome: &mut Outcome) -> Result {
    let empty = DmaMapping::new(
        edu.dev,
        sink(0)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    );
    check(empty.err() == Some(EINVAL), "empty memory: EINVAL")?;
    let none = DmaMapping::new(
        edu.dev,
        sink(16)?,
        DataDirection::None,
        Attrs::default(),
        GFP_KERNEL,
    );
    check(none.err() == Some(EINVAL), "DataDirection::None: EINVAL")?;
    let mmio_on_ram = DmaMapping::new(
        edu.dev,
        sink(16)?,
        DataDirection::ToDevice,
        attrs::DMA_ATTR_MMIO,
        GFP_KERNEL,
    );
    check(
        mmio_on_ram.err() == Some(EINVAL),
        "DMA_ATTR_MMIO on RAM: EINVAL",
    )?;
    // Attributes of allocations, and the bits a negation sets, are not streaming attributes.
    for bad in [
        !attrs::DMA_ATTR_MMIO,
        attrs::DMA_ATTR_WRITE_COMBINE,
        attrs::DMA_ATTR_FORCE_CONTIGUOUS,
        attrs::DMA_ATTR_NO_WARN | attrs::DMA_ATTR_ALLOC_SINGLE_PAGES,
    ] {
        let mapping = DmaMapping::new(edu.dev, sink(16)?, DataDirection::ToDevice, bad, GFP_KERNEL);
        check(
            mapping.err() == Some(EINVAL),
            "non-streaming attribute: EINVAL",
        )?;
        let space = IovaSpace::try_alloc(
            edu.dev,
            0,
            PAGE_SIZE,
            DataDirection::ToDevice,
            bad,
            GFP_KERNEL,
        );
        check(
            space.err() == Some(EINVAL),
            "non-streaming attribute for an IOVA space: EINVAL",
        )?;
    }
    let streaming = DmaMapping::new(
        edu.dev,
        sink(16)?,
        DataDirection::ToDevice,
        attrs::DMA_ATTR_NO_WARN | attrs::DMA_ATTR_WEAK_ORDERING | attrs::DMA_ATTR_SKIP_CPU_SYNC,
        GFP_KERNEL,
    );
    check(streaming.is_ok(), "streaming attributes map")?;
    let mapping = DmaMapping::new(
        edu.dev,
        sink(100)?,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check(
        mapping.sync_for_cpu(50, 51) == Err(ERANGE),
        "sync past the end: ERANGE",
    )?;
    check(
        mapping.sync_for_cpu(0, 0) == Err(ERANGE),
        "empty sync: ERANGE",
    )?;
    check(mapping.sync_for_cpu(0, 100).is_ok(), "sync of everything")
}

fn dma_mask(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let result = mask_limits(edu, outcome);
    set_mask(edu.dev, 64)?;
    result
}

/// Every path honours a 32-bit mask; behind an IOMMU, a 24-bit mask leaves 16 MiB of IOVA space,
/// which 20 MiB of mappings cannot fit in, and the failed attempt leaves nothing mapped.
fn mask_limits(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let repeat = |count: usize| -> Result<PageRanges> {
        let memory = PageRanges::new(1)?;
        let mut list = KVec::new();
        for _ in 0..count {
            list.push(
                Phyr::new(memory.pages[0].phys_addr(), PAGE_SIZE)?,
                GFP_KERNEL,
            )?;
        }
        Ok(PageRanges {
            pages: memory.pages,
            ranges: list,
        })
    };
    set_mask(edu.dev, 32)?;
    let mapping = DmaMapping::new(
        edu.dev,
        PageRanges::new(64)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &mapping, outcome)?;
    for range in mapping.dma_ranges() {
        check(range.end() <= 1 << 32, "DMA addresses under a 32-bit mask")?;
    }
    if expected_path() != Some(DmaPath::Iova) {
        return Ok(());
    }
    set_mask(edu.dev, 24)?;
    let too_big = DmaMapping::new(
        edu.dev,
        repeat(5 * 1024)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    );
    check(
        too_big.err() == Some(ENOMEM),
        "more than the mask allows: ENOMEM",
    )?;
    let half = DmaMapping::new(
        edu.dev,
        repeat(2048)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &half, outcome)
}

fn set_mask(dev: &Device<Bound>, bits: u32) -> Result {
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    // SAFETY: `dev` is bound; no other mapping of it is being made while the test body runs.
    to_result(unsafe { bindings::dma_set_mask_and_coherent(dev.as_raw(), mask) })
}

fn unbind_while_mapped(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let mapping = DmaMapping::new(
        edu.dev,
        PageRanges::new(16)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &mapping, outcome)?;
    // The mapping outlives the binding: the unbind must unmap it.
    outcome.kept = Some(mapping.into_devres()?);
    Ok(())
}

fn mmio_peer(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let mut ram = PhyrList::new();
    let page = Page::alloc_page(GFP_KERNEL)?;
    ram.push(Phyr::new(page.phys_addr(), PAGE_SIZE)?, GFP_KERNEL)?;
    // SAFETY: The list is rejected; nothing is mapped.
    let rejected = unsafe { MmioRanges::new(ram) };
    check(rejected.err() == Some(EINVAL), "RAM as MMIO: EINVAL")?;
    let mut bar = PhyrList::new();
    bar.push(Phyr::new(edu.bar_start, PAGE_SIZE)?, GFP_KERNEL)?;
    // SAFETY: The BAR stays assigned while the device is bound, for all of the test body.
    let bar = unsafe { MmioRanges::new(bar)? };
    match DmaMapping::new(
        edu.dev,
        bar,
        DataDirection::Bidirectional,
        Attrs::default(),
        GFP_KERNEL,
    ) {
        Ok(mapping) => check_mapping(edu.dev, &mapping, outcome),
        // Only where it would have to be bounced may MMIO fail to map.
        Err(e) => check(
            expected_path() == Some(DmaPath::Bounce) && (e == EPERM || e == ENOMEM),
            "MMIO maps unless it would be bounced",
        ),
    }
}

fn iova_rules(edu: &Edu<'_>, _outcome: &mut Outcome) -> Result {
    // Two single pages and two physically contiguous pages, linked as granules 0, 1 and 2..4 of
    // a space whose first link starts 100 bytes into a page.
    let memory = PageRanges::new(2)?;
    let pair = KVec::from_elem(0u8, 2 * PAGE_SIZE, GFP_KERNEL)?;
    let mut pair_ranges = PhyrList::new();
    pair.append_ranges(&mut pair_ranges, GFP_KERNEL)?;
    let pair_phys = pair_ranges.ranges().next().ok_or(EINVAL)?;
    check(
        pair_phys.size() == 2 * PAGE_SIZE,
        "an 8 KiB kmalloc buffer is one range",
    )?;
    let page = |index: usize, offset: usize, size: usize| {
        Phyr::new(
            memory.pages[index].phys_addr() + u64::from_safe_cast(offset),
            size,
        )
    };
    let Some(mut space) = IovaSpace::try_alloc(
        edu.dev,
        100,
        4 * PAGE_SIZE,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?
    else {
        return check(
            expected_path() != Some(DmaPath::Iova),
            "IOVA space behind an IOMMU",
        );
    };
    check(
        expected_path() == Some(DmaPath::Iova),
        "no IOVA space without translation",
    )?;
    let link = |space: &mut IovaSpace<'_>, offset, range: Result<Phyr>| -> Result {
        let range = range?;
        // SAFETY: `memory` and `pair` outlive `space`, which is dropped first.
        unsafe { space.link(offset, slice::from_ref(&range)) }
    };
    let (one, two) = (PAGE_SIZE - 100, 2 * PAGE_SIZE - 100);
    check(
        link(&mut space, 0, page(0, 0, 100)) == Err(EINVAL),
        "first link at another offset",
    )?;
    check(
        link(&mut space, one, page(1, 8, 64)) == Err(EINVAL),
        "link inside a granule",
    )?;
    check(
        link(&mut space, 0, page(0, 100, 1000)) == Err(EINVAL),
        "link ending in a granule",
    )?;
    check(
        link(&mut space, two, Ok(pair_phys)).is_ok(),
        "link of two granules",
    )?;
    check(
        link(&mut space, two + PAGE_SIZE, page(1, 0, 2 * PAGE_SIZE)) == Err(ERANGE),
        "past the end",
    )?;
    link(&mut space, 0, page(0, 100, PAGE_SIZE - 100))?;
    check(
        link(&mut space, 0, page(0, 100, PAGE_SIZE - 100)) == Err(EBUSY),
        "overlap",
    )?;
    check(
        space.sync(one, PAGE_SIZE) == Err(ENOENT),
        "no DMA range for bytes not linked",
    )?;
    link(&mut space, one, page(1, 0, PAGE_SIZE))?;
    check(
        space.sync(0, space.size()) == Err(ENOENT),
        "no DMA range for the unlinked end of the space",
    )?;
    let all = space.sync(0, two + 2 * PAGE_SIZE)?;
    let first = space.sync(0, one)?;
    let middle = space.sync(one, PAGE_SIZE)?;
    let pair = space.sync(two, 2 * PAGE_SIZE)?;
    check(
        first.dma_addr() == all.dma_addr() && middle.dma_addr() == first.end(),
        "links are contiguous",
    )?;
    check(pair.end() == all.end(), "the pair ends the linked bytes")?;
    check(
        iova_to_phys(edu.dev, first.dma_addr()) == page(0, 100, 1)?.paddr(),
        "translation",
    )?;
    check(
        space.unlink(one, 10) == Err(EINVAL),
        "unlink cutting a link",
    )?;
    check(
        space.unlink(two, PAGE_SIZE) == Err(EINVAL),
        "unlink of a link's first half",
    )?;
    check(
        space.unlink(two + PAGE_SIZE, PAGE_SIZE) == Err(EINVAL),
        "unlink of its second half",
    )?;
    space.unlink(one, PAGE_SIZE)?;
    check(
        iova_to_phys(edu.dev, middle.dma_addr()) == 0,
        "unlinked range no longer translates",
    )?;
    check(
        space.unlink(one, PAGE_SIZE) == Err(ENOENT),
        "unlinking twice",
    )?;
    // The device reads the first link through the IOMMU and writes it back into a sink.
    let sink = DmaMapping::new(
        edu.dev,
        sink(64)?,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let (sink_addr, _) = dma_at(sink.dma_ranges(), 0)?;
    edu.dma(first.dma_addr(), 64, false)?;
    edu.dma(sink_addr, 64, true)?;
    sink.sync_for_cpu(0, 64)?;
    // SAFETY: The device is done writing the sink.
    let sink_bytes = unsafe { sink.memory() };
    for (index, &byte) in sink_bytes.iter().enumerate() {
        check(
            byte == memory.byte_at(100 + index)?,
            "data read through a link",
        )?;
    }
    let (first_addr, pair_addr) = (first.dma_addr(), pair.dma_addr());
    drop(space);
    check(
        iova_to_phys(edu.dev, first_addr) == 0,
        "drop unlinks the first link",
    )?;
    check(
        iova_to_phys(edu.dev, pair_addr) == 0,
        "drop unlinks the two-granule link",
    )?;
    link_list(edu, &memory)
}

/// Links a list of ranges in one call: every range is a link of its own.
fn link_list(edu: &Edu<'_>, memory: &PageRanges) -> Result {
    let page = |index: usize, offset: usize, size: usize| {
        Phyr::new(
            memory.pages[index].phys_addr() + u64::from_safe_cast(offset),
            size,
        )
    };
    let mut space = IovaSpace::try_alloc(
        edu.dev,
        0,
        2 * PAGE_SIZE,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?
    .ok_or(EINVAL)?;
    let good = [page(0, 0, PAGE_SIZE)?, page(1, 0, PAGE_SIZE)?];
    let bad = [page(0, 0, PAGE_SIZE)?, page(1, 8, 64)?];
    // SAFETY: `memory` outlives `space`; the calls below either fail or link its pages.
    unsafe {
        check(space.link(0, &[]) == Err(EINVAL), "empty list")?;
        check(
            space.link(0, &bad) == Err(EINVAL),
            "a range of the list breaking a rule",
        )?;
        check(
            space.sync(0, PAGE_SIZE) == Err(ENOENT),
            "nothing of a rejected list linked",
        )?;
        space.link(0, &good)?;
    }
    let all = space.sync(0, 2 * PAGE_SIZE)?;
    for (index, range) in good.iter().enumerate() {
        check(
            iova_to_phys(
                edu.dev,
                all.dma_addr() + u64::from_safe_cast(index * PAGE_SIZE),
            ) == range.paddr(),
            "every range of the list translates",
        )?;
    }
    // Each range is a link: the second can go alone.
    space.unlink(PAGE_SIZE, PAGE_SIZE)?;
    check(
        iova_to_phys(edu.dev, all.dma_addr() + u64::from_safe_cast(PAGE_SIZE)) == 0,
        "the unlinked range no longer translates",
    )?;
    check(
        iova_to_phys(edu.dev, all.dma_addr()) == good[0].paddr(),
        "the other range stays linked",
    )
}

/// Memory the caller keeps: borrowed by the mappings, usable again once they are dropped.
fn borrowed_memory(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    const PAGES: usize = 16;
    let memory = PageRanges::new(PAGES)?;
    let mut sink_buffer = sink(PAGES * PAGE_SIZE)?;
    {
        let src = DmaMapping::new(
            edu.dev,
            &memory,
            DataDirection::ToDevice,
            Attrs::default(),
            GFP_KERNEL,
        )?;
        let written = DmaMapping::new(
            edu.dev,
            &memory,
            DataDirection::FromDevice,
            Attrs::default(),
            GFP_KERNEL,
        );
        check(
            written.err() == Some(EINVAL),
            "a shared borrow is only read by the device",
        )?;
        let dst = DmaMapping::new(
            edu.dev,
            &mut sink_buffer,
            DataDirection::FromDevice,
            Attrs::default(),
            GFP_KERNEL,
        )?;
        check_mapping(edu.dev, &src, outcome)?;
        check_mapping(edu.dev, &dst, outcome)?;
        for offset in [0, (PAGES - 1) * PAGE_SIZE] {
            let (src_addr, _) = dma_at(src.dma_ranges(), offset)?;
            let (dst_addr, _) = dma_at(dst.dma_ranges(), offset)?;
            edu.dma(src_addr, PAGE_SIZE, false)?;
            edu.dma(dst_addr, PAGE_SIZE, true)?;
            dst.sync_for_cpu(offset, PAGE_SIZE)?;
        }
    }
    // The mappings are gone, and with them the borrows: the CPU owns the memory again.
    for offset in [0, (PAGES - 1) * PAGE_SIZE] {
        for index in offset..offset + PAGE_SIZE {
            check(
                sink_buffer[index] == memory.byte_at(index)?,
                "data through a borrowed mapping",
            )?;
        }
    }
    // Shared ownership: two mappings of the same memory at once, both read-only.
    let shared = Arc::new(memory, GFP_KERNEL)?;
    let first = DmaMapping::new(
        edu.dev,
        shared.clone(),
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let second = DmaMapping::new(
        edu.dev,
        shared.clone(),
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    check_mapping(edu.dev, &first, outcome)?;
    check_mapping(edu.dev, &second, outcome)?;
    let shared_written = DmaMapping::new(
        edu.dev,
        shared,
        DataDirection::Bidirectional,
        Attrs::default(),
        GFP_KERNEL,
    );
    check(
        shared_written.err() == Some(EINVAL),
        "shared memory is only read by the device",
    )
}

/// Maps and unmaps on every path with a spinlock held: nothing may sleep (the test kernel has
/// `CONFIG_DEBUG_ATOMIC_SLEEP` and lockdep, and the boot's kernel log is checked).
fn atomic_context(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let lock = KBox::pin_init(new_spinlock!(0usize), GFP_KERNEL)?;
    let pages = PageRanges::new(64)?;
    // Ranges that do not meet on IOVA granules: range by range, with lists of DMA ranges.
    let mut unaligned =
        PageRanges::new(3)?.with_ranges(&[(0, 100, 200), (1, 8, 64), (2, 0, PAGE_SIZE)])?;
    let mut guard = lock.lock();
    let linked = DmaMapping::new(
        edu.dev,
        &pages,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_ATOMIC,
    )?;
    let each = DmaMapping::new(
        edu.dev,
        &mut unaligned,
        DataDirection::Bidirectional,
        Attrs::default(),
        GFP_NOWAIT,
    )?;
    *guard += linked.dma_ranges().len() + each.dma_ranges().len();
    drop(guard);
    check_mapping(edu.dev, &linked, outcome)?;
    let expected_each = match expected_path() {
        Some(DmaPath::Iova) => DmaPath::Iommu,
        path => path.ok_or(EINVAL)?,
    };
    check(
        each.path() == expected_each,
        "unaligned ranges go range by range",
    )?;
    for range in each.dma_ranges() {
        outcome.dma_addrs.push(range.dma_addr(), GFP_KERNEL)?;
    }
    let guard = lock.lock();
    drop(linked);
    drop(each);
    drop(guard);
    Ok(())
}

/// The segment limits and the optimal mapping size come from the device.
fn device_limits(edu: &Edu<'_>, _outcome: &mut Outcome) -> Result {
    let opt = opt_mapping_size(edu.dev);
    // SAFETY: `edu.dev` is bound.
    let max = unsafe { bindings::dma_max_mapping_size(edu.dev.as_raw()) };
    check(opt > 0 && opt <= max, "optimal size within the maximum")?;
    // SAFETY: `edu.dev` is bound; no mapping is being made meanwhile.
    let original = unsafe { bindings::dma_get_max_seg_size(edu.dev.as_raw()) };
    // SAFETY: As above.
    unsafe { bindings::dma_set_max_seg_size(edu.dev.as_raw(), 2 * 4096) };
    let limits = segment_limits(edu.dev, PAGE_SIZE);
    // SAFETY: As above.
    unsafe { bindings::dma_set_max_seg_size(edu.dev.as_raw(), original) };
    let mapping = DmaMapping::new(
        edu.dev,
        sink(16 * PAGE_SIZE + 100)?,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let mut total = 0;
    for segment in mapping.segments(limits?) {
        check(
            segment.size() <= 8192,
            "segments of the device's maximum size",
        )?;
        total += segment.size();
    }
    check(total == mapping.size(), "segments cover the mapping")?;
    check(
        segment_limits(edu.dev, 3).err() == Some(EINVAL),
        "a granule that is not a power of two",
    )
}

#[kunit_tests(rust_kernel_dma_map)]
mod cases {
    use super::*;

    /// Runs `body` with the `edu` device bound, then checks that nothing it mapped behind an
    /// IOMMU still translates. Skipped on a machine without the device or without
    /// `rust_dma_kunit.path=`.
    /// Runs the body of `outcome` with the `edu` device bound, then checks that nothing it
    /// mapped behind an IOMMU still translates. Skipped on a machine without the device or
    /// without `rust_dma_kunit.path=`.
    fn run_case(outcome: &mut Outcome) -> Result {
        if expected_path().is_none() {
            skip();
            return Ok(());
        }
        let result = with_edu(outcome);
        if outcome.dev.is_none() {
            skip();
            return Ok(());
        }
        result?;
        let dev = outcome.dev.as_ref().ok_or(ENODEV)?;
        check(
            swiotlb_used(dev) == outcome.swiotlb_used,
            "swiotlb slots all given back",
        )?;
        if expected_path() == Some(DmaPath::Iova) {
            check_unmapped(outcome)?;
        }
        Ok(())
    }

    fn case(body: fn(&Edu<'_>, &mut Outcome) -> Result) -> Result {
        run_case(&mut Outcome::new(body))
    }

    #[test]
    fn map_one_page() {
        assert_eq!(case(one_page), Ok(()));
    }

    #[test]
    fn map_unaligned_first_range() {
        assert_eq!(case(unaligned_first_range), Ok(()));
    }

    #[test]
    fn map_scattered_pages() {
        assert_eq!(case(scattered_pages), Ok(()));
    }

    #[test]
    fn map_huge_contiguous_range() {
        assert_eq!(case(huge_contiguous), Ok(()));
    }

    #[test]
    fn map_many_ranges() {
        assert_eq!(case(many_ranges), Ok(()));
    }

    #[test]
    fn map_bad_requests() {
        assert_eq!(case(bad_requests), Ok(()));
    }

    #[test]
    fn map_under_the_dma_mask() {
        assert_eq!(case(dma_mask), Ok(()));
    }

    #[test]
    fn map_mmio_peer_memory() {
        assert_eq!(case(mmio_peer), Ok(()));
    }

    #[test]
    fn iova_space_rules() {
        assert_eq!(case(iova_rules), Ok(()));
    }

    #[test]
    fn map_borrowed_memory() {
        assert_eq!(case(borrowed_memory), Ok(()));
    }

    #[test]
    fn map_and_unmap_under_a_spinlock() {
        assert_eq!(case(atomic_context), Ok(()));
    }

    #[test]
    fn limits_of_the_device() {
        assert_eq!(case(device_limits), Ok(()));
    }

    #[test]
    fn map_for_an_untrusted_device() {
        assert_eq!(case(bounce::untrusted_device), Ok(()));
    }

    #[test]
    fn allocation_failures() {
        assert_eq!(case(faults::injected_failures), Ok(()));
    }

    #[test]
    fn unmap_at_unbind() {
        // The mapping outlives the binding: the unbind unmapped it, and its drop now does not.
        let mut outcome = Outcome::new(unbind_while_mapped);
        assert_eq!(run_case(&mut outcome), Ok(()));
        if let Some(kept) = outcome.kept.take() {
            assert!(kept.try_access().is_none());
        }
    }
}
