//! [`PrefixCache`]: the KV blocks of earlier prompts, kept for later requests that start
//! the same way (a system prompt, a few-shot prefix, a conversation's history).

use crate::kv::StreamId;
use crate::model::forward::BLOCK_SIZE;
use crate::model::Session;
use anyhow::Result;

/// Cached prompts, each a cache stream holding the full blocks of one prompt (shared with
/// any stream still using them, so caching copies nothing). Looked up by the tokens, one
/// block at a time; evicted least recently used first.
#[derive(Default)]
pub struct PrefixCache {
    entries: Vec<Entry>,
    clock: u64,
}

struct Entry {
    stream: StreamId,
    /// The prompt's tokens in its full blocks.
    tokens: Vec<u32>,
    /// FNV hashes of each block's tokens, chained (block i's covers blocks 0..=i).
    hashes: Vec<u64>,
    last_used: u64,
}

/// Chained hashes of the full blocks of `tokens`.
fn block_hashes(tokens: &[u32]) -> Vec<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    tokens
        .chunks_exact(BLOCK_SIZE)
        .map(|block| {
            for t in block {
                for b in t.to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
            h
        })
        .collect()
}

impl PrefixCache {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry sharing the most leading full blocks with `tokens`: (its stream, tokens
    /// in common, a multiple of the block size).
    pub fn longest(&self, tokens: &[u32]) -> Option<(StreamId, usize)> {
        let want = block_hashes(tokens);
        self.entries
            .iter()
            .map(|e| {
                let blocks = e
                    .hashes
                    .iter()
                    .zip(&want)
                    .take_while(|(a, b)| a == b)
                    .count();
                // Hashes can collide: confirm with the tokens.
                let n = blocks * BLOCK_SIZE;
                let n = if e.tokens[..n] == tokens[..n] { n } else { 0 };
                (e.stream, n)
            })
            .max_by_key(|&(_, n)| n)
    }

    /// Mark the entry of `stream` as just used.
    pub fn touch(&mut self, stream: StreamId) {
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.stream == stream) {
            e.last_used = self.clock;
        }
    }

    /// Keep the full blocks of `prompt`, which stream `s` holds (unless an entry already
    /// covers them all). Entries that the new one covers are dropped.
    pub fn insert(&mut self, session: &mut Session, s: StreamId, prompt: &[u32]) -> Result<()> {
        let full = prompt.len() / BLOCK_SIZE * BLOCK_SIZE;
        if full == 0 {
            return Ok(());
        }
        if let Some((e, n)) = self.longest(&prompt[..full]) {
            if n == full {
                self.touch(e);
                return Ok(());
            }
        }
        let hashes = block_hashes(&prompt[..full]);
        let covered: Vec<StreamId> = self
            .entries
            .iter()
            .filter(|e| e.hashes.len() < hashes.len() && hashes.starts_with(&e.hashes))
            .map(|e| e.stream)
            .collect();
        for c in covered {
            self.remove(session, c)?;
        }
        let stream = session.fork_prefix(s, full)?;
        self.clock += 1;
        self.entries.push(Entry {
            stream,
            tokens: prompt[..full].to_vec(),
            hashes,
            last_used: self.clock,
        });
        Ok(())
    }

    fn remove(&mut self, session: &mut Session, s: StreamId) -> Result<()> {
        self.entries.retain(|e| e.stream != s);
        session.release(s)?;
        Ok(())
    }

    /// Drop the least recently used entry; false if there was none.
    pub fn evict_one(&mut self, session: &mut Session) -> bool {
        let Some(lru) = self
            .entries
            .iter()
            .min_by_key(|e| e.last_used)
            .map(|e| e.stream)
        else {
            return false;
        };
        self.remove(session, lru).is_ok()
    }

    /// Drop every entry.
    pub fn clear(&mut self, session: &mut Session) {
        while self.evict_one(session) {}
    }

    /// Blocks only the cache holds (freed if it were cleared).
    pub fn exclusive_blocks(&self, session: &Session) -> usize {
        let streams: Vec<StreamId> = self.entries.iter().map(|e| e.stream).collect();
        session.pool.blocks_only_held_by(&streams)
    }
}
