//! Where in a job file a problem is: the line of a key, the table a line belongs to, and a
//! "did you mean" for unknown keys and values.

/// Rewrites serde's message about an unknown key or variant with a "did you mean".
pub(super) fn explain(text: &str, line: usize, message: &str) -> String {
    let key = key_on_line(text, line);
    let prefix = match &key {
        Some(k) => format!("{k}: "),
        None => String::new(),
    };
    let backticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if unknown && let Some((given, known)) = backticked.split_first() {
        let what = if message.starts_with("unknown field") {
            "unknown key"
        } else {
            "unknown value"
        };
        let table = table_on_line(text, line);
        let place = if table.is_empty() || what == "unknown value" {
            String::new()
        } else {
            format!(" in [{table}]")
        };
        let key_prefix = if what == "unknown key" {
            String::new()
        } else {
            prefix
        };
        return format!(
            "{key_prefix}{what} '{given}'{place}{}; expected one of {}",
            did_you_mean(given, known),
            known.join(", ")
        );
    }
    format!("{prefix}{}", message.trim())
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

/// The 1-based line of byte `offset`.
pub(super) fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key assigned on `line` (1-based), if any.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = l.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

/// The `[table]` that `line` (1-based) belongs to; `""` for the top level.
fn table_on_line(text: &str, line: usize) -> String {
    let mut table = String::new();
    for l in text.lines().take(line) {
        let t = l.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    table
}

/// The line where `key` is set in `table` (`""`: the top level), or 1 when it is not written.
pub(super) fn line_of_key(text: &str, table: &str, key: &str) -> usize {
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == table && key.is_empty() {
                return i + 1;
            }
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        let dotted = format!("{table}.{key}");
        if (current == table && k == key)
            || (current.is_empty() && !table.is_empty() && k == dotted)
        {
            return i + 1;
        }
        // An inline table (`script_params = { ... }`) holds its keys on the same line.
        if current.is_empty() && k == table && l.contains(key) {
            return i + 1;
        }
    }
    if !table.is_empty() && !key.is_empty() {
        return line_of_key(text, table, "");
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_lines() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let text = "a = 1\n[train]\nepochs = 2\n";
        assert_eq!(line_of_key(text, "train", "epochs"), 3);
        assert_eq!(line_of_key(text, "", "a"), 1);
        assert_eq!(line_at(text, 7), 2);
    }
}
