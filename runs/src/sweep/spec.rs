//! The sweep file: a job, a parameter space, a sampling method, a primary metric and its goal,
//! limits, and an early-termination policy, with HyperDrive's key names. Every error names the
//! file and line, as job files' do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::policy::{Goal, Policy, Rule, Slack};
use super::space::{EXPR_NAMES, Expr, ParameterSpace, Params};
use crate::error::RunsError;
use crate::job::locate::{explain, line_at, line_of_key};
use crate::job::{JobSpec, ScriptParam};
use kiln_engine::TrainConfig;
use kiln_engine::config::{did_you_mean, unknown_value};

/// How the next trial's parameters are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    /// Every combination of the `choice`s, in order.
    Grid,
    /// Independent seeded draws.
    Random,
    /// A tree-structured Parzen estimator over the finished trials.
    Bayesian,
}

/// The sweep file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    name: Option<String>,
    job: toml::Value,
    primary_metric_name: String,
    primary_metric_goal: Goal,
    sampling: Option<Sampling>,
    max_total_runs: Option<i64>,
    max_concurrent_runs: Option<i64>,
    max_duration_minutes: Option<f64>,
    seed: Option<i64>,
    parameter_space: toml::Table,
    early_termination: Option<EarlyTermination>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EarlyTermination {
    policy: PolicyName,
    evaluation_interval: Option<i64>,
    delay_evaluation: Option<i64>,
    slack_factor: Option<f64>,
    slack_amount: Option<f64>,
    truncation_percentage: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PolicyName {
    Bandit,
    MedianStopping,
    TruncationSelection,
    None,
}

/// A validated sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// The sweep file.
    pub path: PathBuf,
    /// The sweep's display name (default: the file's stem).
    pub name: String,
    /// The job every trial runs, before its parameters are applied.
    pub job: JobSpec,
    /// The metric trials are judged by: its key as `kiln runs metrics` shows it (`val/acc`;
    /// `val_acc` names it too).
    pub primary_metric_name: String,
    /// Whether larger or smaller is better.
    pub goal: Goal,
    /// How points are chosen.
    pub sampling: Sampling,
    /// Trials in all (grid: at most the grid's size).
    pub max_total_runs: usize,
    /// Trials at once.
    pub max_concurrent_runs: usize,
    /// The sweep's time limit.
    pub max_duration_minutes: Option<f64>,
    /// The sampler's seed (drawn and recorded when the file gives none).
    pub seed: u64,
    /// The parameters and their distributions.
    pub space: ParameterSpace,
    /// Early termination.
    pub policy: Policy,
}

impl SweepSpec {
    /// Reads and validates the sweep file at `path`.
    pub fn load(path: &Path) -> Result<Self, RunsError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunsError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Validates the TOML `text` of the sweep file at `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RunsError> {
        let path = std::path::absolute(path).map_err(|e| RunsError::io(path, e))?;
        let at = |table: &str, key: &str, message: String| RunsError::InvalidJob {
            file: path.display().to_string(),
            line: line_of_key(text, table, key),
            message,
        };
        let file: SweepFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_at(text, s.start));
            RunsError::InvalidJob {
                file: path.display().to_string(),
                line,
                message: explain(text, line, e.message()),
            }
        })?;
        let job = match &file.job {
            toml::Value::String(p) => {
                let p = Path::new(p);
                let p = match path.parent() {
                    Some(dir) if p.is_relative() => dir.join(p),
                    _ => p.to_path_buf(),
                };
                JobSpec::load(&p).map_err(|e| match e {
                    RunsError::Io { path: p, error } => {
                        at("", "job", format!("job: cannot read {p}: {error}"))
                    }
                    other => other,
                })?
            }
            toml::Value::Table(_) => JobSpec::parse(&job_table_text(text), &path)?,
            other => {
                return Err(at(
                    "",
                    "job",
                    format!(
                        "job: expected a job file's path or a [job] table, found {}",
                        other.type_str()
                    ),
                ));
            }
        };
        let name = file.name.unwrap_or_else(|| {
            path.file_stem()
                .map_or("sweep".into(), |s| s.to_string_lossy().into_owned())
        });
        if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
            return Err(at(
                "",
                "name",
                "name: 1 to 200 characters, no control characters".into(),
            ));
        }
        if file.primary_metric_name.trim().is_empty() {
            return Err(at(
                "",
                "primary_metric_name",
                "primary_metric_name: must name a metric the runs report (e.g. \"val/acc\")".into(),
            ));
        }
        let sampling = file.sampling.unwrap_or(Sampling::Random);
        let space = parameter_space(&file.parameter_space, &at)?;
        let policy = policy(file.early_termination, &at)?;
        if sampling == Sampling::Bayesian && policy.rule != Rule::None {
            return Err(at(
                "early_termination",
                "policy",
                format!(
                    "early_termination.policy: bayesian sampling takes no early termination (as \
                     in HyperDrive: the estimator learns from whole runs); use policy = \"none\" \
                     or sampling = \"random\", not '{}'",
                    policy.name()
                ),
            ));
        }
        let grid = match sampling {
            Sampling::Grid => Some(grid_size(&space, &at)?),
            _ => None,
        };
        let limit = |key: &str, value: Option<i64>, max: i64| -> Result<Option<usize>, RunsError> {
            match value {
                None => Ok(None),
                Some(v) if (1..=max).contains(&v) => Ok(Some(v as usize)),
                Some(v) => Err(at(
                    "",
                    key,
                    format!("{key}: {v} is out of range; expected 1 to {max}"),
                )),
            }
        };
        let max_total_runs = match (limit("max_total_runs", file.max_total_runs, 100_000)?, grid) {
            (Some(n), Some(g)) => n.min(g),
            (None, Some(g)) => g,
            (Some(n), None) => n,
            (None, None) => {
                return Err(at(
                    "",
                    "max_total_runs",
                    "max_total_runs: required with random and bayesian sampling (how many trials \
                     to run)"
                        .into(),
                ));
            }
        };
        let max_concurrent_runs =
            limit("max_concurrent_runs", file.max_concurrent_runs, 1024)?.unwrap_or(1);
        if let Some(m) = file.max_duration_minutes
            && !(m.is_finite() && m > 0.0)
        {
            return Err(at(
                "",
                "max_duration_minutes",
                format!("max_duration_minutes: {m} is not a positive number of minutes"),
            ));
        }
        let seed = match file.seed {
            Some(s) if s >= 0 => s as u64,
            Some(s) => return Err(at("", "seed", format!("seed: {s} is negative"))),
            None => rand::random::<u32>() as u64,
        };
        let spec = Self {
            path: path.clone(),
            name,
            job,
            primary_metric_name: file.primary_metric_name,
            goal: file.primary_metric_goal,
            sampling,
            max_total_runs,
            max_concurrent_runs,
            max_duration_minutes: file.max_duration_minutes,
            seed,
            space,
            policy,
        };
        spec.check_parameters_apply(&at)?;
        Ok(spec)
    }

    /// The job of a trial: the sweep's job with `params` given to the script as
    /// `script_params` (replacing any the job sets), or to kiln's trainer as its options.
    pub fn trial_job(&self, params: &Params, trial: usize) -> Result<JobSpec, String> {
        let mut job = self.job.clone();
        job.name = format!("{} trial {trial}", self.name);
        if job.entry_script.is_some() {
            for (key, value) in params {
                match job.script_params.iter_mut().find(|(k, _)| k == key) {
                    Some(slot) => slot.1 = value.clone(),
                    None => job.script_params.push((key.clone(), value.clone())),
                }
            }
            return Ok(job);
        }
        let Ok(toml::Value::Table(mut table)) = toml::Value::try_from(&job.train) else {
            return Err("the job's [train] table cannot be written as TOML".into());
        };
        for (key, value) in params {
            let field = option_field(key);
            let as_toml = |v: &ScriptParam| match v {
                ScriptParam::Bool(b) => toml::Value::Boolean(*b),
                ScriptParam::Int(i) => toml::Value::Integer(*i),
                ScriptParam::Float(f) => toml::Value::Float(*f),
                ScriptParam::Text(s) => toml::Value::String(s.clone()),
            };
            // A whole float fits an integer option (a batch size); an integer fits a float one.
            let tries = match value {
                ScriptParam::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    vec![as_toml(value), toml::Value::Integer(*f as i64)]
                }
                ScriptParam::Int(i) => vec![as_toml(value), toml::Value::Float(*i as f64)],
                _ => vec![as_toml(value)],
            };
            let mut last = String::new();
            let fits = tries.into_iter().any(|v| {
                let mut t = table.clone();
                t.insert(field.clone(), v.clone());
                match toml::Value::Table(t).try_into::<TrainConfig>() {
                    Ok(_) => {
                        table.insert(field.clone(), v);
                        true
                    }
                    Err(e) => {
                        last = e.message().to_string();
                        false
                    }
                }
            });
            if !fits {
                return Err(trainer_option_error(key, &field, &last));
            }
        }
        let train: TrainConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        train.validate().map_err(|e| e.to_string())?;
        job.train = train;
        Ok(job)
    }

    /// Each parameter's choices and bounds must make a job kiln accepts: checked before any
    /// trial starts.
    fn check_parameters_apply(
        &self,
        at: &dyn Fn(&str, &str, String) -> RunsError,
    ) -> Result<(), RunsError> {
        for (name, expr) in &self.space.0 {
            let values: Vec<ScriptParam> = match expr {
                Expr::Choice(values) => values.clone(),
                Expr::Randint(upper) => vec![ScriptParam::Int(0), ScriptParam::Int(upper - 1)],
                _ => match expr.prior() {
                    Some(super::space::Prior::Uniform { low, high }) => {
                        vec![expr.value_at(low), expr.value_at(high)]
                    }
                    _ => vec![expr.value_at(match expr.prior() {
                        Some(super::space::Prior::Normal { mu, .. }) => mu,
                        _ => 0.0,
                    })],
                },
            };
            for value in values {
                let params = vec![(name.clone(), value)];
                self.trial_job(&params, 0).map_err(|why| {
                    at(
                        "parameter_space",
                        name,
                        format!("parameter_space.{name}: {why}"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Whether metric `key` (`split/name`) is the primary metric.
    pub fn is_primary(&self, split: Option<&str>, name: &str) -> bool {
        let wanted = self.primary_metric_name.as_str();
        match split.filter(|s| !s.is_empty()) {
            Some(s) => wanted == format!("{s}/{name}") || wanted == format!("{s}_{name}"),
            None => wanted == name,
        }
    }
}

/// `--batch-size`, `batch-size` and `batch_size` all name the trainer's `batch_size`.
fn option_field(key: &str) -> String {
    key.trim_start_matches('-').replace('-', "_")
}

/// Serde's message about an option rewritten in kiln's words.
fn trainer_option_error(key: &str, field: &str, message: &str) -> String {
    if message.starts_with("unknown field") {
        let known: Vec<&str> = message.split('`').skip(1).step_by(2).skip(1).collect();
        return format!(
            "'{key}' is not an option of kiln's trainer{}; expected one of {}",
            did_you_mean(field, &known),
            known
                .iter()
                .map(|k| format!("--{}", k.replace('_', "-")))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    format!("{key}: {}", message.trim())
}

/// The sweep file's `[job]` and `[job.*]` tables as a job file of their own, every other line
/// blanked, so the job's errors keep the sweep file's line numbers.
fn job_table_text(text: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            let header = t.trim_start_matches('[').trim_end_matches(']').trim();
            inside = header == "job" || header.starts_with("job.");
            if header == "job" {
                out.push('\n');
                continue;
            }
            if inside {
                let rest = &header["job.".len()..];
                out.push_str(&format!("[{rest}]\n"));
                continue;
            }
        }
        if inside {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// `[parameter_space]`: each key an inline table of one expression, `{ choice = [...] }`.
fn parameter_space(
    table: &toml::Table,
    at: &dyn Fn(&str, &str, String) -> RunsError,
) -> Result<ParameterSpace, RunsError> {
    if table.is_empty() {
        return Err(at(
            "parameter_space",
            "",
            "parameter_space: needs at least one parameter, e.g. \"--lr\" = { choice = [0.01, 0.1] }"
                .into(),
        ));
    }
    let mut space = Vec::new();
    for (name, value) in table {
        let error = |message: String| {
            at(
                "parameter_space",
                name,
                format!("parameter_space.{name}: {message}"),
            )
        };
        if name.trim().is_empty() {
            return Err(error("a parameter needs a name".into()));
        }
        let expr = match value {
            toml::Value::Table(t) if t.len() == 1 => {
                let (kind, args) = t.iter().next().expect("one entry");
                expression(kind, args).map_err(error)?
            }
            _ => {
                return Err(error(format!(
                    "expected one parameter expression such as {{ choice = [0.01, 0.1] }} or \
                     {{ uniform = [0.8, 0.99] }}; one of {}",
                    EXPR_NAMES.join(", ")
                )));
            }
        };
        expr.check().map_err(error)?;
        space.push((name.clone(), expr));
    }
    Ok(ParameterSpace(space))
}

/// One expression from its name and arguments.
fn expression(kind: &str, args: &toml::Value) -> Result<Expr, String> {
    let numbers = |n: usize| -> Result<Vec<f64>, String> {
        let list = match args {
            toml::Value::Array(list) => list,
            other => {
                return Err(format!(
                    "{kind}: expected a list of {n} numbers, found {}",
                    other.type_str()
                ));
            }
        };
        let values: Option<Vec<f64>> = list
            .iter()
            .map(|v| match v {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                _ => None,
            })
            .collect();
        match values {
            Some(v) if v.len() == n => Ok(v),
            _ => Err(format!(
                "{kind}: expected a list of {n} numbers, e.g. {kind} = {}",
                example(kind)
            )),
        }
    };
    Ok(match kind {
        "choice" => {
            let toml::Value::Array(list) = args else {
                return Err(
                    "choice: expected a list of values, e.g. choice = [0.001, 0.01, 0.1]".into(),
                );
            };
            let values: Result<Vec<ScriptParam>, String> = list
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(ScriptParam::Text(s.clone())),
                    toml::Value::Integer(i) => Ok(ScriptParam::Int(*i)),
                    toml::Value::Float(f) => Ok(ScriptParam::Float(*f)),
                    toml::Value::Boolean(b) => Ok(ScriptParam::Bool(*b)),
                    other => Err(format!(
                        "choice: values are strings, numbers or booleans, not {}",
                        other.type_str()
                    )),
                })
                .collect();
            Expr::Choice(values?)
        }
        "randint" => match args {
            toml::Value::Integer(i) => Expr::Randint(*i),
            toml::Value::Array(a) if a.len() == 1 && a[0].is_integer() => {
                Expr::Randint(a[0].as_integer().expect("an integer"))
            }
            _ => return Err("randint: expected an upper bound, e.g. randint = 10".into()),
        },
        "uniform" => numbers(2).map(|v| Expr::Uniform(v[0], v[1]))?,
        "quniform" => numbers(3).map(|v| Expr::Quniform(v[0], v[1], v[2]))?,
        "loguniform" => numbers(2).map(|v| Expr::Loguniform(v[0], v[1]))?,
        "qloguniform" => numbers(3).map(|v| Expr::Qloguniform(v[0], v[1], v[2]))?,
        "normal" => numbers(2).map(|v| Expr::Normal(v[0], v[1]))?,
        "qnormal" => numbers(3).map(|v| Expr::Qnormal(v[0], v[1], v[2]))?,
        "lognormal" => numbers(2).map(|v| Expr::Lognormal(v[0], v[1]))?,
        "qlognormal" => numbers(3).map(|v| Expr::Qlognormal(v[0], v[1], v[2]))?,
        other => {
            return Err(unknown_value(other, &EXPR_NAMES)
                .replace("unknown value", "unknown parameter expression"));
        }
    })
}

fn example(kind: &str) -> &'static str {
    match kind {
        "uniform" => "[0.8, 0.99]",
        "loguniform" => "[-9.2, -2.3] (bounds in log space: e^-9.2 to e^-2.3)",
        "normal" | "lognormal" => "[0.0, 1.0] (mu, sigma)",
        "quniform" => "[8, 64, 8] (low, high, q)",
        "qloguniform" => "[0.0, 5.0, 1] (log-space low, high, q)",
        _ => "[0.0, 1.0, 0.5] (mu, sigma, q)",
    }
}

/// The number of grid points; every parameter must be a `choice`.
fn grid_size(
    space: &ParameterSpace,
    at: &dyn Fn(&str, &str, String) -> RunsError,
) -> Result<usize, RunsError> {
    let mut size: usize = 1;
    for (name, expr) in &space.0 {
        let Expr::Choice(values) = expr else {
            return Err(at(
                "parameter_space",
                name,
                format!("parameter_space.{name}: grid sampling takes only choice expressions"),
            ));
        };
        size = size.saturating_mul(values.len());
    }
    Ok(size)
}

/// `[early_termination]`, checked: each policy takes only its own keys.
fn policy(
    table: Option<EarlyTermination>,
    at: &dyn Fn(&str, &str, String) -> RunsError,
) -> Result<Policy, RunsError> {
    let Some(t) = table else {
        return Ok(Policy::default());
    };
    let err = |key: &str, message: String| {
        at(
            "early_termination",
            key,
            format!("early_termination.{key}: {message}"),
        )
    };
    let evaluation_interval = match t.evaluation_interval {
        None => 1,
        Some(v) if v >= 1 => v as usize,
        Some(v) => {
            return Err(err(
                "evaluation_interval",
                format!("{v} is out of range; expected 1 or more"),
            ));
        }
    };
    let delay_evaluation = match t.delay_evaluation {
        None => 0,
        Some(v) if v >= 0 => v as usize,
        Some(v) => return Err(err("delay_evaluation", format!("{v} is negative"))),
    };
    let not_for = |key: &str, set: bool, policies: &str| -> Result<(), RunsError> {
        if set && !policies.is_empty() {
            return Err(err(key, format!("only the {policies} policy takes it")));
        }
        Ok(())
    };
    let is = |p: PolicyName| t.policy == p;
    not_for(
        "slack_factor",
        t.slack_factor.is_some() && !is(PolicyName::Bandit),
        "bandit",
    )?;
    not_for(
        "slack_amount",
        t.slack_amount.is_some() && !is(PolicyName::Bandit),
        "bandit",
    )?;
    not_for(
        "truncation_percentage",
        t.truncation_percentage.is_some() && !is(PolicyName::TruncationSelection),
        "truncation_selection",
    )?;
    let rule = match t.policy {
        PolicyName::None => Rule::None,
        PolicyName::MedianStopping => Rule::MedianStopping,
        PolicyName::Bandit => match (t.slack_factor, t.slack_amount) {
            (Some(f), None) if f.is_finite() && f >= 0.0 => Rule::Bandit(Slack::Factor(f)),
            (None, Some(a)) if a.is_finite() && a >= 0.0 => Rule::Bandit(Slack::Amount(a)),
            (Some(_), Some(_)) => {
                return Err(err(
                    "slack_amount",
                    "give slack_factor or slack_amount, not both".into(),
                ));
            }
            (None, None) => {
                return Err(err(
                    "policy",
                    "bandit needs slack_factor or slack_amount".into(),
                ));
            }
            (Some(v), None) => {
                return Err(err(
                    "slack_factor",
                    format!("{v} is not a number of 0 or more"),
                ));
            }
            (None, Some(v)) => {
                return Err(err(
                    "slack_amount",
                    format!("{v} is not a number of 0 or more"),
                ));
            }
        },
        PolicyName::TruncationSelection => match t.truncation_percentage {
            Some(p) if (1..=99).contains(&p) => Rule::TruncationSelection(p as u32),
            Some(p) => {
                return Err(err(
                    "truncation_percentage",
                    format!("{p} is out of range; expected 1 to 99"),
                ));
            }
            None => {
                return Err(err(
                    "policy",
                    "truncation_selection needs truncation_percentage".into(),
                ));
            }
        },
    };
    Ok(Policy {
        rule,
        evaluation_interval,
        delay_evaluation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SweepSpec, String> {
        SweepSpec::parse(text, Path::new("/tmp/sweep.toml")).map_err(|e| e.to_string())
    }

    const HEAD: &str = "primary_metric_name = \"val/acc\"\nprimary_metric_goal = \"maximize\"\n";

    #[test]
    fn a_sweep_over_kilns_trainer() {
        let s = parse(&format!(
            "{HEAD}max_total_runs = 4\nseed = 3\n[job]\nname = \"j\"\n[job.train]\nepochs = 2\n\
             [parameter_space]\n\"--lr\" = {{ loguniform = [-7, -2] }}\n\
             \"--batch-size\" = {{ choice = [8, 16] }}\n\"--momentum\" = {{ uniform = [0.8, 0.99] }}\n\
             [early_termination]\npolicy = \"bandit\"\nslack_factor = 0.2\ndelay_evaluation = 2\n"
        ))
        .unwrap();
        assert_eq!((s.max_total_runs, s.max_concurrent_runs, s.seed), (4, 1, 3));
        assert_eq!(s.job.train.epochs, 2);
        assert_eq!(s.policy.rule, Rule::Bandit(Slack::Factor(0.2)));
        let params = vec![
            ("--lr".into(), ScriptParam::Float(0.05)),
            ("--batch-size".into(), ScriptParam::Int(16)),
        ];
        let job = s.trial_job(&params, 2).unwrap();
        assert_eq!((job.train.lr, job.train.batch_size), (0.05, 16));
        assert_eq!(job.name, "sweep trial 2");
        assert!(s.is_primary(Some("val"), "acc"));
    }

    #[test]
    fn errors_name_the_line() {
        let job = "[job]\n[parameter_space]\n";
        let e = parse(&format!(
            "{HEAD}max_total_runs = 2\n{job}\"--lr\" = {{ unifrom = [0, 1] }}\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(
                "sweep.toml:6: parameter_space.--lr: unknown parameter expression 'unifrom'"
            ),
            "{e}"
        );
        assert!(e.contains("did you mean 'uniform'?"), "{e}");
        let e = parse(&format!(
            "{HEAD}max_total_runs = 2\n{job}\"--lrr\" = {{ choice = [0.1] }}\n"
        ))
        .unwrap_err();
        assert!(e.contains(":6:") && e.contains("did you mean 'lr'?"), "{e}");
        let e = parse(&format!(
            "{HEAD}max_total_runs = 2\n{job}\"--lr\" = {{ uniform = [-1, 1] }}\n"
        ))
        .unwrap_err();
        assert!(e.contains(":6: parameter_space.--lr: lr:"), "{e}");
        let e = parse(&format!(
            "{HEAD}sampling = \"bayesian\"\nmax_total_runs = 2\n{job}\"--lr\" = {{ choice = [0.1] }}\n\
             [early_termination]\npolicy = \"bandit\"\nslack_factor = 0.1\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(":9: early_termination.policy: bayesian sampling"),
            "{e}"
        );
        let e = parse(&format!(
            "{HEAD}sampling = \"grid\"\n{job}\"--lr\" = {{ uniform = [0.1, 0.2] }}\n"
        ))
        .unwrap_err();
        assert!(
            e.contains(":6:") && e.contains("grid sampling takes only choice"),
            "{e}"
        );
        let e = parse(&format!(
            "{HEAD}{job}\"--lr\" = {{ uniform = [0.1, 0.2] }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("max_total_runs: required"), "{e}");
        let e = parse(&format!("{HEAD}max_total_runs = 2\n[job]\n[job.train]\nepocs = 2\n[parameter_space]\n\"--lr\" = {{ choice = [0.1] }}\n")).unwrap_err();
        assert!(
            e.contains("sweep.toml:6:") && e.contains("did you mean 'epochs'?"),
            "{e}"
        );
        let e = parse(&format!("{HEAD}max_total_runs = 2\n{job}\"--lr\" = {{ choice = [0.1] }}\n[early_termination]\npolicy = \"median_stopping\"\nslack_factor = 0.1\n")).unwrap_err();
        assert!(
            e.contains(":9: early_termination.slack_factor: only the bandit policy"),
            "{e}"
        );
        let e =
            parse("primary_metric_name = \"a\"\nprimary_metric_goal = \"maximise\"\n").unwrap_err();
        assert!(
            e.contains(":2:") && e.contains("did you mean 'maximize'?"),
            "{e}"
        );
    }

    #[test]
    fn grid_size_caps_the_total_and_script_params_take_the_values() {
        let dir = std::env::temp_dir().join(format!("kiln-sweep-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("run.sh"), "#!/bin/sh\n").unwrap();
        let text = format!(
            "{HEAD}sampling = \"grid\"\nmax_total_runs = 100\n[job]\nsource_directory = \".\"\n\
             entry_script = \"run.sh\"\nscript_params = {{ \"--lr\" = 1, \"--keep\" = \"k\" }}\n\
             [parameter_space]\n\"--lr\" = {{ choice = [0.1, 0.2] }}\n\"--c\" = {{ choice = [\"a\", \"b\", \"c\"] }}\n"
        );
        let s = SweepSpec::parse(&text, &dir.join("s.toml")).unwrap();
        assert_eq!(s.max_total_runs, 6);
        let grid = s.space.grid().unwrap();
        let job = s.trial_job(&grid[5], 5).unwrap();
        assert_eq!(
            job.script_args(),
            ["--lr", "0.2", "--keep", "k", "--c", "c"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
