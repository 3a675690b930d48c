//! The estimator job file: what to run (kiln's trainer with a `[train]` table, or an
//! `entry_script` inside a snapshotted `source_directory`) and where (`local`, `mpi`, `slurm`),
//! with the estimator's own key names. Every error names the file, the line and the key, with a
//! "did you mean" when a known name is close.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::RunsError;
use kiln_engine::TrainConfig;
use kiln_engine::env;

pub(crate) mod locate;

use locate::{explain, line_at, line_of_key};

/// Where a job's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeTarget {
    /// This machine.
    Local,
    /// `mpirun` over `hosts` (or this machine when `hosts` is empty).
    Mpi,
    /// An `sbatch` script submitted to Slurm.
    Slurm,
}

/// How a multi-process job's workers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DistributedBackend {
    /// kiln's own launcher and ring allreduce.
    Ring,
    /// Workers started by `mpirun` (or `srun` under Slurm); gradients still use kiln's ring.
    Mpi,
}

/// One `script_params` value: `""` and `true` are bare flags, `false` leaves the flag out.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum ScriptParam {
    /// A flag with no value, or a switched-off one.
    Bool(bool),
    /// An integer value.
    Int(i64),
    /// A float value.
    Float(f64),
    /// A string value; `""` is a bare flag.
    Text(String),
}

/// The job file as written: every key optional, unknown keys refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: Option<String>,
    experiment: Option<String>,
    source_directory: Option<PathBuf>,
    entry_script: Option<PathBuf>,
    #[serde(default)]
    script_params: toml::Table,
    compute_target: Option<ComputeTarget>,
    node_count: Option<i64>,
    process_count_per_node: Option<i64>,
    distributed_backend: Option<DistributedBackend>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    use_gpu: bool,
    train: Option<TrainConfig>,
    #[serde(default)]
    environment: toml::Table,
}

/// A validated job: paths absolute, defaults filled in.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct JobSpec {
    /// The job file.
    pub path: PathBuf,
    /// The run's display name (default: the job file's stem).
    pub name: String,
    /// The experiment the run belongs to (default `default`).
    pub experiment: String,
    /// The directory snapshotted into the run.
    pub source_directory: Option<PathBuf>,
    /// A program inside `source_directory`, relative to it; `None` runs kiln's trainer.
    pub entry_script: Option<PathBuf>,
    /// Flags passed to the program, in file order.
    pub script_params: Vec<(String, ScriptParam)>,
    /// Where the processes run.
    pub compute_target: ComputeTarget,
    /// Machines.
    pub node_count: usize,
    /// Workers on each machine.
    pub process_count_per_node: usize,
    /// How workers are started.
    pub distributed_backend: DistributedBackend,
    /// Machines for `mpi` (and Slurm node hints); empty means this machine.
    pub hosts: Vec<String>,
    /// Ask Slurm for a GPU per worker (`--gpus-per-node`); the built-in trainer's device is
    /// `[train] device`.
    pub use_gpu: bool,
    /// kiln's trainer options (when `entry_script` is absent), data paths absolute.
    pub train: TrainConfig,
    /// Extra environment variables, in file order.
    pub environment: Vec<(String, String)>,
}

impl JobSpec {
    /// Reads and validates the job file at `path`.
    pub fn load(path: &Path) -> Result<Self, RunsError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunsError::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Validates the TOML `text` of the job file at `path` (relative paths are relative to it).
    pub fn parse(text: &str, path: &Path) -> Result<Self, RunsError> {
        let path = std::path::absolute(path).map_err(|e| RunsError::io(path, e))?;
        let at = Place { text, path: &path };
        let file: JobFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_at(text, s.start));
            at.error(line, explain(text, line, e.message()))
        })?;
        let name = at.name(file.name)?;
        let experiment = file.experiment.unwrap_or_else(|| "default".into());
        if let Err(why) = check_name(&experiment) {
            return Err(at.error_at("", "experiment", format!("experiment: {why}")));
        }
        let source_directory = file.source_directory.map(|p| at.absolute(p));
        let entry_script = at.entry_script(file.entry_script, source_directory.as_deref())?;
        if entry_script.is_some() && file.train.is_some() {
            return Err(at.error_at(
                "",
                "train",
                "[train] configures kiln's trainer; with entry_script, pass options in \
                 script_params"
                    .into(),
            ));
        }
        let script_params = at.script_params(file.script_params)?;
        let placement = at.placement(
            file.compute_target,
            file.node_count,
            file.process_count_per_node,
            &file.hosts,
        )?;
        let train = at.train(file.train.unwrap_or_default())?;
        let environment = at.environment(file.environment)?;
        Ok(Self {
            path: path.clone(),
            name,
            experiment,
            source_directory,
            entry_script,
            script_params,
            compute_target: placement.compute_target,
            node_count: placement.node_count,
            process_count_per_node: placement.process_count_per_node,
            distributed_backend: file.distributed_backend.unwrap_or(DistributedBackend::Ring),
            hosts: file.hosts,
            use_gpu: file.use_gpu,
            train,
            environment,
        })
    }

    /// Workers in all: `node_count * process_count_per_node`.
    pub fn world_size(&self) -> usize {
        self.node_count * self.process_count_per_node
    }

    /// `script_params` as command-line arguments: `--flag value`, or `--flag` alone.
    pub fn script_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (key, value) in &self.script_params {
            match value {
                ScriptParam::Bool(false) => {}
                ScriptParam::Bool(true) => args.push(key.clone()),
                ScriptParam::Text(s) if s.is_empty() => args.push(key.clone()),
                ScriptParam::Text(s) => args.extend([key.clone(), s.clone()]),
                ScriptParam::Int(i) => args.extend([key.clone(), i.to_string()]),
                ScriptParam::Float(f) => args.extend([key.clone(), f.to_string()]),
            }
        }
        args
    }

    /// The `[train]` table as a job file of its own, paths absolute: what a run's built-in
    /// trainer reads with `kiln train --job`.
    pub fn train_job_toml(&self) -> String {
        #[derive(serde::Serialize)]
        struct Train<'a> {
            train: &'a TrainConfig,
        }
        toml::to_string(&Train { train: &self.train }).expect("a train config serialises")
    }
}

/// Where the job's processes run and how many there are.
struct Placement {
    compute_target: ComputeTarget,
    node_count: usize,
    process_count_per_node: usize,
}

/// The job file being validated: makes errors that name its path and a line, and paths
/// relative to it absolute.
struct Place<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Place<'_> {
    fn error(&self, line: usize, message: String) -> RunsError {
        RunsError::InvalidJob {
            file: self.path.display().to_string(),
            line,
            message,
        }
    }

    /// An error at the line where `key` is set in `table` (`""`: the top level).
    fn error_at(&self, table: &str, key: &str, message: String) -> RunsError {
        self.error(line_of_key(self.text, table, key), message)
    }

    fn absolute(&self, p: PathBuf) -> PathBuf {
        match self.path.parent() {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }

    /// The run's display name: as written, or the job file's stem.
    fn name(&self, name: Option<String>) -> Result<String, RunsError> {
        match name {
            Some(n) if n.trim().is_empty() => {
                Err(self.error_at("", "name", "name: must not be empty".into()))
            }
            Some(n) if n.chars().any(char::is_control) || n.len() > 256 => Err(self.error_at(
                "",
                "name",
                "name: at most 256 characters, no control characters".into(),
            )),
            Some(n) => Ok(n),
            None => Ok(self
                .path
                .file_stem()
                .map_or("job".into(), |s| s.to_string_lossy().into_owned())),
        }
    }

    /// The entry script: a relative path inside `source_directory` that exists.
    fn entry_script(
        &self,
        script: Option<PathBuf>,
        source_directory: Option<&Path>,
    ) -> Result<Option<PathBuf>, RunsError> {
        if let Some(dir) = source_directory
            && !dir.is_dir()
        {
            return Err(self.error_at(
                "",
                "source_directory",
                format!("source_directory: {} is not a directory", dir.display()),
            ));
        }
        let (script, dir) = match (script, source_directory) {
            (None, _) => return Ok(None),
            (Some(_), None) => {
                return Err(self.error_at(
                    "",
                    "entry_script",
                    "entry_script: needs a source_directory to find it in".into(),
                ));
            }
            (Some(script), Some(dir)) => (script, dir),
        };
        let inside = script.is_relative()
            && script
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !inside {
            return Err(self.error_at(
                "",
                "entry_script",
                format!(
                    "entry_script: {} must be a relative path inside source_directory",
                    script.display()
                ),
            ));
        }
        if !dir.join(&script).is_file() {
            return Err(self.error_at(
                "",
                "entry_script",
                format!(
                    "entry_script: {} not found in {}",
                    script.display(),
                    dir.display()
                ),
            ));
        }
        Ok(Some(script))
    }

    /// `script_params`, in file order: strings, numbers and booleans.
    fn script_params(&self, table: toml::Table) -> Result<Vec<(String, ScriptParam)>, RunsError> {
        let mut params = Vec::new();
        for (key, value) in table {
            let param = match value {
                toml::Value::String(s) => ScriptParam::Text(s),
                toml::Value::Integer(i) => ScriptParam::Int(i),
                toml::Value::Float(f) => ScriptParam::Float(f),
                toml::Value::Boolean(b) => ScriptParam::Bool(b),
                other => {
                    return Err(self.error_at(
                        "script_params",
                        &key,
                        format!(
                            "script_params.{key}: expected a string, number or boolean, found {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            params.push((key, param));
        }
        Ok(params)
    }

    /// The compute target, node and process counts, checked against each other and `hosts`.
    fn placement(
        &self,
        target: Option<ComputeTarget>,
        node_count: Option<i64>,
        process_count_per_node: Option<i64>,
        hosts: &[String],
    ) -> Result<Placement, RunsError> {
        let count = |key: &str, value: Option<i64>, max: i64| match value {
            None => Ok(1),
            Some(v) if (1..=max).contains(&v) => Ok(v as usize),
            Some(v) => Err(self.error_at(
                "",
                key,
                format!("{key}: {v} is out of range; expected 1 to {max}"),
            )),
        };
        let node_count = count("node_count", node_count, 4096)?;
        let process_count_per_node = count("process_count_per_node", process_count_per_node, 1024)?;
        let compute_target = target.unwrap_or(ComputeTarget::Local);
        let hosts_error = |message: String| Err(self.error_at("", "hosts", message));
        if compute_target == ComputeTarget::Local && node_count > 1 {
            return Err(self.error_at(
                "",
                "node_count",
                format!(
                    "node_count: {node_count} nodes need compute_target = \"mpi\" or \"slurm\""
                ),
            ));
        }
        if compute_target == ComputeTarget::Local && !hosts.is_empty() {
            return hosts_error(
                "hosts: a local job runs on this machine; hosts are for compute_target = \"mpi\" \
                 or \"slurm\""
                    .into(),
            );
        }
        if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
            return hosts_error(format!("hosts: '{bad}' is not a host name or address"));
        }
        if compute_target == ComputeTarget::Mpi && !hosts.is_empty() && hosts.len() < node_count {
            return hosts_error(format!(
                "hosts: {} listed for node_count = {node_count}",
                hosts.len()
            ));
        }
        if compute_target == ComputeTarget::Mpi && hosts.is_empty() && node_count > 1 {
            return hosts_error(format!(
                "hosts: node_count = {node_count} with mpi needs the hosts listed"
            ));
        }
        Ok(Placement {
            compute_target,
            node_count,
            process_count_per_node,
        })
    }

    /// The `[train]` table, validated as `kiln train` validates its flags, paths made absolute.
    fn train(&self, mut train: TrainConfig) -> Result<TrainConfig, RunsError> {
        train
            .validate()
            .map_err(|e| self.error_at("train", e.option, e.to_string()))?;
        train.data = train.data.map(|p| self.absolute(p));
        train.train = train.train.map(|p| self.absolute(p));
        train.val = train.val.map(|p| self.absolute(p));
        train.pretrained = train.pretrained.map(|p| self.absolute(p));
        train.resume = train.resume.map(|p| self.absolute(p));
        Ok(train)
    }

    /// `[environment]`, in file order: variable names, values without NUL, none of kiln's own.
    fn environment(&self, table: toml::Table) -> Result<Vec<(String, String)>, RunsError> {
        let mut environment = Vec::new();
        for (key, value) in table {
            let error = |message: String| Err(self.error_at("environment", &key, message));
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return error(format!(
                        "environment.{key}: expected a string, number or boolean, found {}",
                        other.type_str()
                    ));
                }
            };
            let well_formed = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !well_formed {
                return error(format!(
                    "environment: '{key}' is not a variable name (letters, digits, '_')"
                ));
            }
            if RESERVED_ENV.contains(&key.as_str()) {
                return error(format!("environment: {key} is set by kiln for every run"));
            }
            if value.contains('\0') {
                return error(format!("environment.{key}: the value holds a NUL byte"));
            }
            environment.push((key, value));
        }
        Ok(environment)
    }
}

/// Variables kiln sets for a run's processes; a job cannot override them.
const RESERVED_ENV: [&str; 10] = [
    env::RUN_ID,
    env::OUTPUTS,
    env::LOGS,
    env::HOME,
    env::JOB_TOKEN,
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
];

/// Experiment and model names: letters, digits, `.`, `_`, `-`; no path tricks.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("'{name}' must have 1 to 128 characters"));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(format!("'{name}' must not start with '.' or '-'"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "'{name}' has '{c}'; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobSpec, String> {
        JobSpec::parse(text, Path::new("/tmp/job.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_flags() {
        let job = parse(
            "name = \"n\"\nscript_params = { \"--epochs\" = 3, \"--verbose\" = \"\", \"--lr\" = 0.5, \"--off\" = false }\n",
        )
        .unwrap();
        assert_eq!(job.experiment, "default");
        assert_eq!(job.compute_target, ComputeTarget::Local);
        assert_eq!(job.world_size(), 1);
        assert_eq!(job.train, TrainConfig::default());
        assert_eq!(
            job.script_args(),
            ["--epochs", "3", "--verbose", "--lr", "0.5"]
        );
    }

    #[test]
    fn unknown_keys_name_the_line_and_a_close_key() {
        let e = parse("name = \"n\"\nexperimnt = \"x\"\n").unwrap_err();
        assert!(e.contains("/tmp/job.toml:2:"), "{e}");
        assert!(e.contains("unknown key 'experimnt'"), "{e}");
        assert!(e.contains("did you mean 'experiment'?"), "{e}");
        let e = parse("[train]\nepochs = 2\nbatch_sise = 4\n").unwrap_err();
        assert!(e.contains(":3:") && e.contains("in [train]"), "{e}");
        assert!(e.contains("did you mean 'batch_size'?"), "{e}");
        let e = parse("compute_target = \"slurn\"\n").unwrap_err();
        assert!(
            e.contains(":1: compute_target: unknown value 'slurn'"),
            "{e}"
        );
        assert!(e.contains("did you mean 'slurm'?"), "{e}");
    }

    #[test]
    fn wrong_types_and_ranges_name_the_line() {
        let e = parse("name = \"n\"\nnode_count = \"two\"\n").unwrap_err();
        assert!(e.contains(":2: node_count:"), "{e}");
        let e = parse("\n\nprocess_count_per_node = 0\n").unwrap_err();
        assert!(
            e.contains(":3: process_count_per_node: 0 is out of range"),
            "{e}"
        );
        let e = parse("[train]\n\nlr = -1.0\n").unwrap_err();
        assert!(e.contains(":3: lr:"), "{e}");
        let e = parse("[train]\narch = \"resnet19\"\n").unwrap_err();
        assert!(
            e.contains(":2: arch:") && e.contains("did you mean 'resnet18'?"),
            "{e}"
        );
        let e = parse("[train]\nepochs = 2.5\n").unwrap_err();
        assert!(e.contains(":2: epochs:"), "{e}");
        let e = parse("script_params = { \"--x\" = [1] }\n").unwrap_err();
        assert!(e.contains(":1: script_params.--x"), "{e}");
        let e = parse("node_count = 2\n").unwrap_err();
        assert!(e.contains("compute_target"), "{e}");
        let e = parse("experiment = \"../up\"\n").unwrap_err();
        assert!(e.contains(":1: experiment:"), "{e}");
    }

    #[test]
    fn paths_are_relative_to_the_job_file() {
        let job = parse("[train]\ndata = \"d\"\n").unwrap();
        assert_eq!(job.train.data, Some(PathBuf::from("/tmp/d")));
        let e = parse("source_directory = \"/nonexistent-kiln\"\n").unwrap_err();
        assert!(e.contains("source_directory"), "{e}");
        let e = parse("entry_script = \"x.sh\"\n").unwrap_err();
        assert!(e.contains("needs a source_directory"), "{e}");
    }
}
