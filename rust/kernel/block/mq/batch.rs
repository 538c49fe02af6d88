// SPDX-License-Identifier: GPL-2.0

//! Requests ended together, as a hardware driver's interrupt handler finds
//! their completions.
//!
//! C header: [`include/linux/blk-mq.h`](srctree/include/linux/blk-mq.h)

use crate::{
    bindings,
    block::mq::{
        Operations,
        Request, //
    },
    sync::aref::ARef,
};
use core::marker::PhantomData;

/// A batch of requests that completed without error, ended all at once when
/// the batch is dropped (a C [`struct io_comp_batch`] with
/// `blk_mq_end_request_batch()`).
///
/// Ending requests in a batch reads the clock once and gives their tags and
/// queue references back in groups instead of one by one. A driver creates
/// the batch where it handles a completion interrupt, adds each request that
/// completed without error, and drops the batch when the interrupt is
/// handled. A batch that is leaked never ends its requests.
///
/// The requests end on the CPU that drops the batch, as with [`Request::end`]:
/// unlike [`Request::complete`], nothing is sent back to the CPU that
/// submitted a request (the queue's `rq_affinity`). A driver whose completion
/// interrupts do not arrive on the submitting CPUs, and wants the completion
/// there, uses [`Request::complete`].
///
/// # Examples
///
/// ```
/// use kernel::{
///     block::mq::{
///         CompletionBatch,
///         Operations,
///         Request, //
///     },
///     sync::aref::ARef,
/// };
///
/// /// Ends the requests whose commands an interrupt found completed without error.
/// fn end_completed<T: Operations>(completed: impl Iterator<Item = ARef<Request<T>>>) {
///     let mut batch = CompletionBatch::new();
///     for rq in completed {
///         if let Err(rq) = batch.end_ok(rq) {
///             // Another `ARef` (a concurrent `TagSet::tag_to_rq()`) still holds the request:
///             // `Operations::complete` ends it once that reference is gone.
///             Request::complete(rq);
///         }
///     }
///     // The requests end here, as `batch` is dropped.
/// }
/// ```
///
/// # Invariants
///
/// Every request on `inner.req_list` succeeded and was handed over by
/// [`Self::end_ok`]: marked complete, with no [`ARef`] to it left (its Rust
/// refcount is 0).
///
/// [`struct io_comp_batch`]: srctree/include/linux/blkdev.h
pub struct CompletionBatch<T: Operations> {
    inner: bindings::io_comp_batch,
    _p: PhantomData<T>,
}

impl<T: Operations> CompletionBatch<T> {
    /// Creates an empty batch.
    pub const fn new() -> Self {
        // INVARIANT: The batch is empty.
        Self {
            inner: pin_init::zeroed(),
            _p: PhantomData,
        }
    }

    /// Ends `rq`, whose operation succeeded, with the batch; a request that
    /// failed must end alone, with [`Request::end`] and its error.
    ///
    /// A request that `blk_mq_add_to_batch()` does not take (one with an I/O
    /// scheduler's tag, or with an `end_io` handler) is ended now. Returns
    /// `rq` in [`Err`] if it is not the only [`ARef`] of the request, like
    /// [`Request::end_ok`].
    pub fn end_ok(&mut self, rq: ARef<Request<T>>) -> Result<(), ARef<Request<T>>> {
        let ptr = Request::try_set_end(rq)?;
        // SAFETY: `ptr` is a valid request (type invariants of `Request`),
        // which the driver owns with no `ARef` to it left since `try_set_end`
        // succeeded: it is the driver's to mark complete, as
        // `blk_mq_complete_request()` does before a local completion, so that
        // the block layer's timeout handling leaves it alone from now on.
        unsafe { bindings::blk_mq_set_request_complete(ptr) };
        // SAFETY: `ptr` is as above, `self.inner` is a valid batch, and
        // `end_batch` has the type of its `complete` callback; a request on the
        // list is ended only by `end_batch`.
        let batched = unsafe {
            bindings::blk_mq_add_to_batch(ptr, &mut self.inner, false, Some(Self::end_batch))
        };
        if !batched {
            // SAFETY: As above; the request is not on the list.
            unsafe {
                bindings::blk_mq_end_request(ptr, bindings::BLK_STS_OK as bindings::blk_status_t)
            };
        }
        // INVARIANT: A request is on the list only after the above.
        Ok(())
    }

    /// Ends the requests of `iob` (the `complete` callback of the batch).
    ///
    /// # Safety
    ///
    /// `iob` must point to the `inner` batch of a [`CompletionBatch<T>`],
    /// whose requests end only here.
    unsafe extern "C" fn end_batch(iob: *mut bindings::io_comp_batch) {
        // SAFETY: By the safety requirements and the type invariants, `iob`
        // is a valid batch whose requests succeeded, and the driver holds no
        // reference to them.
        unsafe { bindings::blk_mq_end_request_batch(iob) };
    }
}

impl<T: Operations> Default for CompletionBatch<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Operations> Drop for CompletionBatch<T> {
    fn drop(&mut self) {
        if !self.inner.req_list.head.is_null() {
            // SAFETY: `inner` is the batch of `self`, which is going away.
            unsafe { Self::end_batch(&mut self.inner) };
        }
    }
}
