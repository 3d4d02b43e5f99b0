//! Generations of a tenant's curated data (ADR 0013): which one readers use,
//! and the state of each one a replay builds. The transitions are pure
//! functions here, so every store applies the same rules; a store only saves
//! the result conditionally on the version it read.

use serde::{Deserialize, Serialize};

use crate::CheckpointError;

/// Where a generation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationState {
    /// A replay is rebuilding it; readers never use it.
    Building,
    /// Rebuilt and checked against the active generation (or its difference
    /// accepted by the operator): it may become active.
    Verified,
    /// Readers use it.
    Active,
    /// Was active; kept for a rollback until `lablake gc` removes it.
    Retired,
}

impl GenerationState {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationState::Building => "building",
            GenerationState::Verified => "verified",
            GenerationState::Active => "active",
            GenerationState::Retired => "retired",
        }
    }
}

/// One generation of a tenant's curated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub generation: u32,
    pub state: GenerationState,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The Lablake version that built it (generation 0: the live path, unknown).
    pub code_version: String,
    /// A hash of the curation configuration it was built with.
    pub config_hash: String,
    /// The verification gate's report, once it ran.
    #[serde(default)]
    pub report: Option<String>,
}

/// A tenant's generations: the pointer readers follow (`active`) and the
/// records. A tenant without a stored item is at generation 0 (the keys
/// written before generations existed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generations {
    pub tenant: String,
    /// The generation every reader uses.
    pub active: u32,
    /// The one active before the last cut-over (what a rollback returns to).
    pub previous: Option<u32>,
    /// When `active` last changed (ms since the epoch; 0: never).
    pub since_ms: i64,
    pub records: Vec<GenerationRecord>,
    /// The stored version this was read at (0: nothing stored yet). Every
    /// save is conditional on it.
    #[serde(skip)]
    pub version: u64,
}

impl Generations {
    /// A tenant nothing was stored for: generation 0 active.
    pub fn initial(tenant: &str) -> Self {
        Generations {
            tenant: tenant.to_owned(),
            active: 0,
            previous: None,
            since_ms: 0,
            records: Vec::new(),
            version: 0,
        }
    }

    pub fn record(&self, generation: u32) -> Option<&GenerationRecord> {
        self.records.iter().find(|r| r.generation == generation)
    }

    fn record_mut(&mut self, generation: u32) -> Option<&mut GenerationRecord> {
        self.records.iter_mut().find(|r| r.generation == generation)
    }

    /// The generation a replay is building or has verified, if any (at most one).
    pub fn pending(&self) -> Option<&GenerationRecord> {
        self.records.iter().find(|r| matches!(r.state, GenerationState::Building | GenerationState::Verified))
    }

    /// Starts building the next generation (one above every generation there
    /// ever was), or returns the one already pending (a replay resumed after
    /// a kill continues it).
    pub fn begin(&mut self, code_version: &str, config_hash: &str, now_ms: i64) -> u32 {
        if let Some(p) = self.pending() {
            return p.generation;
        }
        let next = self.records.iter().map(|r| r.generation).chain([self.active]).max().unwrap_or(0) + 1;
        self.records.push(GenerationRecord {
            generation: next,
            state: GenerationState::Building,
            created_ms: now_ms,
            updated_ms: now_ms,
            code_version: code_version.to_owned(),
            config_hash: config_hash.to_owned(),
            report: None,
        });
        next
    }

    /// Records the verification gate's outcome of a generation being built.
    pub fn verified(&mut self, generation: u32, report: String, now_ms: i64) -> Result<(), CheckpointError> {
        let tenant = self.tenant.clone();
        let r = self
            .record_mut(generation)
            .filter(|r| r.state == GenerationState::Building)
            .ok_or_else(|| not_in_state(&tenant, generation, "building"))?;
        r.state = GenerationState::Verified;
        r.report = Some(report);
        r.updated_ms = now_ms;
        Ok(())
    }

    /// The cut-over: `generation` (verified) becomes active, the active one
    /// retired.
    pub fn cut_over(&mut self, generation: u32, now_ms: i64) -> Result<(), CheckpointError> {
        if self.record(generation).is_none_or(|r| r.state != GenerationState::Verified) {
            return Err(not_in_state(&self.tenant, generation, "verified"));
        }
        self.switch(generation, now_ms);
        Ok(())
    }

    /// Back to the generation active before the last cut-over.
    pub fn rollback(&mut self, now_ms: i64) -> Result<u32, CheckpointError> {
        let to = self.previous.ok_or_else(|| CheckpointError::Invalid {
            what: format!("generations of tenant `{}`", self.tenant),
            reason: "there is no earlier generation to roll back to".into(),
        })?;
        if to != 0 && self.record(to).is_none_or(|r| r.state != GenerationState::Retired) {
            return Err(not_in_state(&self.tenant, to, "retired"));
        }
        self.switch(to, now_ms);
        Ok(to)
    }

    fn switch(&mut self, to: u32, now_ms: i64) {
        let from = self.active;
        if from == 0 && self.record(0).is_none() {
            self.records.insert(
                0,
                GenerationRecord {
                    generation: 0,
                    state: GenerationState::Active,
                    created_ms: 0,
                    updated_ms: 0,
                    code_version: String::new(),
                    config_hash: String::new(),
                    report: None,
                },
            );
        }
        if let Some(r) = self.record_mut(from) {
            r.state = GenerationState::Retired;
            r.updated_ms = now_ms;
        }
        if let Some(r) = self.record_mut(to) {
            r.state = GenerationState::Active;
            r.updated_ms = now_ms;
        }
        self.previous = Some(from);
        self.active = to;
        self.since_ms = now_ms;
    }

    /// Forgets a retired generation (after `lablake gc` removed its data).
    pub fn forget(&mut self, generation: u32) -> Result<(), CheckpointError> {
        if self.record(generation).is_none_or(|r| r.state != GenerationState::Retired) || generation == self.active {
            return Err(not_in_state(&self.tenant, generation, "retired"));
        }
        self.records.retain(|r| r.generation != generation);
        if self.previous == Some(generation) {
            self.previous = None;
        }
        Ok(())
    }
}

fn not_in_state(tenant: &str, generation: u32, state: &str) -> CheckpointError {
    CheckpointError::Invalid {
        what: format!("generation {generation} of tenant `{tenant}`"),
        reason: format!("is not {state}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_builds_verifies_and_cuts_over_then_rolls_back() {
        let mut g = Generations::initial("acme");
        let n = g.begin("0.1.0", "h", 1);
        assert_eq!((n, g.active), (1, 0));
        assert_eq!(g.begin("0.1.0", "h", 2), 1, "a resumed replay continues the pending generation");
        assert!(g.cut_over(1, 3).is_err(), "not verified yet");
        g.verified(1, "ok".into(), 4).unwrap();
        g.cut_over(1, 5).unwrap();
        assert_eq!((g.active, g.previous, g.since_ms), (1, Some(0), 5));
        assert_eq!(g.record(0).map(|r| r.state), Some(GenerationState::Retired));
        assert_eq!(g.record(1).map(|r| r.state), Some(GenerationState::Active));
        assert!(g.pending().is_none());
        assert_eq!(g.begin("0.1.0", "h", 6), 2, "the next generation is above every earlier one");
        assert_eq!(g.rollback(7).unwrap(), 0);
        assert_eq!((g.active, g.previous), (0, Some(1)));
        assert!(g.forget(0).is_err(), "the active generation stays");
        g.forget(1).unwrap();
        assert_eq!(g.previous, None);
        assert!(g.rollback(8).is_err());
    }
}
