// SPDX-License-Identifier: GPL-2.0

//! Injected allocation failures at every allocation of the range lists, the mappings and the IOVA
//! spaces, with the task's fail-nth counter (what `/proc/self/fail-nth` sets): the nth
//! fault-injection point the task reaches fails. Each operation runs with the first, second, ...
//! point failing until it runs through without reaching the point.
//!
//! failslab and fail_page_alloc leave alone, by default, allocations that may reclaim, so the
//! operations get `GFP_NOWAIT` (which also keeps the injected failures out of the kernel log),
//! as a driver mapping under a lock gives them.

use super::*;
use crate::task::Task;

/// Fault-injection points an operation may reach before it must run through (virtio-iommu
/// allocates twice for each range it maps).
const MAX_FAULTS: u32 = 256;

/// Sets the fail-nth counter of the current task.
fn set_fail_nth(nth: u32) {
    // SAFETY: The current task is alive while it runs; only it changes its own counter here,
    // and fault injection reads it with `READ_ONCE()`.
    unsafe { ptr::write_volatile(&raw mut (*Task::current_raw()).fail_nth, nth) }
}

/// Returns the fail-nth counter of the current task: zero once the point it named failed.
fn fail_nth() -> u32 {
    // SAFETY: As in `set_fail_nth`.
    unsafe { ptr::read_volatile(&raw const (*Task::current_raw()).fail_nth) }
}

/// Keeps the injected failures out of the kernel log while it lives, as writing 0 to `verbose`
/// in the debugfs directories of failslab and fail_page_alloc does: the IOMMU drivers allocate
/// with `GFP_ATOMIC` and no `__GFP_NOWARN`, and each report of theirs dumps the stack, which
/// reads as a crash in the log.
struct QuietFaults {
    /// Each `verbose` setting and its former value.
    knobs: KVec<(*mut crate::ffi::c_ulong, crate::ffi::c_ulong)>,
}

impl QuietFaults {
    fn new() -> Result<Self> {
        let mut quiet = Self {
            knobs: KVec::with_capacity(2, GFP_KERNEL)?,
        };
        for dir in [c"failslab", c"fail_page_alloc"] {
            let knob = verbose_setting(dir)?;
            // SAFETY: `knob` is the setting of a fault attribute, a static that lives as long as
            // the system; fault injection reads it racily, as when debugfs writes it.
            let was = unsafe { ptr::replace(knob, 0) };
            // There is room for both settings.
            quiet
                .knobs
                .push_within_capacity((knob, was))
                .map_err(|_| ENOMEM)?;
        }
        Ok(quiet)
    }
}

impl Drop for QuietFaults {
    fn drop(&mut self) {
        for &(knob, was) in self.knobs.iter() {
            // SAFETY: As in `QuietFaults::new`.
            unsafe { ptr::write_volatile(knob, was) };
        }
    }
}

/// Returns the `verbose` setting of the fault attribute whose debugfs directory is `dir`.
fn verbose_setting(dir: &CStr) -> Result<*mut crate::ffi::c_ulong> {
    // SAFETY: `dir` is a NUL-terminated string; a NULL parent is the debugfs root.
    let dir = unsafe { bindings::debugfs_lookup(dir.as_char_ptr(), ptr::null_mut()) };
    check(!dir.is_null(), "fault injection in debugfs")?;
    // SAFETY: `dir` is a directory of debugfs, referenced until the `dput()` below.
    let file = unsafe { bindings::debugfs_lookup(c"verbose".as_char_ptr(), dir) };
    let knob = (!file.is_null()).then(|| {
        // SAFETY: `file` is the positive dentry of a file `debugfs_create_ul()` made, whose
        // inode's private data is the address of the `unsigned long` it shows.
        let knob = unsafe { (*(*file).d_inode).i_private.cast() };
        // SAFETY: `debugfs_lookup()` took a reference on `file`.
        unsafe { bindings::dput(file) };
        knob
    });
    // SAFETY: `debugfs_lookup()` took a reference on `dir`.
    unsafe { bindings::dput(dir) };
    knob.ok_or(ENOENT)
}

/// How many faults were injected into an operation, and how many of them it returned as errors
/// (the others it recovered from).
struct Injected {
    faults: u32,
    errors: u32,
}

/// Runs `op` with its first, second, ... fault-injection point failing, until it no longer
/// reaches the point; `judge` checks each outcome of a run that had a fault injected, and returns
/// whether the fault made the operation fail. The run without a fault must succeed.
fn fail_each<T>(
    what: &str,
    mut op: impl FnMut() -> Result<T>,
    mut judge: impl FnMut(Result<T>) -> Result<bool>,
) -> Result<Injected> {
    let mut injected = Injected {
        faults: 0,
        errors: 0,
    };
    for nth in 1..=MAX_FAULTS {
        set_fail_nth(nth);
        let result = op();
        let reached = fail_nth() == 0;
        set_fail_nth(0);
        if !reached {
            check(result.is_ok(), "succeeds without an injected fault")?;
            pr_info!(
                "{}: {} faults injected, {} returned as errors\n",
                what,
                injected.faults,
                injected.errors
            );
            return Ok(injected);
        }
        injected.faults += 1;
        if judge(result)? {
            injected.errors += 1;
        }
    }
    pr_err!("{}: still failing after {} faults\n", what, MAX_FAULTS);
    Err(EBADE)
}

/// Moves a page's first 64 bytes through the device and checks them: it still works.
fn device_works(edu: &Edu<'_>) -> Result {
    let src = DmaMapping::new(
        edu.dev,
        PageRanges::new(1)?,
        DataDirection::ToDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let dst = DmaMapping::new(
        edu.dev,
        sink(64)?,
        DataDirection::FromDevice,
        Attrs::default(),
        GFP_KERNEL,
    )?;
    let (src_addr, _) = dma_at(src.dma_ranges(), 0)?;
    let (dst_addr, _) = dma_at(dst.dma_ranges(), 0)?;
    src.sync_for_device(0, 64)?;
    edu.dma(src_addr, 64, false)?;
    edu.dma(dst_addr, 64, true)?;
    dst.sync_for_cpu(0, 64)?;
    // SAFETY: The device is done writing the sink.
    let bytes = unsafe { dst.memory() };
    for (index, &byte) in bytes.iter().enumerate() {
        check(byte == pattern(index), "the device works after a failure")?;
    }
    Ok(())
}

/// A failed operation returned `ENOMEM`, left the swiotlb slots as they were (`used`), and the
/// device works.
fn failed_cleanly(edu: &Edu<'_>, error: Error, used: Option<i64>) -> Result<bool> {
    check(error == ENOMEM, "an injected failure is ENOMEM")?;
    check(swiotlb_used(edu.dev) == used, "no swiotlb slot kept")?;
    device_works(edu)?;
    Ok(true)
}

/// Ranges that merge with none of the others: each takes one word of the list.
fn lone_range(index: usize) -> Result<Phyr> {
    Phyr::new(u64::from_safe_cast((2 * index + 1) * PAGE_SIZE), PAGE_SIZE)
}

/// Pushes 2000 ranges, four chunks of the list and a growing vector of chunks: a failed push
/// returns `ENOMEM` and leaves the list as it was, which then takes the range.
fn list_growth() -> Result<Injected> {
    const RANGES: usize = 2000;
    let mut ranges = KVec::with_capacity(RANGES, GFP_KERNEL)?;
    for index in 0..RANGES {
        ranges.push(lone_range(index)?, GFP_KERNEL)?;
    }
    let push_all = || {
        let mut list = PhyrList::new();
        for (pushed, &range) in ranges.iter().enumerate() {
            if let Err(e) = list.push(range, GFP_NOWAIT) {
                return Ok((list, pushed, Err(e)));
            }
        }
        Ok((list, RANGES, Ok(())))
    };
    let injected = fail_each("PhyrList::push", push_all, |outcome: Result<_>| {
        let (mut list, pushed, result) = outcome?;
        check(
            list.ranges().eq(ranges.iter().copied().take(pushed)),
            "the list holds the ranges pushed before",
        )?;
        let Err(e) = result else {
            return check(pushed == RANGES, "every range pushed").map(|()| false);
        };
        check(e == ENOMEM, "a failed push is ENOMEM")?;
        list.push(ranges[pushed], GFP_KERNEL)?;
        check(
            list.ranges().eq(ranges.iter().copied().take(pushed + 1)),
            "the list takes the range after the failure",
        )?;
        Ok(true)
    })?;
    // Each growth allocates; a debug kernel absorbs some failures (fallbacks of its own
    // allocations: 8 faults, 6 errors with KASAN), which the closure checked as complete pushes.
    check(
        injected.faults > 4 && injected.errors > 0,
        "the allocations of the list growth fail the push",
    )?;
    Ok(injected)
}

/// Maps memory of `pages` pages with `layout` on the machine's per-range path (when the ranges do
/// not meet on granules) or on its path for whole pages, with allocation failures injected.
/// Returns the faults injected.
///
/// The memory is allocated once, outside the injections, and mapped for the device to read:
/// DMA-API debugging tracks the cachelines of memory a device may write in a radix tree that it
/// grows with `GFP_ATOMIC`, and turns itself off for good when that fails.
fn mapping(
    edu: &Edu<'_>,
    outcome: &mut Outcome,
    what: &str,
    pages: usize,
    layout: Option<&[(usize, usize, usize)]>,
    path: DmaPath,
) -> Result<Injected> {
    let used = swiotlb_used(edu.dev);
    let mut memory = PageRanges::new(pages)?;
    if let Some(layout) = layout {
        memory = memory.with_ranges(layout)?;
    }
    let memory = Arc::new(memory, GFP_KERNEL)?;
    let map = || {
        DmaMapping::new(
            edu.dev,
            memory.clone(),
            DataDirection::ToDevice,
            Attrs::default(),
            GFP_NOWAIT,
        )
    };
    fail_each(what, map, |result| match result {
        Err(e) => failed_cleanly(edu, e, used),
        Ok(mapping) => {
            check_mapping_on(edu.dev, &mapping, outcome, path)?;
            drop(mapping);
            check(swiotlb_used(edu.dev) == used, "no swiotlb slot kept")?;
            Ok(false)
        }
    })
}

/// Allocates an IOVA space of 80 granules (bitmaps too long to be inline) with allocation
/// failures injected. Returns the faults injected.
fn space(edu: &Edu<'_>) -> Result<Injected> {
    let used = swiotlb_used(edu.dev);
    let alloc = || {
        IovaSpace::try_alloc(
            edu.dev,
            0,
            80 * PAGE_SIZE,
            DataDirection::ToDevice,
            Attrs::default(),
            GFP_NOWAIT,
        )
    };
    let injected = fail_each("IovaSpace::try_alloc", alloc, |result| match result {
        Err(e) => failed_cleanly(edu, e, used),
        Ok(space) => {
            check(space.is_some(), "an IOVA space after a recovered failure").map(|()| false)
        }
    })?;
    let iova = expected_path() == Some(DmaPath::Iova);
    check(
        alloc()?.is_some() == iova,
        "an IOVA space exactly behind a translating IOMMU",
    )?;
    // Without translation, `try_alloc` allocates nothing.
    check(
        if iova {
            (1..=2).contains(&injected.errors)
        } else {
            injected.faults == 0
        },
        "the bitmap allocations of the space fail it",
    )?;
    Ok(injected)
}

pub(super) fn injected_failures(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    // A failed IOVA allocation under a 64-bit mask makes dma-iommu stop trying under 4 GiB first
    // for the device (its 32-bit workaround), out of reach of the edu device's 32-bit registers.
    set_mask(edu.dev, 32)?;
    let quiet = QuietFaults::new();
    let result = quiet.and_then(|_quiet| every_allocation(edu, outcome));
    set_mask(edu.dev, 64)?;
    result?;
    device_works(edu)
}

fn every_allocation(edu: &Edu<'_>, outcome: &mut Outcome) -> Result {
    let expected = expected_path().ok_or(EINVAL)?;
    list_growth()?;
    // Ranges inside pages: range by range on every machine, with two lists of DMA ranges.
    let per_range = if expected == DmaPath::Iova {
        DmaPath::Iommu
    } else {
        expected
    };
    let each = mapping(
        edu,
        outcome,
        "DmaMapping::new range by range",
        3,
        Some(&[(0, 100, 200), (1, 8, 64), (2, 0, PAGE_SIZE)]),
        per_range,
    )?;
    // A debug kernel absorbs some injected failures (fallbacks of its own allocations).
    check(each.errors >= 1, "the lists of DMA ranges fail the mapping")?;
    // 33 whole pages: more than the IOVA caches keep (32), so behind an IOMMU the IOVA is
    // allocated from the tree (dma-iommu retries a failed allocation once, after freeing the
    // cached ranges: the mapping recovers), and the IOMMU driver may allocate for its page
    // table or its requests (virtio-iommu does, and its failures are returned).
    let whole = mapping(
        edu,
        outcome,
        "DmaMapping::new whole pages",
        33,
        None,
        expected,
    )?;
    check(
        if expected == DmaPath::Iova {
            whole.faults >= 1
        } else {
            whole.errors >= 1
        },
        "the IOVA allocation, or each list of DMA ranges, reached",
    )?;
    space(edu)?;
    Ok(())
}
