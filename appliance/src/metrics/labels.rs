//! Label sets of the appliance's metric families. A leaf module: it
//! imports nothing from the appliance, so every subsystem's metrics (the
//! cache's, the ingest's, the alert engine's) can use these types without
//! importing [`crate::metrics`], which aggregates them.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabel {
    pub channel_type: String,
    pub event: String,
    pub result: String,
}

/// The operation that failed (`outpost_alert_errors_total{op}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

/// A stage of the path from a stored sample to its alert's notification
/// (`outpost_alert_stage_seconds{stage}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

/// The stages of `outpost_alert_stage_seconds`, in the order a sample
/// passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertStage {
    /// In the engine's queue, from the writer's hand-off.
    Queued,
    /// One batch evaluated.
    Evaluate,
    /// One alert's durable write.
    Persist,
    /// One delivery attempt through a channel.
    Send,
}

impl AlertStage {
    pub const ALL: [AlertStage; 4] = [
        AlertStage::Queued,
        AlertStage::Evaluate,
        AlertStage::Persist,
        AlertStage::Send,
    ];

    /// The `stage` label's value.
    pub fn label(self) -> &'static str {
        match self {
            AlertStage::Queued => "queued",
            AlertStage::Evaluate => "evaluate",
            AlertStage::Persist => "persist",
            AlertStage::Send => "send",
        }
    }
}

/// A byte budget of the ingest queue (`outpost_ingest_budget_waits_total{budget}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BudgetLabel {
    pub budget: String,
}

/// A command state (`outpost_commands_transitions_total{state}`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}
