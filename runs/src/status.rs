//! A run's lifecycle state: `Queued -> Preparing -> Running -> Finalizing -> Completed |
//! Failed | Canceled`.

use serde::{Deserialize, Serialize};

/// A run's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// Recorded, not started.
    Queued,
    /// Snapshotting the source and writing the command.
    Preparing,
    /// The program is running.
    Running,
    /// The program ended; metrics and artifacts are being recorded.
    Finalizing,
    /// Exit code 0.
    Completed,
    /// A non-zero exit, a start failure, or a lost submitter.
    Failed,
    /// Stopped by `kiln runs cancel` or Ctrl-C.
    Canceled,
}

impl RunStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "Queued",
            RunStatus::Preparing => "Preparing",
            RunStatus::Running => "Running",
            RunStatus::Finalizing => "Finalizing",
            RunStatus::Completed => "Completed",
            RunStatus::Failed => "Failed",
            RunStatus::Canceled => "Canceled",
        }
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Canceled
        )
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RunStatus::Queued,
            RunStatus::Preparing,
            RunStatus::Running,
            RunStatus::Finalizing,
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown run status '{s}'"))
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
