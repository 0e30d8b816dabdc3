//! The named steps of a clone (`dbfork clone`), which its errors name.

use serde::Serialize;

/// The steps of a clone, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    ConsistentSnapshot,
    WarmSetOffer,
    LazyClone,
    HydrationQueue,
    ReplicaStart,
    Replication,
    Record,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::ConsistentSnapshot => "consistent snapshot",
            Step::WarmSetOffer => "warm-set offer",
            Step::LazyClone => "lazy clone",
            Step::HydrationQueue => "hydration queue",
            Step::ReplicaStart => "replica start",
            Step::Replication => "replication",
            Step::Record => "instance record",
        })
    }
}
