//! The parameter space: HyperDrive's parameter expressions, each drawn from a seeded generator,
//! and the grid of every combination of `choice`s.
//!
//! As in HyperDrive, the `log*` expressions take their bounds in log space:
//! `loguniform(a, b)` is `exp(uniform(a, b))`, so `{ loguniform = [-9.2, -2.3] }` spans about
//! 1e-4 to 0.1. The `q*` forms round to a multiple of `q`: `round(x / q) * q`.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::job::ScriptParam;

/// One parameter's distribution, as HyperDrive names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expr {
    /// One of the listed values.
    Choice(Vec<ScriptParam>),
    /// An integer in `0..upper`.
    Randint(i64),
    /// Uniform in `[low, high]`.
    Uniform(f64, f64),
    /// `round(uniform(low, high) / q) * q`.
    Quniform(f64, f64, f64),
    /// `exp(uniform(low, high))`.
    Loguniform(f64, f64),
    /// `round(exp(uniform(low, high)) / q) * q`.
    Qloguniform(f64, f64, f64),
    /// Normal with mean `mu` and standard deviation `sigma`.
    Normal(f64, f64),
    /// `round(normal(mu, sigma) / q) * q`.
    Qnormal(f64, f64, f64),
    /// `exp(normal(mu, sigma))`.
    Lognormal(f64, f64),
    /// `round(exp(normal(mu, sigma)) / q) * q`.
    Qlognormal(f64, f64, f64),
}

/// The expression names a sweep file may use.
pub const EXPR_NAMES: [&str; 10] = [
    "choice",
    "randint",
    "uniform",
    "quniform",
    "loguniform",
    "qloguniform",
    "normal",
    "qnormal",
    "lognormal",
    "qlognormal",
];

/// A trial's parameters, in the order of the parameter space.
pub type Params = Vec<(String, ScriptParam)>;

/// Where a numeric draw lives before it is turned into a value: its space (plain or log), and
/// the prior it is drawn from there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Prior {
    /// Uniform in `[low, high]`.
    Uniform { low: f64, high: f64 },
    /// Normal with mean `mu` and standard deviation `sigma`.
    Normal { mu: f64, sigma: f64 },
}

impl Expr {
    /// Checks the expression's arguments; the message says what was expected.
    pub fn check(&self) -> Result<(), String> {
        let bounds = |low: f64, high: f64| {
            if !(low.is_finite() && high.is_finite() && low < high) {
                return Err(format!(
                    "expected low < high, both finite; got [{low}, {high}]"
                ));
            }
            Ok(())
        };
        let q_ok = |q: f64| {
            if !(q.is_finite() && q > 0.0) {
                return Err(format!("q must be a positive number; got {q}"));
            }
            Ok(())
        };
        let sigma_ok = |mu: f64, sigma: f64| {
            if !(mu.is_finite() && sigma.is_finite() && sigma > 0.0) {
                return Err(format!(
                    "expected a finite mu and a positive sigma; got [{mu}, {sigma}]"
                ));
            }
            Ok(())
        };
        match *self {
            Expr::Choice(ref values) if values.is_empty() => {
                Err("choice needs at least one value".into())
            }
            Expr::Choice(_) => Ok(()),
            Expr::Randint(upper) if upper < 1 => Err(format!(
                "randint needs an upper bound of at least 1; got {upper}"
            )),
            Expr::Randint(_) => Ok(()),
            Expr::Uniform(l, h) | Expr::Loguniform(l, h) => bounds(l, h),
            Expr::Quniform(l, h, q) | Expr::Qloguniform(l, h, q) => bounds(l, h).and(q_ok(q)),
            Expr::Normal(m, s) | Expr::Lognormal(m, s) => sigma_ok(m, s),
            Expr::Qnormal(m, s, q) | Expr::Qlognormal(m, s, q) => sigma_ok(m, s).and(q_ok(q)),
        }
    }

    /// The numeric prior of a continuous expression (`None` for `choice` and `randint`),
    /// in the space it is drawn in.
    pub(crate) fn prior(&self) -> Option<Prior> {
        match *self {
            Expr::Choice(_) | Expr::Randint(_) => None,
            Expr::Uniform(low, high)
            | Expr::Quniform(low, high, _)
            | Expr::Loguniform(low, high)
            | Expr::Qloguniform(low, high, _) => Some(Prior::Uniform { low, high }),
            Expr::Normal(mu, sigma)
            | Expr::Qnormal(mu, sigma, _)
            | Expr::Lognormal(mu, sigma)
            | Expr::Qlognormal(mu, sigma, _) => Some(Prior::Normal { mu, sigma }),
        }
    }

    /// Whether draws are made in log space.
    fn is_log(&self) -> bool {
        matches!(
            self,
            Expr::Loguniform(..)
                | Expr::Qloguniform(..)
                | Expr::Lognormal(..)
                | Expr::Qlognormal(..)
        )
    }

    fn q(&self) -> Option<f64> {
        match *self {
            Expr::Quniform(_, _, q)
            | Expr::Qloguniform(_, _, q)
            | Expr::Qnormal(_, _, q)
            | Expr::Qlognormal(_, _, q) => Some(q),
            _ => None,
        }
    }

    /// How many values a discrete expression has (`choice`, `randint`).
    pub(crate) fn categories(&self) -> Option<usize> {
        match self {
            Expr::Choice(values) => Some(values.len()),
            Expr::Randint(upper) => Some(*upper as usize),
            _ => None,
        }
    }

    /// The value of category `i` of a discrete expression.
    pub(crate) fn category(&self, i: usize) -> ScriptParam {
        match self {
            Expr::Choice(values) => values[i].clone(),
            _ => ScriptParam::Int(i as i64),
        }
    }

    /// The category a value of a discrete expression is, if it is one.
    pub(crate) fn category_of(&self, value: &ScriptParam) -> Option<usize> {
        match (self, value) {
            (Expr::Choice(values), v) => values.iter().position(|c| c == v),
            (Expr::Randint(upper), ScriptParam::Int(i)) => {
                (0..*upper).contains(i).then_some(*i as usize)
            }
            _ => None,
        }
    }

    /// Turns a draw `x` of the prior's space into the parameter's value (exp, q-rounding).
    pub(crate) fn value_at(&self, x: f64) -> ScriptParam {
        let mut v = if self.is_log() { x.exp() } else { x };
        if let Some(q) = self.q() {
            v = (v / q).round() * q;
        }
        // A q of a whole number gives whole numbers: integer options (a batch size) take them.
        if self.q().is_some_and(|q| q.fract() == 0.0) && v.abs() < 9.0e15 {
            return ScriptParam::Int(v as i64);
        }
        ScriptParam::Float(v)
    }

    /// The point of the prior's space a value came from (the inverse of [`Expr::value_at`], up
    /// to rounding).
    pub(crate) fn point_of(&self, value: &ScriptParam) -> Option<f64> {
        let v = match value {
            ScriptParam::Int(i) => *i as f64,
            ScriptParam::Float(f) => *f,
            _ => return None,
        };
        let x = if self.is_log() {
            v.max(f64::MIN_POSITIVE).ln()
        } else {
            v
        };
        x.is_finite().then_some(x)
    }

    /// One random value.
    pub fn draw(&self, rng: &mut impl Rng) -> ScriptParam {
        if let Some(n) = self.categories() {
            return self.category(rng.random_range(0..n));
        }
        let x = match self.prior().expect("a continuous expression") {
            Prior::Uniform { low, high } => rng.random_range(low..=high),
            Prior::Normal { mu, sigma } => mu + sigma * standard_normal(rng),
        };
        self.value_at(x)
    }
}

/// One draw of N(0, 1) (Box-Muller).
pub(crate) fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The parameter space: names (the flags they are passed as) and their expressions, in file
/// order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterSpace(pub Vec<(String, Expr)>);

impl ParameterSpace {
    /// One random point.
    pub fn draw(&self, rng: &mut impl Rng) -> Params {
        self.0
            .iter()
            .map(|(name, expr)| (name.clone(), expr.draw(rng)))
            .collect()
    }

    /// Every combination of the `choice`s, the last parameter varying fastest; `None` when a
    /// parameter is not a `choice`.
    pub fn grid(&self) -> Option<Vec<Params>> {
        let mut points: Vec<Params> = vec![Vec::new()];
        for (name, expr) in &self.0 {
            let Expr::Choice(values) = expr else {
                return None;
            };
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut p = p.clone();
                        p.push((name.clone(), v.clone()));
                        p
                    })
                })
                .collect();
        }
        Some(points)
    }
}

/// `--lr=0.01 --momentum=0.9`: a trial's parameters in one line.
pub fn describe(params: &Params) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={}", param_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value as it is passed on the command line.
pub fn param_text(v: &ScriptParam) -> String {
    match v {
        ScriptParam::Bool(b) => b.to_string(),
        ScriptParam::Int(i) => i.to_string(),
        ScriptParam::Float(f) => f.to_string(),
        ScriptParam::Text(s) => s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn floats(expr: &Expr, n: usize) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..n)
            .map(|_| match expr.draw(&mut rng) {
                ScriptParam::Float(f) => f,
                ScriptParam::Int(i) => i as f64,
                other => panic!("not a number: {other:?}"),
            })
            .collect()
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    fn sd(v: &[f64]) -> f64 {
        let m = mean(v);
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    }

    #[test]
    fn uniform_and_quniform_stay_in_range_and_round_to_q() {
        let u = floats(&Expr::Uniform(0.8, 0.99), 10_000);
        assert!(u.iter().all(|x| (0.8..=0.99).contains(x)));
        assert!((mean(&u) - 0.895).abs() < 0.005, "{}", mean(&u));
        let q = floats(&Expr::Quniform(8.0, 64.0, 8.0), 10_000);
        assert!(q.iter().all(|x| x % 8.0 == 0.0 && (8.0..=64.0).contains(x)));
        // The ends get half a bucket each, as round() gives them.
        let ends = q.iter().filter(|&&x| x == 8.0 || x == 64.0).count() as f64 / 10_000.0;
        assert!((ends - 1.0 / 7.0).abs() < 0.02, "{ends}");
        let q = floats(&Expr::Quniform(0.0, 1.0, 0.25), 10_000);
        assert!(q.iter().all(|x| (x / 0.25).fract() == 0.0));
    }

    #[test]
    fn loguniform_takes_its_bounds_in_log_space_and_is_even_per_decade() {
        let (low, high) = (1e-4f64.ln(), 1e-1f64.ln());
        let v = floats(&Expr::Loguniform(low, high), 10_000);
        assert!(v.iter().all(|x| (1e-4 * 0.999..=0.1 * 1.001).contains(x)));
        for decade in [1e-4, 1e-3, 1e-2] {
            let share = v
                .iter()
                .filter(|&&x| x >= decade && x < decade * 10.0)
                .count() as f64
                / 1e4;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{decade}: {share}");
        }
        let q = floats(&Expr::Qloguniform(0.0, 5.0, 2.0), 10_000);
        assert!(q.iter().all(|x| x % 2.0 == 0.0 && *x <= 5f64.exp() + 1.0));
    }

    #[test]
    fn normals_have_their_mean_and_spread() {
        let n = floats(&Expr::Normal(3.0, 2.0), 10_000);
        assert!((mean(&n) - 3.0).abs() < 0.06 && (sd(&n) - 2.0).abs() < 0.06);
        let q = floats(&Expr::Qnormal(0.0, 10.0, 5.0), 10_000);
        assert!(q.iter().all(|x| x % 5.0 == 0.0));
        let l = floats(&Expr::Lognormal(0.0, 0.5), 10_000);
        assert!(l.iter().all(|x| *x > 0.0));
        let logs: Vec<f64> = l.iter().map(|x| x.ln()).collect();
        assert!((mean(&logs)).abs() < 0.02 && (sd(&logs) - 0.5).abs() < 0.02);
    }

    #[test]
    fn choice_and_randint_hit_every_value_evenly() {
        let c = Expr::Choice(vec![
            ScriptParam::Float(0.001),
            ScriptParam::Float(0.01),
            ScriptParam::Text("x".into()),
        ]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut counts = [0usize; 3];
        for _ in 0..10_000 {
            counts[c.category_of(&c.draw(&mut rng)).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&n| (3000..3700).contains(&n)),
            "{counts:?}"
        );
        let r = floats(&Expr::Randint(4), 10_000);
        assert!(r.iter().all(|x| [0.0, 1.0, 2.0, 3.0].contains(x)));
    }

    #[test]
    fn grid_is_exactly_the_product_and_only_of_choices() {
        let space = ParameterSpace(vec![
            (
                "--lr".into(),
                Expr::Choice(vec![ScriptParam::Float(0.1), ScriptParam::Float(0.01)]),
            ),
            (
                "--batch-size".into(),
                Expr::Choice(vec![
                    ScriptParam::Int(8),
                    ScriptParam::Int(16),
                    ScriptParam::Int(32),
                ]),
            ),
        ]);
        let grid = space.grid().unwrap();
        assert_eq!(grid.len(), 6);
        let mut seen: Vec<String> = grid.iter().map(describe).collect();
        assert_eq!(seen[0], "--lr=0.1 --batch-size=8");
        assert_eq!(seen[5], "--lr=0.01 --batch-size=32");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 6, "no combination twice");
        let mut space = space;
        space.0.push(("--m".into(), Expr::Uniform(0.0, 1.0)));
        assert!(space.grid().is_none());
    }

    #[test]
    fn bad_arguments_say_what_was_expected() {
        assert!(
            Expr::Uniform(1.0, 1.0)
                .check()
                .unwrap_err()
                .contains("low < high")
        );
        assert!(
            Expr::Quniform(0.0, 1.0, 0.0)
                .check()
                .unwrap_err()
                .contains("q must")
        );
        assert!(
            Expr::Normal(0.0, -1.0)
                .check()
                .unwrap_err()
                .contains("positive sigma")
        );
        assert!(Expr::Choice(vec![]).check().is_err());
        assert!(Expr::Randint(0).check().is_err());
    }
}
