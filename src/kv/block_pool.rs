//! [`BlockPool`]: paged KV-cache allocation with prefix sharing.
//!
//! A stream's tokens live in blocks of `block_size` slots; its block table lists them in
//! order, so token `p` is at slot `table[p / block_size] * block_size + p % block_size`.
//! `fork(s, n)` gives `n` new streams the same table and bumps each block's count: N
//! candidates over a P-token prompt then hold P + N·S slots (plus rounding), not N·(P + S).
//! Appending to a shared, partly filled last block first copies it (copy-on-write); the
//! copy is returned for the caller to perform on the GPU before the step that writes it.

use std::collections::HashMap;

/// A stream's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u32);

/// A block the caller must copy (all `block_size` slots) before the next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
}

/// Errors callers branch on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("KV cache full: stream {stream} needs {needed} more blocks, {free} of {total} free (raise the cache size or run fewer streams)")]
    OutOfBlocks {
        stream: u32,
        needed: usize,
        free: usize,
        total: usize,
    },
    #[error("unknown stream {0}")]
    UnknownStream(u32),
}

struct Stream {
    blocks: Vec<u32>,
    len: usize,
}

/// Block allocator and per-stream block tables.
pub struct BlockPool {
    block_size: usize,
    refs: Vec<u32>,
    free: Vec<u32>,
    streams: HashMap<StreamId, Stream>,
    next_id: u32,
}

impl BlockPool {
    /// A pool of `n_blocks` blocks of `block_size` tokens.
    ///
    /// # Panics
    /// If `block_size` is 0 (the engine's is a constant).
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "a KV block holds at least one token");
        BlockPool {
            block_size,
            refs: vec![0; n_blocks],
            // Pop from the end: hand out low block ids first.
            free: (0..n_blocks as u32).rev().collect(),
            streams: HashMap::new(),
            next_id: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks in use by any stream (shared blocks counted once).
    pub fn used_blocks(&self) -> usize {
        self.total_blocks() - self.free_blocks()
    }

    /// A new, empty stream.
    pub fn create(&mut self) -> StreamId {
        let id = StreamId(self.next_id);
        self.next_id += 1;
        self.streams.insert(
            id,
            Stream {
                blocks: Vec::new(),
                len: 0,
            },
        );
        id
    }

    fn stream(&self, s: StreamId) -> Result<&Stream, KvError> {
        self.streams.get(&s).ok_or(KvError::UnknownStream(s.0))
    }

    /// Tokens in stream `s`.
    pub fn len(&self, s: StreamId) -> Result<usize, KvError> {
        Ok(self.stream(s)?.len)
    }

    /// Block table of `s` (block ids in token order).
    pub fn table(&self, s: StreamId) -> Result<&[u32], KvError> {
        Ok(&self.stream(s)?.blocks)
    }

    /// Cache slot of token `pos` of stream `s`.
    pub fn slot(&self, s: StreamId, pos: usize) -> Result<u32, KvError> {
        let st = self.stream(s)?;
        Ok(st.blocks[pos / self.block_size] * self.block_size as u32
            + (pos % self.block_size) as u32)
    }

    /// `n` new streams sharing every block of `s` (its prompt).
    pub fn fork(&mut self, s: StreamId, n: usize) -> Result<Vec<StreamId>, KvError> {
        let (blocks, len) = {
            let st = self.stream(s)?;
            (st.blocks.clone(), st.len)
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            for &b in &blocks {
                self.refs[b as usize] += 1;
            }
            let id = StreamId(self.next_id);
            self.next_id += 1;
            self.streams.insert(
                id,
                Stream {
                    blocks: blocks.clone(),
                    len,
                },
            );
            out.push(id);
        }
        Ok(out)
    }

    /// A new stream holding the first `len` tokens of `s` (sharing their blocks: a cached
    /// prompt prefix). A partly used last block is shared too; appending copies it first.
    pub fn fork_prefix(&mut self, s: StreamId, len: usize) -> Result<StreamId, KvError> {
        let st = self.stream(s)?;
        let len = len.min(st.len);
        let blocks = st.blocks[..len.div_ceil(self.block_size)].to_vec();
        for &b in &blocks {
            self.refs[b as usize] += 1;
        }
        let id = StreamId(self.next_id);
        self.next_id += 1;
        self.streams.insert(id, Stream { blocks, len });
        Ok(id)
    }

    /// Blocks held by `streams` and no other stream (what releasing them all would free).
    pub fn blocks_only_held_by(&self, streams: &[StreamId]) -> usize {
        let mut held: HashMap<u32, u32> = HashMap::new();
        for st in streams.iter().filter_map(|s| self.streams.get(s)) {
            for &b in &st.blocks {
                *held.entry(b).or_default() += 1;
            }
        }
        held.iter()
            .filter(|&(&b, &n)| self.refs[b as usize] == n)
            .count()
    }

    /// Make room for `n` more tokens in `s`: allocate blocks, and un-share a shared,
    /// partly filled last block (returned as a copy to perform before writing). On error
    /// nothing changes.
    pub fn append(&mut self, s: StreamId, n: usize) -> Result<Vec<BlockCopy>, KvError> {
        let (bs, total) = (self.block_size, self.total_blocks());
        let BlockPool {
            refs,
            free,
            streams,
            ..
        } = self;
        let st = streams.get_mut(&s).ok_or(KvError::UnknownStream(s.0))?;
        let last_shared = (st.len % bs != 0)
            .then(|| st.blocks.last().copied())
            .flatten()
            .filter(|&b| refs[b as usize] > 1);
        let needed_total = (st.len + n).div_ceil(bs);
        let new_blocks =
            needed_total.saturating_sub(st.blocks.len()) + last_shared.is_some() as usize;
        if new_blocks > free.len() {
            return Err(KvError::OutOfBlocks {
                stream: s.0,
                needed: new_blocks,
                free: free.len(),
                total,
            });
        }
        // The free list's tail, in pop order (low block ids first).
        let mut fresh = free.split_off(free.len() - new_blocks);
        fresh.reverse();
        for &b in &fresh {
            refs[b as usize] = 1;
        }
        let mut fresh = fresh.into_iter();
        let mut copies = Vec::new();
        if let (Some(src), Some(last)) = (last_shared, st.blocks.last_mut()) {
            if let Some(dst) = fresh.next() {
                *last = dst;
                refs[src as usize] -= 1;
                copies.push(BlockCopy { src, dst });
            }
        }
        st.blocks.extend(fresh);
        st.len += n;
        Ok(copies)
    }

    /// Shorten stream `s` to its first `len` tokens (no-op if it is not longer); blocks it
    /// no longer needs are let go (back to the pool if no other stream holds them).
    pub fn truncate(&mut self, s: StreamId, len: usize) -> Result<(), KvError> {
        let bs = self.block_size;
        let st = self
            .streams
            .get_mut(&s)
            .ok_or(KvError::UnknownStream(s.0))?;
        if len >= st.len {
            return Ok(());
        }
        let gone: Vec<u32> = st.blocks.drain(len.div_ceil(bs)..).collect();
        st.len = len;
        self.let_go(gone);
        Ok(())
    }

    /// End stream `s`; blocks no other stream holds return to the pool.
    pub fn release(&mut self, s: StreamId) -> Result<(), KvError> {
        let st = self.streams.remove(&s).ok_or(KvError::UnknownStream(s.0))?;
        self.let_go(st.blocks);
        Ok(())
    }

    /// One holder fewer for each of `blocks`; those no stream holds return to the pool.
    fn let_go(&mut self, blocks: Vec<u32>) {
        for b in blocks {
            self.refs[b as usize] -= 1;
            if self.refs[b as usize] == 0 {
                self.free.push(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_shares_the_prompt_and_memory_is_p_plus_n_s() {
        let (bs, p, n, s) = (16, 100, 8, 40);
        let mut pool = BlockPool::new(256, bs);
        let prompt = pool.create();
        pool.append(prompt, p).unwrap();
        let kids = pool.fork(prompt, n).unwrap();
        pool.release(prompt).unwrap();
        let mut copies = 0;
        for &k in &kids {
            copies += pool.append(k, s).unwrap().len();
        }
        // 100 = 6 full blocks + 4 tokens: each child copies the partial 7th block, except
        // the last, which by then holds it alone (the prompt stream was released).
        assert_eq!(copies, n - 1);
        let expected = p / bs + n * (p % bs + s).div_ceil(bs);
        assert_eq!(pool.used_blocks(), expected);
        assert!(
            pool.used_blocks() * bs < n * (p + s) / 2,
            "shared prefix must not be copied per stream"
        );
        // Shared prompt slots agree; generated slots differ.
        assert_eq!(
            pool.slot(kids[0], 10).unwrap(),
            pool.slot(kids[7], 10).unwrap()
        );
        assert_ne!(
            pool.slot(kids[0], p + 1).unwrap(),
            pool.slot(kids[1], p + 1).unwrap()
        );
    }

    #[test]
    fn release_returns_blocks_only_when_unshared() {
        let mut pool = BlockPool::new(8, 4);
        let a = pool.create();
        pool.append(a, 8).unwrap(); // 2 full blocks
        let b = pool.fork(a, 1).unwrap()[0];
        assert_eq!(pool.free_blocks(), 6);
        pool.release(a).unwrap();
        assert_eq!(pool.free_blocks(), 6, "b still holds both blocks");
        pool.release(b).unwrap();
        assert_eq!(pool.free_blocks(), 8);
        assert_eq!(pool.release(b), Err(KvError::UnknownStream(b.0)));
    }

    #[test]
    fn truncate_gives_back_whole_blocks_and_keeps_shared_ones() {
        let mut p = BlockPool::new(8, 4);
        let a = p.create();
        p.append(a, 6).unwrap(); // blocks 0, 1
        let b = p.fork(a, 1).unwrap()[0];
        p.append(b, 3).unwrap(); // b: copy of block 1 (2), then block 3
        assert_eq!(p.table(b).unwrap(), &[0, 2, 3]);
        p.truncate(b, 8).unwrap(); // 9 -> 8 tokens fit two blocks: block 3 is freed
        assert_eq!((p.len(b).unwrap(), p.table(b).unwrap()), (8, &[0, 2][..]));
        assert_eq!(p.free_blocks(), 8 - 4 + 1);
        p.truncate(b, 3).unwrap(); // block 2 (b's own) freed; block 0 shared with a, kept
        assert_eq!((p.len(b).unwrap(), p.table(b).unwrap()), (3, &[0][..]));
        assert_eq!(p.free_blocks(), 8 - 2);
        assert_eq!(p.table(a).unwrap(), &[0, 1]);
        p.truncate(b, 10).unwrap(); // longer than the stream: nothing changes
        assert_eq!(p.len(b).unwrap(), 3);
        p.append(b, 1).unwrap(); // block 0 is shared and partly filled: copied again
        assert_eq!(p.len(b).unwrap(), 4);
        assert_eq!(p.truncate(StreamId(99), 0), Err(KvError::UnknownStream(99)));
    }

    #[test]
    fn full_blocks_are_never_copied() {
        let mut pool = BlockPool::new(16, 4);
        let a = pool.create();
        pool.append(a, 8).unwrap();
        let kids = pool.fork(a, 3).unwrap();
        for k in kids {
            assert!(pool.append(k, 1).unwrap().is_empty());
        }
    }

    #[test]
    fn running_out_is_an_error_and_changes_nothing() {
        let mut pool = BlockPool::new(3, 4);
        let a = pool.create();
        pool.append(a, 10).unwrap();
        let before = (
            pool.free_blocks(),
            pool.len(a).unwrap(),
            pool.table(a).unwrap().to_vec(),
        );
        let err = pool.append(a, 5).unwrap_err();
        assert!(
            matches!(
                err,
                KvError::OutOfBlocks {
                    needed: 1,
                    free: 0,
                    total: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            (
                pool.free_blocks(),
                pool.len(a).unwrap(),
                pool.table(a).unwrap().to_vec()
            ),
            before
        );
    }
}
