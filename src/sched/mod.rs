//! Scheduling many streams: best-of-N generation over one shared prompt ([`best_of_n`])
//! the answer vote ([`vote`]) and task-file evaluation ([`eval`]).

pub mod best_of_n;
pub mod eval;
pub mod serving;
pub mod vote;
