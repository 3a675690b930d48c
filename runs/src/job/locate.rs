//! Where in a job file a problem is: the line of a key, the table a line belongs to, and a
//! "did you mean" for unknown keys and values.

use kiln_engine::config::{did_you_mean, unknown_value};

/// Rewrites serde's message about an unknown key or variant with a "did you mean".
pub(crate) fn explain(text: &str, line: usize, message: &str) -> String {
    let key = key_on_line(text, line);
    let prefix = match &key {
        Some(k) => format!("{k}: "),
        None => String::new(),
    };
    let backticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    let unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if unknown && let Some((given, known)) = backticked.split_first() {
        if message.starts_with("unknown variant") {
            return format!("{prefix}{}", unknown_value(given, known));
        }
        let table = table_on_line(text, line);
        let place = if table.is_empty() {
            String::new()
        } else {
            format!(" in [{table}]")
        };
        return format!(
            "unknown key '{given}'{place}{}; expected one of {}",
            did_you_mean(given, known),
            known.join(", ")
        );
    }
    format!("{prefix}{}", message.trim())
}

/// The 1-based line of byte `offset`.
pub(crate) fn line_at(text: &str, offset: usize) -> usize {
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
pub(crate) fn line_of_key(text: &str, table: &str, key: &str) -> usize {
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
    fn lines() {
        let text = "a = 1\n[train]\nepochs = 2\n";
        assert_eq!(line_of_key(text, "train", "epochs"), 3);
        assert_eq!(line_of_key(text, "", "a"), 1);
        assert_eq!(line_at(text, 7), 2);
    }
}
