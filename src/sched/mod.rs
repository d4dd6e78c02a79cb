//! Scheduling many streams: best-of-N generation over one shared prompt ([`best_of_n`])
//! the answer vote ([`vote`]), task-file evaluation ([`eval`]), continuous batching for the
//! server ([`serving`]) and one request on a worker thread for embedders ([`running`]).

pub mod best_of_n;
pub mod detokenize;
pub mod eval;
mod generate;
pub mod heads;
pub mod running;
pub mod serving;
pub mod vote;
