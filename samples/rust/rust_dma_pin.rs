// SPDX-License-Identifier: GPL-2.0

//! Rust sample: pinning user memory as physical ranges for DMA.
//!
//! The misc device `/dev/rust-dma-pin` takes one ioctl, `RUST_DMA_PIN`, which pins a range of
//! the caller's memory with [`UserPhyrs`], copies the physical ranges out and unpins. It
//! requires `CAP_SYS_ADMIN`, since it reveals physical addresses. The kselftest
//! `tools/testing/selftests/rust_dma/pin_user` drives it and checks the ranges against
//! `/proc/self/pagemap`.

use kernel::{
    bindings,
    dma::{
        phyr::{
            list::PhyrRanges,
            user::UserPhyrs,
            AddrRange, //
        },
        DataDirection, //
    },
    fs::File,
    ioctl::{
        _IOC_SIZE,
        _IOWR, //
    },
    miscdevice::{
        MiscDevice,
        MiscDeviceOptions,
        MiscDeviceRegistration, //
    },
    prelude::*,
    transmute::{
        AsBytes,
        FromBytes, //
    },
    uaccess::{
        UserPtr,
        UserSlice, //
    },
};

/// The argument of `RUST_DMA_PIN`; `struct rust_dma_pin` of the kselftest.
#[repr(C)]
#[derive(Clone, Copy)]
struct PinArgs {
    /// User address of the memory to pin.
    addr: u64,
    /// Size in bytes of the memory to pin.
    len: u64,
    /// User address of an array of `max_ranges` pairs (physical address, size) to fill.
    ranges: u64,
    /// Capacity of `ranges`.
    max_ranges: u32,
    /// Non-zero to pin for a device write, zero for a device read.
    write: u32,
    /// Output: the number of ranges, of which the first `max_ranges` were copied out.
    nr_ranges: u32,
    /// Must be zero.
    reserved: u32,
}

// SAFETY: `PinArgs` is made of integers with no padding between or after them, so any bytes
// are a valid value.
unsafe impl FromBytes for PinArgs {}

// SAFETY: `PinArgs` has no padding, so all of its bytes are initialized.
unsafe impl AsBytes for PinArgs {}

kernel::static_assert!(core::mem::size_of::<PinArgs>() == 40);

const RUST_DMA_PIN: u32 = _IOWR::<PinArgs>('|' as u32, 0x90);

module! {
    type: RustDmaPinModule,
    name: "rust_dma_pin",
    authors: ["Rust DMA Team"],
    description: "Rust sample: pinning user memory as physical ranges",
    license: "GPL",
}

#[pin_data]
struct RustDmaPinModule {
    #[pin]
    _miscdev: MiscDeviceRegistration<RustDmaPin>,
}

impl kernel::InPlaceModule for RustDmaPinModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        let options = MiscDeviceOptions {
            name: c"rust-dma-pin",
        };
        try_pin_init!(Self {
            _miscdev <- MiscDeviceRegistration::register(options),
        })
    }
}

struct RustDmaPin;

#[vtable]
impl MiscDevice for RustDmaPin {
    type Ptr = KBox<Self>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        Ok(KBox::new(RustDmaPin, GFP_KERNEL)?)
    }

    fn ioctl(_device: &RustDmaPin, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        if cmd != RUST_DMA_PIN {
            return Err(ENOTTY);
        }
        // Physical addresses are privileged, as in `/proc/self/pagemap`.
        // SAFETY: `capable()` may be called from any task context.
        // CAST: `CAP_SYS_ADMIN` is a small capability number.
        if !unsafe { bindings::capable(bindings::CAP_SYS_ADMIN as c_int) } {
            return Err(EPERM);
        }
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd)).reader_writer();
        let mut args: PinArgs = reader.read()?;
        if args.reserved != 0 {
            return Err(EINVAL);
        }
        let direction = if args.write != 0 {
            DataDirection::FromDevice
        } else {
            DataDirection::ToDevice
        };
        let addr = UserPtr::from_addr(usize::try_from(args.addr).map_err(|_| EFAULT)?);
        let len = usize::try_from(args.len).map_err(|_| EINVAL)?;
        let pinned: UserPhyrs = UserPhyrs::pin(addr, len, direction, GFP_KERNEL)?;

        let count = pinned.ranges().count();
        let copied = count.min(usize::try_from(args.max_ranges)?);
        let out_size = copied
            .checked_mul(2 * core::mem::size_of::<u64>())
            .ok_or(EINVAL)?;
        let ranges = usize::try_from(args.ranges).map_err(|_| EFAULT)?;
        let mut out = UserSlice::new(UserPtr::from_addr(ranges), out_size).writer();
        for range in pinned.ranges().take(copied) {
            out.write(&range.start_u64())?;
            out.write(&u64::try_from(range.size())?)?;
        }
        args.nr_ranges = u32::try_from(count)?;
        writer.write(&args)?;
        // Dropping `pinned` unpins the memory.
        Ok(0)
    }
}
