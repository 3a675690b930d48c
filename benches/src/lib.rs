//! kiln's benchmarks and the PyTorch peers they are measured against (`peers/`). Each
//! benchmark binary times kiln and, given `--peer-python`, runs the peer in the same run,
//! alternating rounds (ABAB), and prints both medians and the ratio.

use std::process::Command;
use std::time::Instant;

/// Median of `values` (NaN for none): the middle value, or the mean of the two middle values
/// of an even count. That is the textbook median, and the one the PyTorch peers report
/// (`statistics.median`), so kiln's and the peers' figures are comparable.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Peak resident memory of this process, in MiB (Linux), or 0.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Milliseconds each of `steps` calls of `step` takes, after `warmup` untimed calls.
pub fn time_ms(warmup: usize, steps: usize, mut step: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        step();
    }
    (0..steps)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// Runs a peer script and returns the JSON object it prints on its last line.
pub fn run_peer(python: &str, script: &str, args: &[String]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(python).arg(script).args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "peer {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .ok_or_else(|| anyhow::anyhow!("peer {script} printed nothing"))?;
    Ok(serde_json::from_str(line)?)
}

/// Path of a peer script in `benches/peers/`.
pub fn peer_script(name: &str) -> String {
    format!("{}/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}
