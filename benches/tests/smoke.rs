//! The benchmark binaries run and print their table (tiny sizes; the figures come from real
//! runs, see `benches/README.md`).

use std::process::Command;

#[test]
fn eval_forward_prints_kiln_timing() {
    let out = Command::new(env!("CARGO_BIN_EXE_eval_forward"))
        .args([
            "--arch",
            "resnet18",
            "--batch-size",
            "1",
            "--image-size",
            "32",
            "--rounds",
            "1",
            "--steps",
            "1",
        ])
        .output()
        .expect("eval_forward runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("resnet18 eval forward") && text.lines().any(|l| l.starts_with("kiln ")),
        "{text}"
    );
}
