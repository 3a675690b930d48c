//! Job files as `kiln submit` reads them: refused by line, or a job whose derived values
//! (workers, the script's arguments, the trainer's TOML) come out without a panic, and whose
//! trainer TOML the trainer reads back.
#![no_main]

use kiln_runs::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = kiln_fuzz::scratch_file("job.toml", data);
    let Ok(job) = JobSpec::load(&path) else {
        return;
    };
    let _ = job.world_size();
    let _ = job.script_args();
    if job.entry_script.is_none() {
        // What a run's trainer reads back with `kiln train --job`.
        let toml = job.train_job_toml();
        let train = kiln_fuzz::scratch_file("train.toml", toml.as_bytes());
        match JobSpec::load(&train) {
            Ok(read) => assert_eq!(read.train, job.train, "{toml}"),
            Err(e) => panic!("the trainer refuses the TOML a valid job wrote: {e}\n{toml}"),
        }
    }
});
