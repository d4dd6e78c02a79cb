//! Scheduling many streams: best-of-N generation over one shared prompt ([`best_of_n`])
//! and the answer vote ([`vote`]).

pub mod best_of_n;
pub mod vote;
