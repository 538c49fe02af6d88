// SPDX-License-Identifier: GPL-2.0

//! Rust DMA mapping benchmark.
//!
//! Binds QEMU's `pci-testdev`. At probe, allocates the memory of every case and lists its
//! physical ranges once; every mode then maps exactly these ranges of this memory, so that the
//! modes compare like with like:
//!
//! - `sg`: `dma_map_sgtable()` and `dma_unmap_sgtable()` of a scatterlist built at probe, one
//!   entry per range;
//! - `c-iova`: the C two-step API as a C driver calls it: `dma_iova_try_alloc()` for the total
//!   size, `dma_iova_link()` per range, one `dma_iova_sync()`, then `dma_iova_destroy()`;
//! - `rust`: a [`DmaMapping`] of the borrowed memory, dropped right away;
//! - `rust-devres`: a [`DmaMapping`] of an [`Arc`] of the memory made device-managed with
//!   [`DmaMapping::into_devres`], dropped right away.
//!
//! Writing `CASE MODE ITERATIONS [steps]` to `rust_dma_bench/run` in debugfs maps and unmaps
//! the memory of the case ITERATIONS times, in the writing process; reading the file gives the
//! result, one line of `key=value` fields. Without `steps` only the whole loop is timed, so that
//! the time per map+unmap carries no timestamp; with `steps`, every step is timed on its own.

use kernel::{
    bindings,
    debugfs::{
        Dir,
        File, //
    },
    device::{
        Bound,
        Core,
        Device, //
    },
    dma::{
        map::{
            DmaMapping,
            DmaMemory,
            DmaPath, //
        },
        phyr::{
            list::PhyrRanges,
            source::PhyrSource,
            Phyr, //
        },
        Attrs,
        DataDirection,
        Device as _,
        DmaMask, //
    },
    error::to_result,
    fmt,
    new_mutex,
    num::casts::FromSafeCast,
    page::{
        Page,
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    pci,
    prelude::*,
    sizes::{
        SZ_2M,
        SZ_4M, //
    },
    sync::{
        aref::ARef,
        Arc,
        Mutex, //
    },
    time::{
        Instant,
        Monotonic, //
    },
    types::Opaque,
    uaccess::UserSliceReader, //
};

/// How the memory of a case is allocated.
#[derive(Clone, Copy)]
enum Layout {
    /// Single pages, none physically right after the previous one: one range per page.
    Scattered,
    /// Physically contiguous pages, in kmalloc'ed buffers of at most 4 MiB.
    Adjacent,
    /// One kmalloc'ed buffer.
    Contiguous,
}

/// The cases: name, layout and size in pages.
const CASES: [(&str, Layout, usize); 8] = [
    ("1-scattered", Layout::Scattered, 1),
    ("16-scattered", Layout::Scattered, 16),
    ("512-scattered", Layout::Scattered, 512),
    ("4096-scattered", Layout::Scattered, 4096),
    ("16-adjacent", Layout::Adjacent, 16),
    ("512-adjacent", Layout::Adjacent, 512),
    ("4096-adjacent", Layout::Adjacent, 4096),
    ("2M-contiguous", Layout::Contiguous, SZ_2M / PAGE_SIZE),
];

/// Returns the `struct device` of `dev`, for calling the C API directly as a C driver would:
/// `Device::as_raw()` is private to the kernel crate.
fn raw_device(dev: &Device<Bound>) -> *mut bindings::device {
    // CAST: `Device` is a transparent wrapper of `struct device`, the correspondence that
    // `Device::from_raw()` relies on the other way round.
    core::ptr::from_ref(dev).cast_mut().cast()
}

/// The memory of one case, with its physical ranges listed once at probe.
///
/// # Invariants
///
/// `ranges` are the physical ranges of the pages `_pages` and of the contents of the buffers
/// `_buffers`, which are owned here and never accessed.
struct Memory {
    ranges: KVec<Phyr>,
    _pages: KVec<Page>,
    _buffers: KVec<KVec<u8>>,
}

impl Memory {
    /// Allocates `count` pages, none physically right after the previous one.
    fn scattered(count: usize) -> Result<Self> {
        let mut pages = KVec::with_capacity(count, GFP_KERNEL)?;
        // Pages that would continue the previous one, freed once the list is complete.
        let mut set_aside = KVec::new();
        while pages.len() < count {
            let page = Page::alloc_page(GFP_KERNEL)?;
            let next_to_last = pages.last().is_some_and(|last: &Page| {
                page.phys_addr() == last.phys_addr() + u64::from_safe_cast(PAGE_SIZE)
            });
            if next_to_last {
                set_aside.push(page, GFP_KERNEL)?;
            } else {
                pages.push(page, GFP_KERNEL)?;
            }
        }
        let mut ranges = KVec::new();
        pages.as_slice().append_ranges(&mut ranges, GFP_KERNEL)?;
        // INVARIANT: `ranges` were just listed from `pages`.
        Ok(Self {
            ranges,
            _pages: pages,
            _buffers: KVec::new(),
        })
    }

    /// Allocates `size` bytes in buffers of at most `max_buffer` bytes: kmalloc'ed memory is
    /// physically contiguous, and page-aligned at these sizes.
    fn buffers(size: usize, max_buffer: usize) -> Result<Self> {
        let mut buffers = KVec::new();
        let mut ranges = KVec::new();
        let mut left = size;
        while left > 0 {
            let buffer = KVec::from_elem(0x5au8, left.min(max_buffer), GFP_KERNEL)?;
            left -= buffer.len();
            buffer.append_ranges(&mut ranges, GFP_KERNEL)?;
            buffers.push(buffer, GFP_KERNEL)?;
        }
        // INVARIANT: `ranges` were listed from the buffers, which moving them does not move.
        Ok(Self {
            ranges,
            _pages: KVec::new(),
            _buffers: buffers,
        })
    }

    fn new(layout: Layout, pages: usize) -> Result<Self> {
        let memory = match layout {
            Layout::Scattered => Self::scattered(pages)?,
            Layout::Adjacent => Self::buffers(pages * PAGE_SIZE, SZ_4M)?,
            Layout::Contiguous => Self::buffers(pages * PAGE_SIZE, pages * PAGE_SIZE)?,
        };
        // Every mode links whole pages: no range may start or end inside one.
        let page_mask = u64::from_safe_cast(PAGE_SIZE) - 1;
        if memory
            .ranges
            .iter()
            .any(|range| (range.paddr() | u64::from_safe_cast(range.size())) & page_mask != 0)
        {
            return Err(EINVAL);
        }
        Ok(memory)
    }
}

impl PhyrRanges for Memory {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.ranges.ranges()
    }

    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        self.ranges.as_phys_vecs()
    }
}

// SAFETY: The pages and buffers are owned and never accessed, moved out or reallocated; their
// ranges are listed once (type invariant). They are system RAM, and any bit pattern is valid
// in them.
unsafe impl DmaMemory for Memory {}

/// A scatterlist with one entry per range of a [`Memory`].
///
/// # Invariants
///
/// The table is allocated, with one entry per range of the memory it was built for.
struct SgTable(Opaque<bindings::sg_table>);

// SAFETY: The table only points to its own entries and to pages of the memory it describes;
// the C functions that use it may run in any task.
unsafe impl Send for SgTable {}

impl SgTable {
    /// Builds the table of `memory`: entries coalesce physically contiguous pages, as the
    /// ranges do, so there is one per range.
    fn new(memory: &Memory) -> Result<Self> {
        let mut pages = KVec::new();
        for range in memory.ranges.iter() {
            for offset in (0..range.size()).step_by(PAGE_SIZE) {
                let pfn =
                    usize::try_from((range.paddr() + u64::from_safe_cast(offset)) >> PAGE_SHIFT)?;
                // SAFETY: `pfn` is a page of system RAM, owned by `memory`.
                pages.push(unsafe { bindings::pfn_to_page(pfn) }, GFP_KERNEL)?;
            }
        }
        let table = Opaque::zeroed();
        // SAFETY: `table` is a zeroed `struct sg_table`; `pages` holds valid pages, at least one
        // (every case has one), which stay allocated while `memory` lives.
        to_result(unsafe {
            bindings::sg_alloc_table_from_pages_segment(
                table.get(),
                pages.as_mut_ptr(),
                u32::try_from(pages.len())?,
                0,
                pages.len() * PAGE_SIZE,
                u32::MAX,
                bindings::GFP_KERNEL,
            )
        })?;
        let table = Self(table);
        // SAFETY: The table was just allocated.
        let entries = unsafe { (*table.0.get()).orig_nents };
        if usize::from_safe_cast(entries) != memory.ranges.len() {
            return Err(EINVAL);
        }
        // INVARIANT: allocated, one entry per range.
        Ok(table)
    }
}

impl Drop for SgTable {
    fn drop(&mut self) {
        // SAFETY: The table is allocated (type invariant), and not mapped outside of `Case::cycle`.
        unsafe { bindings::sg_free_table(self.0.get()) };
    }
}

/// A way of mapping and unmapping.
#[derive(Clone, Copy)]
enum Mode {
    Sg,
    CIova,
    CIovaBatched,
    Rust,
    RustDevres,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Sg,
        Mode::CIova,
        Mode::CIovaBatched,
        Mode::Rust,
        Mode::RustDevres,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Sg => "sg",
            Mode::CIova => "c-iova",
            Mode::CIovaBatched => "c-iova-batched",
            Mode::Rust => "rust",
            Mode::RustDevres => "rust-devres",
        }
    }

    /// The names of the steps that [`Case::cycle`] times in this mode, in order.
    fn steps(self) -> &'static [&'static str] {
        match self {
            Mode::CIova | Mode::CIovaBatched => {
                &["iova_alloc_ns", "link_ns", "sync_ns", "destroy_ns"]
            }
            Mode::Sg | Mode::Rust | Mode::RustDevres => &["map_ns", "unmap_ns"],
        }
    }
}

/// Steps of a cycle at most: [`Mode::steps`].
const MAX_STEPS: usize = 4;

/// Timestamps taken to measure the cost of one.
const TIMESTAMPS: u32 = 1000;

/// One case: its memory, the scatterlist of the same ranges, and what the Rust API makes of it.
struct Case {
    name: &'static str,
    sg: SgTable,
    memory: Arc<Memory>,
    size: usize,
    path: DmaPath,
    dma_ranges: usize,
}

impl Case {
    fn new(dev: &Device<Bound>, name: &'static str, layout: Layout, pages: usize) -> Result<Self> {
        let memory = Arc::new(Memory::new(layout, pages)?, GFP_KERNEL)?;
        let sg = SgTable::new(&memory)?;
        let size = memory.ranges.iter().map(|range| range.size()).sum();
        let mapping = DmaMapping::new(
            dev,
            &*memory,
            DataDirection::ToDevice,
            Attrs::default(),
            GFP_KERNEL,
        )?;
        let (path, dma_ranges) = (mapping.path(), mapping.dma_ranges().len());
        drop(mapping);
        Ok(Self {
            name,
            memory,
            sg,
            size,
            path,
            dma_ranges,
        })
    }

    /// Maps and unmaps the memory once in `mode`, calling `lap` with the index of each step
    /// ([`Mode::steps`]) as it ends.
    fn cycle(&self, dev: &Device<Bound>, mode: Mode, lap: &mut impl FnMut(usize)) -> Result {
        let dir = DataDirection::ToDevice;
        match mode {
            Mode::Sg => {
                let (raw, table) = (raw_device(dev), self.sg.0.get());
                // SAFETY: `table` is allocated (type invariant of `SgTable`), its pages stay
                // allocated while `self` lives, and it is not mapped: the caller holds the lock
                // of the cases.
                to_result(unsafe { bindings::dma_map_sgtable(raw, table, dir.into(), 0) })?;
                lap(0);
                // SAFETY: `table` was just mapped for `dev` with these arguments.
                unsafe { bindings::dma_unmap_sgtable(raw, table, dir.into(), 0) };
                lap(1);
            }
            Mode::CIova => self.c_iova(dev, false, lap)?,
            Mode::CIovaBatched => self.c_iova(dev, true, lap)?,
            Mode::Rust => {
                let mapping =
                    DmaMapping::new(dev, &*self.memory, dir, Attrs::default(), GFP_ATOMIC)?;
                lap(0);
                drop(mapping);
                lap(1);
            }
            Mode::RustDevres => {
                let memory = Arc::clone(&self.memory);
                let mapping = DmaMapping::new(dev, memory, dir, Attrs::default(), GFP_ATOMIC)?
                    .into_devres()?;
                lap(0);
                drop(mapping);
                lap(1);
            }
        }
        Ok(())
    }

    /// Runs `iterations` cycles in `mode` after an untimed one. Returns the time of the loop
    /// and, with `steps`, the time of each step summed over the cycles.
    fn run(&self, dev: &Device<Bound>, mode: Mode, iterations: u32, steps: bool) -> Result<Timing> {
        // Warms the caches and the IOVA allocator; also runs for 0 iterations, which the
        // counting pass subtracts.
        self.cycle(dev, mode, &mut |_| {})?;
        if !steps {
            let start = Instant::<Monotonic>::now();
            for _ in 0..iterations {
                self.cycle(dev, mode, &mut |_| {})?;
            }
            return Ok(Timing {
                total_ns: start.elapsed().as_nanos(),
                steps: None,
            });
        }
        // Every step also pays for one timestamp, taken off when shown.
        let start = Instant::<Monotonic>::now();
        for _ in 0..TIMESTAMPS {
            Instant::<Monotonic>::now();
        }
        let timestamp_ns = start.elapsed().as_nanos() / i64::from(TIMESTAMPS);
        let mut sums = [0; MAX_STEPS];
        let start = Instant::<Monotonic>::now();
        let mut last = start;
        let mut lap = |step: usize| {
            let now = Instant::<Monotonic>::now();
            if let Some(sum) = sums.get_mut(step) {
                *sum += (now - last).as_nanos();
            }
            last = now;
        };
        for _ in 0..iterations {
            self.cycle(dev, mode, &mut lap)?;
        }
        Ok(Timing {
            total_ns: start.elapsed().as_nanos(),
            steps: Some(Steps { sums, timestamp_ns }),
        })
    }

    /// Maps and unmaps the ranges with the C two-step API, as a C driver does: one
    /// `dma_iova_link()` per range, or all of them with one `dma_iova_link_phys_vec()` if
    /// `batched`.
    fn c_iova(&self, dev: &Device<Bound>, batched: bool, lap: &mut impl FnMut(usize)) -> Result {
        let (raw, dir) = (raw_device(dev), DataDirection::ToDevice.into());
        let ranges = &self.memory.ranges;
        let first = ranges.first().ok_or(EINVAL)?;
        let count = u32::try_from(ranges.len())?;
        let mut state = bindings::dma_iova_state::default();
        // SAFETY: `dev` is bound and `state` is a valid `struct dma_iova_state`.
        if !unsafe { bindings::dma_iova_try_alloc(raw, &mut state, first.paddr(), self.size) } {
            return Err(EOPNOTSUPP);
        }
        lap(0);
        let mut offset = 0;
        let mut result = Ok(());
        if batched {
            // SAFETY: `state` holds `self.size` bytes of IOVA space for `dev`; the ranges are
            // whole pages of memory that stays allocated while `self` lives, and `Phyr` is a
            // transparent `struct phys_vec`.
            result = to_result(unsafe {
                bindings::dma_iova_link_phys_vec(
                    raw,
                    &mut state,
                    ranges.as_ptr().cast(),
                    count,
                    0,
                    dir,
                    0,
                )
            });
            if result.is_ok() {
                offset = self.size;
            }
        } else {
            for range in ranges.iter() {
                // SAFETY: `state` holds `self.size` bytes of IOVA space for `dev`; the ranges
                // are whole pages, linked one after the other inside it, of memory that stays
                // allocated while `self` lives.
                result = to_result(unsafe {
                    bindings::dma_iova_link(
                        raw,
                        &mut state,
                        range.paddr(),
                        offset,
                        range.size(),
                        dir,
                        0,
                    )
                });
                if result.is_err() {
                    break;
                }
                offset += range.size();
            }
        }
        lap(1);
        if result.is_ok() {
            // SAFETY: As above; `0..offset` is linked.
            result = to_result(unsafe { bindings::dma_iova_sync(raw, &mut state, 0, offset) });
        }
        lap(2);
        // SAFETY: `state` was allocated for `dev` and `0..offset` of it is linked.
        unsafe { bindings::dma_iova_destroy(raw, &mut state, offset, dir, 0) };
        lap(3);
        result
    }
}

/// The time of a run.
struct Timing {
    total_ns: i64,
    steps: Option<Steps>,
}

/// The time spent in each step of a run ([`Mode::steps`]).
struct Steps {
    /// The time of each step, summed over the cycles, timestamps included.
    sums: [i64; MAX_STEPS],
    /// The time of one timestamp.
    timestamp_ns: i64,
}

/// The result of the last run.
struct Outcome {
    case: usize,
    mode: Mode,
    iterations: u32,
    timing: Timing,
}

struct State {
    cases: KVec<Case>,
    last: Option<Outcome>,
}

/// The data of the debugfs file.
#[pin_data]
struct Bench {
    pdev: ARef<pci::Device>,
    /// Held for a whole run: one run at a time.
    #[pin]
    state: Mutex<State>,
}

impl Bench {
    /// Makes the memory of every case, once the DMA mask is set (`mask`, the result of setting
    /// it).
    fn new<'a>(pdev: &'a pci::Device<Core<'_>>, mask: Result) -> impl PinInit<Self, Error> + 'a {
        let dev: &Device<Bound> = pdev.as_ref();
        let pdev = pdev.into();
        try_pin_init!(Self {
            state <- new_mutex!(State {
                cases: {
                    mask?;
                    Self::cases(dev)?
                },
                last: None,
            }),
            pdev,
        })
    }

    fn cases(dev: &Device<Bound>) -> Result<KVec<Case>> {
        let mut cases = KVec::with_capacity(CASES.len(), GFP_KERNEL)?;
        for (name, layout, pages) in CASES {
            cases.push(Case::new(dev, name, layout, pages)?, GFP_KERNEL)?;
        }
        Ok(cases)
    }

    /// Runs the command written to the file: `CASE MODE ITERATIONS [steps]`.
    fn write(&self, reader: &mut UserSliceReader) -> Result {
        let mut buffer = [0u8; 64];
        let command = buffer.get_mut(..reader.len()).ok_or(EINVAL)?;
        reader.read_slice(command)?;
        let mut words = core::str::from_utf8(command)
            .map_err(|_| EINVAL)?
            .split_whitespace();
        let (case, mode) = (words.next().ok_or(EINVAL)?, words.next().ok_or(EINVAL)?);
        let iterations = words
            .next()
            .ok_or(EINVAL)?
            .parse::<u32>()
            .map_err(|_| EINVAL)?;
        let steps = match (words.next(), words.next()) {
            (None, None) => false,
            (Some("steps"), None) => true,
            _ => return Err(EINVAL),
        };
        let mode = Mode::ALL
            .into_iter()
            .find(|m| m.name() == mode)
            .ok_or(EINVAL)?;
        let mut state = self.state.lock();
        let index = state
            .cases
            .iter()
            .position(|c| c.name == case)
            .ok_or(EINVAL)?;
        // SAFETY: Removing the file waits for the writes in progress, and the driver data that
        // owns the file is dropped at unbind, before the device is unbound.
        let dev = unsafe { self.pdev.as_ref().as_bound() };
        let timing = state.cases[index].run(dev, mode, iterations, steps)?;
        state.last = Some(Outcome {
            case: index,
            mode,
            iterations,
            timing,
        });
        Ok(())
    }

    /// Shows the result of the last run.
    fn show(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        let Some(outcome) = &state.last else {
            return Ok(());
        };
        let Some(case) = state.cases.get(outcome.case) else {
            return Ok(());
        };
        let per_map = |ns: i64| ns.checked_div(i64::from(outcome.iterations)).unwrap_or(0);
        write!(
            f,
            "case={} mode={} iterations={} ranges={} bytes={} path={:?} dma_ranges={} \
             ns_per_map={}",
            case.name,
            outcome.mode.name(),
            outcome.iterations,
            case.memory.ranges.len(),
            case.size,
            case.path,
            case.dma_ranges,
            per_map(outcome.timing.total_ns),
        )?;
        if let Some(steps) = &outcome.timing.steps {
            for (name, sum) in outcome.mode.steps().iter().zip(steps.sums) {
                // Below the noise of the timestamp, a step is shown as 0.
                write!(f, " {name}={}", (per_map(sum) - steps.timestamp_ns).max(0))?;
            }
            write!(f, " timestamp_ns={}", steps.timestamp_ns)?;
        }
        writeln!(f)
    }
}

#[pin_data]
struct DmaBench {
    #[pin]
    _run: File<Bench>,
    _dir: Dir,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <DmaBench as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_id(pci::Vendor::REDHAT, 0x5), ())]
);

impl pci::Driver for DmaBench {
    type IdInfo = ();
    type Data<'bound> = Self;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        // 64 bits, as drivers of such devices set: under a 32-bit mask, the flush queues of lazy
        // unmapping can hold all of the IOVA space that mappings of 16 MiB churn through.
        // SAFETY: Nothing maps or allocates for the device yet.
        let mask = unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>()) };
        let dir = Dir::new(c"rust_dma_bench");
        let bench = Bench::new(pdev, mask);
        try_pin_init!(Self {
            _run <- dir.read_write_callback_file(c"run", bench, &Bench::show, &Bench::write),
            _dir: dir,
        })
    }
}

kernel::module_pci_driver! {
    type: DmaBench,
    name: "rust_dma_bench",
    authors: ["Rust DMA Team"],
    description: "Rust DMA mapping benchmark",
    license: "GPL v2",
}
