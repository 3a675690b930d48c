//! Options whose value is one of a few names (`--schedule cosine`, `arch = "resnet50"`): one
//! parser for the command line and the job file, so both refuse a bad name with the same
//! message, "did you mean" included.

/// A value chosen by name.
pub trait Choice: Copy + PartialEq + 'static {
    /// Every value, in the order messages list them.
    const ALL: &'static [Self];

    /// The value's name, as the command line and job files write it.
    fn name(self) -> &'static str;

    /// Other names accepted for a value (`flex` for `cpu`); never listed.
    fn aliases() -> &'static [(&'static str, Self)] {
        &[]
    }
}

/// Parses `given` as one of `T`'s names. The error reads as a job file's unknown value does:
/// `unknown value 'cosin'; did you mean 'cosine'?; expected one of constant, step, cosine, poly`.
pub fn parse_choice<T: Choice>(given: &str) -> Result<T, String> {
    if let Some(value) = T::ALL.iter().find(|v| v.name() == given) {
        return Ok(*value);
    }
    if let Some((_, value)) = T::aliases().iter().find(|(name, _)| *name == given) {
        return Ok(*value);
    }
    let names: Vec<&str> = T::ALL.iter().map(|v| v.name()).collect();
    Err(unknown_value(given, &names))
}

/// `unknown value 'x'; did you mean 'y'?; expected one of a, b, c`.
pub fn unknown_value(given: &str, known: &[&str]) -> String {
    format!(
        "unknown value '{given}'{}; expected one of {}",
        did_you_mean(given, known),
        known.join(", ")
    )
}

/// `; did you mean 'x'?` when a known name is within a couple of edits of `given`.
pub fn did_you_mean(given: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (edit_distance(given, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min()
        .map_or(String::new(), |(_, k)| format!("; did you mean '{k}'?"))
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

impl Choice for kiln_models::Arch {
    const ALL: &'static [Self] = &kiln_models::Arch::ALL;

    fn name(self) -> &'static str {
        kiln_models::Arch::name(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeviceKind, Schedule};

    #[test]
    fn distances_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(
            did_you_mean("epocs", &["epochs", "lr"]),
            "; did you mean 'epochs'?"
        );
        assert_eq!(did_you_mean("zzz", &["epochs", "lr"]), "");
    }

    #[test]
    fn names_aliases_and_the_message() {
        assert_eq!(parse_choice::<Schedule>("cosine"), Ok(Schedule::Cosine));
        assert_eq!(parse_choice::<DeviceKind>("flex"), Ok(DeviceKind::Cpu));
        assert_eq!(
            parse_choice::<Schedule>("cosin").unwrap_err(),
            "unknown value 'cosin'; did you mean 'cosine'?; expected one of constant, step, \
             cosine, poly"
        );
    }
}
