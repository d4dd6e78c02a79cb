//! The switcher and verifier heads kept beside an engine, and the request-time choices
//! that use them: which adapter reasons (off, on, or the switcher's call) and how the
//! candidates vote. The C ABI and the Python package keep one per engine.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use edgereason::engine::{Engine, EngineOptions};
//! use edgereason::sched::heads::{Heads, ReasoningMode};
//! let engine = Engine::load("smollm2-135m", &EngineOptions::default())?;
//! let heads = Heads::default();
//! heads.load_shipped(&engine, "smollm2-135m")?; // adapters/smollm2-135m/*
//! let reasoning = heads.reasoning(&engine, ReasoningMode::Auto, None, false)?;
//! # let _ = reasoning;
//! # Ok(()) }
//! ```

use super::best_of_n::VoteParams;
use crate::adapters::{Shipped, Switcher, Verifier};
use crate::engine::{Engine, Reasoning};
use std::sync::{Arc, RwLock};

/// Whether the reasoning adapter decodes a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReasoningMode {
    Off,
    On,
    /// The switcher head decides from the prompt.
    Auto,
}

impl std::str::FromStr for ReasoningMode {
    type Err = HeadsError;
    fn from_str(s: &str) -> Result<Self, HeadsError> {
        match s {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            "auto" => Ok(Self::Auto),
            other => Err(HeadsError::Mode(other.to_string())),
        }
    }
}

/// A request the heads cannot serve.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HeadsError {
    #[error("reasoning mode '{0}': expected off, on or auto")]
    Mode(String),
    #[error("adapter '{name}' is not loaded (loaded: {loaded:?})")]
    AdapterNotLoaded { name: String, loaded: Vec<String> },
    #[error("reasoning auto needs a switcher head: load one (or the model's shipped artifacts)")]
    NoSwitcher,
    #[error("a weighted vote needs a verifier head: load one (or the model's shipped artifacts)")]
    NoVerifier,
}

/// The heads an engine's requests may use.
#[derive(Default)]
pub struct Heads {
    switcher: RwLock<Option<Arc<Switcher>>>,
    verifier: RwLock<Option<Arc<Verifier>>>,
}

impl Heads {
    /// Load `model`'s shipped artifacts (see [`Shipped`]): the reasoning adapter as
    /// "reasoning", its budget version as "reasoning-budget", and both heads.
    pub fn load_shipped(&self, engine: &Engine, model: &str) -> anyhow::Result<Shipped> {
        let shipped = Shipped::find(model);
        if let Some(dir) = &shipped.reasoning {
            engine.load_adapter("reasoning", dir)?;
        }
        if let Some(dir) = &shipped.reasoning_budget {
            engine.load_adapter("reasoning-budget", dir)?;
        }
        let d = engine.model.config.n_embd;
        if let Some(p) = &shipped.switcher {
            self.set_switcher(Some(Switcher::load(p, d)?));
        }
        if let Some(p) = &shipped.verifier {
            self.set_verifier(Some(Verifier::load(p, d)?));
        }
        Ok(shipped)
    }

    pub fn set_switcher(&self, s: Option<Switcher>) {
        *crate::sync::write(&self.switcher) = s.map(Arc::new);
    }

    pub fn set_verifier(&self, v: Option<Verifier>) {
        *crate::sync::write(&self.verifier) = v.map(Arc::new);
    }

    pub fn switcher(&self) -> Option<Arc<Switcher>> {
        crate::sync::read(&self.switcher).clone()
    }

    pub fn verifier(&self) -> Option<Arc<Verifier>> {
        crate::sync::read(&self.verifier).clone()
    }

    /// Which adapter decodes. `adapter` names a loaded one; `None` picks
    /// "reasoning-budget" for a budgeted request when it is loaded, else "reasoning".
    pub fn reasoning(
        &self,
        engine: &Engine,
        mode: ReasoningMode,
        adapter: Option<&str>,
        budgeted: bool,
    ) -> Result<Reasoning, HeadsError> {
        if mode == ReasoningMode::Off {
            return Ok(Reasoning::Off);
        }
        let loaded = engine.adapter_names();
        let adapter = match adapter {
            Some(a) => a.to_string(),
            None if budgeted && loaded.iter().any(|a| a == "reasoning-budget") => {
                "reasoning-budget".into()
            }
            None => "reasoning".into(),
        };
        if !loaded.contains(&adapter) {
            return Err(HeadsError::AdapterNotLoaded {
                name: adapter,
                loaded,
            });
        }
        Ok(match mode {
            ReasoningMode::Auto => Reasoning::Auto {
                adapter,
                switcher: self.switcher().ok_or(HeadsError::NoSwitcher)?,
            },
            _ => Reasoning::On { adapter },
        })
    }

    /// How candidates vote: the verifier (if loaded) scores them; `weighted` sums its
    /// scores per answer instead of counting.
    pub fn vote(
        &self,
        weighted: bool,
        answer_regex: Option<regex::Regex>,
    ) -> Result<VoteParams, HeadsError> {
        let verifier = self.verifier();
        if weighted && verifier.is_none() {
            return Err(HeadsError::NoVerifier);
        }
        Ok(VoteParams {
            answer_regex,
            verifier,
            weighted,
        })
    }
}
