//! The log's entries in memory: a sequence like a `Vec<Entry>`, kept in
//! chunks of [`CHUNK`] entries.
//!
//! Why not one `Vec`: a log holds up to a snapshot's worth of entries
//! (`--snapshot-log-bytes`, hundreds of thousands of small writes), and a
//! `Vec` that long copies every entry each time it doubles — in the event
//! loop, a pause of tens of milliseconds that delays heartbeats and every
//! write waiting behind it. Chunks grow one at a time, and dropping a prefix
//! after a snapshot (§7) frees whole chunks instead of moving the rest.

use std::collections::VecDeque;

use super::Entry;

/// Entries per chunk: large enough that the chunk list stays short, small
/// enough that a new chunk costs nothing noticeable (a few hundred KiB).
const CHUNK: usize = 4096;

/// Every chunk but the first and the last is full. The first has lost
/// `head` entries at its front to compaction and holds at most
/// `CHUNK - head`, so that position `i` is always slot `(i + head) % CHUNK`
/// of chunk `(i + head) / CHUNK`. No chunk is empty.
#[derive(Debug, Default)]
pub(super) struct Entries {
    chunks: VecDeque<Vec<Entry>>,
    head: usize,
    len: usize,
}

impl Entries {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn last(&self) -> Option<&Entry> {
        self.chunks.back().and_then(|chunk| chunk.last())
    }

    pub(super) fn get(&self, position: usize) -> Option<&Entry> {
        if position >= self.len {
            return None;
        }
        let (chunk, slot) = self.locate(position);
        self.chunks[chunk].get(slot)
    }

    /// The entries from `position` to the end, in order.
    pub(super) fn iter_from(&self, position: usize) -> impl Iterator<Item = &Entry> {
        let (chunk, slot) = self.locate(position.min(self.len));
        self.chunks
            .range(chunk.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(n, entries)| entries[if n == 0 { slot } else { 0 }..].iter())
    }

    /// The entries from the last to the first.
    pub(super) fn iter_rev(&self) -> impl Iterator<Item = &Entry> {
        self.chunks
            .iter()
            .rev()
            .flat_map(|chunk| chunk.iter().rev())
    }

    pub(super) fn extend(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let capacity = match self.chunks.len() {
                1 => CHUNK - self.head,
                _ => CHUNK,
            };
            match self.chunks.back_mut() {
                Some(last) if last.len() < capacity => last.push(entry),
                _ => {
                    let mut chunk = Vec::with_capacity(CHUNK);
                    chunk.push(entry);
                    self.chunks.push_back(chunk);
                }
            }
            self.len += 1;
        }
    }

    /// Keep the first `len` entries; returns the bytes of the commands
    /// removed ([`Command::size`](super::Command::size)).
    pub(super) fn truncate(&mut self, len: usize) -> usize {
        if len >= self.len {
            return 0;
        }
        let (chunk, slot) = self.locate(len);
        let mut removed = bytes(self.chunks[chunk].drain(slot..));
        for later in self.chunks.drain(chunk + 1..) {
            removed += bytes(later);
        }
        if self.chunks[chunk].is_empty() {
            self.chunks.pop_back();
        }
        self.len = len;
        if self.chunks.is_empty() {
            self.head = 0;
        }
        removed
    }

    /// Remove the first `count` entries; returns the bytes of their commands.
    pub(super) fn drop_front(&mut self, count: usize) -> usize {
        let mut removed = 0;
        let mut left = count.min(self.len);
        self.len -= left;
        while left > 0 {
            let first = &mut self.chunks[0];
            if left >= first.len() {
                left -= first.len();
                removed += bytes(self.chunks.pop_front().into_iter().flatten());
                self.head = 0;
            } else {
                removed += bytes(first.drain(..left));
                self.head += left;
                left = 0;
            }
        }
        if self.chunks.is_empty() {
            self.head = 0;
        }
        removed
    }

    pub(super) fn clear(&mut self) {
        *self = Entries::default();
    }

    /// The chunk and slot of `position` (`position == len` is one past the
    /// last entry: a slot at the end of its chunk, or a chunk not yet made).
    fn locate(&self, position: usize) -> (usize, usize) {
        let at = position + self.head;
        let chunk = at / CHUNK;
        let slot = match chunk {
            0 => position,
            _ => at % CHUNK,
        };
        (chunk, slot)
    }
}

/// The bytes of the entries' commands, dropping them.
fn bytes(entries: impl IntoIterator<Item = Entry>) -> usize {
    entries.into_iter().map(|e| e.command.size()).sum()
}

impl From<Vec<Entry>> for Entries {
    fn from(entries: Vec<Entry>) -> Self {
        let mut all = Entries::default();
        all.extend(entries);
        all
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::raft::Command;

    fn entry(index: u64) -> Entry {
        Entry {
            index,
            term: 1,
            // of varied sizes, so that the bytes removed say which were
            command: Command::Client(vec![index as u8; (index % 13) as usize]),
        }
    }

    /// Random appends, truncations and compactions, across chunk
    /// boundaries, against a plain `Vec` doing the same.
    #[test]
    fn behaves_like_a_vec() {
        for seed in 0..20 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut chunked = Entries::default();
            let mut plain: Vec<Entry> = Vec::new();
            let mut next = 1;
            for _ in 0..400 {
                match rng.gen_range(0..10) {
                    0..=5 => {
                        let batch: Vec<Entry> = (0..rng.gen_range(0..3000))
                            .map(|i| entry(next + i))
                            .collect();
                        next += batch.len() as u64;
                        plain.extend(batch.iter().cloned());
                        chunked.extend(batch);
                    }
                    6 | 7 => {
                        let len = rng.gen_range(0..=plain.len());
                        let removed = bytes(plain.drain(len..));
                        assert_eq!(chunked.truncate(len), removed, "seed {seed}");
                    }
                    8 => {
                        let count = rng.gen_range(0..=plain.len());
                        let removed = bytes(plain.drain(..count));
                        assert_eq!(chunked.drop_front(count), removed, "seed {seed}");
                    }
                    _ => {
                        if rng.gen_bool(0.1) {
                            plain.clear();
                            chunked.clear();
                        }
                    }
                }
                assert_eq!(chunked.len(), plain.len(), "seed {seed}");
                assert_eq!(chunked.is_empty(), plain.is_empty(), "seed {seed}");
                assert_eq!(chunked.last(), plain.last(), "seed {seed}");
                for _ in 0..20 {
                    let at = rng.gen_range(0..=plain.len() + 1);
                    assert_eq!(chunked.get(at), plain.get(at), "seed {seed}");
                    let from: Vec<&Entry> = chunked.iter_from(at).collect();
                    let want: Vec<&Entry> = plain.iter().skip(at).collect();
                    assert_eq!(from, want, "seed {seed}");
                }
                assert!(chunked.iter_rev().eq(plain.iter().rev()), "seed {seed}");
                assert!(chunked.chunks.iter().all(|c| !c.is_empty()));
            }
        }
    }
}
