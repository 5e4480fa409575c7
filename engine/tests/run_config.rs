//! `gammaray check` and `gammaray run -c`: configurations are validated
//! before anything starts, and a bad one is refused with a message that
//! names the offending key.

use std::path::Path;
use std::process::Command;

fn gammaray() -> &'static str {
    env!("CARGO_BIN_EXE_gammaray")
}

/// Runs `gammaray ARGS…`; returns (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(gammaray())
        .args(args)
        .output()
        .expect("run gammaray");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write(dir.path(), "disk.img", "");
    let sock = dir.path().join("s.sock");
    let cfg = write(
        dir.path(),
        "ok.toml",
        &format!(
            "[[vm]]\nname = \"web1\"\ndisk = \"{disk}\"\nsource = {{ type = \"serve\", socket = \"{}\" }}\n\
             [sinks.log]\ntype = \"file\"\npath = \"{}\"\n\
             [[route]]\nchannel = \"*:web1:/var/log/**\"\nsinks = [\"log\"]\n",
            sock.display(),
            dir.path().join("events.jsonl").display()
        ),
    );
    let (ok, text) = run(&["check", "-c", &cfg]);
    assert!(ok, "{text}");
    assert!(text.contains("ok (1 VMs, 1 sinks, 1 routes)"), "{text}");
}

#[test]
fn check_names_the_offending_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 5] = [
        ("[policy]\nqueue_byte = 5\n", "unknown field `queue_byte`"),
        (
            "[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"nope\"]\n",
            "route[0].sinks: no sink named \"nope\"",
        ),
        (
            "[[vm]]\nname = \"a\"\ndisk = \"/no/such/disk.img\"\nsource = { type = \"serve\", socket = \"/tmp/x.sock\" }\n",
            "vm[0].disk: /no/such/disk.img does not exist",
        ),
        (
            "[policy.data_drop]\nhigh_water = 0.4\nlow_water = 0.6\n",
            "policy.data_drop.low_water",
        ),
        ("[metrics]\nlisten = \"0.0.0.0:9187\"\n", "metrics.listen"),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let cfg = write(dir.path(), &format!("bad{i}.toml"), toml);
        let (ok, text) = run(&["check", "-c", &cfg]);
        assert!(!ok, "case {i} accepted: {toml}");
        assert!(text.contains(want), "case {i}: {want:?} not in {text:?}");
    }
    // `run` refuses the same way, before serving anything.
    let cfg = write(dir.path(), "bad-run.toml", cases[0].0);
    let (ok, text) = run(&["run", "-c", &cfg]);
    assert!(!ok && text.contains("queue_byte"), "{text}");
}

#[test]
fn run_reports_a_vm_it_cannot_reach_and_refuses_no_vm() {
    let dir = tempfile::tempdir().unwrap();
    let disk = write(dir.path(), "disk.img", "");
    let cfg = write(
        dir.path(),
        "attach.toml",
        &format!(
            "[[vm]]\nname = \"r\"\ndisk = \"{disk}\"\nsource = {{ type = \"attach\", qmp = \"/tmp/q.sock\", drive = \"disk0\" }}\n"
        ),
    );
    let (ok, text) = run(&["run", "-c", &cfg]);
    assert!(
        !ok && text.contains("vm r: source.qmp /tmp/q.sock does not exist"),
        "{text}"
    );
    let (ok, text) = run(&["run"]);
    assert!(!ok && text.contains("no VM to watch"), "{text}");
}
