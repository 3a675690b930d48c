//! A sweep's life: [`prepare`] records the sweep as a run of its own; [`execute`] starts trials
//! (each a normal run, on a thread of its own) up to `max_concurrent_runs` at once, follows
//! their primary metric, cancels those the early-termination policy cuts, stops at the limits,
//! a cancel or Ctrl-C, and records how the sweep ended.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::space::{Params, describe};
use super::spec::{Sampling, SweepSpec};
use super::store::SWEEP_TARGET;
use super::tpe;
use crate::error::RunsError;
use crate::history::{Metric, NewRun, RunHistory};
use crate::home::RunPaths;
use crate::{LOCK_FILE, RunStatus, SubmitterLock};
use crate::{ingest, submit};
use kiln_engine::config::did_you_mean;

/// How often the sweep looks at its trials.
const POLL: Duration = Duration::from_millis(200);

/// What a sweep's run records as its job: the validated sweep, and the sweep it resumes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SweepJob {
    /// The sweep.
    pub spec: SweepSpec,
    /// A stopped sweep whose completed trials this one reuses.
    pub resumed_from: Option<String>,
}

/// How a sweep ended.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepOutcome {
    /// The sweep's run id.
    pub id: String,
    /// Its final state.
    pub status: RunStatus,
    /// Trials that ran to the end (reused ones included).
    pub completed: usize,
    /// Trials the early-termination policy canceled.
    pub cut: usize,
    /// Trials that failed or were canceled otherwise.
    pub other: usize,
    /// Seconds the sweep ran.
    pub seconds: f64,
}

/// Records a new sweep (resuming `resumed_from` when given) and takes its lock.
pub fn prepare(
    history: &mut RunHistory,
    spec: &SweepSpec,
    resumed_from: Option<&str>,
) -> Result<(RunPaths, SubmitterLock), RunsError> {
    let resumed_from = match resumed_from {
        Some(old) => {
            let old = history.run(old)?;
            if old.compute_target != SWEEP_TARGET {
                return Err(RunsError::Runs(format!(
                    "--resume {}: run {} is not a sweep",
                    old.id, old.id
                )));
            }
            if !old.status.is_final() {
                return Err(RunsError::Runs(format!(
                    "--resume {}: the sweep is still {}; cancel it first",
                    old.id, old.status
                )));
            }
            Some(old.id)
        }
        None => None,
    };
    let job = SweepJob {
        spec: spec.clone(),
        resumed_from,
    };
    let id = history.create_run(&NewRun {
        name: &spec.name,
        experiment: &spec.job.experiment,
        compute_target: SWEEP_TARGET,
        job: &serde_json::to_string(&job).expect("a sweep serialises"),
    })?;
    let paths = RunPaths::new(history.home(), &id);
    let lock = (|| -> Result<SubmitterLock, RunsError> {
        for dir in [&paths.dir, &paths.outputs, &paths.logs] {
            std::fs::create_dir_all(dir).map_err(|e| RunsError::io(dir, e))?;
        }
        let lock_path = paths.dir.join(LOCK_FILE);
        let lock = SubmitterLock::acquire(&lock_path).map_err(|e| RunsError::io(&lock_path, e))?;
        // As a job's run keeps its job, so `kiln runs recover` finds what the sweep was.
        let job_path = paths.dir.join("job.json");
        let json = serde_json::to_string_pretty(&job).expect("a sweep serialises");
        std::fs::write(&job_path, json).map_err(|e| RunsError::io(&job_path, e))?;
        Ok(lock)
    })();
    match lock {
        Ok(lock) => Ok((paths, lock)),
        Err(e) => {
            history.finish(&id, RunStatus::Failed, None, Some(&e.to_string()))?;
            Err(e)
        }
    }
}

/// Runs prepared sweep `id` to its end. `kiln` is the executable trials run with; `echo`
/// prints the sweep's log lines to stdout too. Any error on the way is recorded as the
/// sweep's failure, and its trials are canceled.
pub fn execute(
    history: &mut RunHistory,
    id: &str,
    kiln: &Path,
    echo: bool,
    lock: Option<SubmitterLock>,
) -> Result<SweepOutcome, RunsError> {
    let record = history.run(id)?;
    let paths = RunPaths::new(history.home(), &record.id);
    let _lock = SubmitterLock::held_or_acquire(lock, &paths)?;
    if record.status != RunStatus::Queued || !history.set_status(&record.id, RunStatus::Running)? {
        return Err(RunsError::Runs(format!(
            "sweep {} is {}; only a new sweep can start",
            record.id, record.status
        )));
    }
    let job: SweepJob = serde_json::from_str(&record.job)
        .map_err(|e| RunsError::Runs(format!("sweep {}: unreadable sweep: {e}", record.id)))?;
    let log_path = paths.output_log();
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RunsError::io(&log_path, e))?;
    history.set_running(
        &record.id,
        &format!("kiln sweep {}", job.spec.path.display()),
        None,
        None,
    )?;
    let mut sweep = Sweep {
        id: record.id.clone(),
        spec: job.spec,
        kiln: kiln.to_path_buf(),
        echo,
        log,
        trials: Vec::new(),
        next: 0,
        warned: false,
        started: Instant::now(),
    };
    let result = sweep.run(history, job.resumed_from.as_deref());
    if let Err(e) = &result {
        sweep.say(&format!("the sweep failed: {e}; canceling its trials"));
        sweep.cancel_live(history, "the sweep failed");
        sweep.wait_all(history);
        history.finish(&record.id, RunStatus::Failed, None, Some(&e.to_string()))?;
    }
    result
}

/// One trial while the sweep runs.
struct Trial {
    index: usize,
    run_id: String,
    params: Params,
    curve: Vec<f64>,
    /// Intervals the policy has looked at.
    judged: usize,
    status: RunStatus,
    thread: Option<JoinHandle<()>>,
    cut: bool,
}

/// Why the sweep stops starting trials.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Canceled,
    Deadline,
}

struct Sweep {
    id: String,
    spec: SweepSpec,
    kiln: PathBuf,
    echo: bool,
    log: File,
    trials: Vec<Trial>,
    /// The next trial number to start.
    next: usize,
    /// Whether the missing-metric warning was given.
    warned: bool,
    started: Instant,
}

impl Sweep {
    fn run(
        &mut self,
        history: &mut RunHistory,
        resumed_from: Option<&str>,
    ) -> Result<SweepOutcome, RunsError> {
        submit::install_interrupt_handler();
        self.say(&format!(
            "sweep {}: {} sampling of {} parameters, up to {} trials ({} at once), {} {}; early \
             termination: {}; seed {}",
            self.id,
            sampling_name(self.spec.sampling),
            self.spec.space.0.len(),
            self.spec.max_total_runs,
            self.spec.max_concurrent_runs,
            match self.spec.goal {
                super::Goal::Maximize => "maximizing",
                super::Goal::Minimize => "minimizing",
            },
            self.spec.primary_metric_name,
            self.spec.policy.name(),
            self.spec.seed
        ));
        if let Some(old) = resumed_from {
            self.carry_over(history, old)?;
        }
        let mut stop: Option<Stop> = None;
        let mut beat = Instant::now();
        loop {
            if stop != Some(Stop::Canceled)
                && (submit::interrupted() || history.cancel_requested(&self.id)?)
            {
                self.say("canceled: stopping every running trial");
                self.cancel_live(history, "canceled with its sweep");
                stop = Some(Stop::Canceled);
            }
            if stop.is_none()
                && let Some(minutes) = self.spec.max_duration_minutes
                && self.started.elapsed().as_secs_f64() > minutes * 60.0
            {
                self.say(&format!(
                    "max_duration_minutes ({minutes}) reached: stopping every running trial"
                ));
                self.cancel_live(history, "the sweep reached max_duration_minutes");
                stop = Some(Stop::Deadline);
            }
            history.heartbeat(&self.id, &mut beat)?;
            self.follow(history)?;
            if stop.is_none() {
                self.judge(history)?;
                while self.live() < self.spec.max_concurrent_runs && self.start_next(history)? {}
            }
            if self.live() == 0 && (stop.is_some() || !self.can_start()) {
                break;
            }
            std::thread::sleep(POLL);
        }
        self.finish(history, stop)
    }

    /// The trials of stopped sweep `old` that completed, reused as the same trial numbers.
    fn carry_over(&mut self, history: &mut RunHistory, old: &str) -> Result<(), RunsError> {
        for row in history.trials(old)? {
            let run = history.run(&row.run_id)?;
            if run.status != RunStatus::Completed || row.trial >= self.spec.max_total_runs {
                continue;
            }
            // Grid and random points are fixed by the trial number: a trial is reused only
            // where this sweep would draw the same point (the file may have changed).
            if self.spec.sampling != Sampling::Bayesian && self.sample(row.trial) != row.params {
                self.say(&format!(
                    "trial {} (run {}) of sweep {old} not reused: its parameters {} are not this \
                     sweep's",
                    row.trial,
                    row.run_id,
                    describe(&row.params)
                ));
                continue;
            }
            history.add_trial(&self.id, row.trial, &row.run_id, &row.params)?;
            let curve = history.primary_curve(&row.run_id, &self.spec)?;
            self.say(&format!(
                "trial {} (run {}) reused from sweep {old}: {}",
                row.trial,
                row.run_id,
                describe(&row.params)
            ));
            self.trials.push(Trial {
                index: row.trial,
                run_id: row.run_id,
                params: row.params,
                judged: curve.len(),
                curve,
                status: RunStatus::Completed,
                thread: None,
                cut: false,
            });
        }
        self.trials.sort_by_key(|t| t.index);
        Ok(())
    }

    fn live(&self) -> usize {
        self.trials.iter().filter(|t| !t.status.is_final()).count()
    }

    /// Whether trials remain to be started.
    fn can_start(&self) -> bool {
        self.next_index().is_some()
    }

    fn next_index(&self) -> Option<usize> {
        (self.next..self.spec.max_total_runs).find(|i| self.trials.iter().all(|t| t.index != *i))
    }

    /// Starts the next trial; false when none is left.
    fn start_next(&mut self, history: &mut RunHistory) -> Result<bool, RunsError> {
        let Some(index) = self.next_index() else {
            return Ok(false);
        };
        self.next = index + 1;
        let params = self.sample(index);
        let (job, invalid) = match self.spec.trial_job(&params, index) {
            Ok(job) => (job, None),
            Err(why) => {
                let mut job = self.spec.job.clone();
                job.name = format!("{} trial {index}", self.spec.name);
                (job, Some(why))
            }
        };
        let (paths, lock) = submit::prepare(history, &job)?;
        history.add_trial(&self.id, index, &paths.id, &params)?;
        let mut trial = Trial {
            index,
            run_id: paths.id.clone(),
            params,
            curve: Vec::new(),
            judged: 0,
            status: RunStatus::Preparing,
            thread: None,
            cut: false,
        };
        if let Some(why) = invalid {
            let why = format!(
                "the parameters {} make no valid job: {why}",
                describe(&trial.params)
            );
            history.finish(&paths.id, RunStatus::Failed, None, Some(&why))?;
            self.say(&format!("trial {index} (run {}) Failed: {why}", paths.id));
            trial.status = RunStatus::Failed;
            self.trials.push(trial);
            return Ok(true);
        }
        self.say(&format!(
            "trial {index} (run {}) started: {}",
            paths.id,
            describe(&trial.params)
        ));
        let home = history.home().to_path_buf();
        let kiln = self.kiln.clone();
        let id = paths.id.clone();
        // The trial's guard is started on this thread and stops the program when the thread
        // ends (PR_SET_PDEATHSIG), so the thread lives until the run ends.
        trial.thread = Some(std::thread::spawn(move || {
            let result = RunHistory::open(&home)
                .and_then(|mut h| submit::execute(&mut h, &id, &kiln, false, Some(lock)));
            if let Err(e) = result {
                eprintln!("kiln sweep: trial run {id}: {e}");
            }
        }));
        self.trials.push(trial);
        Ok(true)
    }

    /// Trial `index`'s parameters: grid point `index`, a draw seeded by the sweep's seed and
    /// the trial number (so a resumed sweep draws the same points), or the estimator's pick.
    fn sample(&self, index: usize) -> Params {
        let mut rng = StdRng::seed_from_u64(
            self.spec
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(index as u64),
        );
        match self.spec.sampling {
            Sampling::Grid => self.spec.space.grid().expect("checked: a grid")[index].clone(),
            Sampling::Random => self.spec.space.draw(&mut rng),
            Sampling::Bayesian => {
                let observed: Vec<(Params, f64)> = self
                    .trials
                    .iter()
                    .filter(|t| t.status == RunStatus::Completed)
                    .map(|t| {
                        (
                            t.params.clone(),
                            self.spec.goal.best(t.curve.iter().copied()),
                        )
                    })
                    .collect();
                let startup = tpe::startup_trials(self.spec.max_total_runs);
                tpe::suggest(
                    &self.spec.space,
                    self.spec.goal,
                    &observed,
                    startup,
                    &mut rng,
                )
            }
        }
    }

    /// Reads each running trial's curve and status; reports the trials that ended.
    fn follow(&mut self, history: &mut RunHistory) -> Result<(), RunsError> {
        let mut ended = Vec::new();
        for (i, t) in self.trials.iter_mut().enumerate() {
            if t.status.is_final() {
                continue;
            }
            t.curve = history.primary_curve(&t.run_id, &self.spec)?;
            let status = history.run(&t.run_id)?.status;
            let done = t.thread.as_ref().is_none_or(|h| h.is_finished());
            if status.is_final() && done {
                if let Some(h) = t.thread.take() {
                    let _ = h.join();
                }
                t.curve = history.primary_curve(&t.run_id, &self.spec)?;
                t.status = status;
                ended.push(i);
            }
        }
        for i in ended {
            let t = &self.trials[i];
            let best = self.spec.goal.best(t.curve.iter().copied());
            let line = format!(
                "trial {} (run {}) {}: {} best {best} after {} reports",
                t.index,
                t.run_id,
                t.status,
                self.spec.primary_metric_name,
                t.curve.len()
            );
            self.say(&line);
            if !best.is_nan() {
                let value = Metric {
                    rank: None,
                    epoch: None,
                    step: Some(self.trials.iter().filter(|t| t.status.is_final()).count() as i64),
                    split: None,
                    name: format!("best_{}", self.spec.primary_metric_name),
                    value: Some(self.best_so_far()),
                    time: Some(crate::now()),
                };
                history.add_metrics(&self.id, std::slice::from_ref(&value))?;
                // Kept in the sweep's own metrics file too, for `kiln runs recover`.
                let file = RunPaths::new(history.home(), &self.id).metrics_file();
                if let Err(e) = ingest::append_metric(&file, &value) {
                    self.say(&format!("warning: {e}"));
                }
            }
            if self.trials[i].status == RunStatus::Completed && !self.warned {
                self.warned = true;
                self.warn_if_metric_missing(history, i)?;
            }
        }
        Ok(())
    }

    /// After the first completed trial: a primary metric it never reported is most likely
    /// misspelled; say so, with the metrics it did report.
    fn warn_if_metric_missing(&mut self, history: &RunHistory, i: usize) -> Result<(), RunsError> {
        if !self.trials[i].curve.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<String> = history
            .metrics(&self.trials[i].run_id)?
            .iter()
            .map(Metric::key)
            .collect();
        keys.sort();
        keys.dedup();
        let known: Vec<&str> = keys.iter().map(String::as_str).collect();
        let wanted = &self.spec.primary_metric_name;
        self.say(&format!(
            "warning: trial {} completed without reporting primary_metric_name '{wanted}'{}; it \
             reported {}. No trial can be ranked or stopped early until the name matches ({})",
            self.trials[i].index,
            did_you_mean(wanted, &known),
            if known.is_empty() {
                "no metrics at all".to_string()
            } else {
                known.join(", ")
            },
            self.spec.path.display()
        ));
        Ok(())
    }

    /// Applies the early-termination policy at every interval each running trial reached.
    fn judge(&mut self, history: &mut RunHistory) -> Result<(), RunsError> {
        let curves: Vec<Vec<f64>> = self.trials.iter().map(|t| t.curve.clone()).collect();
        let refs: Vec<&[f64]> = curves.iter().map(Vec::as_slice).collect();
        for i in 0..self.trials.len() {
            let t = &self.trials[i];
            if t.status.is_final() || t.cut {
                continue;
            }
            let reached = t.curve.len();
            let mut verdict = None;
            for k in t.judged + 1..=reached {
                verdict = self.spec.policy.judge(self.spec.goal, &refs, i, k);
                self.trials[i].judged = k;
                if verdict.is_some() {
                    break;
                }
            }
            let Some(v) = verdict else { continue };
            let t = &mut self.trials[i];
            t.cut = true;
            let note = format!(
                "canceled by the {} policy at interval {}: {} {}",
                self.spec.policy.name(),
                v.interval,
                self.spec.primary_metric_name,
                v.reason
            );
            history.set_trial_note(&self.id, t.index, &note)?;
            history.request_cancel(&t.run_id)?;
            let run_log = RunPaths::new(history.home(), &t.run_id).output_log();
            submit::append_to(&run_log, &format!("kiln sweep {}: {note}\n", self.id));
            let line = format!(
                "trial {} (run {}) {note}",
                self.trials[i].index, self.trials[i].run_id
            );
            self.say(&line);
        }
        Ok(())
    }

    fn best_so_far(&self) -> f64 {
        self.spec.goal.best(
            self.trials
                .iter()
                .filter(|t| t.status == RunStatus::Completed)
                .flat_map(|t| t.curve.iter().copied()),
        )
    }

    fn cancel_live(&mut self, history: &RunHistory, why: &str) {
        for t in self.trials.iter().filter(|t| !t.status.is_final()) {
            let _ = history.set_trial_note(&self.id, t.index, why);
            let _ = history.request_cancel(&t.run_id);
        }
    }

    fn wait_all(&mut self, history: &mut RunHistory) {
        while self.live() > 0 {
            if self.follow(history).is_err() {
                break;
            }
            std::thread::sleep(POLL);
        }
    }

    fn finish(
        &mut self,
        history: &mut RunHistory,
        stop: Option<Stop>,
    ) -> Result<SweepOutcome, RunsError> {
        let count = |f: &dyn Fn(&Trial) -> bool| self.trials.iter().filter(|t| f(t)).count();
        let completed = count(&|t| t.status == RunStatus::Completed);
        let cut = count(&|t| t.cut && t.status == RunStatus::Canceled);
        let other = self.trials.len() - completed - cut;
        let (status, error) = match stop {
            Some(Stop::Canceled) => (RunStatus::Canceled, Some("canceled".to_string())),
            // The time limit is how the sweep was asked to end, not a failure.
            Some(Stop::Deadline) => (RunStatus::Completed, None),
            None if completed == 0 && cut == 0 && !self.trials.is_empty() => (
                RunStatus::Failed,
                Some("no trial completed (see kiln sweep status)".to_string()),
            ),
            _ => (RunStatus::Completed, None),
        };
        let best = self.best_so_far();
        self.say(&format!(
            "sweep {} {status} in {:.1} s: {} trials, {completed} completed, {cut} canceled by \
             early termination ({}), {other} failed or canceled otherwise; best {} {best}",
            self.id,
            self.started.elapsed().as_secs_f64(),
            self.trials.len(),
            self.spec.policy.name(),
            self.spec.primary_metric_name,
        ));
        let paths = RunPaths::new(history.home(), &self.id);
        history.set_artifacts(
            &self.id,
            &[(
                "logs/output.log".to_string(),
                std::fs::metadata(paths.output_log()).map_or(0, |m| m.len()),
            )],
        )?;
        history.finish(&self.id, status, None, error.as_deref())?;
        Ok(SweepOutcome {
            id: self.id.clone(),
            status: history.run(&self.id)?.status,
            completed,
            cut,
            other,
            seconds: self.started.elapsed().as_secs_f64(),
        })
    }

    /// A line in the sweep's log (and on stdout when echoing).
    fn say(&mut self, line: &str) {
        let _ = writeln!(self.log, "{line}");
        if self.echo {
            println!("{line}");
        }
    }
}

fn sampling_name(s: Sampling) -> &'static str {
    match s {
        Sampling::Grid => "grid",
        Sampling::Random => "random",
        Sampling::Bayesian => "bayesian",
    }
}
