//! Snapshots of a job's `source_directory`: every file not excluded by `.kilnignore` (or, when
//! there is none, `.gitignore`) is copied into the run, refusing sources over a size limit, and
//! the git commit and dirty state are recorded when the source is a git work tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::RunsError;

/// The default snapshot limit, 300 MiB; `KILN_SNAPSHOT_LIMIT_MB` changes it.
pub const DEFAULT_LIMIT_BYTES: u64 = 300 << 20;

/// Names never copied: version control, and the run's own `outputs`/`logs` at the top.
const ALWAYS_SKIPPED: [&str; 2] = [".git", ".kiln"];
const TOP_LEVEL_SKIPPED: [&str; 2] = ["outputs", "logs"];

/// What a snapshot copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Files copied.
    pub files: usize,
    /// Bytes copied.
    pub bytes: u64,
}

/// The snapshot limit in bytes.
pub fn limit_bytes() -> u64 {
    std::env::var(kiln_engine::env::SNAPSHOT_LIMIT_MB)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(DEFAULT_LIMIT_BYTES, |mb| (mb * 1048576.0) as u64)
}

/// Copies `source` into `dest` (created), honouring the ignore file and `limit` bytes.
pub fn snapshot(source: &Path, dest: &Path, limit: u64) -> Result<SnapshotSummary, RunsError> {
    let ignore = IgnoreRules::load(source)?;
    let mut files = Vec::new();
    walk(source, Path::new(""), &ignore, &mut files)?;
    let bytes: u64 = files.iter().map(|f| f.1).sum();
    if bytes > limit {
        files.sort_by_key(|f| std::cmp::Reverse(f.1));
        let largest: Vec<String> = files
            .iter()
            .take(3)
            .map(|(p, size)| format!("{} ({})", p.display(), human_bytes(*size)))
            .collect();
        return Err(RunsError::Runs(format!(
            "source_directory {} holds {} to snapshot, over the {} limit (largest: {}); list \
             what the run does not need in {}/.kilnignore or raise KILN_SNAPSHOT_LIMIT_MB",
            source.display(),
            human_bytes(bytes),
            human_bytes(limit),
            largest.join(", "),
            source.display()
        )));
    }
    std::fs::create_dir_all(dest).map_err(|e| RunsError::io(dest, e))?;
    for (rel, _) in &files {
        let from = source.join(rel);
        let to = dest.join(rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RunsError::io(parent, e))?;
        }
        let meta = std::fs::symlink_metadata(&from).map_err(|e| RunsError::io(&from, e))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| RunsError::io(&from, e))?;
            std::os::unix::fs::symlink(target, &to).map_err(|e| RunsError::io(&to, e))?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| RunsError::io(&from, e))?;
        }
    }
    Ok(SnapshotSummary {
        files: files.len(),
        bytes,
    })
}

fn walk(
    root: &Path,
    rel: &Path,
    ignore: &IgnoreRules,
    out: &mut Vec<(PathBuf, u64)>,
) -> Result<(), RunsError> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| RunsError::io(&dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| RunsError::io(&dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name_text = name.to_string_lossy();
        if ALWAYS_SKIPPED.contains(&name_text.as_ref())
            || (rel.as_os_str().is_empty() && TOP_LEVEL_SKIPPED.contains(&name_text.as_ref()))
        {
            continue;
        }
        let path = rel.join(&name);
        let kind = entry.file_type().map_err(|e| RunsError::io(&path, e))?;
        let is_dir = kind.is_dir();
        if ignore.ignored(&path, is_dir) {
            continue;
        }
        if is_dir {
            walk(root, &path, ignore, out)?;
        } else if kind.is_file() || kind.is_symlink() {
            let size = if kind.is_symlink() {
                0
            } else {
                entry.metadata().map_err(|e| RunsError::io(&path, e))?.len()
            };
            out.push((path, size));
        }
    }
    Ok(())
}

/// gitignore-style rules: `#` comments, `!` re-includes, a trailing `/` matches directories
/// only, a `/` elsewhere anchors the pattern at the root, `*`, `?` and `**` glob.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    pattern: Vec<String>,
    negate: bool,
    dir_only: bool,
    anchored: bool,
}

impl IgnoreRules {
    /// Reads `root/.kilnignore`, else `root/.gitignore`, else no rules.
    pub fn load(root: &Path) -> Result<Self, RunsError> {
        for name in [".kilnignore", ".gitignore"] {
            let path = root.join(name);
            if path.is_file() {
                let text = std::fs::read_to_string(&path).map_err(|e| RunsError::io(&path, e))?;
                return Ok(Self::parse(&text));
            }
        }
        Ok(Self::default())
    }

    /// Parses ignore-file text.
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let mut p = line.trim_end();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let negate = p.starts_with('!');
            if negate {
                p = &p[1..];
            }
            let dir_only = p.ends_with('/');
            let p = p.trim_end_matches('/');
            let anchored = p.contains('/');
            let p = p.trim_start_matches('/');
            if p.is_empty() {
                continue;
            }
            rules.push(Rule {
                pattern: p.split('/').map(str::to_string).collect(),
                negate,
                dir_only,
                anchored,
            });
        }
        Self { rules }
    }

    /// Whether `path` (relative to the root) is excluded; the last matching rule wins.
    pub fn ignored(&self, path: &Path, is_dir: bool) -> bool {
        let parts: Vec<String> = path
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut ignored = false;
        for rule in &self.rules {
            if rule.dir_only && !is_dir {
                continue;
            }
            let hit = if rule.anchored {
                match_parts(&rule.pattern, &parts)
            } else {
                parts
                    .last()
                    .is_some_and(|name| glob(&rule.pattern[0], name))
            };
            if hit {
                ignored = !rule.negate;
            }
        }
        ignored
    }
}

fn match_parts(pattern: &[String], parts: &[String]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((p, rest)) if p == "**" => (0..=parts.len()).any(|i| match_parts(rest, &parts[i..])),
        Some((p, rest)) => {
            !parts.is_empty() && glob(p, &parts[0]) && match_parts(rest, &parts[1..])
        }
    }
}

/// `*` (any run of characters) and `?` (one character) within one path segment.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The git commit of the work tree at `dir` and whether it has changes; `None` outside git.
pub fn git_state(dir: &Path) -> Option<(String, bool)> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let status = git(&["status", "--porcelain"])?;
    Some((commit, !status.is_empty()))
}

/// `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_rules_follow_gitignore() {
        let rules =
            IgnoreRules::parse("# data\n*.bin\n!keep.bin\ncache/\n/top.txt\ndocs/**/*.pdf\n");
        let ig = |p: &str, dir: bool| rules.ignored(Path::new(p), dir);
        assert!(ig("a.bin", false) && ig("x/y/a.bin", false));
        assert!(!ig("keep.bin", false));
        assert!(ig("cache", true) && !ig("cache", false));
        assert!(ig("top.txt", false) && !ig("sub/top.txt", false));
        assert!(ig("docs/a/b/x.pdf", false) && ig("docs/x.pdf", false));
        assert!(!ig("train.sh", false));
    }

    #[test]
    fn globs() {
        assert!(glob("*.py", "train.py") && !glob("*.py", "train.pyc"));
        assert!(glob("a?c", "abc") && glob("*", "") && glob("**", "x"));
        assert!(glob("*a*b", "xxaxxb") && !glob("*a*b", "xxaxx"));
    }
}
