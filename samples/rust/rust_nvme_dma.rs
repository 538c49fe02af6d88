// SPDX-License-Identifier: GPL-2.0

//! Rust NVMe sample: a blk-mq block driver whose requests are mapped with [`DmaMapping`].
//!
//! Binds NVMe controllers (QEMU's `-device nvme`), resets and enables them, identifies
//! controller and namespace 1, and creates one I/O queue pair per CPU, up to what the controller
//! grants, each with its own MSI-X vector; the admin queue has vector 0. Namespace 1 becomes the
//! block device `rnvme<N>n1`.
//!
//! Each read or write request is mapped in `queue_rq` in place, from its own bio_vecs
//! ([`RequestMemory`]): no copy, no allocation on the IOVA path, `GFP_ATOMIC` elsewhere. The
//! mapping's DMA ranges are described with PRPs or SGLs in list pages that each tag owns,
//! allocated when the queue is created; the mapping lives in the request's driver data until the
//! completion: the queue's interrupt handler unmaps the requests that succeeded and ends them in
//! one batch. Flush and FUA are honoured, discard (Dataset Management) and write-zeroes where the
//! controller has them.
//!
//! A controller that takes them (QEMU's does) gets shadow doorbells, as with nvme-pci: the I/O
//! queues' doorbell registers, each write a trap into the hypervisor, are written only when the
//! controller waits for them.
//!
//! A request that times out gets an Abort command; if it times out again, the controller is
//! reset (disabled, every command in flight failed, enabled again with its queues). A controller
//! that does not come back is lost: bus mastering is cleared before the requests in flight are
//! failed and unmapped, and every later request fails without mapping anything.
//!
//! Statistics: `/sys/kernel/debug/rust_nvme_dma/rnvme<N>/stats`. The sample and the C `nvme`
//! driver both match NVMe controllers: choose with `driver_override`. Documentation:
//! `Documentation/core-api/dma-mapping-rust.rst`.

use core::cell::UnsafeCell;
use kernel::{
    block::mq::{
        self,
        gen_disk::{
            GenDisk,
            GenDiskBuilder, //
        },
        Command as BlockCommand,
        Operations,
        RequestMemory,
        TagSet,
        TimeoutAction, //
    },
    cpu::CpuId,
    cpumask::CpumaskVar,
    debugfs::{
        Dir,
        File, //
    },
    device::{
        self,
        Bound,
        Core, //
    },
    dma::{
        map::{
            opt_mapping_size,
            segment_limits,
            DmaMapping,
            DmaPath,
            KernelBuffer, //
        },
        phyr::{
            DmaRange,
            SegmentLimits,
            Split, //
        },
        Attrs,
        Coherent,
        DataDirection,
        Device as _,
        DmaMask, //
    },
    fmt,
    io::{
        poll::read_poll_timeout,
        Io, //
    },
    irq::{
        self,
        IrqReturn, //
    },
    new_condvar, new_mutex, new_spinlock, new_spinlock_irq,
    num::casts::FromSafeCast,
    pci::{
        self,
        DevresBar,
        IrqType,
        IrqTypes,
        IrqVectorRegistration, //
    },
    prelude::*,
    str::CString,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Full,
            Relaxed,
            Release, //
        },
        barrier::{
            dma_mb,
            mb,
            Read,
            Write, //
        },
        Arc,
        ArcBorrow,
        CondVar,
        CondVarTimeoutResult,
        Mutex,
        SpinLock,
        SpinLockIrq, //
    },
    time::{
        delay::fsleep,
        msecs_to_jiffies,
        Delta, //
    },
};

// Controller registers (NVMe base specification 2.0, 3.1.4).
const REG_CAP_LO: usize = 0x00;
const REG_CAP_HI: usize = 0x04;
const REG_CC: usize = 0x14;
const REG_CSTS: usize = 0x1c;
const REG_AQA: usize = 0x24;
const REG_ASQ_LO: usize = 0x28;
const REG_ASQ_HI: usize = 0x2c;
const REG_ACQ_LO: usize = 0x30;
const REG_ACQ_HI: usize = 0x34;
const DOORBELLS: usize = 0x1000;
/// The registers and the doorbells of the admin queue and up to [`MAX_IO_QUEUES`] I/O queues,
/// at the smallest doorbell stride; the BAR must have the doorbells of the queues created.
const BAR_SIZE: usize = DOORBELLS + 8 * (MAX_IO_QUEUES + 1);

const CC_ENABLE: u32 = 1 << 0;
/// I/O submission and completion queue entry sizes, 64 and 16 bytes (log2: 6 and 4).
const CC_CONFIG: u32 = (6 << 16) | (4 << 20);
const CC_SHUTDOWN_NORMAL: u32 = 1 << 14;
const CSTS_READY: u32 = 1 << 0;
const CSTS_FATAL: u32 = 1 << 1;
const CSTS_SHUTDOWN_MASK: u32 = 3 << 2;
const CSTS_SHUTDOWN_DONE: u32 = 2 << 2;
/// What a read of a register of a removed device returns.
const GONE: u32 = u32::MAX;

const ADMIN_DELETE_SQ: u8 = 0x00;
const ADMIN_CREATE_SQ: u8 = 0x01;
const ADMIN_DELETE_CQ: u8 = 0x04;
const ADMIN_CREATE_CQ: u8 = 0x05;
const ADMIN_IDENTIFY: u8 = 0x06;
const ADMIN_ABORT: u8 = 0x08;
const ADMIN_SET_FEATURES: u8 = 0x09;
const ADMIN_DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
const FEATURE_NUMBER_OF_QUEUES: u32 = 0x07;
const IO_FLUSH: u8 = 0x00;
const IO_WRITE: u8 = 0x01;
const IO_READ: u8 = 0x02;
const IO_WRITE_ZEROES: u8 = 0x08;
const IO_DATASET_MANAGEMENT: u8 = 0x09;
const IDENTIFY_NAMESPACE: u32 = 0;
const IDENTIFY_CONTROLLER: u32 = 1;
const NAMESPACE: u32 = 1;
/// Command dword 12: force unit access, and write-zeroes' deallocate bit.
const RW_FUA: u32 = 1 << 30;
const WRITE_ZEROES_DEALLOCATE: u32 = 1 << 25;
/// Dataset Management dword 11: deallocate the ranges.
const DSM_DEALLOCATE: u32 = 1 << 2;
/// ONCS bits of Identify Controller: Dataset Management, Write Zeroes.
const ONCS_DSM: u16 = 1 << 2;
const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// OACS bit of Identify Controller: Doorbell Buffer Config.
const OACS_DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;

/// PSDT: the data pointer is an SGL.
const PSDT_SGL: u32 = 1 << 14;
const SGL_DATA_BLOCK: u8 = 0x00;
const SGL_SEGMENT: u8 = 0x20;
const SGL_LAST_SEGMENT: u8 = 0x30;
const SGL_DESCRIPTOR_SIZE: usize = 16;
/// Mean DMA range size from which a request is described with SGLs rather than PRPs, where the
/// controller takes both (the C driver's default `sgl_threshold`).
const SGL_THRESHOLD: usize = 32 * 1024;

/// Controller page size: CC.MPS is 0, and only controllers whose minimum page is 4 KiB bind.
const CTRL_PAGE: usize = 4096;
const ADMIN_ENTRIES: u16 = 32;
const IO_ENTRIES: u16 = 128;
const MAX_IO_QUEUES: usize = 16;
/// The largest command: 1023 controller pages touch at most 1024 pages at any offset, one PRP
/// in the command and 1023 in two chained list pages (QEMU's controller also fails commands that
/// touch more).
const MAX_TRANSFER: usize = 1023 * CTRL_PAGE;
/// List pages each tag owns: its PRP list or SGL segments.
const LIST_PAGES: usize = 2;
/// The most SGL data blocks two chained segment pages hold.
const MAX_SGL_BLOCKS: usize = LIST_PAGES * (CTRL_PAGE / SGL_DESCRIPTOR_SIZE) - (LIST_PAGES - 1);
const ADMIN_TIMEOUT: Delta = Delta::from_secs(10);

/// Completion status of a request failed by the driver rather than by the controller.
const STATUS_CANCELLED: u32 = u32::MAX;

/// A submission queue entry.
struct Command([u32; 16]);

impl Command {
    fn new(opcode: u8, nsid: u32) -> Self {
        let mut dwords = [0; 16];
        dwords[0] = u32::from(opcode);
        dwords[1] = nsid;
        Self(dwords)
    }

    fn admin(opcode: u8, data: u64, cdw10: u32, cdw11: u32) -> Self {
        let mut command = Self::new(opcode, 0);
        command.set_pointer(data, 0);
        command.0[10] = cdw10;
        command.0[11] = cdw11;
        command
    }

    /// A command on `blocks` logical blocks from `lba`.
    fn blocks(opcode: u8, lba: u64, blocks: u32) -> Self {
        let mut command = Self::new(opcode, NAMESPACE);
        // CAST: the halves of the 64-bit LBA.
        command.0[10] = lba as u32;
        command.0[11] = (lba >> 32) as u32;
        command.0[12] = blocks - 1;
        command
    }

    fn set_sgl(&mut self, descriptor: [u64; 2]) {
        self.0[0] |= PSDT_SGL;
        self.set_pointer(descriptor[0], descriptor[1]);
    }

    /// Sets the data pointer, dwords 6 to 9: PRP1 and PRP2, or an SGL descriptor.
    fn set_pointer(&mut self, low: u64, high: u64) {
        for (i, value) in [low, high].into_iter().enumerate() {
            // CAST: the halves of a 64-bit value.
            self.0[6 + 2 * i] = value as u32;
            self.0[7 + 2 * i] = (value >> 32) as u32;
        }
    }
}

/// A completion queue entry: command identifier, status (without the phase tag) and dword 0.
#[derive(Clone, Copy)]
struct Completion {
    id: u16,
    status: u32,
    result: u32,
}

/// Where the next completion of a queue is expected.
struct CompletionHead {
    head: u16,
    /// Phase tag of the completions expected at `head`.
    phase: bool,
}

/// A submission and completion queue pair in coherent memory.
///
/// # Invariants
///
/// `entries` is at least 2; `submissions` holds `entries` entries of 16 dwords, `completions`
/// `entries` entries of 4 dwords; the tail and the head are less than `entries`.
#[pin_data]
struct QueuePair {
    /// Queue identifier: 0 for the admin queue.
    id: u16,
    entries: u16,
    submissions: Coherent<[u32]>,
    completions: Coherent<[u32]>,
    /// Offsets of the submission tail and completion head doorbells.
    tail_doorbell: usize,
    head_doorbell: usize,
    /// The controller's shadow doorbells, for I/O queues of a controller that has them.
    shadow: Option<Arc<ShadowDoorbells>>,
    /// Never taken by an interrupt handler, as in nvme-pci; taken before `head` where both are.
    #[pin]
    tail: SpinLock<u16>,
    #[pin]
    head: SpinLockIrq<CompletionHead>,
}

impl QueuePair {
    fn new(
        dev: &device::Device<Bound>,
        id: u16,
        entries: u16,
        stride: usize,
        shadow: Option<Arc<ShadowDoorbells>>,
    ) -> Result<impl PinInit<Self, Error>> {
        let entries_usize = usize::from(entries);
        let submissions = Coherent::zeroed_slice(dev, entries_usize * 16, GFP_KERNEL)?;
        let completions = Coherent::zeroed_slice(dev, entries_usize * 4, GFP_KERNEL)?;
        let doorbell = DOORBELLS + 2 * usize::from(id) * stride;
        // INVARIANT: sizes as documented, tail and head at 0; callers pass at least 2 entries.
        Ok(try_pin_init!(Self {
            id,
            entries,
            submissions,
            completions,
            tail_doorbell: doorbell,
            head_doorbell: doorbell + stride,
            shadow,
            tail <- new_spinlock!(0),
            head <- new_spinlock_irq!(CompletionHead { head: 0, phase: true }),
        }? Error))
    }

    /// Returns the entry after `entry`, wrapping around.
    fn next(&self, entry: u16) -> u16 {
        if entry + 1 >= self.entries {
            0
        } else {
            entry + 1
        }
    }

    /// Empties the queue for a controller that was disabled: no command is in flight.
    fn clear(&self) {
        let mut tail = self.tail.lock();
        let mut head = self.head.lock();
        // SAFETY: The controller is disabled and reads or writes no entry, and the locks keep
        // the driver away; every bit pattern is a valid `u32`.
        unsafe { self.completions.as_mut() }.fill(0);
        if let Some(shadow) = &self.shadow {
            shadow.clear(self.tail_doorbell);
            shadow.clear(self.head_doorbell);
        }
        *tail = 0;
        *head = CompletionHead {
            head: 0,
            phase: true,
        };
    }

    /// Writes `command` with identifier `id` at the tail and rings the doorbell, if `admit`,
    /// called under the submission lock, succeeds; what it returns is dropped before the doorbell.
    ///
    /// The caller makes sure that the queue has a free entry: no more commands in flight than
    /// `entries - 1`.
    fn submit<T>(
        &self,
        bar: &pci::Bar<'_, BAR_SIZE>,
        mut command: Command,
        id: u16,
        admit: impl FnOnce() -> Result<T>,
    ) -> Result {
        command.0[0] |= u32::from(id) << 16;
        let mut tail = self.tail.lock();
        let admitted = admit()?;
        let entry = self.submissions.as_mut_ptr().cast::<u32>();
        let slot = usize::from(*tail) * 16;
        for (i, dword) in command.0.iter().enumerate() {
            // SAFETY: `slot + i` is inside the queue (type invariants), and the controller does
            // not read the slot before the doorbell below announces it; volatile since it reads
            // it afterwards.
            unsafe { entry.add(slot + i).write_volatile(dword.to_le()) };
        }
        let next = self.next(*tail);
        drop(admitted);
        self.ring(bar, self.tail_doorbell, *tail, next);
        // INVARIANT: less than `entries`.
        *tail = next;
        Ok(())
    }

    /// Takes every new completion, passes it to `complete`, and rings the head doorbell. Returns
    /// the number of completions.
    fn reap(&self, bar: &pci::Bar<'_, BAR_SIZE>, mut complete: impl FnMut(Completion)) -> usize {
        let mut position = self.head.lock();
        let old_head = position.head;
        let completions = self.completions.as_ptr().cast::<u32>();
        let mut count = 0;
        loop {
            let entry = usize::from(position.head) * 4;
            // SAFETY: `entry + 3` is inside the queue (type invariants); the controller writes
            // it, hence the volatile read.
            let dword3 = u32::from_le(unsafe { completions.add(entry + 3).read_volatile() });
            if (dword3 & (1 << 16) != 0) != position.phase {
                break;
            }
            // Read the rest of the entry only after its phase tag.
            dma_mb(Read);
            // SAFETY: As above.
            let result = u32::from_le(unsafe { completions.add(entry).read_volatile() });
            // INVARIANT: less than `entries`.
            position.head = self.next(position.head);
            if position.head == 0 {
                position.phase = !position.phase;
            }
            count += 1;
            complete(Completion {
                // CAST: the low half of the dword is the command identifier.
                id: dword3 as u16,
                status: (dword3 >> 17) & 0x7fff,
                result,
            });
        }
        if count > 0 {
            self.ring(bar, self.head_doorbell, old_head, position.head);
        }
        count
    }

    /// Moves the doorbell at offset `doorbell` from `old` to `new`, the caller holding the lock
    /// of its tail or head. With shadow doorbells, the register is written only if the
    /// controller asks for it.
    fn ring(&self, bar: &pci::Bar<'_, BAR_SIZE>, doorbell: usize, old: u16, new: u16) {
        if let Some(shadow) = &self.shadow {
            if !shadow.update(doorbell, old, new) {
                return;
            }
        }
        // `writel()` orders the queue's entries before the doorbell, whose offset probe checked
        // to be inside the BAR. Nothing to do if the device is gone: its commands are failed by
        // the driver.
        let _ = bar.try_write32(u32::from(new), doorbell);
    }
}

/// Shadow doorbells (Doorbell Buffer Config, for emulated controllers): the driver writes the
/// I/O queues' tails and heads to memory the controller reads, and the registers only when the
/// controller's event index for the doorbell says it is waiting for them. Each register write
/// costs a trap into the hypervisor that emulates the controller.
///
/// Owned by the [`Admin`], whose drop disables the controller before the buffers go.
///
/// # Invariants
///
/// `doorbells` and `event_indexes` have the same length. While the controller has the buffers,
/// it reads `doorbells` and writes `event_indexes`; it also writes the doorbells of its queues
/// when it is given the buffers, and those of the admin queue, which the driver leaves alone.
struct ShadowDoorbells {
    doorbells: Coherent<[u32]>,
    event_indexes: Coherent<[u32]>,
    /// Whether the controller has the buffers: else every register is written too.
    configured: Atomic<bool>,
    /// Register writes saved, for the statistics.
    skipped: Atomic<u64>,
}

impl ShadowDoorbells {
    /// Allocates a page of shadow doorbells and one of event indexes, if the doorbells of the
    /// admin queue and [`MAX_IO_QUEUES`] I/O queues at stride `stride` fit in a page.
    fn new(dev: &device::Device<Bound>, stride: usize) -> Result<Option<Self>> {
        if 2 * (MAX_IO_QUEUES + 1) * stride > CTRL_PAGE {
            return Ok(None);
        }
        let words = CTRL_PAGE / 4;
        // INVARIANT: both of `words` words.
        Ok(Some(Self {
            doorbells: Coherent::zeroed_slice(dev, words, GFP_KERNEL)?,
            event_indexes: Coherent::zeroed_slice(dev, words, GFP_KERNEL)?,
            configured: Atomic::new(false),
            skipped: Atomic::new(0),
        }))
    }

    /// Gives the buffers to the controller (Doorbell Buffer Config), once its I/O queues exist.
    /// A controller that refuses them keeps its doorbell registers, as with nvme-pci.
    fn configure(&self, admin: &Admin) {
        let mut command = Command::new(ADMIN_DOORBELL_BUFFER_CONFIG, 0);
        command.set_pointer(
            self.doorbells.dma_address(),
            self.event_indexes.dma_address(),
        );
        match admin.execute(command) {
            // A CPU that still sees `false` only writes a register too.
            Ok(_) => self.configured.store(true, Relaxed),
            Err(e) => dev_warn!(admin.pdev, "no shadow doorbells ({e:?})\n"),
        }
    }

    /// Notes that the controller was disabled, which takes the buffers from it.
    fn disabled(&self) {
        self.configured.store(false, Relaxed);
    }

    /// Returns the index of the words of the doorbell register at offset `doorbell` in both
    /// buffers, if they have it.
    fn word(&self, doorbell: usize) -> Option<usize> {
        let word = doorbell.checked_sub(DOORBELLS)? / 4;
        (word < self.doorbells.len()).then_some(word)
    }

    /// Zeroes the shadow and the event index of the doorbell at offset `doorbell`, whose queue
    /// the controller does not have.
    fn clear(&self, doorbell: usize) {
        let Some(word) = self.word(doorbell) else {
            return;
        };
        for buffer in [&self.doorbells, &self.event_indexes] {
            // SAFETY: `word` is inside both buffers (`word()` and the type invariants); the
            // controller, which has no such queue, writes neither word now.
            unsafe {
                buffer
                    .as_mut_ptr()
                    .cast::<u32>()
                    .add(word)
                    .write_volatile(0)
            };
        }
    }

    /// Writes `new` to the shadow of the doorbell at offset `doorbell`, which held `old`, and
    /// returns whether the register must be written too: the controller's event index (the
    /// value it read last) is in `[old, new)`, so it has caught up and waits for the register.
    /// Otherwise it reads the shadow again before it stops.
    fn update(&self, doorbell: usize, old: u16, new: u16) -> bool {
        let Some(word) = self.word(doorbell) else {
            return true;
        };
        // The queue's entries before the shadow that announces them.
        mb(Write);
        // SAFETY: `word` is inside both buffers (`word()` and the type invariants); the
        // controller reads the shadow, and writes it only when it is given the buffers, with no
        // submission possible (type invariants), hence the volatile write.
        unsafe {
            self.doorbells
                .as_mut_ptr()
                .cast::<u32>()
                .add(word)
                .write_volatile(u32::from(new).to_le())
        };
        // The shadow before the event index the controller sets once it has read it.
        mb(Full);
        // SAFETY: As above; the controller writes the event index, hence the volatile read.
        let event = unsafe {
            self.event_indexes
                .as_ptr()
                .cast::<u32>()
                .add(word)
                .read_volatile()
        };
        // CAST: the event index is the low 16 bits, like the doorbell.
        let event = u32::from_le(event) as u16;
        let waiting = new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old);
        if waiting || !self.configured.load(Relaxed) {
            return true;
        }
        add_to(&self.skipped, 1);
        false
    }
}

/// A controller's BAR, and the facts of its registers.
struct Registers {
    bar: DevresBar<BAR_SIZE>,
    /// How long the controller may take to become ready or disabled (CAP.TO).
    ready_timeout: Delta,
}

/// An I/O queue pair with the list pages of its tags.
#[pin_data]
struct IoQueue {
    /// Index of the queue among the I/O queues and the hardware queues; its identifier is one
    /// more.
    index: u32,
    #[pin]
    pair: QueuePair,
    /// [`LIST_PAGES`] controller pages per tag.
    lists: Coherent<[u64]>,
    stats: RequestStats,
}

impl IoQueue {
    /// Returns the DMA address and the list pages of `tag`.
    ///
    /// # Safety
    ///
    /// The caller owns the request with tag `tag` and the controller does not read its pages:
    /// the request's command was not submitted, or it completed or was cancelled with bus
    /// mastering off or the controller disabled.
    #[expect(clippy::mut_from_ref, reason = "exclusive by the safety requirements")]
    unsafe fn lists_of(&self, tag: u32) -> Result<(u64, &mut [u64])> {
        let words = LIST_PAGES * CTRL_PAGE / 8;
        let start = usize::from_safe_cast(tag) * words;
        if start + words > self.lists.len() {
            return Err(EINVAL);
        }
        // SAFETY: The range is inside the allocation and the tags' ranges do not overlap; by the
        // safety requirements only the caller uses this one, and every bit pattern is a `u64`.
        let lists = unsafe {
            core::slice::from_raw_parts_mut(self.lists.as_mut_ptr().cast::<u64>().add(start), words)
        };
        Ok((
            self.lists.dma_address() + u64::from_safe_cast(start * 8),
            lists,
        ))
    }
}

/// Controller and namespace facts from Identify.
struct Identity {
    block_shift: u32,
    blocks: u64,
    max_transfer: usize,
    /// Whether the controller takes SGLs, and needs their data blocks dword-aligned.
    sgl: Option<bool>,
    volatile_write_cache: bool,
    discard: bool,
    write_zeroes: bool,
    /// DLFEAT: deallocated blocks read as zeroes.
    deallocated_reads_zeroes: bool,
    /// OACS: the controller takes shadow doorbells (Doorbell Buffer Config).
    shadow_doorbells: bool,
}

/// The state of a controller.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Health {
    Live = 0,
    /// Being reset: requests are sent back to the block layer to be retried.
    Resetting = 1,
    /// Lost: bus mastering is off, every request fails.
    Lost = 2,
}

/// Adds `value` to a counter of the statistics file.
fn add_to(counter: &Atomic<u64>, value: u64) {
    // No atomic operation for nothing.
    if value != 0 {
        counter.fetch_add(value, Relaxed);
    }
}

/// The requests of an I/O queue, counted on cache lines that only the queue's CPUs write; the
/// statistics file shows the sums of all queues.
struct RequestStats {
    requests: Atomic<u64>,
    read_bytes: Atomic<u64>,
    write_bytes: Atomic<u64>,
    flushes: Atomic<u64>,
    discards: Atomic<u64>,
    write_zeroes: Atomic<u64>,
    /// Mappings per DMA path: IOVA, per-range IOMMU, direct, bounce.
    mappings: [Atomic<u64>; 4],
    dma_ranges: Atomic<u64>,
    iotlb_syncs: Atomic<u64>,
    prp_entries: Atomic<u64>,
    prp_list_pages: Atomic<u64>,
    sgl_data_blocks: Atomic<u64>,
    sgl_segments: Atomic<u64>,
}

impl Default for RequestStats {
    fn default() -> Self {
        Self {
            requests: Atomic::new(0),
            read_bytes: Atomic::new(0),
            write_bytes: Atomic::new(0),
            flushes: Atomic::new(0),
            discards: Atomic::new(0),
            write_zeroes: Atomic::new(0),
            mappings: [const { Atomic::new(0) }; 4],
            dma_ranges: Atomic::new(0),
            iotlb_syncs: Atomic::new(0),
            prp_entries: Atomic::new(0),
            prp_list_pages: Atomic::new(0),
            sgl_data_blocks: Atomic::new(0),
            sgl_segments: Atomic::new(0),
        }
    }
}

impl RequestStats {
    /// Returns the counters with their names, in the order of the file.
    fn counters(&self) -> [(&'static str, &Atomic<u64>); 16] {
        [
            ("requests", &self.requests),
            ("read_bytes", &self.read_bytes),
            ("write_bytes", &self.write_bytes),
            ("flushes", &self.flushes),
            ("discards", &self.discards),
            ("write_zeroes", &self.write_zeroes),
            ("mappings_iova", &self.mappings[0]),
            ("mappings_iommu", &self.mappings[1]),
            ("mappings_direct", &self.mappings[2]),
            ("mappings_bounce", &self.mappings[3]),
            ("dma_ranges", &self.dma_ranges),
            ("iotlb_syncs", &self.iotlb_syncs),
            ("prp_entries", &self.prp_entries),
            ("prp_list_pages", &self.prp_list_pages),
            ("sgl_data_blocks", &self.sgl_data_blocks),
            ("sgl_segments", &self.sgl_segments),
        ]
    }
}

/// What happened to a controller, for the statistics file.
struct ControllerStats {
    failed_requests: Atomic<u64>,
    timeouts: Atomic<u64>,
    aborts: Atomic<u64>,
    resets: Atomic<u64>,
    losses: Atomic<u64>,
}

impl Default for ControllerStats {
    fn default() -> Self {
        Self {
            failed_requests: Atomic::new(0),
            timeouts: Atomic::new(0),
            aborts: Atomic::new(0),
            resets: Atomic::new(0),
            losses: Atomic::new(0),
        }
    }
}

impl ControllerStats {
    /// Returns the counters with their names, in the order of the file.
    fn counters(&self) -> [(&'static str, &Atomic<u64>); 5] {
        [
            ("failed_requests", &self.failed_requests),
            ("timeouts", &self.timeouts),
            ("aborts", &self.aborts),
            ("resets", &self.resets),
            ("losses", &self.losses),
        ]
    }
}

/// The statistics file's view of a controller.
struct StatsFile(Arc<Controller>);

impl fmt::Debug for StatsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let controller = &self.0;
        let mut sums = RequestStats::default()
            .counters()
            .map(|(name, _)| (name, 0));
        for queue in &controller.io {
            for ((_, sum), (_, counter)) in sums.iter_mut().zip(queue.stats.counters()) {
                *sum += counter.load(Relaxed);
            }
        }
        for (name, sum) in sums {
            writeln!(f, "{name} {sum}")?;
        }
        for (name, counter) in controller.stats.counters() {
            writeln!(f, "{name} {}", counter.load(Relaxed))?;
        }
        match controller.shadow() {
            Some(shadow) => writeln!(
                f,
                "doorbell_writes_skipped {}",
                shadow.skipped.load(Relaxed)
            ),
            None => Ok(()),
        }
    }
}

/// A request's mapping, held from `queue_rq` to the completion.
///
/// The device borrow is `'static`: requests exist only while the disk does, and the disk is
/// deleted at unbind before the device is unbound (see [`Controller::device`]).
type RequestMapping = DmaMapping<'static, RequestMemory<NvmeQueues>>;

/// Where a request's mapping waits for the completion.
///
/// # Invariants
///
/// Accessed only by the owner of the request's command, in turn, without overlap: `queue_rq`
/// until it sets `in_flight` (or fails the request without setting it), then whoever clears
/// `in_flight` (the completion path or a cancellation), which drops the mapping or passes it on
/// to the `complete` callback. The atomic `in_flight` (set under the submission lock, cleared
/// with a full barrier) and blk-mq's completion (an IPI or the same CPU) order the accesses.
struct MappingSlot(UnsafeCell<Option<RequestMapping>>);

// SAFETY: By the type invariants, one thread at a time accesses the slot, in an order that the
// barriers above make visible; the mapping itself may move between threads (`DmaMapping` is
// `Send`).
unsafe impl Sync for MappingSlot {}

impl MappingSlot {
    /// Replaces the mapping.
    ///
    /// # Safety
    ///
    /// The caller owns the request's command, as the type invariants say.
    unsafe fn replace(&self, mapping: Option<RequestMapping>) -> Option<RequestMapping> {
        // SAFETY: By the safety requirements, nothing else accesses the slot now.
        unsafe { core::mem::replace(&mut *self.0.get(), mapping) }
    }
}

/// The driver data of a request.
#[pin_data]
struct RequestState {
    mapping: MappingSlot,
    /// Whether the command is with the controller: set at submission, cleared by whoever ends
    /// the request first, its completion or its cancellation.
    in_flight: Atomic<bool>,
    /// NVMe status of the completion, or [`STATUS_CANCELLED`].
    status: Atomic<u32>,
    /// Whether the request timed out once and an Abort was sent.
    aborted: Atomic<bool>,
    /// Index of the I/O queue of the command.
    queue: Atomic<u32>,
}

/// A bound controller, the queue data of its disk.
#[pin_data]
struct Controller {
    pdev: ARef<pci::Device>,
    admin: Arc<Admin>,
    io: KVec<Arc<IoQueue>>,
    tagset: Arc<TagSet<NvmeQueues>>,
    identity: Identity,
    health: Atomic<u32>,
    /// Serializes resets.
    #[pin]
    reset: Mutex<()>,
    stats: ControllerStats,
}

impl Controller {
    /// Returns the bound device.
    fn device(&self) -> &'static device::Device<Bound> {
        // SAFETY: A `Controller` is the queue data of the disk or is held by the driver data of
        // the bound device; everything that uses it here (requests, interrupts, the admin
        // commands of probe and unbind) ends before unbind returns: the disk is deleted, the
        // interrupts freed and the queues dropped in `NvmeDriver::unbind` and when the driver
        // data goes, which the driver core does before the device is unbound. The `'static` is
        // the `RequestMapping`'s, under the same rule.
        unsafe { &*core::ptr::from_ref(self.pdev.as_ref().as_bound()) }
    }

    fn bar(&self) -> Result<&pci::Bar<'_, BAR_SIZE>> {
        self.admin.bar()
    }

    /// Returns the shadow doorbells of the I/O queues, if the controller takes them.
    fn shadow(&self) -> Option<&ShadowDoorbells> {
        self.admin
            .shadow
            .as_deref()
            .filter(|_| self.identity.shadow_doorbells)
    }

    fn health(&self) -> Health {
        match self.health.load(Relaxed) {
            0 => Health::Live,
            1 => Health::Resetting,
            _ => Health::Lost,
        }
    }

    fn set_health(&self, health: Health) {
        self.health.store(health as u32, Release);
    }

    fn queue(&self, index: u32) -> Result<&IoQueue> {
        self.io
            .get(usize::from_safe_cast(index))
            .map(|queue| &**queue)
            .ok_or(EINVAL)
    }

    /// Ends the requests whose completions are new on I/O queue `index`.
    fn reap(&self, index: u32) -> usize {
        let (Ok(queue), Ok(bar)) = (self.queue(index), self.bar()) else {
            return 0;
        };
        // Requests that completed without error end together once the completion queue is
        // reaped, as the C driver does.
        let mut batch = mq::CompletionBatch::new();
        let reaped = queue.pair.reap(bar, |completion| {
            // A completion of no request in flight (a command cancelled by a reset) is dropped.
            let Some(rq) = self.tagset.tag_to_rq(index, u32::from(completion.id)) else {
                return;
            };
            // Fault injection: the completion is dropped, as if lost; the timeout handler's
            // Abort then finds no command, and the controller is reset.
            if rq.should_fake_timeout() {
                return;
            }
            let state = rq.data();
            if !state.in_flight.xchg(false, Full) {
                return;
            }
            state.status.store(completion.status, Relaxed);
            if completion.status != 0 {
                add_to(&self.stats.failed_requests, 1);
                mq::Request::complete(rq);
                return;
            }
            // Unmap first: the mapping holds a reference to the request.
            // SAFETY: Clearing `in_flight` made this path the owner of the command.
            drop(unsafe { state.mapping.replace(None) });
            // A concurrent lookup holds a reference: `complete` waits for it.
            if let Err(rq) = batch.end_ok(rq) {
                mq::Request::complete(rq);
            }
        });
        drop(batch);
        reaped
    }

    /// Fails every request whose command is with the controller: it no longer processes them
    /// (disabled or bus mastering off).
    fn cancel_all(&self) {
        self.tagset.for_each_busy(|rq| {
            let state = rq.data();
            // Whoever clears `in_flight` ends the request: here, not the completion path.
            if state.in_flight.xchg(false, Full) {
                add_to(&self.stats.failed_requests, 1);
                state.status.store(STATUS_CANCELLED, Relaxed);
                mq::Request::complete(ARef::from(rq));
            }
            true
        });
    }

    /// Waits for the submissions in progress: after the health changed, those that were past
    /// its check are in their queues once each submission lock was free once.
    fn drain_submissions(&self) {
        for queue in &self.io {
            drop(queue.pair.tail.lock());
        }
    }

    /// Sends an Abort for the command of `rq`.
    fn abort(&self, rq: &mq::Request<NvmeQueues>, queue: u32) -> Result {
        let sqid = queue + 1;
        let result =
            self.admin
                .execute(Command::admin(ADMIN_ABORT, 0, sqid | rq.tag() << 16, 0))?;
        add_to(&self.stats.aborts, 1);
        // Bit 0 of dword 0 clear: the command was aborted.
        if result & 1 == 0 {
            Ok(())
        } else {
            Err(ENOENT)
        }
    }

    /// Resets the controller: disables it, fails the requests in flight, enables it and creates
    /// its I/O queues again. A controller that does not come back is lost.
    fn reset_controller(&self) {
        let _serialized = self.reset.lock();
        if self.health() != Health::Live {
            return;
        }
        add_to(&self.stats.resets, 1);
        self.set_health(Health::Resetting);
        dev_warn!(self.pdev, "resetting the controller\n");
        self.drain_submissions();
        let result = self.disable().and_then(|()| {
            self.cancel_all();
            self.enable()
        });
        match result {
            Ok(()) => self.set_health(Health::Live),
            Err(e) => {
                dev_err!(self.pdev, "controller lost ({e:?})\n");
                self.lose();
            }
        }
    }

    /// Declares the controller lost: stops its DMA, then fails what it had.
    fn lose(&self) {
        if self.health.xchg(Health::Lost as u32, Full) != Health::Lost as u32 {
            add_to(&self.stats.losses, 1);
        }
        self.drain_submissions();
        if let Ok(bar) = self.bar() {
            bar.write32(0, REG_CC);
        }
        // The controller may still be processing commands: only with bus mastering off may
        // their memory be unmapped and their list pages reused.
        self.admin.clear_master();
        self.cancel_all();
    }

    /// Disables the controller; with `CSTS.RDY` clear it processes no command.
    fn disable(&self) -> Result {
        let bar = self.bar()?;
        bar.write32(0, REG_CC);
        wait_status(bar, CSTS_READY, 0, self.admin.registers.ready_timeout)
    }

    /// Enables a disabled controller with empty queues, and creates the I/O queues.
    fn enable(&self) -> Result {
        let admin = &self.admin;
        if let Some(shadow) = self.shadow() {
            shadow.disabled();
        }
        admin.queue.pair.clear();
        start_controller(&admin.registers, admin.bar()?, &admin.queue.pair)?;
        // CAST: at most `MAX_IO_QUEUES`.
        let count = self.io.len() as u32;
        if request_queues(admin, count)? < count {
            return Err(ENODEV);
        }
        for queue in &self.io {
            queue.pair.clear();
            create_io_queue(admin, &queue.pair)?;
        }
        if let Some(shadow) = self.shadow() {
            shadow.configure(admin);
        }
        Ok(())
    }

    /// Describes the DMA ranges of `mapping` for `command` into `lists` (at `lists_addr`), with
    /// PRPs or SGLs.
    ///
    /// Returns [`EINVAL`] where the DMA ranges break the controller's rules (which the queue
    /// limits rule out): PRP entries must be 4-byte aligned, all but the first start a page, all
    /// but the last end one; SGL data blocks must be 4-byte aligned and sized if the controller
    /// says so.
    fn describe(
        &self,
        mapping: &RequestMapping,
        command: &mut Command,
        lists_addr: u64,
        lists: &mut [u64],
        stats: &RequestStats,
    ) -> Result {
        let ranges = mapping.dma_ranges();
        let size = mapping.size();
        let use_sgl = match self.identity.sgl {
            Some(dword_aligned) => {
                let mean = size.checked_div(ranges.len()).unwrap_or(0);
                (mean >= SGL_THRESHOLD).then_some(dword_aligned)
            }
            None => None,
        };
        match use_sgl {
            None => {
                let page = u64::from_safe_cast(CTRL_PAGE);
                let limits = SegmentLimits::new(CTRL_PAGE, page - 1, CTRL_PAGE)?;
                let count = Split::new(ranges.iter().copied(), limits).count();
                let mut entries = Split::new(ranges.iter().copied(), limits).enumerate();
                let Some((_, first)) = entries.next() else {
                    return Err(EINVAL);
                };
                let offset_mask = page - 1;
                let check = |i: usize, entry: &DmaRange| {
                    let (start, end) = (entry.dma_addr(), entry.end());
                    let inner_start = i > 0 && start & offset_mask != 0;
                    let inner_end = i + 1 < count && end & offset_mask != 0;
                    if start & 3 != 0 || inner_start || inner_end {
                        Err(EINVAL)
                    } else {
                        Ok([start])
                    }
                };
                check(0, &first)?;
                let (prp2, list_pages) = match count {
                    1 => (0, 0),
                    2 => {
                        let (i, second) = entries.next().ok_or(EINVAL)?;
                        (check(i, &second)?[0], 0)
                    }
                    _ => {
                        let rest = entries.map(|(i, entry)| check(i, &entry));
                        (
                            lists_addr,
                            chain(lists, lists_addr, count - 1, rest, |next, _| Ok([next]))?,
                        )
                    }
                };
                command.set_pointer(first.dma_addr(), prp2);
                add_to(&stats.prp_entries, u64::from_safe_cast(count));
                add_to(&stats.prp_list_pages, u64::from_safe_cast(list_pages));
            }
            Some(dword_aligned) => {
                let limits = segment_limits(self.device(), CTRL_PAGE)?;
                let count = Split::new(ranges.iter().copied(), limits).count();
                let mut blocks = Split::new(ranges.iter().copied(), limits).map(|range| {
                    let addr = range.dma_addr();
                    if dword_aligned && (addr & 3 != 0 || range.size() & 3 != 0) {
                        return Err(EINVAL);
                    }
                    sgl_descriptor(addr, range.size(), SGL_DATA_BLOCK)
                });
                let list_pages = if count == 1 {
                    command.set_sgl(blocks.next().ok_or(EINVAL)??);
                    0
                } else {
                    let pages = chain(lists, lists_addr, count, blocks, segment_descriptor)?;
                    command.set_sgl(segment_descriptor(lists_addr, count)?);
                    pages
                };
                add_to(&stats.sgl_data_blocks, u64::from_safe_cast(count));
                add_to(&stats.sgl_segments, u64::from_safe_cast(list_pages));
            }
        }
        Ok(())
    }

    /// Maps the data of `rq` and builds its read or write command.
    fn map_request(
        &self,
        queue: &IoQueue,
        rq: &ARef<mq::Request<NvmeQueues>>,
        opcode: u8,
    ) -> Result<(Command, RequestMapping)> {
        let memory = RequestMemory::new(rq.clone())?;
        let direction = memory.direction();
        let mapping = DmaMapping::new(
            self.device(),
            memory,
            direction,
            Attrs::default(),
            GFP_ATOMIC,
        )?;
        let (lba, blocks) = self.blocks_of(rq)?;
        let mut command = Command::blocks(opcode, lba, blocks);
        if rq.is_fua() {
            command.0[12] |= RW_FUA;
        }
        // SAFETY: The driver owns `rq`, whose command is not submitted yet.
        let (lists_addr, lists) = unsafe { queue.lists_of(rq.tag())? };
        let stats = &queue.stats;
        self.describe(&mapping, &mut command, lists_addr, lists, stats)?;

        let path = match mapping.path() {
            DmaPath::Iova => 0,
            DmaPath::Iommu => 1,
            DmaPath::Direct => 2,
            DmaPath::Bounce => 3,
        };
        add_to(&stats.mappings[path], 1);
        add_to(
            &stats.dma_ranges,
            u64::from_safe_cast(mapping.dma_ranges().len()),
        );
        // `DmaMapping` syncs the IOTLB once per IOVA mapping, after linking all of it.
        add_to(&stats.iotlb_syncs, u64::from(path == 0));
        Ok((command, mapping))
    }

    /// Returns the first logical block and the number of blocks of `rq`.
    fn blocks_of(&self, rq: &mq::Request<NvmeQueues>) -> Result<(u64, u32)> {
        let shift = self.identity.block_shift;
        let blocks = rq.bytes() >> shift;
        if blocks == 0 || rq.bytes() & ((1 << shift) - 1) != 0 {
            return Err(EINVAL);
        }
        Ok((rq.sector() >> (shift - 9), blocks))
    }

    /// Builds the command of `rq` and submits it; on error, nothing of it is left mapped.
    fn queue_request(&self, queue: &IoQueue, rq: ARef<mq::Request<NvmeQueues>>) -> Result {
        // A lost controller may still read the list pages of its last commands: map nothing and
        // write nothing for it. Checked again, under the submission lock, before the doorbell.
        match self.health() {
            Health::Live => {}
            Health::Resetting => return Err(RETRY_LATER),
            Health::Lost => return Err(EIO),
        }
        let stats = &queue.stats;
        let (command, mapping) = match rq.command() {
            BlockCommand::Read => {
                let (command, mapping) = self.map_request(queue, &rq, IO_READ)?;
                add_to(&stats.read_bytes, u64::from(rq.bytes()));
                (command, Some(mapping))
            }
            BlockCommand::Write => {
                let (command, mapping) = self.map_request(queue, &rq, IO_WRITE)?;
                add_to(&stats.write_bytes, u64::from(rq.bytes()));
                (command, Some(mapping))
            }
            BlockCommand::Flush => {
                add_to(&stats.flushes, 1);
                (Command::new(IO_FLUSH, NAMESPACE), None)
            }
            BlockCommand::Discard if self.identity.discard => {
                let (lba, blocks) = self.blocks_of(&rq)?;
                // SAFETY: The driver owns `rq`, whose command is not submitted yet.
                let (lists_addr, lists) = unsafe { queue.lists_of(rq.tag())? };
                // One range (the queue takes one discard segment): context attributes, length in
                // blocks, first block.
                lists[0] = (u64::from(blocks) << 32).to_le();
                lists[1] = lba.to_le();
                let mut command =
                    Command::admin(IO_DATASET_MANAGEMENT, lists_addr, 0, DSM_DEALLOCATE);
                command.0[1] = NAMESPACE;
                add_to(&stats.discards, 1);
                (command, None)
            }
            BlockCommand::WriteZeroes if self.identity.write_zeroes => {
                let (lba, blocks) = self.blocks_of(&rq)?;
                let mut command = Command::blocks(IO_WRITE_ZEROES, lba, blocks);
                // Deallocating is only allowed where deallocated blocks read as zeroes.
                if !rq.is_no_unmap() && self.identity.deallocated_reads_zeroes {
                    command.0[12] |= WRITE_ZEROES_DEALLOCATE;
                }
                add_to(&stats.write_zeroes, 1);
                (command, None)
            }
            _ => return Err(EOPNOTSUPP),
        };
        add_to(&stats.requests, 1);

        let bar = self.bar()?;
        let state = rq.data();
        state.status.store(0, Relaxed);
        state.aborted.store(false, Relaxed);
        state.queue.store(queue.index, Relaxed);
        // SAFETY: `queue_rq` owns the command until it sets `in_flight`.
        unsafe { state.mapping.replace(mapping) };
        // CAST: tags are less than `IO_ENTRIES`.
        let tag = rq.tag() as u16;
        queue.pair.submit(bar, command, tag, move || {
            // Checked under the submission lock, which a reset takes after it leaves `Live`: a
            // command is either submitted before the reset or not at all.
            let state = rq.data();
            let health = self.health();
            if health != Health::Live {
                // Not submitted: no completion will come.
                // SAFETY: Not submitted: `queue_rq` still owns the command.
                drop(unsafe { state.mapping.replace(None) });
                return Err(if health == Health::Lost {
                    EIO
                } else {
                    RETRY_LATER
                });
            }
            state.in_flight.store(true, Release);
            // Dropped before the doorbell: the completion ends the request, so from then on the
            // driver holds no reference to it but the mapping's.
            Ok(rq)
        })
    }
}

/// What `queue_rq` returns to have the block layer retry a request later (`BLK_STS_RESOURCE`):
/// while the controller resets, and when a mapping finds no memory.
const RETRY_LATER: Error = ENOMEM;

/// The controller's registers and admin queue: what probe needs before the I/O queues exist.
#[pin_data(PinnedDrop)]
struct Admin {
    pdev: ARef<pci::Device>,
    registers: Registers,
    #[pin]
    queue: AdminQueue,
    /// Shadow doorbells for the I/O queues, if the controller's doorbells fit in them.
    shadow: Option<Arc<ShadowDoorbells>>,
}

impl Admin {
    fn device(&self) -> &device::Device<Bound> {
        // SAFETY: As in `Controller::device()`: `Admin` lives in the driver data and the
        // controller, both gone when unbind completes.
        unsafe { self.pdev.as_ref().as_bound() }
    }

    /// Stops the controller's DMA at the PCI level.
    fn clear_master(&self) {
        if let Ok(pdev) = <&pci::Device<Bound>>::try_from(self.device()) {
            pdev.clear_master();
        }
    }

    fn bar(&self) -> Result<&pci::Bar<'_, BAR_SIZE>> {
        self.registers.bar.access(self.device())
    }

    /// Runs an admin command and returns dword 0 of its completion.
    ///
    /// Returns [`ETIMEDOUT`] if it does not complete within [`ADMIN_TIMEOUT`], [`EIO`] if the
    /// controller failed it.
    fn execute(&self, command: Command) -> Result<u32> {
        let queue = &self.queue;
        let _serialized = queue.command.lock();
        let bar = self.bar()?;
        // CAST: identifiers are 16 bits and wrap around.
        let id = queue.next_id.fetch_add(1, Relaxed) as u16;
        *queue.done.lock() = None;
        let opcode = command_opcode(&command);
        queue.pair.submit(bar, command, id, || Ok(()))?;
        let mut left = msecs_to_jiffies(u32::try_from(ADMIN_TIMEOUT.as_millis())?);
        let mut done = queue.done.lock();
        let completion = loop {
            match done.take() {
                Some(completion) if completion.id == id => break completion,
                // A late completion of a command that timed out.
                Some(_) => continue,
                None => {}
            }
            match queue.completed.wait_interruptible_timeout(&mut done, left) {
                CondVarTimeoutResult::Timeout => return Err(ETIMEDOUT),
                CondVarTimeoutResult::Woken { jiffies } => left = jiffies,
                CondVarTimeoutResult::Signal { jiffies } => {
                    // The command must complete before its memory goes: wait on.
                    left = jiffies;
                    drop(done);
                    fsleep(Delta::from_millis(1));
                    done = queue.done.lock();
                }
            }
        };
        if completion.status != 0 {
            dev_err!(
                self.pdev,
                "admin command {opcode:#x} failed with status {:#x}\n",
                completion.status
            );
            return Err(EIO);
        }
        Ok(completion.result)
    }
}

#[pinned_drop]
impl PinnedDrop for Admin {
    fn drop(self: Pin<&mut Self>) {
        // Last of the controller's parts to go: stop the controller before its queues are
        // freed. No command is in flight (the disk is gone, or probe failed before it existed),
        // unless one timed out: then only a controller that reports itself disabled, or bus
        // mastering cleared, keeps the memory safe.
        // Dropped with the driver data or in unbind: the device is still bound, and the BAR is
        // accessed without the RCU read lock of `try_access()`, since waiting sleeps.
        let Ok(bar) = self.bar() else {
            return;
        };
        bar.write32(0, REG_CC);
        if wait_status(bar, CSTS_READY, 0, self.registers.ready_timeout).is_err() {
            self.clear_master();
        }
    }
}

fn command_opcode(command: &Command) -> u32 {
    command.0[0] & 0xff
}

/// The admin queue, one command at a time, completed by the admin interrupt.
#[pin_data]
struct AdminQueue {
    #[pin]
    pair: QueuePair,
    /// Identifier of the next command, in its low 16 bits.
    next_id: Atomic<u32>,
    /// Serializes the commands.
    #[pin]
    command: Mutex<()>,
    /// The last completion, set by the interrupt handler.
    #[pin]
    done: SpinLockIrq<Option<Completion>>,
    #[pin]
    completed: CondVar,
}

/// The interrupt handler of the admin queue.
struct AdminInterrupt(Arc<Admin>);

impl irq::Handler for AdminInterrupt {
    fn handle(&self) -> IrqReturn {
        let admin = &self.0;
        let Ok(bar) = admin.bar() else {
            return IrqReturn::None;
        };
        let queue = &admin.queue;
        let count = queue.pair.reap(bar, |completion| {
            *queue.done.lock() = Some(completion);
            queue.completed.notify_all();
        });
        if count > 0 {
            IrqReturn::Handled
        } else {
            IrqReturn::None
        }
    }
}

/// The interrupt handler of an I/O queue.
struct IoInterrupt {
    controller: Arc<Controller>,
    index: u32,
}

impl irq::Handler for IoInterrupt {
    fn handle(&self) -> IrqReturn {
        if self.controller.reap(self.index) > 0 {
            IrqReturn::Handled
        } else {
            IrqReturn::None
        }
    }
}

/// Asks for `wanted` I/O queue pairs (Set Features, Number of Queues) and returns how many the
/// controller grants, at most `wanted`.
fn request_queues(admin: &Admin, wanted: u32) -> Result<u32> {
    let granted = admin.execute(Command::admin(
        ADMIN_SET_FEATURES,
        0,
        FEATURE_NUMBER_OF_QUEUES,
        (wanted - 1) << 16 | (wanted - 1),
    ))?;
    // Both fields count from zero: submission queues, completion queues.
    Ok(wanted.min((granted & 0xffff) + 1).min((granted >> 16) + 1))
}

/// Resets and enables the controller with its admin queue.
fn start_controller(
    registers: &Registers,
    bar: &pci::Bar<'_, BAR_SIZE>,
    admin: &QueuePair,
) -> Result {
    if bar.read32(REG_CC) & CC_ENABLE != 0 {
        bar.write32(0, REG_CC);
    }
    wait_status(bar, CSTS_READY, 0, registers.ready_timeout)?;
    let size = u32::from(admin.entries - 1);
    bar.write32(size << 16 | size, REG_AQA);
    for (addr, low, high) in [
        (admin.submissions.dma_address(), REG_ASQ_LO, REG_ASQ_HI),
        (admin.completions.dma_address(), REG_ACQ_LO, REG_ACQ_HI),
    ] {
        // CAST: the halves of a 64-bit address.
        bar.write32(addr as u32, low);
        bar.write32((addr >> 32) as u32, high);
    }
    bar.write32(CC_CONFIG | CC_ENABLE, REG_CC);
    wait_status(bar, CSTS_READY, CSTS_READY, registers.ready_timeout)
}

/// Creates the completion queue (interrupt vector = its identifier) and the submission queue of
/// `pair` on the controller.
fn create_io_queue(admin: &Admin, pair: &QueuePair) -> Result {
    let (id, size) = (u32::from(pair.id), u32::from(pair.entries - 1));
    // Physically contiguous, interrupts enabled on vector `id`.
    let create_cq = Command::admin(
        ADMIN_CREATE_CQ,
        pair.completions.dma_address(),
        size << 16 | id,
        id << 16 | 1 << 1 | 1,
    );
    admin.execute(create_cq)?;
    let create_sq = Command::admin(
        ADMIN_CREATE_SQ,
        pair.submissions.dma_address(),
        size << 16 | id,
        id << 16 | 1,
    );
    admin.execute(create_sq)?;
    Ok(())
}

/// Whether the controller behind `bar` is gone: its registers read as all ones (removed), or
/// `CAP` reads as zero, which no controller has (`CAP.MQES` is at least 1): its memory decoding
/// is off, or it stopped answering.
fn controller_gone(bar: &pci::Bar<'_, BAR_SIZE>) -> bool {
    bar.read32(REG_CSTS) == GONE || bar.read32(REG_CAP_LO) == 0
}

/// Waits until the status register's bits `mask` read `value`; [`EIO`] on a fatal status or a
/// removed device.
fn wait_status(bar: &pci::Bar<'_, BAR_SIZE>, mask: u32, value: u32, timeout: Delta) -> Result {
    let status = read_poll_timeout(
        || Ok(bar.read32(REG_CSTS)),
        |status| status & mask == value || status & CSTS_FATAL != 0,
        Delta::from_millis(1),
        timeout,
    )?;
    if status == GONE || status & mask != value {
        return Err(EIO);
    }
    Ok(())
}

/// Returns an SGL descriptor of `kind` for `size` bytes at `addr`.
fn sgl_descriptor(addr: u64, size: usize, kind: u8) -> Result<[u64; 2]> {
    let size = u64::from(u32::try_from(size)?);
    Ok([addr, size | u64::from(kind) << 56])
}

/// Returns the SGL descriptor of the segment at `addr` that holds the first of `remaining`
/// data block descriptors: the last segment if they all fit in it.
fn segment_descriptor(addr: u64, remaining: usize) -> Result<[u64; 2]> {
    let per_page = CTRL_PAGE / SGL_DESCRIPTOR_SIZE;
    if remaining <= per_page {
        sgl_descriptor(addr, remaining * SGL_DESCRIPTOR_SIZE, SGL_LAST_SEGMENT)
    } else {
        sgl_descriptor(addr, CTRL_PAGE, SGL_SEGMENT)
    }
}

/// Writes `count` items, PRP entries or SGL descriptors of `N` 64-bit words, into the list pages
/// at `lists_addr`. Where a page is full and more than one item is left, its last slot takes
/// `pointer(address of the next page, items left)`. Returns the number of pages used, or
/// [`E2BIG`] if they do not fit.
fn chain<const N: usize>(
    lists: &mut [u64],
    lists_addr: u64,
    count: usize,
    items: impl Iterator<Item = Result<[u64; N]>>,
    pointer: impl Fn(u64, usize) -> Result<[u64; N]>,
) -> Result<usize> {
    let per_page = CTRL_PAGE / (8 * N);
    let mut slots = lists.chunks_exact_mut(N);
    let mut used = 0;
    for (i, item) in items.enumerate() {
        let left = count - i;
        if used % per_page == per_page - 1 && left > 1 {
            let next = lists_addr + u64::from_safe_cast((used + 1) * 8 * N);
            put_le(slots.next(), pointer(next, left)?)?;
            used += 1;
        }
        put_le(slots.next(), item?)?;
        used += 1;
    }
    Ok(used.div_ceil(per_page))
}

/// Writes `words` little-endian into `slot`; [`E2BIG`] if there is no slot left.
fn put_le<const N: usize>(slot: Option<&mut [u64]>, words: [u64; N]) -> Result {
    for (dst, src) in slot.ok_or(E2BIG)?.iter_mut().zip(words) {
        *dst = src.to_le();
    }
    Ok(())
}

/// The blk-mq operations of the disks.
struct NvmeQueues;

#[vtable]
impl Operations for NvmeQueues {
    type QueueData = Arc<Controller>;
    type HwData = Arc<IoQueue>;
    type RequestData = RequestState;

    fn new_request_data() -> impl PinInit<RequestState, Error> {
        try_pin_init!(RequestState {
            mapping: MappingSlot(UnsafeCell::new(None)),
            in_flight: Atomic::new(false),
            status: Atomic::new(0),
            aborted: Atomic::new(false),
            queue: Atomic::new(0),
        }? Error)
    }

    fn init_hctx(controller: ArcBorrow<'_, Controller>, hctx_idx: u32) -> Result<Arc<IoQueue>> {
        controller
            .io
            .get(usize::from_safe_cast(hctx_idx))
            .cloned()
            .ok_or(EINVAL)
    }

    fn queue_rq(
        queue: ArcBorrow<'_, IoQueue>,
        controller: ArcBorrow<'_, Controller>,
        rq: ARef<mq::Request<Self>>,
        _is_last: bool,
    ) -> Result {
        controller.queue_request(&queue, rq).inspect_err(|&e| {
            if e != RETRY_LATER {
                add_to(&controller.stats.failed_requests, 1);
            }
        })
    }

    fn commit_rqs(_queue: ArcBorrow<'_, IoQueue>, _controller: ArcBorrow<'_, Controller>) {}

    fn complete(rq: ARef<mq::Request<Self>>) {
        let state = rq.data();
        // Unmap first: the mapping holds a reference to the request.
        // SAFETY: The completion owns the command: whoever cleared `in_flight` passed it on.
        drop(unsafe { state.mapping.replace(None) });
        let result = match state.status.load(Relaxed) {
            0 => Ok(()),
            _ => Err(EIO),
        };
        // A concurrent lookup (`tag_to_rq()` of a completion that lost the race for
        // `in_flight`) may hold a reference for a moment, with interrupts off: wait for it.
        let mut rq = rq;
        while let Err(back) = mq::Request::end(rq, result) {
            rq = back;
            kernel::processor::cpu_relax();
        }
    }

    fn timeout(controller: ArcBorrow<'_, Controller>, rq: &mq::Request<Self>) -> TimeoutAction {
        let state = rq.data();
        let index = state.queue.load(Relaxed);
        add_to(&controller.stats.timeouts, 1);
        match controller.health() {
            Health::Resetting => return TimeoutAction::ResetTimer,
            // Bus mastering is off: what the controller had was failed, or is failed now.
            Health::Lost => {
                controller.cancel_all();
                return TimeoutAction::Done;
            }
            Health::Live => {}
        }
        // A completion whose interrupt did not come?
        controller.reap(index);
        if !state.in_flight.load(Relaxed) {
            return TimeoutAction::Done;
        }
        if controller.bar().map_or(true, controller_gone) {
            dev_err!(controller.pdev, "controller gone\n");
            controller.lose();
            return TimeoutAction::Done;
        }
        if !state.aborted.xchg(true, Relaxed) {
            dev_warn!(
                controller.pdev,
                "command {} of queue {} timed out, aborting it\n",
                rq.tag(),
                index + 1
            );
            if controller.abort(rq, index).is_ok() {
                return TimeoutAction::ResetTimer;
            }
            // The Abort found no command: did it complete meanwhile?
            controller.reap(index);
            if !state.in_flight.load(Relaxed) {
                return TimeoutAction::Done;
            }
        }
        controller.reset_controller();
        TimeoutAction::Done
    }
}

/// Reads Identify Controller and Identify Namespace 1 into a buffer mapped like any other.
fn identify(admin: &Admin) -> Result<Identity> {
    let dev = admin.device();
    let read = |cns: u32, nsid: u32| -> Result<KVec<u8>> {
        let buffer = KernelBuffer::new(KVec::from_elem(0u8, CTRL_PAGE, GFP_KERNEL)?, GFP_KERNEL)?;
        let mapping = DmaMapping::new(
            dev,
            buffer,
            DataDirection::FromDevice,
            Attrs::default(),
            GFP_KERNEL,
        )?;
        let [range] = mapping.dma_ranges() else {
            return Err(EINVAL);
        };
        let mut command = Command::admin(ADMIN_IDENTIFY, range.dma_addr(), cns, 0);
        command.0[1] = nsid;
        // A page-aligned page: one PRP.
        if range.dma_addr() % u64::from_safe_cast(CTRL_PAGE) != 0 {
            return Err(EINVAL);
        }
        match admin.execute(command) {
            Ok(_) => Ok(mapping.into_memory().into_inner()),
            Err(e) => {
                // A command that timed out may still write the page: disable the controller
                // before the mapping goes.
                if let Ok(bar) = admin.bar() {
                    bar.write32(0, REG_CC);
                    if wait_status(bar, CSTS_READY, 0, admin.registers.ready_timeout).is_err() {
                        admin.clear_master();
                    }
                }
                Err(e)
            }
        }
    };
    let controller = read(IDENTIFY_CONTROLLER, 0)?;
    let namespace = read(IDENTIFY_NAMESPACE, NAMESPACE)?;
    // Fixed-size views: every offset below is checked at compile time.
    fn page(data: &[u8]) -> Result<&[u8; CTRL_PAGE]> {
        data.try_into().map_err(|_| EIO)
    }
    let (controller, namespace) = (page(&controller)?, page(&namespace)?);
    let le16 = |data: &[u8; CTRL_PAGE], at: usize| u16::from_le_bytes([data[at], data[at + 1]]);
    let le32 = |data: &[u8; CTRL_PAGE], at: usize| {
        u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
    };
    let le64 = |data: &[u8; CTRL_PAGE], at| {
        u64::from(le32(data, at)) | u64::from(le32(data, at + 4)) << 32
    };

    // FLBAS: the format in use, bits 6:5 extending it past 16 formats, which are not
    // supported; NLBAF: the number of formats minus one.
    let (flbas, formats) = (namespace[26], namespace[25]);
    let format = flbas & 0xf;
    if flbas & 0x60 != 0 || format > formats {
        dev_err!(admin.pdev, "unsupported LBA format index {flbas:#x}\n");
        return Err(ENODEV);
    }
    let lba_format = le32(namespace, 128 + 4 * usize::from(format));
    let metadata = lba_format & 0xffff;
    let block_shift = (lba_format >> 16) & 0xff;
    let blocks = le64(namespace, 0);
    if metadata != 0 || !(9..=12).contains(&block_shift) || blocks == 0 {
        dev_err!(admin.pdev, "unsupported namespace format {lba_format:#x}\n");
        return Err(ENODEV);
    }
    let max_transfer = match controller[77] {
        0 => MAX_TRANSFER,
        // Beyond 10, still more than `MAX_TRANSFER`.
        mdts => (CTRL_PAGE << mdts.min(10)).min(MAX_TRANSFER),
    };
    // Like nvme-pci: no command larger than what maps as cheaply as smaller mappings.
    let max_transfer = max_transfer.min(opt_mapping_size(dev).max(CTRL_PAGE) & !(CTRL_PAGE - 1));
    // SGLS bits 1:0: 1 for SGLs, 2 for SGLs of 4-byte aligned and sized data blocks.
    let sgl = match le32(controller, 536) & 3 {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    };
    let oncs = le16(controller, 520);
    Ok(Identity {
        block_shift,
        blocks,
        max_transfer,
        sgl,
        volatile_write_cache: controller[525] & 1 != 0,
        discard: oncs & ONCS_DSM != 0,
        write_zeroes: oncs & ONCS_WRITE_ZEROES != 0,
        deallocated_reads_zeroes: namespace[33] & 7 == 1,
        shadow_doorbells: le16(controller, 256) & OACS_DOORBELL_BUFFER_CONFIG != 0,
    })
}

/// The most controllers bound at once: each gets the first free index for its disk's name.
const MAX_CONTROLLERS: usize = 8;
static INDEXES_IN_USE: [Atomic<bool>; MAX_CONTROLLERS] =
    [const { Atomic::new(false) }; MAX_CONTROLLERS];

/// A controller index taken for one controller, given back on drop.
struct ControllerIndex(usize);

impl ControllerIndex {
    /// Takes the first free index; [`EBUSY`] if every index is taken.
    fn take() -> Result<Self> {
        INDEXES_IN_USE
            .iter()
            .position(|in_use| !in_use.xchg(true, Full))
            .map(Self)
            .ok_or(EBUSY)
    }
}

impl Drop for ControllerIndex {
    fn drop(&mut self) {
        INDEXES_IN_USE[self.0].store(false, Release);
    }
}

kernel::sync::global_lock! {
    // SAFETY: Initialized in the module initializer, before the driver is registered.
    unsafe(uninit) static DEBUGFS_ROOT: Mutex<Option<Arc<Dir>>> = None;
}

/// Returns the debugfs directory of the module, `rust_nvme_dma`.
fn debugfs_root() -> Result<Arc<Dir>> {
    let mut root = DEBUGFS_ROOT.lock();
    if let Some(dir) = &*root {
        return Ok(dir.clone());
    }
    let dir = Arc::new(Dir::new(c"rust_nvme_dma"), GFP_KERNEL)?;
    *root = Some(dir.clone());
    Ok(dir)
}

/// The driver data of a bound controller.
#[pin_data]
struct NvmeDevice<'bound> {
    /// Deleted in unbind, before the rest goes.
    #[pin]
    disk: Mutex<Option<GenDisk<NvmeQueues>>>,
    parts: DeviceParts<'bound>,
}

/// The rest of a controller's driver data, dropped in the order of the fields: the controller,
/// the statistics, then the interrupt handlers before their vectors.
struct DeviceParts<'bound> {
    controller: Arc<Controller>,
    _stats: Pin<KBox<File<StatsFile>>>,
    _dir: Dir,
    _root: Arc<Dir>,
    _io_interrupts: KVec<Pin<KBox<irq::Registration<'bound, IoInterrupt>>>>,
    _admin_interrupt: Pin<KBox<irq::Registration<'bound, AdminInterrupt>>>,
    _vectors: KBox<IrqVectorRegistration<'bound>>,
    _index: ControllerIndex,
}

/// PCI class code of NVMe controllers: mass storage, non-volatile memory, NVM Express.
const PCI_CLASS_NVME: u32 = 0x010802;

kernel::pci_device_table!(
    PCI_TABLE,
    <NvmeDriver as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_class(PCI_CLASS_NVME, 0xffffff), ())]
);

struct NvmeDriver;

impl NvmeDriver {
    /// Enables the controller, identifies it, creates its I/O queues and its disk.
    fn start<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
    ) -> Result<(GenDisk<NvmeQueues>, DeviceParts<'bound>)> {
        let dev: &'bound device::Device<Bound> = pdev.as_ref();
        let index = ControllerIndex::take()?;
        pdev.enable_device_mem()?;
        pdev.set_master();
        // SAFETY: Nothing maps or allocates for the device yet.
        unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>())? };
        // PRPs address the controller's pages: swiotlb must keep the offsets within them.
        // SAFETY: As above.
        unsafe { pdev.dma_set_min_align_mask(u32::try_from(CTRL_PAGE - 1)?)? };
        // An SGL data block takes up to 4 GiB - 1; DMA ranges are cut at the device's limits.
        // SAFETY: As above.
        unsafe { pdev.dma_set_max_seg_size(u32::MAX) };
        let bar = pdev
            .iomap_region_sized::<BAR_SIZE>(0, c"rust_nvme_dma")?
            .into_devres()?;
        let regs = bar.access(dev)?;
        let cap = u64::from(regs.read32(REG_CAP_LO)) | u64::from(regs.read32(REG_CAP_HI)) << 32;
        let nvm_command_set = cap & (1 << 37) != 0;
        let min_page_shift = 12 + ((cap >> 48) & 0xf);
        if !nvm_command_set || min_page_shift != 12 {
            dev_err!(pdev, "unsupported controller capabilities {cap:#x}\n");
            return Err(ENODEV);
        }
        // CAST: masked to 8 bits, in 500 ms units.
        let ready_timeout = Delta::from_millis(500 * ((cap >> 24) & 0xff).max(1) as i64);
        // CAST: masked to 4 bits.
        let stride = 4 << ((cap >> 32) & 0xf) as usize;
        // CAST: masked to 16 bits; the field is the number of entries minus one.
        let max_entries = (cap & 0xffff) as u32 + 1;
        let io_entries = u16::try_from(max_entries.min(u32::from(IO_ENTRIES)))?;
        if io_entries < 2 {
            return Err(ENODEV);
        }

        // Allocated before Identify tells whether the controller takes them: without them, the
        // doorbell registers do.
        let shadow_doorbells = ShadowDoorbells::new(dev, stride)
            .and_then(|shadow| {
                Ok(shadow
                    .map(|shadow| Arc::new(shadow, GFP_KERNEL))
                    .transpose()?)
            })
            .unwrap_or_else(|e| {
                dev_warn!(pdev, "no memory for shadow doorbells ({e:?})\n");
                None
            });
        let admin = Arc::pin_init(
            try_pin_init!(Admin {
                pdev: pdev.into(),
                registers: Registers { bar, ready_timeout },
                queue <- try_pin_init!(AdminQueue {
                    pair <- QueuePair::new(dev, 0, ADMIN_ENTRIES, stride, None)?,
                    next_id: Atomic::new(0),
                    command <- new_mutex!(()),
                    done <- new_spinlock_irq!(None),
                    completed <- new_condvar!(),
                }? Error),
                shadow: shadow_doorbells,
            }? Error),
            GFP_KERNEL,
        )?;
        let wanted_queues = MAX_IO_QUEUES.min(usize::from_safe_cast(kernel::cpu::nr_cpu_ids()));
        let msi = IrqTypes::default().with(IrqType::MsiX).with(IrqType::Msi);
        // CAST: at most `MAX_IO_QUEUES + 1`.
        let vectors = KBox::new(
            pdev.alloc_irq_vectors(2, wanted_queues as u32 + 1, msi)?,
            GFP_KERNEL,
        )?;
        // SAFETY: The registration is boxed and stays at its address until it is dropped, after
        // the interrupt handlers that borrow it (the field order of `NvmeDevice`, and the
        // reverse order of the variables below on error), within the binding.
        let vectors_ref: &'bound IrqVectorRegistration<'bound> =
            unsafe { &*core::ptr::from_ref(&*vectors) };

        start_controller(&admin.registers, admin.bar()?, &admin.queue.pair)?;
        // SAFETY: The registration is kept until it is dropped (driver data or error path).
        let admin_interrupt = KBox::pin_init(
            unsafe {
                irq::Registration::new(
                    vectors_ref.index(0)?.into(),
                    irq::Flags::TRIGGER_NONE,
                    c"rust_nvme_dma",
                    Ok::<_, Error>(AdminInterrupt(admin.clone())),
                )
            },
            GFP_KERNEL,
        )?;
        let identity = identify(&admin)?;

        // CAST: at most `MAX_IO_QUEUES`.
        let wanted = (vectors.len() - 1).min(wanted_queues) as u32;
        let count = request_queues(&admin, wanted)?;
        // The doorbells of every queue must be inside the BAR.
        admin
            .bar()?
            .try_read32(DOORBELLS + (2 * usize::from_safe_cast(count) + 1) * stride)
            .map_err(|_| ENODEV)?;
        let shadow = admin.shadow.clone().filter(|_| identity.shadow_doorbells);
        let mut io = KVec::with_capacity(usize::from_safe_cast(count), GFP_KERNEL)?;
        let list_words = usize::from(io_entries - 1) * LIST_PAGES * CTRL_PAGE / 8;
        for index in 0..count {
            // CAST: at most `MAX_IO_QUEUES`.
            let id = index as u16 + 1;
            let queue_shadow = shadow.clone();
            let queue = Arc::pin_init(
                try_pin_init!(IoQueue {
                    index,
                    pair <- QueuePair::new(dev, id, io_entries, stride, queue_shadow)?,
                    lists: Coherent::zeroed_slice(dev, list_words, GFP_KERNEL)?,
                    stats: RequestStats::default(),
                }? Error),
                GFP_KERNEL,
            )?;
            create_io_queue(&admin, &queue.pair)?;
            io.push(queue, GFP_KERNEL)?;
        }
        if let Some(shadow) = &shadow {
            shadow.configure(&admin);
        }
        let tagset = Arc::pin_init(TagSet::new(count, u32::from(io_entries - 1), 1), GFP_KERNEL)?;
        let (controller_admin, controller_tagset) = (admin.clone(), tagset.clone());
        let controller = Arc::pin_init(
            try_pin_init!(Controller {
                pdev: pdev.into(),
                admin: controller_admin,
                io,
                tagset: controller_tagset,
                identity,
                health: Atomic::new(Health::Live as u32),
                reset <- new_mutex!(()),
                stats: ControllerStats::default(),
            }? Error),
            GFP_KERNEL,
        )?;
        let mut io_interrupts = KVec::with_capacity(usize::from_safe_cast(count), GFP_KERNEL)?;
        for index in 0..count {
            let vector = vectors_ref.index(usize::from_safe_cast(index) + 1)?;
            // SAFETY: The registration is kept until it is dropped (driver data or error path).
            let registration = KBox::pin_init(
                unsafe {
                    irq::Registration::new(
                        vector.into(),
                        irq::Flags::TRIGGER_NONE,
                        c"rust_nvme_dma",
                        Ok::<_, Error>(IoInterrupt {
                            controller: controller.clone(),
                            index,
                        }),
                    )
                },
                GFP_KERNEL,
            )?;
            io_interrupts.push(registration, GFP_KERNEL)?;
        }

        // Each queue's completions on the CPUs that submit to it: requests end where they
        // started, without waking another CPU.
        for (queue, registration) in (0..count).zip(&io_interrupts) {
            let mut cpus = CpumaskVar::new_zero(GFP_KERNEL)?;
            for cpu in (0..kernel::cpu::nr_cpu_ids()).filter_map(CpuId::from_u32) {
                if tagset.hw_queue_of_cpu(cpu) == Some(queue) {
                    cpus.set(cpu);
                }
            }
            if !cpus.empty() {
                // Only a cost if it fails: completions then wake the submitting CPU.
                if let Err(e) = registration.set_affinity(&cpus) {
                    dev_warn!(pdev, "queue {} interrupt affinity: {e:?}\n", queue + 1);
                }
            }
        }

        let name = CString::try_from_fmt(fmt!("rnvme{}", index.0))?;
        let root = debugfs_root()?;
        let dir = root.subdir(&name);
        let stats = KBox::pin_init(
            dir.read_only_file(c"stats", StatsFile(controller.clone())),
            GFP_KERNEL,
        )?;

        let identity = &controller.identity;
        let shift = identity.block_shift;
        let block_size = 1 << shift;
        let max_transfer = u32::try_from(identity.max_transfer)?;
        // Discard and write-zeroes lengths are 32 and 16 bits of blocks.
        let max_discard = u32::try_from((u64::from(u32::MAX) << shift) >> 9).unwrap_or(u32::MAX);
        let max_write_zeroes = u32::try_from((1u64 << (16 + shift)) >> 9)?;
        let mut builder = GenDiskBuilder::new()
            .capacity_sectors(identity.blocks << (shift - 9))
            .logical_block_size(block_size)?
            .physical_block_size(block_size)?
            .write_cache(identity.volatile_write_cache, true)
            .max_hw_sectors(max_transfer >> 9)
            .max_segments(u16::try_from(
                MAX_SGL_BLOCKS.min(identity.max_transfer / CTRL_PAGE + 1),
            )?)
            // PRPs: every segment but the first starts a controller page, every one but the
            // last ends one.
            .virt_boundary_mask(CTRL_PAGE - 1)?
            .dma_alignment(3)?;
        if identity.discard {
            builder = builder.max_discard(max_discard, 1);
        }
        if identity.write_zeroes {
            builder = builder.max_write_zeroes_sectors(max_write_zeroes);
        }
        let disk = builder.build_with_parent(
            fmt!("rnvme{}n1", index.0),
            tagset,
            controller.clone(),
            Some(dev),
        )?;
        dev_info!(
            pdev,
            "rnvme{}n1: {} blocks of {block_size} bytes, {count} I/O queues of {} entries, {} bytes per command, SGLs {}\n",
            index.0,
            identity.blocks,
            io_entries,
            max_transfer,
            if identity.sgl.is_some() { "yes" } else { "no" }
        );
        Ok((
            disk,
            DeviceParts {
                controller,
                _stats: stats,
                _dir: dir,
                _root: root,
                _io_interrupts: io_interrupts,
                _admin_interrupt: admin_interrupt,
                _vectors: vectors,
                _index: index,
            },
        ))
    }
}

impl pci::Driver for NvmeDriver {
    type IdInfo = ();
    type Data<'bound> = NvmeDevice<'bound>;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let (disk, parts) = match Self::start(pdev) {
            Ok((disk, parts)) => (Some(disk), Ok(parts)),
            Err(e) => (None, Err(e)),
        };
        try_pin_init!(NvmeDevice {
            parts: parts?,
            disk <- new_mutex!(disk),
        })
    }

    fn unbind<'bound>(_pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        let controller = &this.parts.controller;
        if controller.bar().map_or(true, controller_gone) {
            // Surprise removal: fail what the controller had, instead of waiting for timeouts.
            controller.lose();
        }
        // New requests fail; those in flight complete, or time out and fail.
        let disk = this.disk.lock().take();
        drop(disk);
        if controller.health() != Health::Live {
            return;
        }
        let admin = &controller.admin;
        for queue in controller.io.iter().rev() {
            let id = u32::from(queue.pair.id);
            // Best effort: the controller is disabled when dropped, whatever happens here.
            let _ = admin.execute(Command::admin(ADMIN_DELETE_SQ, 0, id, 0));
            let _ = admin.execute(Command::admin(ADMIN_DELETE_CQ, 0, id, 0));
        }
        if let Ok(bar) = admin.bar() {
            bar.write32(CC_CONFIG | CC_ENABLE | CC_SHUTDOWN_NORMAL, REG_CC);
            let done = wait_status(
                bar,
                CSTS_SHUTDOWN_MASK,
                CSTS_SHUTDOWN_DONE,
                admin.registers.ready_timeout,
            );
            if done.is_err() {
                dev_warn!(
                    controller.pdev,
                    "controller did not complete its shutdown\n"
                );
            }
        }
    }
}

/// The module: the PCI driver, and the debugfs directory its devices share.
#[pin_data(PinnedDrop)]
struct NvmeModule {
    #[pin]
    _driver: kernel::driver::Registration<pci::Adapter<NvmeDriver>>,
}

impl kernel::InPlaceModule for NvmeModule {
    fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: Called once, before the driver is registered.
        unsafe { DEBUGFS_ROOT.init() };
        try_pin_init!(Self {
            _driver <- kernel::driver::Registration::new(c"rust_nvme_dma", module),
        })
    }
}

#[pinned_drop]
impl PinnedDrop for NvmeModule {
    fn drop(self: Pin<&mut Self>) {
        // Bound devices hold the directory until they are unbound, when the driver goes.
        drop(DEBUGFS_ROOT.lock().take());
    }
}

module! {
    type: NvmeModule,
    name: "rust_nvme_dma",
    authors: ["Rust DMA Team"],
    description: "Rust NVMe block driver sample mapping its requests with the Rust DMA API",
    license: "GPL v2",
}
