//! Range checks of command-line values that clap's types cannot express, each naming its flag.

use anyhow::{Result, bail};

/// Refuses a count below `min` (or above `max`), naming its flag.
pub fn count(flag: &str, value: usize, min: usize, max: usize) -> Result<()> {
    if !(min..=max).contains(&value) {
        bail!("{flag} {value} is out of range; expected {min} to {max}");
    }
    Ok(())
}

/// Refuses a size in MiB that is not a positive number up to `max`, naming its flag.
pub fn mib(flag: &str, value: f64, max: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0 && value <= max) {
        bail!("{flag} {value} is out of range; expected more than 0 and at most {max} MiB");
    }
    Ok(())
}
