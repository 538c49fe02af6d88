// SPDX-License-Identifier: GPL-2.0

//! Rust NVMe sample: block I/O whose data buffers are mapped with [`DmaMapping`].
//!
//! Binds NVMe controllers by class code (QEMU's `-device nvme`), resets and enables them,
//! identifies controller and namespace 1, creates one I/O queue pair and polls it: requests are
//! serialized per controller, one command at a time, without interrupts. Each controller gets a
//! misc device, `/dev/rust-nvme-dmaN`, whose ioctls (C header: `samples/rust/rust_nvme_dma.h`)
//! read and write blocks to and from user buffers: pinned with [`UserPhyrs`] and mapped in place,
//! or through a vmalloc'ed or physically contiguous kernel buffer. Every request is mapped once,
//! whatever the DMA backend, then cut into commands of at most MDTS bytes, each described with
//! PRPs (chained PRP lists where a command needs more than one list page) or SGL descriptors
//! (chained segments).
//!
//! The sample and the C `nvme` driver both bind by class code: build only one, or bind the
//! sample with `driver_override`. Documentation: `Documentation/core-api/dma-mapping-rust.rst`.

use kernel::{
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
            DmaMemory,
            DmaPath,
            KernelBuffer, //
        },
        phyr::{
            source::KernelAllocator,
            user::UserPhyrs,
            SegmentLimits,
            Split, //
        },
        Attrs,
        Coherent,
        DataDirection,
        Device as _,
        DmaMask, //
    },
    fs::File,
    io::{
        poll::read_poll_timeout,
        Io, //
    },
    ioctl::{
        _IOC_SIZE,
        _IOR,
        _IOWR, //
    },
    miscdevice::{
        MiscDevice,
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    new_mutex,
    num::casts::FromSafeCast,
    pci::{
        self,
        DevresBar, //
    },
    prelude::*,
    sync::{
        aref::ARef,
        atomic::{
            Atomic,
            Full,
            Release, //
        },
        barrier::{
            dma_mb,
            Read, //
        },
        Arc,
        Mutex, //
    },
    time::Delta,
    transmute::{
        AsBytes,
        FromBytes, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

// Controller registers (NVMe base specification 2.0, 3.1.4).
const REG_CAP_LO: usize = 0x00;
const REG_CAP_HI: usize = 0x04;
const REG_INTMS: usize = 0x0c;
const REG_CC: usize = 0x14;
const REG_CSTS: usize = 0x1c;
const REG_AQA: usize = 0x24;
const REG_ASQ_LO: usize = 0x28;
const REG_ASQ_HI: usize = 0x2c;
const REG_ACQ_LO: usize = 0x30;
const REG_ACQ_HI: usize = 0x34;
const DOORBELLS: usize = 0x1000;
/// The registers and the doorbells of the admin and the I/O queue at the smallest stride.
const BAR_SIZE: usize = DOORBELLS + 16;

const CC_ENABLE: u32 = 1 << 0;
/// 64-byte submission and 16-byte completion queue entries, 4 KiB pages, NVM command set.
const CC_CONFIG: u32 = (6 << 16) | (4 << 20);
const CC_SHUTDOWN_NORMAL: u32 = 1 << 14;
const CSTS_READY: u32 = 1 << 0;
const CSTS_FATAL: u32 = 1 << 1;
const CSTS_SHUTDOWN_MASK: u32 = 3 << 2;
const CSTS_SHUTDOWN_DONE: u32 = 2 << 2;

const ADMIN_DELETE_SQ: u8 = 0x00;
const ADMIN_CREATE_SQ: u8 = 0x01;
const ADMIN_DELETE_CQ: u8 = 0x04;
const ADMIN_CREATE_CQ: u8 = 0x05;
const ADMIN_IDENTIFY: u8 = 0x06;
const IO_WRITE: u8 = 0x01;
const IO_READ: u8 = 0x02;
const IDENTIFY_NAMESPACE: u32 = 0;
const IDENTIFY_CONTROLLER: u32 = 1;
const NAMESPACE: u32 = 1;
/// Data pointer type (PSDT) of a command described by SGLs.
const PSDT_SGL: u32 = 1 << 14;
const SGL_DATA_BLOCK: u8 = 0x00;
const SGL_SEGMENT: u8 = 0x20;
const SGL_LAST_SEGMENT: u8 = 0x30;
const SGL_DESCRIPTOR_SIZE: usize = 16;

/// The controller's memory page size, which PRPs and the queues use.
const CTRL_PAGE: usize = 4096;
const ADMIN_ENTRIES: u16 = 32;
const IO_ENTRIES: u16 = 64;
const IO_QUEUE: u16 = 1;
/// Cap on the bytes of one command, whatever MDTS allows: at any offset, they touch at most 1024
/// pages, the most that QEMU's controller maps for one command.
const MAX_TRANSFER: usize = 1023 * CTRL_PAGE;
/// Data blocks of one SGL command: two segments, the first chaining the second. QEMU's
/// controller rejects some longer chains: it reads the type of the segment it is in from the
/// descriptor that led to it after overwriting that with the segment's own descriptors.
const MAX_SGL_BLOCKS: usize = 2 * (CTRL_PAGE / SGL_DESCRIPTOR_SIZE) - 1;
/// Pages for the lists of the largest command: PRP lists, whose last entry chains the next list
/// where more entries follow, for all its pages but the first; or the two SGL segments.
const LIST_PAGES: usize = {
    let prp_lists = (MAX_TRANSFER / CTRL_PAGE - 1).div_ceil(CTRL_PAGE / 8 - 1);
    if prp_lists > 2 {
        prp_lists
    } else {
        2
    }
};
const MAX_REQUEST: usize = 16 << 20;
const MAX_CONTIGUOUS: usize = 2 << 20;
const COMMAND_TIMEOUT: Delta = Delta::from_secs(30);
const POLL_INTERVAL: Delta = Delta::from_micros(20);

const IO_SGL: u32 = 1 << 0;
const IO_VMALLOC: u32 = 1 << 1;
const IO_CONTIGUOUS: u32 = 1 << 2;

/// `struct rust_nvme_info`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Info {
    serial: [u8; 20],
    model: [u8; 40],
    firmware: [u8; 8],
    pci_vendor: u16,
    sgl: u16,
    block_size: u32,
    max_transfer: u32,
    blocks: u64,
    max_request: u32,
    max_contiguous: u32,
    queue_entries: u32,
    max_sgl_blocks: u32,
}

/// `struct rust_nvme_io`.
#[repr(C)]
#[derive(Clone, Copy)]
struct IoArgs {
    addr: u64,
    len: u64,
    lba: u64,
    flags: u32,
    path: u32,
    dma_ranges: u32,
    commands: u32,
    descriptors: u32,
    list_pages: u32,
}

/// `struct rust_nvme_stats`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Stats {
    commands: u64,
    bytes_written: u64,
    bytes_read: u64,
    mappings: u64,
    dma_ranges: u64,
    paths: [u64; 4],
    iova_syncs: u64,
    prp_entries: u64,
    prp_list_pages: u64,
    sgl_descriptors: u64,
    sgl_segments: u64,
    failed_requests: u64,
}

// SAFETY: `Info`, `IoArgs` and `Stats` are `repr(C)` integers and byte arrays whose size is the
// sum of their fields' sizes (checked below, the sizes of the C header's structs), so they have
// no padding: any bytes are a valid value and all of their bytes are initialized.
unsafe impl FromBytes for Info {}
// SAFETY: See above.
unsafe impl AsBytes for Info {}
// SAFETY: See above.
unsafe impl FromBytes for IoArgs {}
// SAFETY: See above.
unsafe impl AsBytes for IoArgs {}
// SAFETY: See above.
unsafe impl AsBytes for Stats {}

kernel::static_assert!(core::mem::size_of::<Info>() == 104);
kernel::static_assert!(core::mem::size_of::<IoArgs>() == 48);
kernel::static_assert!(core::mem::size_of::<Stats>() == 120);

const RUST_NVME_IOC_INFO: u32 = _IOR::<Info>('|' as u32, 0xa0);
const RUST_NVME_IOC_READ: u32 = _IOWR::<IoArgs>('|' as u32, 0xa1);
const RUST_NVME_IOC_WRITE: u32 = _IOWR::<IoArgs>('|' as u32, 0xa2);
const RUST_NVME_IOC_STATS: u32 = _IOR::<Stats>('|' as u32, 0xa3);

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

/// A submission and completion queue pair in coherent memory, polled for completions.
///
/// # Invariants
///
/// `entries` is at least 2; `submissions` holds `entries` entries of 16 dwords, `completions`
/// `entries` entries of 4 dwords; `tail` and `head` are less than `entries`.
struct Queue {
    /// Queue identifier: 0 for the admin queue.
    id: u16,
    entries: u16,
    submissions: Coherent<[u32]>,
    completions: Coherent<[u32]>,
    /// Next submission slot.
    tail: u16,
    /// Next completion slot.
    head: u16,
    /// Phase tag of the completions expected at `head`.
    phase: bool,
    /// Command identifier of the next command.
    next_id: u16,
}

impl Queue {
    fn new(dev: &device::Device<Bound>, id: u16, entries: u16) -> Result<Self> {
        let entries_usize = usize::from(entries);
        // INVARIANT: sizes as documented and `tail` and `head` at 0; callers pass `ADMIN_ENTRIES`
        // or at least 2, checked against the controller's maximum.
        Ok(Self {
            id,
            entries,
            submissions: Coherent::zeroed_slice(dev, entries_usize * 16, GFP_KERNEL)?,
            completions: Coherent::zeroed_slice(dev, entries_usize * 4, GFP_KERNEL)?,
            tail: 0,
            head: 0,
            phase: true,
            next_id: 0,
        })
    }

    /// Returns the offset of the queue's submission or completion doorbell.
    fn doorbell(&self, stride: usize, completion: bool) -> usize {
        DOORBELLS + (2 * usize::from(self.id) + usize::from(completion)) * stride
    }

    /// Submits `command`, waits for its completion and returns its status (zero on success).
    ///
    /// On error ([`ETIMEDOUT`] after [`COMMAND_TIMEOUT`], [`EIO`] for a completion of another
    /// command, or a doorbell outside the BAR) the command may still be in flight: the caller
    /// must stop the controller before it frees memory that the command could access.
    fn submit(
        &mut self,
        bar: &pci::Bar<'_, BAR_SIZE>,
        stride: usize,
        command: Command,
    ) -> Result<u32> {
        let Command(mut dwords) = command;
        let id = self.next_id;
        // Identifier 0xffff is reserved.
        self.next_id = (id + 1) % 0xffff;
        dwords[0] |= u32::from(id) << 16;
        let entry = self.submissions.as_mut_ptr().cast::<u32>();
        let slot = usize::from(self.tail) * 16;
        for (i, dword) in dwords.iter().enumerate() {
            // SAFETY: `slot + i` is inside the queue (type invariants), and the controller does
            // not read the slot before the doorbell below announces it; volatile since it reads
            // it afterwards.
            unsafe { entry.add(slot + i).write_volatile(dword.to_le()) };
        }
        let tail = (self.tail + 1) % self.entries;
        // `writel()` orders the entry's writes before the doorbell.
        bar.try_write32(u32::from(tail), self.doorbell(stride, false))?;
        // INVARIANT: less than `entries`.
        self.tail = tail;

        let status_dword = usize::from(self.head) * 4 + 3;
        let read_status = || {
            let completion = self.completions.as_ptr().cast::<u32>();
            // SAFETY: `status_dword` is inside the queue (type invariants); the controller writes
            // it, hence the volatile read.
            Ok(u32::from_le(unsafe {
                completion.add(status_dword).read_volatile()
            }))
        };
        let phase = u32::from(self.phase) << 16;
        let status = read_poll_timeout(
            read_status,
            |status| status & (1 << 16) == phase,
            POLL_INTERVAL,
            COMMAND_TIMEOUT,
        )?;
        // Read what the controller wrote for the command only after its completion.
        dma_mb(Read);
        // INVARIANT: less than `entries`.
        self.head = (self.head + 1) % self.entries;
        if self.head == 0 {
            self.phase = !self.phase;
        }
        bar.try_write32(u32::from(self.head), self.doorbell(stride, true))?;
        // One command at a time: the completion is the submitted command's.
        if status & 0xffff != u32::from(id) {
            return Err(EIO);
        }
        Ok((status >> 17) & 0x7ff)
    }
}

/// How a command's data is described to the controller.
#[derive(Clone, Copy)]
enum Descriptors {
    Prp,
    /// SGLs; `dword_aligned` if data blocks must start and end on 4 bytes.
    Sgl {
        dword_aligned: bool,
    },
}

/// The descriptors of one command: PRP entries or SGL data blocks, and list pages.
struct DescriptorCount {
    entries: usize,
    list_pages: usize,
}

/// Namespace and controller facts from Identify.
struct Identity {
    info: Info,
    block_shift: u32,
    /// How SGLs are described, if the controller takes them.
    sgl: Option<Descriptors>,
}

/// What is left of a controller after a command was lost (a timeout).
#[derive(Clone, Copy, PartialEq)]
enum Health {
    Working,
    /// Disabled after a lost command: it reset, aborting the command.
    Stopped,
    /// Disabled after a lost command, but it did not report the reset: the memory of the command
    /// stays allocated and mapped until bus mastering is cleared.
    Hung,
}

/// An enabled controller with its admin and I/O queues.
///
/// # Invariants
///
/// Exists only while the device is bound: [`NvmeDriver::unbind`] stops and drops it. No command
/// is in flight unless `health` is [`Health::Hung`].
struct Controller {
    pdev: ARef<pci::Device>,
    bar: DevresBar<BAR_SIZE>,
    stride: usize,
    timeout: Delta,
    admin: Queue,
    io: Queue,
    /// Pages for PRP lists and SGL segments, enough for the largest command.
    lists: Coherent<[u64]>,
    health: Health,
}

impl Controller {
    /// Resets and enables the controller with its admin queue.
    fn enable(pdev: &pci::Device<Bound>, bar: DevresBar<BAR_SIZE>) -> Result<Self> {
        let dev: &device::Device<Bound> = pdev.as_ref();
        let regs = bar.access(dev)?;
        let cap = u64::from(regs.read32(REG_CAP_LO)) | u64::from(regs.read32(REG_CAP_HI)) << 32;
        let nvm_command_set = cap & (1 << 37) != 0;
        let min_page_shift = 12 + ((cap >> 48) & 0xf);
        if !nvm_command_set || min_page_shift != 12 {
            dev_err!(pdev, "unsupported controller capabilities {cap:#x}\n");
            return Err(ENODEV);
        }
        // CAST: masked to 8 bits, in 500 ms units.
        let timeout = Delta::from_millis(500 * ((cap >> 24) & 0xff).max(1) as i64);
        // CAST: masked to 4 bits.
        let stride = 4 << ((cap >> 32) & 0xf) as usize;
        // CAST: masked to 16 bits; the field is the number of entries minus one.
        let max_entries = (cap & 0xffff) as u32 + 1;
        if max_entries < 2 {
            return Err(ENODEV);
        }
        let io_entries = u16::try_from(max_entries.min(u32::from(IO_ENTRIES)))?;

        if regs.read32(REG_CC) & CC_ENABLE != 0 {
            regs.write32(0, REG_CC);
        }
        wait_status(regs, CSTS_READY, 0, timeout)?;
        // INVARIANT: bound (the caller holds `&Device<Bound>`), disabled, no command.
        let controller = Self {
            pdev: pdev.into(),
            admin: Queue::new(dev, 0, ADMIN_ENTRIES)?,
            io: Queue::new(dev, IO_QUEUE, io_entries)?,
            lists: Coherent::zeroed_slice(dev, CTRL_PAGE / 8 * LIST_PAGES, GFP_KERNEL)?,
            bar,
            stride,
            timeout,
            health: Health::Working,
        };
        let regs = controller.bar.access(dev)?;
        // The doorbells of both queues must be inside the BAR.
        regs.try_read32(controller.io.doorbell(stride, true))
            .map_err(|_| ENODEV)?;

        // Polled: mask the pin-based interrupt; MSI and MSI-X stay disabled.
        regs.write32(u32::MAX, REG_INTMS);
        let size = u32::from(ADMIN_ENTRIES - 1);
        regs.write32(size << 16 | size, REG_AQA);
        for (addr, low, high) in [
            (
                controller.admin.submissions.dma_address(),
                REG_ASQ_LO,
                REG_ASQ_HI,
            ),
            (
                controller.admin.completions.dma_address(),
                REG_ACQ_LO,
                REG_ACQ_HI,
            ),
        ] {
            // CAST: the halves of a 64-bit address.
            regs.write32(addr as u32, low);
            regs.write32((addr >> 32) as u32, high);
        }
        regs.write32(CC_CONFIG | CC_ENABLE, REG_CC);
        // On error, dropping `controller` disables it again.
        wait_status(regs, CSTS_READY, CSTS_READY, timeout)?;
        Ok(controller)
    }

    /// Submits `command` to the admin or the I/O queue and waits for its completion.
    ///
    /// Returns [`EIO`] if the controller failed the command or was stopped before. A command
    /// that may still be in flight (timeout) disables the controller; the caller must not free
    /// the command's memory if it is then [`Health::Hung`].
    fn execute(&mut self, dev: &device::Device<Bound>, io: bool, command: Command) -> Result {
        if self.health != Health::Working {
            return Err(EIO);
        }
        let bar = self.bar.access(dev)?;
        let queue = if io { &mut self.io } else { &mut self.admin };
        match queue.submit(bar, self.stride, command) {
            Ok(0) => Ok(()),
            Ok(status) => {
                dev_err!(self.pdev, "command failed with status {status:#x}\n");
                Err(EIO)
            }
            Err(e) => {
                dev_err!(
                    self.pdev,
                    "command lost ({e:?}), disabling the controller\n"
                );
                bar.write32(0, REG_CC);
                // INVARIANT: a controller that reports the reset has aborted the command.
                self.health = match wait_status(bar, CSTS_READY, 0, self.timeout) {
                    Ok(()) => Health::Stopped,
                    Err(_) => Health::Hung,
                };
                Err(e)
            }
        }
    }

    /// Reads an Identify data structure with a command whose buffer is mapped like any other.
    fn identify(&mut self, dev: &device::Device<Bound>, cns: u32, nsid: u32) -> Result<KVec<u8>> {
        let buffer = KernelBuffer::new(KVec::from_elem(0u8, CTRL_PAGE, GFP_KERNEL)?, GFP_KERNEL)?;
        let mapping = DmaMapping::new(
            dev,
            buffer,
            DataDirection::FromDevice,
            Attrs::default(),
            GFP_KERNEL,
        )?;
        let mut command = Command::new(ADMIN_IDENTIFY, nsid);
        command.0[10] = cns;
        self.describe(dev, &mapping, 0, CTRL_PAGE, Descriptors::Prp, &mut command)?;
        let result = self.execute(dev, false, command);
        self.settle(result, mapping).map(KernelBuffer::into_inner)
    }

    /// Identifies controller and namespace 1 and creates the I/O queue pair.
    fn setup(&mut self, dev: &device::Device<Bound>) -> Result<Identity> {
        let controller = self.identify(dev, IDENTIFY_CONTROLLER, 0)?;
        let namespace = self.identify(dev, IDENTIFY_NAMESPACE, NAMESPACE)?;
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
            dev_err!(self.pdev, "unsupported LBA format index {flbas:#x}\n");
            return Err(ENODEV);
        }
        let lba_format = le32(namespace, 128 + 4 * usize::from(format));
        let metadata = lba_format & 0xffff;
        let block_shift = (lba_format >> 16) & 0xff;
        let blocks = le64(namespace, 0);
        if metadata != 0 || !(9..=12).contains(&block_shift) || blocks == 0 {
            dev_err!(self.pdev, "unsupported namespace format {lba_format:#x}\n");
            return Err(ENODEV);
        }
        let max_transfer = match controller[77] {
            0 => MAX_TRANSFER,
            // Beyond 10, still more than `MAX_TRANSFER`.
            mdts => (CTRL_PAGE << mdts.min(10)).min(MAX_TRANSFER),
        };
        // Like nvme-pci: no command larger than what maps as cheaply as smaller mappings.
        let max_transfer =
            max_transfer.min(opt_mapping_size(dev).max(CTRL_PAGE) & !(CTRL_PAGE - 1));
        // SGLS bits 1:0: 1 for SGLs, 2 for SGLs of 4-byte aligned and sized data blocks.
        let sgl = match le32(controller, 536) & 3 {
            1 => Some(Descriptors::Sgl {
                dword_aligned: false,
            }),
            2 => Some(Descriptors::Sgl {
                dword_aligned: true,
            }),
            _ => None,
        };
        let mut info = Info {
            serial: [0; 20],
            model: [0; 40],
            firmware: [0; 8],
            pci_vendor: le16(controller, 0),
            sgl: u16::from(sgl.is_some()),
            block_size: 1 << block_shift,
            max_transfer: u32::try_from(max_transfer)?,
            blocks,
            max_request: u32::try_from(MAX_REQUEST)?,
            max_contiguous: u32::try_from(MAX_CONTIGUOUS)?,
            queue_entries: u32::from(self.io.entries),
            max_sgl_blocks: u32::try_from(MAX_SGL_BLOCKS)?,
        };
        info.serial.copy_from_slice(&controller[4..24]);
        info.model.copy_from_slice(&controller[24..64]);
        info.firmware.copy_from_slice(&controller[64..72]);

        let (io_id, size) = (u32::from(IO_QUEUE), u32::from(self.io.entries - 1));
        let create_cq = Command::admin(
            ADMIN_CREATE_CQ,
            self.io.completions.dma_address(),
            size << 16 | io_id,
            1,
        );
        self.execute(dev, false, create_cq)?;
        let create_sq = Command::admin(
            ADMIN_CREATE_SQ,
            self.io.submissions.dma_address(),
            size << 16 | io_id,
            io_id << 16 | 1,
        );
        self.execute(dev, false, create_sq)?;
        Ok(Identity {
            info,
            block_shift,
            sgl,
        })
    }

    /// Fills the data pointer of `command` with the bytes `offset..offset + size` of `mapping`,
    /// using the list pages for what does not fit in the command.
    ///
    /// Returns [`EINVAL`] where the DMA ranges break the controller's rules: PRP entries must be
    /// 4-byte aligned, and all but the first must start a page, all but the last end one; SGL
    /// data blocks must be 4-byte aligned and sized if the controller says so.
    fn describe<S: DmaMemory>(
        &mut self,
        dev: &device::Device<Bound>,
        mapping: &DmaMapping<'_, S>,
        offset: usize,
        size: usize,
        kind: Descriptors,
        command: &mut Command,
    ) -> Result<DescriptorCount> {
        let ranges = mapping.dma_ranges_of(offset, size)?;
        let lists_addr = self.lists.dma_address();
        // SAFETY: No command is in flight, or the controller no longer reaches memory (type
        // invariants); `&mut self` keeps others from submitting one while the pages are written.
        let lists = unsafe { self.lists.as_mut() };
        match kind {
            Descriptors::Prp => {
                let page = u64::from_safe_cast(CTRL_PAGE);
                let limits = SegmentLimits::new(CTRL_PAGE, page - 1, CTRL_PAGE)?;
                let mut entries = KVec::new();
                let mut split = Split::new(ranges, limits).peekable();
                while let Some(entry) = split.next() {
                    let (start, end) = (entry.dma_addr(), entry.end());
                    let inner_start = !entries.is_empty() && start % page != 0;
                    let inner_end = split.peek().is_some() && end % page != 0;
                    if start % 4 != 0 || inner_start || inner_end {
                        return Err(EINVAL);
                    }
                    entries.push([start], GFP_KERNEL)?;
                }
                let (prp2, list_pages) = match entries.as_slice() {
                    [_] => (0, 0),
                    [_, [second]] => (*second, 0),
                    [_, rest @ ..] => (
                        lists_addr,
                        chain(lists, lists_addr, rest, |next, _| Ok([next]))?,
                    ),
                    [] => return Err(EINVAL),
                };
                command.set_pointer(entries[0][0], prp2);
                Ok(DescriptorCount {
                    entries: entries.len(),
                    list_pages,
                })
            }
            Descriptors::Sgl { dword_aligned } => {
                let mut blocks = KVec::new();
                for range in Split::new(ranges, segment_limits(dev, CTRL_PAGE)?) {
                    let addr = range.dma_addr();
                    if dword_aligned && (addr % 4 != 0 || range.size() % 4 != 0) {
                        return Err(EINVAL);
                    }
                    blocks.push(
                        sgl_descriptor(addr, range.size(), SGL_DATA_BLOCK)?,
                        GFP_KERNEL,
                    )?;
                }
                let (pointer, list_pages) = match blocks.as_slice() {
                    [single] => (*single, 0),
                    all => {
                        let pages = chain(lists, lists_addr, all, segment_descriptor)?;
                        (segment_descriptor(lists_addr, all.len())?, pages)
                    }
                };
                command.set_sgl(pointer);
                Ok(DescriptorCount {
                    entries: blocks.len(),
                    list_pages,
                })
            }
        }
    }

    /// Maps `memory`, moves its bytes in commands of at most MDTS bytes, unmaps it and gives it
    /// back.
    fn transfer<S: DmaMemory + 'static>(
        &mut self,
        dev: &device::Device<Bound>,
        memory: S,
        request: &Request,
        args: &mut IoArgs,
        stats: &mut Stats,
    ) -> Result<S> {
        let direction = request.direction();
        let mapping = DmaMapping::new(dev, memory, direction, Attrs::default(), GFP_KERNEL)?;
        let ranges = mapping.dma_ranges().len();
        let path = match mapping.path() {
            DmaPath::Iova => 0,
            DmaPath::Iommu => 1,
            DmaPath::Direct => 2,
            DmaPath::Bounce => 3,
        };
        stats.mappings += 1;
        stats.dma_ranges += u64::from_safe_cast(ranges);
        stats.paths[path] += 1;
        // `DmaMapping` syncs the IOTLB once per IOVA mapping, after linking all of it.
        stats.iova_syncs += u64::from(mapping.path() == DmaPath::Iova);
        args.path = u32::try_from(path)?;
        args.dma_ranges = u32::try_from(ranges)?;
        args.commands = 0;
        args.descriptors = 0;
        args.list_pages = 0;

        let mut offset = 0;
        let mut result = Ok(());
        while offset < request.len {
            match self.command(dev, &mapping, request, offset, args, stats) {
                Ok(size) => offset += size,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.settle(result, mapping)
    }

    /// Issues the command that moves the bytes of `mapping` from `offset` on, as many as one
    /// command takes, and returns how many it moved.
    fn command<S: DmaMemory>(
        &mut self,
        dev: &device::Device<Bound>,
        mapping: &DmaMapping<'_, S>,
        request: &Request,
        offset: usize,
        args: &mut IoArgs,
        stats: &mut Stats,
    ) -> Result<usize> {
        let mut size = (request.len - offset).min(request.max_transfer);
        if let Descriptors::Sgl { .. } = request.kind {
            // End the command with the last data block that fits, on a logical block.
            let ranges = mapping.dma_ranges_of(offset, size)?;
            let blocks = Split::new(ranges, segment_limits(dev, CTRL_PAGE)?);
            let fits: usize = blocks.take(MAX_SGL_BLOCKS).map(|range| range.size()).sum();
            size = fits & !((1 << request.block_shift) - 1);
            if size == 0 {
                return Err(EINVAL);
            }
        }
        let lba = request.lba + u64::from_safe_cast(offset >> request.block_shift);
        let blocks = u32::try_from(size >> request.block_shift)?;
        let opcode = if request.write { IO_WRITE } else { IO_READ };
        let mut command = Command::new(opcode, NAMESPACE);
        // CAST: the halves of the 64-bit LBA.
        command.0[10] = lba as u32;
        command.0[11] = (lba >> 32) as u32;
        command.0[12] = blocks - 1;
        let count = self.describe(dev, mapping, offset, size, request.kind, &mut command)?;
        self.execute(dev, true, command)?;

        let (entries, list_pages) = (
            u32::try_from(count.entries)?,
            u32::try_from(count.list_pages)?,
        );
        args.commands += 1;
        args.descriptors += entries;
        args.list_pages += list_pages;
        stats.commands += 1;
        let (descriptors, lists) = match request.kind {
            Descriptors::Prp => (&mut stats.prp_entries, &mut stats.prp_list_pages),
            Descriptors::Sgl { .. } => (&mut stats.sgl_descriptors, &mut stats.sgl_segments),
        };
        *descriptors += u64::from(entries);
        *lists += u64::from(list_pages);
        let bytes = if request.write {
            &mut stats.bytes_written
        } else {
            &mut stats.bytes_read
        };
        *bytes += u64::from_safe_cast(size);
        Ok(size)
    }

    /// Unmaps `mapping` after its commands ended with `result` and gives the memory back, unless
    /// the controller hung: it may still access the memory, which then stays mapped and allocated
    /// until unbind, after bus mastering is cleared.
    fn settle<S: DmaMemory + 'static>(
        &self,
        result: Result,
        mapping: DmaMapping<'_, S>,
    ) -> Result<S> {
        match result {
            Ok(()) => Ok(mapping.into_memory()),
            Err(e) => {
                if self.health == Health::Hung {
                    // The device-managed mapping is undone at unbind, not when the handle goes.
                    core::mem::forget(mapping.into_devres()?);
                }
                Err(e)
            }
        }
    }

    /// Deletes the I/O queues and shuts the controller down, for unbind.
    fn shutdown(&mut self, dev: &device::Device<Bound>) {
        let io_id = u32::from(IO_QUEUE);
        // Best effort: the controller is disabled when dropped, whatever happens here.
        let _ = self.execute(dev, false, Command::admin(ADMIN_DELETE_SQ, 0, io_id, 0));
        let _ = self.execute(dev, false, Command::admin(ADMIN_DELETE_CQ, 0, io_id, 0));
        if self.health != Health::Working {
            return;
        }
        if let Ok(bar) = self.bar.access(dev) {
            bar.write32(CC_CONFIG | CC_ENABLE | CC_SHUTDOWN_NORMAL, REG_CC);
            if wait_status(bar, CSTS_SHUTDOWN_MASK, CSTS_SHUTDOWN_DONE, self.timeout).is_err() {
                dev_warn!(self.pdev, "controller did not complete its shutdown\n");
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Disable the controller before its queues are freed. With no command in flight (type
        // invariant), or bus mastering cleared where one hung, it writes no memory, so there is
        // nothing to wait for.
        if let Some(bar) = self.bar.try_access() {
            bar.write32(0, REG_CC);
        }
    }
}

/// Waits until the status register's bits `mask` read `value`; [`EIO`] on a fatal status.
fn wait_status(bar: &pci::Bar<'_, BAR_SIZE>, mask: u32, value: u32, timeout: Delta) -> Result {
    let status = read_poll_timeout(
        || Ok(bar.read32(REG_CSTS)),
        |status| status & mask == value || status & CSTS_FATAL != 0,
        Delta::from_millis(1),
        timeout,
    )?;
    if status & mask != value {
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

/// Writes `items`, PRP entries or SGL descriptors of `N` 64-bit words, into the list pages at
/// `lists_addr`. Where a page is full and more than one item is left, its last slot takes
/// `pointer(address of the next page, items left)`. Returns the number of pages used, or
/// [`E2BIG`] if they do not fit.
fn chain<const N: usize>(
    lists: &mut [u64],
    lists_addr: u64,
    items: &[[u64; N]],
    pointer: impl Fn(u64, usize) -> Result<[u64; N]>,
) -> Result<usize> {
    let per_page = CTRL_PAGE / (8 * N);
    let mut slots = lists.chunks_exact_mut(N);
    let mut used = 0;
    for (i, item) in items.iter().enumerate() {
        let left = items.len() - i;
        if used % per_page == per_page - 1 && left > 1 {
            let next = lists_addr + u64::from_safe_cast((used + 1) * 8 * N);
            put_le(slots.next(), pointer(next, left)?)?;
            used += 1;
        }
        put_le(slots.next(), *item)?;
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

/// A validated read or write request.
struct Request {
    write: bool,
    lba: u64,
    len: usize,
    kind: Descriptors,
    block_shift: u32,
    /// Bytes per command.
    max_transfer: usize,
}

impl Request {
    /// Returns the direction of the request's DMA.
    fn direction(&self) -> DataDirection {
        if self.write {
            DataDirection::ToDevice
        } else {
            DataDirection::FromDevice
        }
    }
}

/// What a controller shares with its open files; outlives the binding.
#[pin_data]
struct Shared {
    pdev: ARef<pci::Device>,
    identity: Identity,
    /// Index of the misc device name.
    name: NameSlot,
    #[pin]
    state: Mutex<State>,
}

struct State {
    /// `None` once the device is unbound.
    controller: Option<Controller>,
    stats: Stats,
}

impl Shared {
    /// Validates `args`, moves the data and fills in the outputs of `args`.
    ///
    /// User memory is pinned or copied before the controller is locked: a user fault may take
    /// long, and unbind waits for the lock.
    fn request(&self, write: bool, args: &mut IoArgs) -> Result {
        let info = &self.identity.info;
        let buffers = args.flags & (IO_VMALLOC | IO_CONTIGUOUS);
        if args.flags & !(IO_SGL | IO_VMALLOC | IO_CONTIGUOUS) != 0
            || buffers == IO_VMALLOC | IO_CONTIGUOUS
            || args.len == 0
            || args.len % u64::from(info.block_size) != 0
        {
            return Err(EINVAL);
        }
        let limit = if buffers == IO_CONTIGUOUS {
            MAX_CONTIGUOUS
        } else {
            MAX_REQUEST
        };
        let len = usize::try_from(args.len)
            .ok()
            .filter(|&len| len <= limit)
            .ok_or(E2BIG)?;
        let blocks = args.len >> self.identity.block_shift;
        if args
            .lba
            .checked_add(blocks)
            .is_none_or(|end| end > info.blocks)
        {
            return Err(ERANGE);
        }
        let kind = match args.flags & IO_SGL {
            0 => Descriptors::Prp,
            _ => self.identity.sgl.ok_or(EOPNOTSUPP)?,
        };
        let request = Request {
            write,
            lba: args.lba,
            len,
            kind,
            block_shift: self.identity.block_shift,
            max_transfer: usize::from_safe_cast(info.max_transfer),
        };
        let user = UserPtr::from_addr(usize::try_from(args.addr).map_err(|_| EFAULT)?);
        match buffers {
            0 => {
                // Zero-copy: the device moves the data to or from the pinned user pages.
                let pinned = UserPhyrs::pin(user, len, request.direction(), GFP_KERNEL)?;
                self.transfer(pinned, &request, args)?;
                Ok(())
            }
            IO_VMALLOC => {
                let buffer = VVec::with_capacity(len, GFP_KERNEL)?;
                self.through_kernel_buffer(buffer, user, &request, args)
            }
            _ => {
                // kmalloc: physically contiguous.
                let buffer = KVec::with_capacity(len, GFP_KERNEL)?;
                self.through_kernel_buffer(buffer, user, &request, args)
            }
        }
    }

    /// Moves the data through `buffer`, a kernel buffer, copying it from or to the user buffer
    /// at `user`.
    fn through_kernel_buffer<A: KernelAllocator + 'static>(
        &self,
        mut buffer: Vec<u8, A>,
        user: UserPtr,
        request: &Request,
        args: &mut IoArgs,
    ) -> Result {
        let user = UserSlice::new(user, request.len);
        if request.write {
            user.read_all(&mut buffer, GFP_KERNEL)?;
            self.transfer(KernelBuffer::new(buffer, GFP_KERNEL)?, request, args)?;
        } else {
            buffer.resize(request.len, 0, GFP_KERNEL)?;
            let memory = KernelBuffer::new(buffer, GFP_KERNEL)?;
            let buffer = self.transfer(memory, request, args)?.into_inner();
            user.writer().write_slice(&buffer)?;
        }
        Ok(())
    }

    /// Moves the data of `memory` with the controller, if it is still bound.
    fn transfer<S: DmaMemory + 'static>(
        &self,
        memory: S,
        request: &Request,
        args: &mut IoArgs,
    ) -> Result<S> {
        let mut state = self.state.lock();
        let State { controller, stats } = &mut *state;
        let controller = controller.as_mut().ok_or(ENODEV)?;
        let pdev = controller.pdev.clone();
        // SAFETY: `controller` exists only while its device is bound (type invariant of
        // `Controller`), and unbind takes it under the lock held here.
        let dev = unsafe { pdev.as_ref().as_bound() };
        controller.transfer(dev, memory, request, args, stats)
    }
}

/// The names of the misc devices, one per bound controller.
const DEVICE_NAMES: [&CStr; 4] = [
    c"rust-nvme-dma0",
    c"rust-nvme-dma1",
    c"rust-nvme-dma2",
    c"rust-nvme-dma3",
];
static NAMES_IN_USE: [Atomic<bool>; DEVICE_NAMES.len()] =
    [const { Atomic::new(false) }; DEVICE_NAMES.len()];

/// A misc device name taken for one controller, given back on drop.
struct NameSlot(usize);

impl NameSlot {
    /// Takes the first free name; [`EBUSY`] if every name is taken.
    fn take() -> Result<Self> {
        NAMES_IN_USE
            .iter()
            .position(|in_use| !in_use.xchg(true, Full))
            .map(Self)
            .ok_or(EBUSY)
    }

    fn name(&self) -> &'static CStr {
        DEVICE_NAMES[self.0]
    }
}

impl Drop for NameSlot {
    fn drop(&mut self) {
        NAMES_IN_USE[self.0].store(false, Release);
    }
}

/// An open misc device file.
struct NvmeFile {
    shared: Arc<Shared>,
}

#[vtable]
impl MiscDevice for NvmeFile {
    type Ptr = KBox<Self>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        // SAFETY: Every registration of `NvmeFile` is the `misc` field of an `NvmeDriver`, which
        // lives while the registration does, and misc devices are opened under the lock that
        // their deregistration takes.
        let driver =
            unsafe { &*kernel::container_of!(core::ptr::from_ref(misc), NvmeDriver, misc) };
        Ok(KBox::new(
            NvmeFile {
                shared: driver.shared.clone(),
            },
            GFP_KERNEL,
        )?)
    }

    fn ioctl(this: &NvmeFile, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let shared = &this.shared;
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd)).reader_writer();
        match cmd {
            RUST_NVME_IOC_INFO => {
                if shared.state.lock().controller.is_none() {
                    return Err(ENODEV);
                }
                writer.write(&shared.identity.info)?;
            }
            RUST_NVME_IOC_STATS => {
                let stats = shared.state.lock().stats;
                writer.write(&stats)?;
            }
            RUST_NVME_IOC_READ | RUST_NVME_IOC_WRITE => {
                let mut args: IoArgs = reader.read()?;
                let result = shared.request(cmd == RUST_NVME_IOC_WRITE, &mut args);
                if result.is_err() {
                    shared.state.lock().stats.failed_requests += 1;
                }
                result?;
                writer.write(&args)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }
}

/// The driver data of a bound controller.
#[pin_data]
struct NvmeDriver {
    /// Declared first: deregistered before the rest goes.
    #[pin]
    misc: MiscDeviceRegistration<NvmeFile>,
    shared: Arc<Shared>,
}

/// PCI class code of NVMe controllers: mass storage, non-volatile memory, NVM Express.
const PCI_CLASS_NVME: u32 = 0x010802;

kernel::pci_device_table!(
    PCI_TABLE,
    <NvmeDriver as pci::Driver>::IdInfo,
    [(pci::DeviceId::from_class(PCI_CLASS_NVME, 0xffffff), ())]
);

impl NvmeDriver {
    /// Enables the controller, identifies it and sets up its I/O queues.
    fn start(pdev: &pci::Device<Core<'_>>) -> Result<Arc<Shared>> {
        let dev: &device::Device<Bound> = pdev.as_ref();
        let name = NameSlot::take()?;
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
        let mut controller = Controller::enable(pdev, bar)?;
        let identity = controller.setup(dev).inspect_err(|_| {
            if controller.health == Health::Hung {
                pdev.clear_master();
            }
        })?;
        let info = &identity.info;
        let sgl = if info.sgl != 0 { "SGLs" } else { "no SGLs" };
        dev_info!(
            pdev,
            "{} blocks of {} bytes, {} bytes per command, {sgl}, misc device {}\n",
            info.blocks,
            info.block_size,
            info.max_transfer,
            name.name()
        );
        Arc::pin_init(
            pin_init!(Shared {
                pdev: pdev.into(),
                identity,
                name,
                state <- new_mutex!(State {
                    controller: Some(controller),
                    stats: Stats::default(),
                }),
            }),
            GFP_KERNEL,
        )
    }
}

impl pci::Driver for NvmeDriver {
    type IdInfo = ();
    type Data<'bound> = NvmeDriver;
    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        let shared = Self::start(pdev);
        try_pin_init!(NvmeDriver {
            shared: shared?,
            misc <- MiscDeviceRegistration::register(MiscDeviceOptions {
                name: shared.name.name(),
            }),
        })
    }

    fn unbind<'bound>(pdev: &'bound pci::Device<Core<'_>>, this: Pin<&Self::Data<'bound>>) {
        // Waits for the request in progress, if any; later ones find no controller.
        let controller = this.shared.state.lock().controller.take();
        if let Some(mut controller) = controller {
            controller.shutdown(pdev.as_ref());
            if controller.health == Health::Hung {
                pdev.clear_master();
            }
        }
    }
}

kernel::module_pci_driver! {
    type: NvmeDriver,
    name: "rust_nvme_dma",
    authors: ["Rust DMA Team"],
    description: "Rust NVMe sample mapping its I/O with the Rust DMA API",
    license: "GPL v2",
}
