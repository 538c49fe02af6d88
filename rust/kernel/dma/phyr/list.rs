// SPDX-License-Identifier: GPL-2.0

//! Compact lists of physical ranges.
//!
//! [`PhyrList`] keeps its ranges in 64-bit words, stored in chunks of one page, so that the
//! encoded ranges never need a large contiguous allocation and are never copied when the list
//! grows; only the small table of chunks (24 bytes per 512 words with 4 KiB pages) is. A range
//! is encoded as one of:
//!
//! - a run of whole pages, one word: bit 0 clear, bit 1 the continuation flag, bits 2 to 23 the
//!   number of pages minus one and bits 24 to 63 the page frame number;
//! - any other range, two words: the first has bit 0 set, bit 1 the continuation flag and the
//!   size in bits 2 to 63, the second is the physical address.
//!
//! A run of pages that reaches past page frame 2^40 - 1 uses the second form. A range too long
//! for one entry (more than 2^22 pages, or 2^62 bytes or more) takes several entries of its form;
//! all but the first have the continuation flag set and are merged back into one range by
//! iteration. So a run of up to 2^22 pages costs 8 bytes, any other range 16 bytes, against 32
//! bytes for a `struct scatterlist` entry on x86_64.

use super::{
    AddrRange,
    Phyr, //
};
use crate::{
    alloc::{
        Flags,
        KVec, //
    },
    io::PhysAddr,
    num::casts::FromSafeCast,
    page::{
        PAGE_SHIFT,
        PAGE_SIZE, //
    },
    prelude::*,
    sync::Arc, //
};
use core::iter::Peekable;

/// A sequence of physical ranges, whatever its memory layout.
///
/// Implemented by [`PhyrList`], by a plain `KVec<Phyr>` and by references to and [`Arc`]s of what
/// implements it, so that code consuming ranges does not depend on how they are stored.
pub trait PhyrRanges {
    /// Returns the ranges, in order.
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_;

    /// Returns the ranges as one slice, if they are stored as one: an array of
    /// `struct phys_vec` that C can take as it is, e.g. to link it in one call.
    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        None
    }
}

/// A sequence of physical ranges that ranges can be appended to.
pub trait PhyrPush: PhyrRanges {
    /// Appends `range`, merged into the last range when it starts where that one ends.
    ///
    /// On error, the sequence is unchanged.
    fn push(&mut self, range: Phyr, flags: Flags) -> Result;
}

// Borrowed or shared memory has the ranges of the memory.
impl<M: PhyrRanges + ?Sized> PhyrRanges for &M {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        (**self).ranges()
    }

    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        (**self).as_phys_vecs()
    }
}

impl<M: PhyrRanges + ?Sized> PhyrRanges for &mut M {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        (**self).ranges()
    }

    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        (**self).as_phys_vecs()
    }
}

impl<M: PhyrRanges> PhyrRanges for Arc<M> {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        (**self).ranges()
    }

    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        (**self).as_phys_vecs()
    }
}

impl PhyrRanges for KVec<Phyr> {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        self.iter().copied()
    }

    fn as_phys_vecs(&self) -> Option<&[Phyr]> {
        Some(self)
    }
}

impl PhyrPush for KVec<Phyr> {
    fn push(&mut self, range: Phyr, flags: Flags) -> Result {
        if let Some(last) = self.last_mut() {
            if let Some(joined) = last.join(&range) {
                *last = joined;
                return Ok(());
            }
        }
        KVec::push(self, range, flags)?;
        Ok(())
    }
}

const WORDS_PER_CHUNK: usize = PAGE_SIZE / core::mem::size_of::<u64>();

const BYTE_RANGE: u64 = 1 << 0;
const CONTINUATION: u64 = 1 << 1;
const FLAG_BITS: u32 = 2;

const RUN_PAGES_BITS: u32 = 22;
const RUN_PFN_SHIFT: u32 = FLAG_BITS + RUN_PAGES_BITS;
const MAX_RUN_PAGES: u64 = 1 << RUN_PAGES_BITS;
const MAX_RUN_PFN: u64 = (1 << (u64::BITS - RUN_PFN_SHIFT)) - 1;
const MAX_BYTE_RANGE: u64 = u64::MAX >> FLAG_BITS;

const PAGE_BYTES: u64 = 1 << PAGE_SHIFT;

/// How a range is split into entries.
enum Encoding {
    /// Runs of at most [`MAX_RUN_PAGES`] pages, one word each.
    PageRuns,
    /// Byte ranges of at most [`MAX_BYTE_RANGE`] bytes, two words each.
    ByteRanges,
}

impl Encoding {
    fn of(range: &Phyr) -> Self {
        let paddr = range.start_u64();
        let size = u64::from_safe_cast(range.size());
        let aligned = (paddr | size) & (PAGE_BYTES - 1) == 0;
        // By the invariants of `Phyr`, `size` is non-zero and `paddr + size` does not overflow.
        if aligned && (paddr + size - 1) >> PAGE_SHIFT <= MAX_RUN_PFN {
            Self::PageRuns
        } else {
            Self::ByteRanges
        }
    }

    /// Number of words `range` takes.
    fn words(range: &Phyr) -> usize {
        let size = u64::from_safe_cast(range.size());
        // Saturates: a count that does not fit makes the reservation fail.
        let entries = |max: u64| usize::try_from(size.div_ceil(max)).unwrap_or(usize::MAX);
        match Self::of(range) {
            Self::PageRuns => entries(MAX_RUN_PAGES * PAGE_BYTES),
            Self::ByteRanges => entries(MAX_BYTE_RANGE).saturating_mul(2),
        }
    }
}

/// A compact list of physical ranges.
///
/// Appending a range that starts where the last one ends extends the last one. Iteration yields
/// the ranges as appended, after that merge.
///
/// # Invariants
///
/// - The first `words` words of `chunks` are the complete encoding of a sequence of valid
///   [`Phyr`]s, in order: chunk `i` holds words `i * WORDS_PER_CHUNK..` and every chunk but the
///   last one holding words is full.
/// - Every chunk has a capacity of exactly `WORDS_PER_CHUNK` words.
/// - `open`, when present, is the last range, not yet encoded, and no encoded range follows
///   it.
///
/// # Examples
///
/// ```
/// use kernel::dma::phyr::{
///     list::{
///         PhyrList,
///         PhyrPush,
///         PhyrRanges, //
///     },
///     Phyr, //
/// };
///
/// let mut list = PhyrList::new();
/// list.push(Phyr::new(0x1000, 0x1000)?, GFP_KERNEL)?;
/// list.push(Phyr::new(0x2000, 0x1000)?, GFP_KERNEL)?; // Contiguous: merged.
/// list.push(Phyr::new(0x8000_0010, 0x20)?, GFP_KERNEL)?;
///
/// let mut ranges = list.ranges();
/// assert_eq!(ranges.next(), Some(Phyr::new(0x1000, 0x2000)?));
/// assert_eq!(ranges.next(), Some(Phyr::new(0x8000_0010, 0x20)?));
/// assert_eq!(ranges.next(), None);
/// # Ok::<(), Error>(())
/// ```
pub struct PhyrList {
    chunks: KVec<KVec<u64>>,
    words: usize,
    open: Option<Phyr>,
}

impl PhyrList {
    /// Creates an empty list. It allocates nothing until ranges are added.
    pub const fn new() -> Self {
        Self {
            chunks: KVec::new(),
            words: 0,
            open: None,
        }
    }

    /// Reserves room for `words` more words: one per run of up to 2^22 whole pages, two per
    /// other range (see the module documentation).
    pub fn reserve(&mut self, words: usize, flags: Flags) -> Result {
        let needed = self.words.checked_add(words).ok_or(ENOMEM)?;
        let chunks = needed.div_ceil(WORDS_PER_CHUNK);
        if chunks > self.chunks.len() {
            self.chunks.reserve(chunks - self.chunks.len(), flags)?;
        }
        while self.chunks.len() < chunks {
            // INVARIANT: every chunk is allocated with a capacity of `WORDS_PER_CHUNK` words.
            let chunk = KVec::with_capacity(WORDS_PER_CHUNK, flags)?;
            self.chunks.push(chunk, flags)?;
        }
        Ok(())
    }

    /// Returns the number of bytes the list uses for its entries, a measure of its footprint.
    pub fn encoded_bytes(&self) -> usize {
        let open_words = self.open.as_ref().map_or(0, Encoding::words);
        (self.words + open_words) * core::mem::size_of::<u64>()
    }

    /// Encodes `range` at the end of the words; room for it must have been reserved.
    fn encode(&mut self, range: Phyr) {
        let encoding = Encoding::of(&range);
        let mut paddr = range.start_u64();
        let mut left = u64::from_safe_cast(range.size());
        let mut continuation = 0;
        // INVARIANT: the words appended are the encoding of `range`, a valid `Phyr`.
        while left > 0 {
            let size = match encoding {
                Encoding::PageRuns => {
                    let pages = (left >> PAGE_SHIFT).min(MAX_RUN_PAGES);
                    self.put(
                        (paddr >> PAGE_SHIFT) << RUN_PFN_SHIFT
                            | (pages - 1) << FLAG_BITS
                            | continuation,
                    );
                    pages << PAGE_SHIFT
                }
                Encoding::ByteRanges => {
                    let size = left.min(MAX_BYTE_RANGE);
                    self.put(size << FLAG_BITS | continuation | BYTE_RANGE);
                    self.put(paddr);
                    size
                }
            };
            paddr += size;
            left -= size;
            continuation = CONTINUATION;
        }
    }

    fn put(&mut self, word: u64) {
        let chunk = &mut self.chunks[self.words / WORDS_PER_CHUNK];
        // By the type invariants, the chunk has a capacity of `WORDS_PER_CHUNK` words and is
        // filled up to `self.words`; the caller reserved room for this word.
        let pushed = chunk.push_within_capacity(word);
        debug_assert!(pushed.is_ok());
        self.words += 1;
    }
}

impl Default for PhyrList {
    fn default() -> Self {
        Self::new()
    }
}

impl PhyrRanges for PhyrList {
    fn ranges(&self) -> impl Iterator<Item = Phyr> + '_ {
        let encoded = Decoder {
            words: self
                .chunks
                .iter()
                .flat_map(|chunk| chunk.iter().copied())
                .peekable(),
        };
        Iterator::chain(encoded, self.open)
    }
}

impl PhyrPush for PhyrList {
    fn push(&mut self, range: Phyr, flags: Flags) -> Result {
        let Some(open) = self.open else {
            // INVARIANT: the list holds no range yet, `range` becomes the last one.
            self.open = Some(range);
            return Ok(());
        };
        if let Some(merged) = open.join(&range) {
            // INVARIANT: `merged` is the last range extended by `range`.
            self.open = Some(merged);
            return Ok(());
        }
        self.reserve(Encoding::words(&open), flags)?;
        self.encode(open);
        // INVARIANT: the former open range is encoded, `range` is now the last one.
        self.open = Some(range);
        Ok(())
    }
}

/// Iterator over the ranges encoded in a sequence of words.
struct Decoder<I: Iterator<Item = u64>> {
    words: Peekable<I>,
}

impl<I: Iterator<Item = u64>> Decoder<I> {
    /// Decodes the next entry into its address and size.
    fn next_entry(&mut self) -> Option<(u64, u64)> {
        let word = self.words.next()?;
        if word & BYTE_RANGE != 0 {
            Some((self.words.next()?, word >> FLAG_BITS))
        } else {
            let pages = ((word >> FLAG_BITS) & (MAX_RUN_PAGES - 1)) + 1;
            Some(((word >> RUN_PFN_SHIFT) << PAGE_SHIFT, pages << PAGE_SHIFT))
        }
    }
}

impl<I: Iterator<Item = u64>> Iterator for Decoder<I> {
    type Item = Phyr;

    fn next(&mut self) -> Option<Phyr> {
        let (paddr, mut size) = self.next_entry()?;
        while self
            .words
            .peek()
            .is_some_and(|word| word & CONTINUATION != 0)
        {
            size += self.next_entry()?.1;
        }
        // CAST: by the type invariants of `PhyrList`, the entries encode a valid `Phyr`, whose
        // address is a `PhysAddr` and whose size is a `usize`.
        // SAFETY: As above, `size` is non-zero and `paddr + size` does not overflow.
        Some(unsafe { Phyr::from_valid(paddr as PhysAddr, size as usize) })
    }
}

#[cfg(CONFIG_RUST_DMA_KUNIT_TEST)]
#[kunit_tests(rust_kernel_dma_phyr_list)]
mod tests {
    use super::*;
    use crate::dma::phyr::testing::TestRng;

    fn page_run(pfn: u64, pages: u64) -> Result<Phyr> {
        Phyr::new(pfn << PAGE_SHIFT, usize::try_from(pages << PAGE_SHIFT)?)
    }

    fn push_both(list: &mut PhyrList, model: &mut KVec<Phyr>, range: Phyr) -> Result {
        PhyrPush::push(list, range, GFP_KERNEL)?;
        PhyrPush::push(model, range, GFP_KERNEL)
    }

    fn assert_same(list: &PhyrList, model: &KVec<Phyr>) {
        assert!(list.ranges().eq(model.ranges()));
    }

    #[test]
    fn round_trip_random() -> Result {
        let mut rng = TestRng::new("round_trip_random", 0x5eed_0001);
        let mut list = PhyrList::new();
        let mut model = KVec::new();
        let top = PhysAddr::MAX;
        for _ in 0..20000 {
            let range = match rng.range(0, 6) {
                0 => page_run(rng.range(0, 1 << 36), rng.range(1, 64))?,
                1 => Phyr::new(rng.range(0, 1 << 48), usize::try_from(rng.range(1, 8192))?)?,
                // Contiguous with the last range: coalesced.
                2 => {
                    let end = model.last().map_or(0, |last: &Phyr| last.end());
                    let size =
                        usize::try_from((rng.range(0, 3) << PAGE_SHIFT).max(rng.range(1, 99)))?;
                    Phyr::new(end, size).or_else(|_| Phyr::new(0, size))?
                }
                // Around the largest run of one entry, ending near the last page frame.
                3 => {
                    let pages = MAX_RUN_PAGES - 1 + rng.range(0, 2);
                    page_run(MAX_RUN_PFN + 1 - pages - rng.range(0, 1), pages)?
                }
                // Near the top of the physical address space.
                4 => {
                    let size = rng.range(1, 1 << 20);
                    Phyr::new(top - size - rng.range(0, 4096), usize::try_from(size)?)?
                }
                // Around the largest byte range of one entry.
                _ => {
                    let size = MAX_BYTE_RANGE - 1 + rng.range(0, 2);
                    Phyr::new(rng.range(0, 1 << 40), usize::try_from(size)?)?
                }
            };
            push_both(&mut list, &mut model, range)?;
        }
        pr_info!(
            "round_trip_random: {} ranges after coalescing\n",
            model.len()
        );
        assert!(model.len() > 10000);
        assert_same(&list, &model);
        Ok(())
    }

    /// Returns the bytes `range` takes once encoded.
    fn encoded_bytes_of(range: Phyr) -> Result<usize> {
        let mut list = PhyrList::new();
        list.push(range, GFP_KERNEL)?;
        let bytes = list.encoded_bytes();
        // A second range, never contiguous, forces the first one into the chunks: it must
        // decode the same.
        let after = Phyr::new(0, 1)?;
        list.push(after, GFP_KERNEL)?;
        assert!(list.ranges().eq([range, after]));
        Ok(bytes)
    }

    #[test]
    fn encoding_boundaries() -> Result {
        assert_eq!(encoded_bytes_of(page_run(0, 1)?)?, 8);
        assert_eq!(encoded_bytes_of(page_run(MAX_RUN_PFN, 1)?)?, 8);
        assert_eq!(encoded_bytes_of(page_run(MAX_RUN_PFN + 1, 1)?)?, 16);
        assert_eq!(encoded_bytes_of(page_run(1, MAX_RUN_PAGES)?)?, 8);
        assert_eq!(encoded_bytes_of(page_run(1, MAX_RUN_PAGES + 1)?)?, 16);
        assert_eq!(encoded_bytes_of(page_run(1, 3 * MAX_RUN_PAGES)?)?, 24);
        assert_eq!(encoded_bytes_of(Phyr::new(0x1000, 0x1001)?)?, 16);
        assert_eq!(encoded_bytes_of(Phyr::new(0x1001, 0x1000)?)?, 16);
        let largest = usize::try_from(MAX_BYTE_RANGE)?;
        assert_eq!(encoded_bytes_of(Phyr::new(1, largest)?)?, 16);
        assert_eq!(encoded_bytes_of(Phyr::new(1, largest + 1)?)?, 32);
        assert_eq!(
            encoded_bytes_of(Phyr::new(PhysAddr::MAX - 0x10, 0x10)?)?,
            16
        );
        assert_eq!(encoded_bytes_of(Phyr::new(1, usize::MAX - 1)?)?, 5 * 16);
        Ok(())
    }

    #[test]
    fn coalescing_cases() -> Result {
        let mut list = PhyrList::new();
        list.push(page_run(1, 1)?, GFP_KERNEL)?;
        list.push(page_run(2, 2)?, GFP_KERNEL)?;
        list.push(Phyr::new(0x4000, 0x10)?, GFP_KERNEL)?;
        list.push(page_run(0, 1)?, GFP_KERNEL)?; // Ends where the first range starts: kept.
        list.push(Phyr::new(0x1001, 0x10)?, GFP_KERNEL)?; // Not contiguous: kept.
        assert!(list.ranges().eq([
            Phyr::new(0x1000, 0x3010)?,
            page_run(0, 1)?,
            Phyr::new(0x1001, 0x10)?,
        ]));
        Ok(())
    }

    #[test]
    fn memory_figures() -> Result {
        let report = |what: &str, list: &PhyrList, ranges: usize| {
            let bytes = list.encoded_bytes();
            let per_range = bytes / ranges;
            let hundredths = bytes % ranges * 100 / ranges;
            let scatterlist = core::mem::size_of::<bindings::scatterlist>();
            let phys_vec = core::mem::size_of::<bindings::phys_vec>();
            pr_info!(
                "{what}: {ranges} ranges in {bytes} bytes, {per_range}.{hundredths:02} bytes per \
                 range (struct scatterlist: {scatterlist}, struct phys_vec: {phys_vec})\n"
            );
            bytes
        };
        let gib_pages = (1 << 30) >> PAGE_SHIFT;

        // 1 GiB of scattered pages: every other page frame.
        let mut list = PhyrList::new();
        list.reserve(gib_pages, GFP_KERNEL)?;
        for pfn in 0..gib_pages {
            list.push(page_run(2 * u64::from_safe_cast(pfn), 1)?, GFP_KERNEL)?;
        }
        assert_eq!(list.ranges().count(), gib_pages);
        let scattered = report("1 GiB of scattered 4 KiB pages", &list, gib_pages);
        assert!(scattered <= 8 * gib_pages);

        // The same memory in 2 MiB runs.
        let runs = 512;
        let mut list = PhyrList::new();
        for run in 0..runs {
            list.push(page_run(1024 * u64::from_safe_cast(run), 512)?, GFP_KERNEL)?;
        }
        assert!(report("1 GiB in 2 MiB runs", &list, runs) <= 8 * runs);

        // Arbitrary byte ranges.
        let ranges = 10000;
        let mut list = PhyrList::new();
        for i in 0..ranges {
            list.push(
                Phyr::new(0x1003 * u64::from_safe_cast(i) + 1, 0x801)?,
                GFP_KERNEL,
            )?;
        }
        assert!(report("byte-aligned ranges", &list, ranges) <= 16 * ranges);
        Ok(())
    }
}
