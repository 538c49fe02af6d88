// SPDX-License-Identifier: GPL-2.0

//! The data of a block request as physical ranges, for DMA mapping.
//!
//! A read or write request carries its data in bios, each an array of `struct bio_vec` (page,
//! offset, length) walked by a `struct bvec_iter`. [`RequestMemory`] lists those bytes as
//! [`Phyr`] ranges straight from the bio_vecs, without copying them into a list, so that
//! [`DmaMapping`] maps a request's memory in place, whatever the DMA backend.
//!
//! C header: [`include/linux/blk-mq.h`](srctree/include/linux/blk-mq.h)
//! C header: [`include/linux/bvec.h`](srctree/include/linux/bvec.h)
//!
//! [`DmaMapping`]: crate::dma::map::DmaMapping

use crate::{
    bindings,
    block::mq::{
        Command,
        Operations,
        Request, //
    },
    dma::{
        map::DmaMemory,
        phyr::{
            list::PhyrRanges,
            Phyr, //
        },
        DataDirection,
    },
    num::casts::FromSafeCast,
    prelude::*,
    sync::aref::ARef,
};
use core::marker::PhantomData;

/// The data of a read or write request that the driver owns, as physical ranges.
///
/// Holds a reference on the request: the request cannot be ended while its memory is listed or
/// mapped ([`Request::end`] fails while another [`ARef`] exists), and its bios do not change
/// while the driver owns it.
///
/// # Invariants
///
/// `rq` is a read or a write request owned by the driver.
pub struct RequestMemory<T: Operations> {
    rq: ARef<Request<T>>,
}

impl<T: Operations> RequestMemory<T> {
    /// Lists the data of `rq`.
    ///
    /// Returns [`EINVAL`] if `rq` is neither a read nor a write: other requests have no data, or
    /// data that is not the caller's to map (the special payload of a discard).
    pub fn new(rq: ARef<Request<T>>) -> Result<Self> {
        match rq.command() {
            // INVARIANT: `rq` is owned by the driver (a driver only has `ARef`s of requests it
            // owns) and is a read or a write.
            Command::Read | Command::Write => Ok(Self { rq }),
            _ => Err(EINVAL),
        }
    }

    /// Returns the request.
    pub fn request(&self) -> &ARef<Request<T>> {
        &self.rq
    }

    /// Gives the request back.
    pub fn into_request(self) -> ARef<Request<T>> {
        self.rq
    }

    /// Returns the direction of the request's DMA: [`DataDirection::FromDevice`] for a read.
    pub fn direction(&self) -> DataDirection {
        match self.rq.command() {
            Command::Read => DataDirection::FromDevice,
            _ => DataDirection::ToDevice,
        }
    }
}

impl<T: Operations> PhyrRanges for RequestMemory<T> {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        // SAFETY: By the type invariants, the driver owns the request, whose `bio` chain stays
        // valid and unchanged until it ends.
        let bio = unsafe { (*self.rq.as_raw()).bio };
        BioVecRanges {
            bio,
            // SAFETY: As above; a request with data has at least one bio.
            iter: (!bio.is_null()).then(|| unsafe { (*bio).bi_iter }),
            _request: PhantomData,
        }
    }
}

// SAFETY: The pages of a read or write request stay allocated and reserved for its data while
// the driver owns the request, which `RequestMemory` holds; the ranges are those of its bios,
// which do not change. A write request's memory is only read by the device.
unsafe impl<T: Operations> DmaMemory for RequestMemory<T> {
    fn device_may_write(&self) -> bool {
        self.rq.command() == Command::Read
    }
}

/// The ranges of the bio_vecs of a chain of bios, as `bio_for_each_bvec()` walks them
/// (multi-page bio_vecs whole, clipped by each bio's iterator), with physically contiguous
/// neighbours joined, as the block layer joins them into one segment: the parts of one page that
/// merged bios hold are one range, which the segment rules of the queue (such as its virtual
/// boundary) hold for.
struct BioVecRanges<'a> {
    bio: *mut bindings::bio,
    /// The position in `bio`; `None` after the last bio.
    iter: Option<bindings::bvec_iter>,
    _request: PhantomData<&'a ()>,
}

impl BioVecRanges<'_> {
    /// Returns the range of the next bio_vec, or `None` after the last one.
    fn next_bvec(&mut self) -> Option<Phyr> {
        loop {
            let iter = self.iter.as_mut()?;
            if iter.bi_size == 0 {
                // SAFETY: `self.bio` is a valid bio of the request (`iter` is `Some`).
                self.bio = unsafe { (*self.bio).bi_next };
                // SAFETY: A non-null `bi_next` is the next valid bio of the request.
                self.iter = (!self.bio.is_null()).then(|| unsafe { (*self.bio).bi_iter });
                continue;
            }
            let (index, done, left) = (iter.bi_idx, iter.bi_offset, iter.bi_size);
            // SAFETY: `bi_idx` indexes the bio's bio_vec array while `bi_size` is not zero.
            let bvec = unsafe { *(*self.bio).bi_io_vec.add(usize::from_safe_cast(index)) };
            let size = (bvec.bv_len - done).min(left);
            iter.bi_size = left - size;
            iter.bi_idx = index + 1;
            iter.bi_offset = 0;
            if size == 0 {
                continue;
            }
            // SAFETY: `bv_page` is a valid page of the request's data.
            let paddr = unsafe { bindings::page_to_phys(bvec.bv_page) };
            // A bio_vec lies in memory, so its range cannot overflow: `new()` cannot fail.
            return Phyr::new(
                paddr + u64::from(bvec.bv_offset + done),
                usize::from_safe_cast(size),
            )
            .ok();
        }
    }
}

impl Iterator for BioVecRanges<'_> {
    type Item = Phyr;

    fn next(&mut self) -> Option<Phyr> {
        let mut range = self.next_bvec()?;
        loop {
            let saved = (self.bio, self.iter);
            match self.next_bvec() {
                Some(next) => match range.join(&next) {
                    Some(joined) => range = joined,
                    None => {
                        // Not contiguous: `next` starts the following range.
                        (self.bio, self.iter) = saved;
                        return Some(range);
                    }
                },
                None => return Some(range),
            }
        }
    }
}
