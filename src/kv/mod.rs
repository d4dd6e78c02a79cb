//! KV cache bookkeeping for many streams: fixed-size blocks in one pool, a block table per
//! stream, reference counts so forked streams share their prompt's blocks, and
//! copy-on-write for a partly filled last block. Pure bookkeeping (no GPU): the scheduler
//! turns its answers into block tables and block copies for the kernels.

mod block_pool;

pub use block_pool::{BlockCopy, BlockPool, KvError, StreamId};
