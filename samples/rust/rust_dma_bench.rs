// SPDX-License-Identifier: GPL-2.0

//! Rust DMA mapping benchmark.
//!
//! Binds QEMU's `pci-testdev` and, at probe, measures the average time to map and unmap
//! scattered pages (no page physically after the previous one) and one contiguous 2 MiB buffer
//! with [`DmaMapping`], the way a driver maps each request. The figures go to the kernel log,
//! one line per case, for comparison with the C modes of `kernel/dma/map_benchmark.c` measured
//! in the same boot.

use kernel::{
    device::{
        Bound,
        Core,
        Device, //
    },
    dma::{
        map::{
            DmaMapping,
            DmaMemory,
            KernelBuffer,
            Pages, //
        },
        Attrs,
        DataDirection, //
    },
    num::casts::FromSafeCast,
    page::{
        Page,
        PAGE_SIZE, //
    },
    pci,
    prelude::*,
    time::{
        Instant,
        Monotonic, //
    },
};

/// Map and unmap cycles timed per case, after one untimed cycle.
const ROUNDS: i64 = 200;

struct DmaBench;

kernel::pci_device_table!(
    PCI_TABLE,
    <DmaBench as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_id(pci::Vendor::REDHAT, 0x5), ())]
);

/// Maps and unmaps `memory` [`ROUNDS`] times and logs the average time of one cycle.
/// The case is named `count` `unit`, e.g. "16 pages".
fn bench<S: DmaMemory>(dev: &Device<Bound>, count: usize, unit: &str, mut memory: S) -> Result {
    let physical = memory.ranges().count();
    let map = |memory| {
        DmaMapping::new(
            dev,
            memory,
            DataDirection::ToDevice,
            Attrs::default(),
            GFP_KERNEL,
        )
    };
    let mapping = map(memory)?;
    let (path, ranges) = (mapping.path(), mapping.dma_ranges(dev)?.len());
    memory = mapping.into_memory();
    let start = Instant::<Monotonic>::now();
    for _ in 0..ROUNDS {
        memory = map(memory)?.into_memory();
    }
    let nanos = start.elapsed().as_nanos() / ROUNDS;
    dev_info!(
        dev,
        "rust_dma_bench: {count} {unit}: {nanos} ns per map+unmap, path {path:?}, \
         {physical} physical ranges, {ranges} DMA ranges\n"
    );
    Ok(())
}

/// Allocates `count` pages, none physically right after the previous one.
fn scattered_pages(count: usize) -> Result<Pages> {
    let mut pages = KVec::with_capacity(count, GFP_KERNEL)?;
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
    Pages::new(pages, GFP_KERNEL)
}

impl pci::Driver for DmaBench {
    type IdInfo = ();
    type Data<'bound> = ();
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let dev: &Device<Bound> = pdev.as_ref();
        for pages in [1, 16, 512] {
            bench(dev, pages, "pages", scattered_pages(pages)?)?;
        }
        let buffer = KVec::from_elem(0x5au8, 2 << 20, GFP_KERNEL)?;
        bench(
            dev,
            2,
            "MiB contiguous",
            KernelBuffer::new(buffer, GFP_KERNEL)?,
        )?;
        Ok(())
    }
}

kernel::module_pci_driver! {
    type: DmaBench,
    name: "rust_dma_bench",
    authors: ["Rust DMA Team"],
    description: "Rust DMA mapping benchmark",
    license: "GPL v2",
}
