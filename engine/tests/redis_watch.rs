//! `gammaray watch` and `gammaray tail` end to end, with a real
//! `redis-server` and a real guest's recording (the `logs` workload):
//! `gammaray replay --sink redis://…` publishes the recording's events and
//! also writes them with `--events FILE`; those JSON lines are the ground
//! truth of what was published. `watch` must print exactly the matching
//! ones (its documented line format applied to the JSON, or the JSON
//! itself with `--json`), and `tail` exactly the bytes of the guest's log
//! file: the guest's own sha256 of it (truth.jsonl) and its size.

mod common;
#[path = "../../sinks/tests/redis_server/mod.rs"]
mod redis_server;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gammaray_testbed::Workload;
use redis_server::{redis_available, RedisServer};
use sha2::{Digest, Sha256};

/// A `gammaray` subcommand running in the background, output in files.
struct Bg {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Bg {
    fn start(args: &[&str], dir: &Path, name: &str) -> Result<Bg, String> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let file = |p: &Path| std::fs::File::create(p).map_err(|e| e.to_string());
        let child = Command::new(common::gammaray())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file(&stdout)?)
            .stderr(file(&stderr)?)
            .spawn()
            .map_err(|e| format!("{args:?}: {e}"))?;
        let bg = Bg {
            child,
            stdout,
            stderr,
        };
        // Listening once it says so.
        let t = Instant::now();
        while !bg.err().contains("gammaray: subscribed to") {
            if t.elapsed() > Duration::from_secs(20) {
                return Err(format!("{name} did not subscribe: {}", bg.err()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bg)
    }

    fn out(&self) -> Vec<u8> {
        std::fs::read(&self.stdout).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until stdout holds `n` bytes (or 20 s) and 300 ms more, then
    /// sends SIGINT (Ctrl-C) and checks the exit status is 0.
    fn stop_after(mut self, n: usize, name: &str) -> Result<Vec<u8>, String> {
        let t = Instant::now();
        while self.out().len() < n && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let t = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().map_err(|e| e.to_string())? {
                break s;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                return Err(format!("{name} did not stop on SIGINT"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            return Err(format!(
                "{name} exited with {status} after SIGINT: {}",
                self.err()
            ));
        }
        Ok(self.out())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis glob (`*` any run, including `:` and `/`), written for the test.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// `watch`'s documented default line, built from an event's JSON:
/// `host:vm EVENT /path` then `OFFSET+LEN` (a range) or `size=N`, then
/// `from=OLD` / `changed=a,b` / `reason=R`, empty fields left out.
fn expected_line(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mut parts = vec![format!("{}:{}", s("host"), s("vm")), s("event"), s("path")];
    match (v["offset"].as_u64(), v["len"].as_u64(), v["size"].as_u64()) {
        (Some(o), Some(l), _) => parts.push(format!("{o}+{l}")),
        (_, _, Some(n)) => parts.push(format!("size={n}")),
        _ => {}
    }
    let mut x = Vec::new();
    if let Some(old) = v["old_path"].as_str() {
        x.push(format!("from={old}"));
    }
    if let Some(c) = v["changed"].as_array() {
        let names: Vec<&str> = c.iter().filter_map(|n| n.as_str()).collect();
        x.push(format!("changed={}", names.join(",")));
    }
    if let Some(r) = v["reason"].as_str() {
        x.push(format!("reason={r}"));
    }
    if !x.is_empty() {
        parts.push(x.join(" "));
    }
    parts.join(" ")
}

#[test]
fn watch_and_tail_print_exactly_the_replayed_events() {
    let test = "watch_and_tail_print_exactly_the_replayed_events";
    if !redis_available(test) || !gammaray_testbed::guest_available(test) {
        return;
    }
    let rec = common::workload_recording(Workload::Logs).expect("the logs recording");
    common::in_temp_dir("redis-watch", |dir| {
        let server = RedisServer::start();
        let url = server.url();
        let watch = Bg::start(&["watch", "h:*:/var/log/*", "--redis", &url], dir, "watch")?;
        let syslog = Bg::start(
            &["watch", "h:v:/var/log/syslog", "--redis", &url],
            dir,
            "watch-syslog",
        )?;
        let json = Bg::start(
            &["watch", "--json", "*", "--redis", &url],
            dir,
            "watch-json",
        )?;
        let kinds = Bg::start(
            &[
                "watch",
                "--events",
                "create,move",
                "--format",
                "%e %w%n",
                "*:v:*",
                "--redis",
                &url,
            ],
            dir,
            "watch-kinds",
        )?;
        let log = "/var/log/nginx/access.log";
        let tail = Bg::start(
            &["tail", &format!("h:v:{log}"), "--redis", &url],
            dir,
            "tail",
        )?;

        // Publish the recording through the sink, and keep the ground truth.
        let events_path = dir.join("events.jsonl");
        let mut cmd = Command::new(common::gammaray());
        cmd.arg("replay")
            .arg("--disk")
            .arg(&rec.base)
            .arg("--log")
            .arg(&rec.trace)
            .args(["--host", "h", "--vm", "v", "--sink", &url])
            .arg("--events")
            .arg(&events_path);
        let (ok, stderr) = common::run(&mut cmd, dir, "replay")?;
        if !ok {
            return Err(format!("replay --sink failed: {stderr}"));
        }
        let text = std::fs::read_to_string(&events_path).map_err(|e| e.to_string())?;
        let lines: Vec<&str> = text.lines().collect();
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let sent = format!(
            "--sink {url}: {} events sent, 0 failed, 0 dropped",
            events.len()
        );
        if !stderr.contains(&sent) {
            return Err(format!("replay's summary lacks {sent:?}: {stderr}"));
        }
        if events.len() < 10 {
            return Err(format!("only {} events replayed", events.len()));
        }
        let mut problems = Vec::new();

        // watch PATTERN: the events one of whose channels (the path, and a
        // move's old path) matches, once each, in order.
        let channel = |v: &serde_json::Value, path: &str| {
            format!(
                "{}:{}:{path}",
                v["host"].as_str().unwrap_or(""),
                v["vm"].as_str().unwrap_or("")
            )
        };
        let matches = |v: &serde_json::Value, pattern: &str| {
            [v["path"].as_str(), v["old_path"].as_str()]
                .into_iter()
                .flatten()
                .any(|p| glob(pattern.as_bytes(), channel(v, p).as_bytes()))
        };
        for (bg, pattern) in [(watch, "h:*:/var/log/*"), (syslog, "h:v:/var/log/syslog")] {
            let chosen: Vec<&serde_json::Value> =
                events.iter().filter(|v| matches(v, pattern)).collect();
            let want: String = chosen.iter().map(|v| expected_line(v) + "\n").collect();
            let got = String::from_utf8(bg.stop_after(want.len(), pattern)?)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "watch {pattern}: {} lines of {} events:\n{got}",
                got.lines().count(),
                events.len()
            );
            if got != want {
                problems.push(format!(
                    "watch {pattern:?} printed:\n{got}\nexpected:\n{want}"
                ));
            }
            if pattern.ends_with("syslog") && (chosen.is_empty() || chosen.len() == events.len()) {
                problems.push(format!(
                    "{pattern}: {} of {} events match: the filter is not tested",
                    chosen.len(),
                    events.len()
                ));
            }
            // Redis's `*` crosses '/': the subdirectory's log is in.
            if pattern.ends_with("/*")
                && !chosen
                    .iter()
                    .any(|v| v["path"] == "/var/log/nginx/access.log")
            {
                problems.push(format!("{pattern}: no event of /var/log/nginx/access.log"));
            }
        }

        // watch --json '*': exactly the --events lines.
        let want_json: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let got = String::from_utf8(json.stop_after(want_json.len(), "watch --json")?)
            .map_err(|e| e.to_string())?;
        if got != want_json {
            problems.push(format!(
                "watch --json '*' differs from --events ({} vs {} lines)",
                got.lines().count(),
                lines.len()
            ));
        }

        // watch --events create,move --format '%e %w%n' '*:v:*'.
        let want_kinds: String = events
            .iter()
            .filter(|v| matches!(v["event"].as_str(), Some("create" | "move")))
            .map(|v| {
                format!(
                    "{} {}\n\n",
                    v["event"].as_str().unwrap_or(""),
                    v["path"].as_str().unwrap_or("")
                )
            })
            .collect();
        let got = String::from_utf8(kinds.stop_after(want_kinds.len(), "watch --events")?)
            .map_err(|e| e.to_string())?;
        if got != want_kinds {
            problems.push(format!(
                "watch --events create,move printed:\n{got}\nexpected:\n{want_kinds}"
            ));
        }

        // tail: the guest's access.log, byte for byte.
        let truth = rec
            .truth
            .listing
            .iter()
            .find(|e| e.path == log)
            .ok_or_else(|| format!("{log} is not in the guest's truth.jsonl"))?;
        let size = truth.size as usize;
        let got = tail.stop_after(size, "tail")?;
        let sha = hex::encode(Sha256::digest(&got));
        if got.len() != size || Some(&sha) != truth.sha256.as_ref() {
            problems.push(format!(
                "tail {log}: {} bytes, sha256 {sha}; the guest's file: {size} bytes, sha256 {:?}",
                got.len(),
                truth.sha256
            ));
        } else {
            eprintln!("tail {log}: {size} bytes, sha256 {sha}, as the guest's");
        }
        common::verdict(problems)
    });
}

#[test]
fn run_publishes_through_a_configured_redis_sink() {
    let test = "run_publishes_through_a_configured_redis_sink";
    if !redis_available(test) || !gammaray_testbed::guest_available(test) {
        return;
    }
    let rec = common::workload_recording(Workload::Logs).expect("the logs recording");
    common::in_temp_dir("redis-run", |dir| {
        let server = RedisServer::start();
        let url = server.url();
        let config = |url: &str| {
            format!(
                "host = \"h\"\n[[vm]]\nname = \"lab\"\ndisk = \"{}\"\n\
                 source = {{ type = \"replay\", log = \"{}\" }}\n\
                 [sinks.cloud]\ntype = \"redis\"\nurl = \"{url}\"\nencoding = \"json\"\n\
                 [[route]]\nchannel = \"*:*:/var/log/**\"\nsinks = [\"cloud\"]\n[metrics]\nenabled = false\n",
                rec.base.display(),
                rec.trace.display()
            )
        };
        let cfg = dir.join("gammaray.toml");
        // A server that is not there: run refuses to start, naming the sink
        // and the URL.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let down = format!("redis://127.0.0.1:{port}");
        std::fs::write(&cfg, config(&down)).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(common::gammaray());
        cmd.arg("run").arg("-c").arg(&cfg);
        let (ok, stderr) = common::run(&mut cmd, dir, "run-down")?;
        if ok
            || !stderr.contains("sink \"cloud\": health check failed")
            || !stderr.contains(&format!("cannot reach Redis at {down}"))
        {
            return Err(format!("run with Redis down: ok={ok}, stderr: {stderr}"));
        }

        std::fs::write(&cfg, config(&url)).map_err(|e| e.to_string())?;
        let watch = Bg::start(&["watch", "--json", "*", "--redis", &url], dir, "watch")?;
        let mut cmd = Command::new(common::gammaray());
        cmd.arg("run").arg("-c").arg(&cfg);
        let (ok, stderr) = common::run(&mut cmd, dir, "run")?;
        if !ok {
            return Err(format!("gammaray run failed: {stderr}"));
        }
        // What the same trace gives `gammaray replay --events`: the
        // events the run must have published, line for line (every one is
        // under /var/log/, so the route takes them all).
        let events = dir.join("replay.jsonl");
        let mut cmd = Command::new(common::gammaray());
        cmd.arg("replay")
            .arg("--disk")
            .arg(&rec.base)
            .arg("--log")
            .arg(&rec.trace)
            .args(["--host", "h", "--vm", "lab", "--events"])
            .arg(&events);
        let (ok, stderr) = common::run(&mut cmd, dir, "replay")?;
        if !ok {
            return Err(format!("replay failed: {stderr}"));
        }
        let want = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
        if want.lines().count() < 10 || !want.lines().all(|l| l.contains("\"path\":\"/var/log/")) {
            return Err(format!(
                "the replay's events are not all under /var/log/:\n{want}"
            ));
        }
        let got =
            String::from_utf8(watch.stop_after(want.len(), "watch")?).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!(
                "watch --json after gammaray run:\n{got}\nreplay --events:\n{want}"
            ));
        }
        Ok(())
    });
}
