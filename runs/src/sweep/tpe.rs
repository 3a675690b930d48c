//! Bayesian sampling: a tree-structured Parzen estimator (Bergstra et al., "Algorithms for
//! Hyper-Parameter Optimization", NeurIPS 2011), as hyperopt and Optuna use it. The finished
//! trials are split into the best quarter ("good") and the rest; each parameter gets a Parzen
//! density over the good trials, l(x), and over the rest, g(x) (a mixture of the prior and one
//! Gaussian per trial, or smoothed counts for `choice` and `randint`); of 24 candidates drawn
//! from l, the one with the largest l(x) / g(x) is tried next. Until a few trials have finished,
//! points are drawn at random from the prior.

use rand::Rng;

use super::policy::Goal;
use super::space::{Expr, ParameterSpace, Params, Prior, standard_normal};

/// Candidates drawn from l(x) for each new point.
const CANDIDATES: usize = 24;
/// The share of finished trials counted as good.
const GAMMA: f64 = 0.25;

/// How many trials are drawn at random before the estimator takes over, for a sweep of
/// `max_total_runs`.
pub fn startup_trials(max_total_runs: usize) -> usize {
    (max_total_runs / 4).clamp(3, 10)
}

/// The next point to try, given the finished trials' parameters and scores.
pub fn suggest(
    space: &ParameterSpace,
    goal: Goal,
    observed: &[(Params, f64)],
    startup: usize,
    rng: &mut impl Rng,
) -> Params {
    let observed: Vec<&(Params, f64)> = observed.iter().filter(|(_, s)| !s.is_nan()).collect();
    if observed.len() < startup.max(2) {
        return space.draw(rng);
    }
    let mut order: Vec<&(Params, f64)> = observed;
    order.sort_by(|a, b| {
        if goal.better(a.1, b.1) {
            std::cmp::Ordering::Less
        } else if goal.better(b.1, a.1) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    let n_good = ((GAMMA * order.len() as f64).ceil() as usize).clamp(1, order.len() - 1);
    let (good, bad) = order.split_at(n_good);
    let estimators: Vec<(Parzen, Parzen)> = space
        .0
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let values = |trials: &[&(Params, f64)]| -> Vec<_> {
                trials.iter().map(|(p, _)| p[i].1.clone()).collect()
            };
            (
                Parzen::new(expr, &values(good)),
                Parzen::new(expr, &values(bad)),
            )
        })
        .collect();
    let mut best: Option<(f64, Vec<f64>)> = None;
    for _ in 0..CANDIDATES {
        let point: Vec<f64> = estimators.iter().map(|(l, _)| l.sample(rng)).collect();
        let score: f64 = estimators
            .iter()
            .zip(&point)
            .map(|((l, g), &x)| l.log_density(x) - g.log_density(x))
            .sum();
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, point));
        }
    }
    let (_, point) = best.expect("at least one candidate");
    space
        .0
        .iter()
        .zip(point)
        .map(|((name, expr), x)| {
            let value = match expr.categories() {
                Some(_) => expr.category(x as usize),
                None => expr.value_at(x),
            };
            (name.clone(), value)
        })
        .collect()
}

/// A one-dimensional Parzen density: over categories, or over the prior's space.
enum Parzen {
    Categorical(Vec<f64>),
    Numeric {
        prior: Prior,
        /// (mean, sigma) of each kernel; the prior counts as one more.
        kernels: Vec<(f64, f64)>,
    },
}

impl Parzen {
    fn new(expr: &Expr, values: &[crate::job::ScriptParam]) -> Self {
        if let Some(n) = expr.categories() {
            let mut weights = vec![1.0; n];
            for v in values {
                if let Some(c) = expr.category_of(v) {
                    weights[c] += 1.0;
                }
            }
            let total: f64 = weights.iter().sum();
            return Parzen::Categorical(weights.into_iter().map(|w| w / total).collect());
        }
        let prior = expr.prior().expect("a continuous expression");
        let (low, high) = match prior {
            Prior::Uniform { low, high } => (low, high),
            Prior::Normal { mu, sigma } => (mu - 3.0 * sigma, mu + 3.0 * sigma),
        };
        let mut points: Vec<f64> = values.iter().filter_map(|v| expr.point_of(v)).collect();
        points.sort_by(|a, b| a.total_cmp(b));
        // Each kernel is as wide as the larger gap to its neighbours (hyperopt's rule), kept
        // between a hundredth of the range and the whole range.
        let range = high - low;
        let min_sigma = range / (points.len() as f64 + 1.0).min(100.0);
        let kernels = points
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let left = if i == 0 { x - low } else { x - points[i - 1] };
                let right = if i + 1 == points.len() {
                    high - x
                } else {
                    points[i + 1] - x
                };
                (x, left.max(right).clamp(min_sigma, range))
            })
            .collect();
        Parzen::Numeric { prior, kernels }
    }

    fn sample(&self, rng: &mut impl Rng) -> f64 {
        match self {
            Parzen::Categorical(p) => {
                let mut u: f64 = rng.random();
                for (i, w) in p.iter().enumerate() {
                    if u < *w {
                        return i as f64;
                    }
                    u -= w;
                }
                (p.len() - 1) as f64
            }
            Parzen::Numeric { prior, kernels } => {
                let pick = rng.random_range(0..=kernels.len());
                let Some(&(mu, sigma)) = kernels.get(pick) else {
                    return match *prior {
                        Prior::Uniform { low, high } => rng.random_range(low..=high),
                        Prior::Normal { mu, sigma } => mu + sigma * standard_normal(rng),
                    };
                };
                match *prior {
                    Prior::Uniform { low, high } => {
                        // A kernel truncated to the bounds: redraw what falls outside.
                        for _ in 0..100 {
                            let x = mu + sigma * standard_normal(rng);
                            if (low..=high).contains(&x) {
                                return x;
                            }
                        }
                        mu.clamp(low, high)
                    }
                    Prior::Normal { .. } => mu + sigma * standard_normal(rng),
                }
            }
        }
    }

    fn log_density(&self, x: f64) -> f64 {
        match self {
            Parzen::Categorical(p) => p[x as usize].ln(),
            Parzen::Numeric { prior, kernels } => {
                let gauss = |x: f64, mu: f64, sigma: f64| {
                    (-0.5 * ((x - mu) / sigma).powi(2)).exp()
                        / (sigma * (std::f64::consts::TAU).sqrt())
                };
                let prior_density = match *prior {
                    Prior::Uniform { low, high } => 1.0 / (high - low),
                    Prior::Normal { mu, sigma } => gauss(x, mu, sigma),
                };
                let sum: f64 =
                    kernels.iter().map(|&(m, s)| gauss(x, m, s)).sum::<f64>() + prior_density;
                (sum / (kernels.len() + 1) as f64)
                    .max(f64::MIN_POSITIVE)
                    .ln()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::ScriptParam;
    use rand::SeedableRng;

    /// A known function with its peak of 1 at lr = 0.01 (log space), momentum = 0.9 and batch
    /// size 32 (0.1 lower per doubling or halving).
    fn known(p: &Params) -> f64 {
        let num = |v: &ScriptParam| match v {
            ScriptParam::Float(f) => *f,
            ScriptParam::Int(i) => *i as f64,
            _ => panic!("a number"),
        };
        let lr = num(&p[0].1);
        let momentum = num(&p[1].1);
        let batch = 0.1 * (num(&p[2].1) / 32.0).log2().abs();
        1.0 - (lr.ln() - 0.01f64.ln()).powi(2) / 10.0 - (momentum - 0.9).powi(2) * 10.0 - batch
    }

    fn space() -> ParameterSpace {
        ParameterSpace(vec![
            ("--lr".into(), Expr::Loguniform(1e-5f64.ln(), 1.0f64.ln())),
            ("--momentum".into(), Expr::Uniform(0.0, 0.99)),
            (
                "--batch-size".into(),
                Expr::Choice(
                    [8, 16, 32, 64, 128]
                        .into_iter()
                        .map(ScriptParam::Int)
                        .collect(),
                ),
            ),
        ])
    }

    /// The best value after `n` trials of a sweep with seed `seed`.
    fn best_after(n: usize, seed: u64, bayesian: bool) -> f64 {
        let space = space();
        let mut observed: Vec<(Params, f64)> = Vec::new();
        for i in 0..n {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + i as u64);
            let p = if bayesian {
                suggest(
                    &space,
                    Goal::Maximize,
                    &observed,
                    startup_trials(n),
                    &mut rng,
                )
            } else {
                space.draw(&mut rng)
            };
            let score = known(&p);
            observed.push((p, score));
        }
        Goal::Maximize.best(observed.iter().map(|(_, s)| *s))
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
    }

    #[test]
    fn the_estimator_beats_random_sampling_on_a_known_function() {
        for n in [15, 30, 60] {
            let seeds = 0..21u64;
            let tpe = median(seeds.clone().map(|s| best_after(n, s, true)).collect());
            let random = median(seeds.map(|s| best_after(n, s, false)).collect());
            println!(
                "best after {n} trials, median of 21 seeds: bayesian {tpe:.4}, random {random:.4} (peak 1.0)"
            );
            assert!(tpe > random, "after {n}: bayesian {tpe} vs random {random}");
        }
    }

    #[test]
    fn suggestions_stay_in_the_space() {
        let space = space();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let observed: Vec<(Params, f64)> = (0..30)
            .map(|_| {
                let p = space.draw(&mut rng);
                let s = known(&p);
                (p, s)
            })
            .collect();
        for _ in 0..200 {
            let p = suggest(&space, Goal::Minimize, &observed, 5, &mut rng);
            let ScriptParam::Float(lr) = p[0].1 else {
                panic!()
            };
            let ScriptParam::Float(m) = p[1].1 else {
                panic!()
            };
            assert!((1e-5 * 0.999..=1.001).contains(&lr), "{lr}");
            assert!((0.0..=0.99).contains(&m), "{m}");
            assert!(space.0[2].1.category_of(&p[2].1).is_some());
        }
    }
}
