//! The process table, read from `/proc`: each process's parent and group, what runs below a
//! process, and which run a process belongs to (the `KILN_RUN_ID` it was started with).

use std::collections::{HashMap, HashSet};

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    /// Its id.
    pub pid: i32,
    /// Its parent's id.
    pub ppid: i32,
    /// Its process group.
    pub group: i32,
}

/// Every process `/proc` shows now.
pub(crate) fn table() -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The fields after the command name (which may hold spaces and parentheses):
            // state, ppid, pgrp, ...
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(1);
            let ppid = fields.next()?.parse().ok()?;
            let group = fields.next()?.parse().ok()?;
            Some(Proc { pid, ppid, group })
        })
        .collect()
}

/// Every process below `root`: its children, theirs, and so on.
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in table() {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    // The table is read one process at a time, so a recycled pid could close a loop.
    let mut seen = HashSet::from([root]);
    let mut next = vec![root];
    let mut found = Vec::new();
    while let Some(pid) = next.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if seen.insert(child) {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

/// Whether process `pid` was started with run `id`'s `KILN_RUN_ID` in its environment.
pub(crate) fn of_run(pid: i32, id: &str) -> bool {
    let marker = format!("{}={id}", kiln_engine::env::RUN_ID);
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grandchild_is_below_its_grandparent() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & echo $!; wait"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        let below = descendants(std::process::id() as i32);
        // SAFETY: signals the sleep this test started.
        unsafe { libc::kill(grandchild, libc::SIGKILL) };
        child.wait().unwrap();
        assert!(below.contains(&(child.id() as i32)), "{below:?}");
        assert!(below.contains(&grandchild), "{below:?}");
    }
}
