//! Early termination, as HyperDrive defines it. An interval is one report of the primary metric;
//! a policy looks at a run at intervals `delay_evaluation`, and after it at every multiple of
//! `evaluation_interval`, comparing it with every trial's report at the same interval
//! (running, finished or canceled, itself included):
//!
//! - bandit: cancelled when its value is outside the slack of the best value at that interval
//!   (maximizing with `slack_factor` s: below `best / (1 + s)`; with `slack_amount` a: below
//!   `best - a`; minimizing: above `best * (1 + s)` or `best + a`);
//! - median stopping: cancelled when its best value so far is worse than the median of every
//!   trial's running average (the mean of its first `k` reports) at interval `k`;
//! - truncation selection: cancelled when it is among the lowest `truncation_percentage`% of the
//!   values at that interval (`floor(n * percentage / 100)` of `n` trials).

use serde::{Deserialize, Serialize};

/// Whether a larger primary metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Larger is better (accuracy).
    Maximize,
    /// Smaller is better (loss).
    Minimize,
}

impl Goal {
    /// Whether `a` is better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        match self {
            Goal::Maximize => a > b,
            Goal::Minimize => a < b,
        }
    }

    /// The best of `values` (NaN when empty).
    pub fn best(self, values: impl IntoIterator<Item = f64>) -> f64 {
        values
            .into_iter()
            .filter(|v| !v.is_nan())
            .reduce(|a, b| if self.better(b, a) { b } else { a })
            .unwrap_or(f64::NAN)
    }
}

/// The bandit policy's allowed distance from the best run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slack {
    /// A ratio: the cutoff is `best / (1 + f)` when maximizing, `best * (1 + f)` when minimizing.
    Factor(f64),
    /// A distance: the cutoff is `best - a` when maximizing, `best + a` when minimizing.
    Amount(f64),
}

/// Which runs are cut, and when.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Never cancel.
    None,
    /// Outside the slack of the best run at the same interval.
    Bandit(Slack),
    /// Best-so-far worse than the median of the running averages.
    MedianStopping,
    /// Among the lowest `percentage`% at the interval.
    TruncationSelection(u32),
}

/// An early-termination policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// What is compared.
    pub rule: Rule,
    /// Apply at multiples of this many intervals.
    pub evaluation_interval: usize,
    /// Apply from this interval on.
    pub delay_evaluation: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            rule: Rule::None,
            evaluation_interval: 1,
            delay_evaluation: 0,
        }
    }
}

/// Why a run is cancelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The interval (1-based report number).
    pub interval: usize,
    /// The run's value that was judged (its value at the interval, or its best so far).
    pub value: f64,
    /// The value it was held against.
    pub cutoff: f64,
    /// One line: the policy, the comparison and where the cutoff came from.
    pub reason: String,
}

impl Policy {
    /// The policy's name as the sweep file writes it.
    pub fn name(&self) -> &'static str {
        match self.rule {
            Rule::None => "none",
            Rule::Bandit(_) => "bandit",
            Rule::MedianStopping => "median_stopping",
            Rule::TruncationSelection(_) => "truncation_selection",
        }
    }

    /// Whether the policy looks at runs at `interval` (1-based).
    pub fn applies_at(&self, interval: usize) -> bool {
        self.rule != Rule::None
            && interval >= self.delay_evaluation.max(1)
            && interval.is_multiple_of(self.evaluation_interval.max(1))
    }

    /// Judges trial `candidate` at `interval` against every trial's `curves` (each trial's
    /// reports in order; the candidate's among them). `None`: it goes on.
    pub fn judge(
        &self,
        goal: Goal,
        curves: &[&[f64]],
        candidate: usize,
        interval: usize,
    ) -> Option<Verdict> {
        let mine = curves.get(candidate)?;
        if !self.applies_at(interval) || mine.len() < interval {
            return None;
        }
        let k = interval - 1;
        let at_k: Vec<f64> = curves
            .iter()
            .filter(|c| c.len() > k && !c[k].is_nan())
            .map(|c| c[k])
            .collect();
        let value = mine[k];
        let worse = |a: f64, b: f64| goal.better(b, a);
        let verdict = |value: f64, cutoff: f64, reason: String| Verdict {
            interval,
            value,
            cutoff,
            reason,
        };
        match self.rule {
            Rule::None => None,
            Rule::Bandit(slack) => {
                let best = goal.best(at_k.iter().copied());
                let (cutoff, how) = match (slack, goal) {
                    (Slack::Factor(f), Goal::Maximize) => {
                        (best / (1.0 + f), format!("{best} / (1 + {f})"))
                    }
                    (Slack::Factor(f), Goal::Minimize) => {
                        (best * (1.0 + f), format!("{best} * (1 + {f})"))
                    }
                    (Slack::Amount(a), Goal::Maximize) => (best - a, format!("{best} - {a}")),
                    (Slack::Amount(a), Goal::Minimize) => (best + a, format!("{best} + {a}")),
                };
                (value.is_nan() || worse(value, cutoff)).then(|| {
                    verdict(
                        value,
                        cutoff,
                        format!(
                            "{value} is outside the slack of the best run's {best} at interval \
                             {interval} (cutoff {how} = {cutoff:.6})"
                        ),
                    )
                })
            }
            Rule::MedianStopping => {
                let mut averages: Vec<f64> = curves
                    .iter()
                    .filter(|c| c.len() >= interval)
                    .map(|c| c[..interval].iter().sum::<f64>() / interval as f64)
                    .filter(|a| !a.is_nan())
                    .collect();
                let median = median(&mut averages)?;
                let best = goal.best(mine[..interval].iter().copied());
                (best.is_nan() || worse(best, median)).then(|| {
                    verdict(
                        best,
                        median,
                        format!(
                            "its best so far, {best}, is worse than the median {median:.6} of the \
                             {} running averages at interval {interval}",
                            averages.len()
                        ),
                    )
                })
            }
            Rule::TruncationSelection(percentage) => {
                let n = at_k.len();
                let cut = n * percentage as usize / 100;
                let below = at_k.iter().filter(|&&v| worse(v, value)).count();
                let mut sorted = at_k.clone();
                sorted.sort_by(|a, b| a.total_cmp(b));
                if goal == Goal::Minimize {
                    sorted.reverse();
                }
                // The value of the last run cut: the best of the lowest `cut`.
                let cutoff = sorted
                    .get(cut.saturating_sub(1))
                    .copied()
                    .unwrap_or(f64::NAN);
                (cut > 0 && (value.is_nan() || below < cut)).then(|| {
                    verdict(
                        value,
                        cutoff,
                        format!(
                            "{value} is in the lowest {percentage}% at interval {interval} \
                             ({cut} of {n} runs cut; the cut reaches {cutoff})"
                        ),
                    )
                })
            }
        }
    }
}

/// The median of `values` (the mean of the two middle ones for an even count).
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rule: Rule, interval: usize, delay: usize) -> Policy {
        Policy {
            rule,
            evaluation_interval: interval,
            delay_evaluation: delay,
        }
    }

    /// The first interval at which each curve is cancelled, judging intervals in order.
    fn cut_at(p: &Policy, goal: Goal, curves: &[&[f64]]) -> Vec<Option<usize>> {
        (0..curves.len())
            .map(|i| (1..=curves[i].len()).find(|&k| p.judge(goal, curves, i, k).is_some()))
            .collect()
    }

    #[test]
    fn bandit_slack_factor_is_hyperdrives_example() {
        let p = policy(Rule::Bandit(Slack::Factor(0.2)), 1, 0);
        let best: &[f64] = &[0.8];
        let v = p.judge(Goal::Maximize, &[best, &[0.66]], 1, 1).unwrap();
        assert!((v.cutoff - 0.8 / 1.2).abs() < 1e-12 && (v.cutoff - 0.6667).abs() < 1e-4);
        assert!(v.reason.contains("0.8 / (1 + 0.2)"), "{}", v.reason);
        assert!(p.judge(Goal::Maximize, &[best, &[0.67]], 1, 1).is_none());
        assert!(
            p.judge(Goal::Maximize, &[best], 0, 1).is_none(),
            "the best is never cut"
        );
        // Minimizing a loss: cutoff 0.5 * 1.2 = 0.6.
        let v = p.judge(Goal::Minimize, &[&[0.5], &[0.61]], 1, 1).unwrap();
        assert!((v.cutoff - 0.6).abs() < 1e-12);
        assert!(p.judge(Goal::Minimize, &[&[0.5], &[0.59]], 1, 1).is_none());
    }

    #[test]
    fn bandit_slack_amount_and_the_best_at_the_same_interval() {
        let p = policy(Rule::Bandit(Slack::Amount(0.1)), 1, 0);
        let a: &[f64] = &[0.2, 0.9];
        let b: &[f64] = &[0.5, 0.7];
        // Interval 1: b leads, a is 0.3 behind; interval 2: a leads, b is 0.2 behind.
        assert_eq!(cut_at(&p, Goal::Maximize, &[a, b]), [Some(1), Some(2)]);
        let v = p.judge(Goal::Maximize, &[a, b], 1, 2).unwrap();
        assert!((v.cutoff - 0.8).abs() < 1e-12 && v.value == 0.7);
    }

    #[test]
    fn delay_and_interval_choose_the_intervals_judged() {
        let p = policy(Rule::Bandit(Slack::Factor(0.0)), 2, 3);
        let judged: Vec<usize> = (1..=9).filter(|&k| p.applies_at(k)).collect();
        assert_eq!(judged, [4, 6, 8]);
        let p = policy(Rule::Bandit(Slack::Factor(0.0)), 1, 0);
        assert_eq!((1..=3).filter(|&k| p.applies_at(k)).count(), 3);
        let p = policy(Rule::Bandit(Slack::Factor(0.0)), 3, 3);
        assert_eq!(
            (1..=7).filter(|&k| p.applies_at(k)).collect::<Vec<_>>(),
            [3, 6]
        );
        // Behind at intervals 1 to 3, judged first at 4: cut at 4, not before.
        let best: &[f64] = &[0.9, 0.9, 0.9, 0.9];
        let slow: &[f64] = &[0.1, 0.1, 0.1, 0.1];
        let p = policy(Rule::Bandit(Slack::Factor(0.1)), 2, 3);
        assert_eq!(cut_at(&p, Goal::Maximize, &[best, slow]), [None, Some(4)]);
        // A run that has not reached the interval is not judged there.
        assert!(p.judge(Goal::Maximize, &[best, &slow[..3]], 1, 4).is_none());
        assert!(
            policy(Rule::None, 1, 0)
                .judge(Goal::Maximize, &[best, slow], 1, 1)
                .is_none()
        );
    }

    #[test]
    fn median_stopping_compares_the_best_so_far_with_the_median_of_running_averages() {
        let p = policy(Rule::MedianStopping, 1, 0);
        let curves: [&[f64]; 3] = [&[0.5, 0.7, 0.9], &[0.4, 0.6, 0.8], &[0.3, 0.4, 0.5]];
        // Interval 2: averages 0.6, 0.5, 0.35 -> median 0.5; best so far 0.7, 0.6, 0.4.
        let v = p.judge(Goal::Maximize, &curves, 2, 2).unwrap();
        assert_eq!((v.value, v.cutoff), (0.4, 0.5));
        assert!(p.judge(Goal::Maximize, &curves, 1, 2).is_none());
        // Interval 1: averages 0.5, 0.4, 0.3 -> median 0.4; 0.3 < 0.4.
        assert_eq!(cut_at(&p, Goal::Maximize, &curves), [None, None, Some(1)]);
        // An even count takes the mean of the middle two; minimizing flips the comparison.
        let losses: [&[f64]; 4] = [&[1.0], &[2.0], &[3.0], &[4.0]];
        let v = p.judge(Goal::Minimize, &losses, 2, 1).unwrap();
        assert_eq!((v.value, v.cutoff), (3.0, 2.5));
        assert!(p.judge(Goal::Minimize, &losses, 1, 1).is_none());
        // Alone, a run is its own median and goes on.
        assert!(p.judge(Goal::Maximize, &[&[0.1]], 0, 1).is_none());
    }

    #[test]
    fn truncation_selection_cuts_the_lowest_percentage() {
        let p = policy(Rule::TruncationSelection(20), 1, 0);
        let curves: [&[f64]; 5] = [&[0.9], &[0.8], &[0.7], &[0.6], &[0.5]];
        assert_eq!(
            cut_at(&p, Goal::Maximize, &curves),
            [None, None, None, None, Some(1)]
        );
        let p = policy(Rule::TruncationSelection(40), 1, 0);
        assert_eq!(
            cut_at(&p, Goal::Maximize, &curves),
            [None, None, None, Some(1), Some(1)]
        );
        assert_eq!(
            cut_at(&p, Goal::Minimize, &curves),
            [Some(1), Some(1), None, None, None]
        );
        // 20% of 4 runs is 0 runs: nobody is cut.
        let p = policy(Rule::TruncationSelection(20), 1, 0);
        assert_eq!(cut_at(&p, Goal::Maximize, &curves[..4]), [None; 4]);
    }
}
