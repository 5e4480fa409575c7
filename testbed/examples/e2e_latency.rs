//! End-to-end latency with a host-side clock, as the Gamma-Ray paper
//! measured it: from the moment a guest is released to write a line and
//! `sync` to the moment the matching file event leaves `gammaray run`.
//!
//! A real Linux guest boots on an ext4 disk served by
//! `gammaray run --serve DISK --socket SOCK --events FIFO`; the events go to
//! a named pipe this program reads line by line as they come, stamping each
//! with the host's monotonic clock. The guest runs, with pacing on, three
//! loops of `--iterations` steps each, every step held at `gr_pace NAME-i`
//! until the host answers:
//!   idle   - nothing (the pacing round trip alone: the floor of t2 - t0);
//!   append - `echo "e2e append i: ..." >> /var/log/app.log; sync`;
//!   create - `echo "e2e create i: ..." > /srv/e2e/fi.txt; sync`.
//! Per step: t0 = just before the host answers the guest's pause (which
//! releases the write), t1 = when the event carrying the step's line is
//! read from the pipe (for `create`: when both the file's `create` event
//! and the `modify` carrying its line have been read), t2 = when the guest
//! reports its next pause (its write and `sync` returned). The same guest
//! loops then run on a plain raw file (no gammaray) for the guest's own
//! t2 - t0 without gammaray, in the same invocation. With `--proxy`, QEMU
//! reaches gammaray's socket through a pass-through proxy here that stamps
//! each chunk of requests as it reaches the host, which splits t1 - t0
//! into the guest's part (release to its first request at the host) and
//! the host's part (the last request before the event to the event: what
//! the engine's own arrival-to-sent figure covers, plus the proxy hop and
//! the pipe).
//!
//! Driven by `bench/e2e-latency.sh`; prints Markdown tables and writes
//! `steps.jsonl` (one line per step) in `--out`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Parser;
use gammaray_testbed::{
    disk, gammaray_binary, Drive, FsKind, Guest, Pacer, RunSpec, GAMMARAY_BIN_ENV,
};

#[derive(Parser)]
#[command(about = "end-to-end latency (guest write + sync to event) with a host clock")]
struct Args {
    /// Working directory (disks, pipe, logs, steps.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// Steps per loop.
    #[arg(long, default_value_t = 200)]
    iterations: u32,
    /// Skip the run on a plain raw file.
    #[arg(long)]
    no_plain: bool,
    /// Put a pass-through proxy between QEMU and gammaray's NBD socket
    /// that stamps each chunk of requests as it reaches the host, to split
    /// t1 - t0 into the guest's part and the host's part (adds one hop).
    #[arg(long)]
    proxy: bool,
    /// Kill the guest after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

const PHASES: [&str; 3] = ["idle", "append", "create"];

fn script(n: u32) -> String {
    format!(
        r#"# e2e latency workload (busybox ash)
mkdir -p srv/e2e
sync
for phase in {phases}; do
  i=0
  while [ $i -lt {n} ]; do
    gr_pace "$phase-$i"
    case $phase in
      append)
        echo "e2e append $i: the quick brown fox jumps over the lazy dog" >> var/log/app.log
        sync ;;
      create)
        echo "e2e create $i: the quick brown fox jumps over the lazy dog" > srv/e2e/f$i.txt
        sync ;;
    esac
    i=$((i + 1))
  done
  gr_pace "$phase-end"
done
"#,
        phases = PHASES.join(" "),
    )
}

/// One step of one loop, host clock.
#[derive(Debug, Clone, Copy)]
struct Step {
    t0: Instant,
    t2: Instant,
}

/// Runs the guest with pacing and returns, per phase, its steps.
fn drive_guest(
    guest: &Guest,
    dir: &Path,
    drive: Drive,
    a: &Args,
) -> anyhow::Result<Vec<Vec<Step>>> {
    let pace = dir.join("pace.sock");
    let mut pacer = Pacer::listen(&pace)?;
    let mut spec = RunSpec::new(dir, script(a.iterations), FsKind::Ext4, drive);
    spec.timeout = Duration::from_secs(a.timeout);
    spec.pace = Some(pace);
    let mut run = guest.spawn(&spec)?;
    let step = Duration::from_secs(a.timeout);
    let paced = (|| -> anyhow::Result<Vec<Vec<Step>>> {
        let mut all = Vec::new();
        for phase in PHASES {
            let mut steps: Vec<Step> = Vec::new();
            let mut t0: Option<Instant> = None;
            for i in 0..=a.iterations {
                let name = if i == a.iterations {
                    format!("{phase}-end")
                } else {
                    format!("{phase}-{i}")
                };
                pacer.wait_for(&name, step)?;
                let t2 = Instant::now();
                if let Some(t0) = t0 {
                    steps.push(Step { t0, t2 });
                }
                t0 = Some(Instant::now());
                pacer.resume()?;
            }
            all.push(steps);
        }
        pacer.step("done", step)?;
        Ok(all)
    })();
    let exited = run.wait_exit();
    let steps = paced.with_context(|| format!("guest in {}", dir.display()))?;
    exited?;
    let serial = dir.join("serial.log");
    if !std::fs::read_to_string(&serial)?.contains("GR-DONE") {
        bail!("{}: no GR-DONE", serial.display());
    }
    Ok(steps)
}

/// Kills the engine if the run fails half-way.
struct Engine(Option<Child>);

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mkfifo(p: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(p);
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error()).context("mkfifo");
    }
    Ok(())
}

/// Puts the calling thread in SCHED_FIFO (children and threads it starts
/// go back to the normal policy), so that the measuring threads (pacing
/// and pipe reader) stamp promptly on a loaded machine. Needs root or
/// CAP_SYS_NICE; returns whether it worked.
fn realtime() -> bool {
    let p = libc::sched_param { sched_priority: 10 };
    // SAFETY: plain system call on the calling thread with a valid param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &p) == 0 }
}

fn set_blocking(f: &File) -> anyhow::Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error()).context("fcntl");
        }
    }
    Ok(())
}

/// What the run through gammaray produced.
struct Served {
    steps: Vec<Vec<Step>>,
    /// (host clock when read, the event's JSON line).
    events: Vec<(Instant, String)>,
    /// The engine's own arrival-to-sent summary line.
    arrival: String,
    /// With `--proxy`: when each chunk of requests reached the host.
    arrivals: Vec<Instant>,
}

/// A unix-socket proxy from `listen` to `upstream` for one connection,
/// stamping every chunk read from the client.
fn proxy(listen: &Path, upstream: PathBuf) -> anyhow::Result<JoinHandle<Vec<Instant>>> {
    let _ = std::fs::remove_file(listen);
    let l = UnixListener::bind(listen).context("binding the proxy socket")?;
    Ok(std::thread::spawn(move || {
        realtime();
        let mut stamps = Vec::new();
        let Ok((mut client, _)) = l.accept() else {
            return stamps;
        };
        let Ok(mut server) = UnixStream::connect(&upstream) else {
            return stamps;
        };
        let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
            return stamps;
        };
        let back = std::thread::spawn(move || {
            realtime();
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(Shutdown::Write);
        });
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    stamps.push(Instant::now());
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server.shutdown(Shutdown::Write);
        let _ = back.join();
        stamps
    }))
}

fn run_served(guest: &Guest, bin: &Path, base: &Path, a: &Args) -> anyhow::Result<Served> {
    let dir = a.out.join("served");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("disk.img");
    std::fs::copy(base, &img)?;
    let fifo = dir.join("events.fifo");
    mkfifo(&fifo)?;
    // Open the read end first, non-blocking (so that this does not wait for
    // a writer), and make it blocking once the engine holds the write end.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .context("opening the events pipe")?;
    let sock = dir.join("nbd.sock");
    let stderr_path = dir.join("run.stderr");
    let mut engine = Engine(Some(
        Command::new(bin)
            .arg("run")
            .arg("--serve")
            .arg(&img)
            .arg("--socket")
            .arg(&sock)
            .args(["--vm", "e2e", "--host", "bench"])
            .arg("--events")
            .arg(&fifo)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !sock.exists() {
        if let Some(st) = engine.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            bail!(
                "gammaray run exited ({st}) before serving: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!("gammaray run did not create {}", sock.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The engine opens --events before it serves: the write end is open.
    set_blocking(&reader)?;
    let tail = std::thread::spawn(move || {
        realtime();
        let mut r = BufReader::new(reader);
        let mut got = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return got,
                Ok(_) => got.push((Instant::now(), line.trim_end().to_string())),
            }
        }
    });
    let (drive, proxied) = if a.proxy {
        let p = dir.join("proxy.sock");
        let h = proxy(&p, sock.clone())?;
        (Drive::Nbd(p), Some(h))
    } else {
        (Drive::Nbd(sock), None)
    };
    let steps = drive_guest(guest, &dir, drive, a);
    let arrivals = match proxied {
        Some(h) => h.join().map_err(|_| anyhow::anyhow!("proxy panicked"))?,
        None => Vec::new(),
    };
    // The engine exits when the guest disconnects; give it time to finish.
    let mut child = engine.0.take().expect("engine running");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let events = tail
        .join()
        .map_err(|_| anyhow::anyhow!("pipe reader panicked"))?;
    let steps = steps?;
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    match status {
        Some(st) if st.success() => {}
        Some(st) => bail!("gammaray run failed ({st}): {stderr}"),
        None => bail!("gammaray run did not exit after the guest"),
    }
    let arrival = stderr
        .lines()
        .find(|l| l.contains("arrival to events sent"))
        .map(|l| l.trim_start_matches("gammaray: ").to_string())
        .unwrap_or_default();
    let _ = std::fs::remove_file(&img);
    Ok(Served {
        steps,
        events,
        arrival,
        arrivals,
    })
}

/// A parsed event: (host time, event kind, path, data).
type Ev = (Instant, String, String, Vec<u8>);

fn parse_events(lines: &[(Instant, String)]) -> Vec<Ev> {
    lines
        .iter()
        .filter_map(|(t, l)| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let kind = v.get("event")?.as_str()?.to_string();
            let path = v.get("path")?.as_str()?.to_string();
            let data = v
                .get("data_b64")
                .and_then(|d| d.as_str())
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                .unwrap_or_default();
            Some((*t, kind, path, data))
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// When step `i` of `phase` became visible as events, if it did.
fn seen_at(events: &[Ev], phase: &str, i: usize) -> Option<Instant> {
    let marker = format!("e2e {phase} {i}:");
    let data = |path: &str| {
        events
            .iter()
            .find(|(_, k, p, d)| k == "modify" && p == path && contains(d, marker.as_bytes()))
            .map(|e| e.0)
    };
    match phase {
        "append" => data("/var/log/app.log"),
        "create" => {
            let path = format!("/srv/e2e/f{i}.txt");
            let created = events
                .iter()
                .find(|(_, k, p, _)| k == "create" && *p == path)
                .map(|e| e.0)?;
            Some(created.max(data(&path)?))
        }
        _ => None,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (p50, p99, max) by nearest rank.
fn pct(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    Some((rank(0.50), rank(0.99), s[s.len() - 1]))
}

fn row(phase: &str, what: &str, v: &[f64]) {
    match pct(v) {
        Some((p50, p99, max)) => println!(
            "| {phase} | {what} | {} | {p50:.2} | {p99:.2} | {max:.2} |",
            v.len()
        ),
        None => println!("| {phase} | {what} | 0 | - | - | - |"),
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out)?;
    let out = std::fs::canonicalize(&a.out)?;
    let a = Args { out, ..a };
    if std::env::var_os(GAMMARAY_BIN_ENV).is_none_or(|v| v.is_empty()) {
        bail!("set {GAMMARAY_BIN_ENV} to a release build of gammaray (bench/e2e-latency.sh does)");
    }
    let bin = gammaray_binary()?;
    let guest = Guest::new()?;
    let rt = realtime();
    println!(
        "guest accelerator {:?}; {} steps per loop; measuring threads {}; load average {} at start",
        guest.accel,
        a.iterations,
        if rt {
            "SCHED_FIFO"
        } else {
            "normal priority (no CAP_SYS_NICE)"
        },
        load()
    );
    let base = a.out.join("base.img");
    disk::make_base_image(FsKind::Ext4, &base, 64)?;

    let served = run_served(&guest, &bin, &base, &a)?;
    let events = parse_events(&served.events);
    let plain = if a.no_plain {
        None
    } else {
        let dir = a.out.join("plain");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let img = dir.join("disk.img");
        std::fs::copy(&base, &img)?;
        let steps = drive_guest(&guest, &dir, Drive::Raw(img.clone()), &a)?;
        let _ = std::fs::remove_file(&img);
        Some(steps)
    };

    let mut jsonl = String::new();
    println!();
    println!("| loop | measured (host clock) | n | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (k, phase) in PHASES.iter().enumerate() {
        let steps = &served.steps[k];
        let guest_ms: Vec<f64> = steps.iter().map(|s| ms(s.t2 - s.t0)).collect();
        let mut e2e = Vec::new();
        let mut before_sync = Vec::new();
        let mut after_sync = 0usize;
        let mut missing = 0usize;
        let (mut to_host, mut host_to_event, mut last_to_event) =
            (Vec::new(), Vec::new(), Vec::new());
        for (i, s) in steps.iter().enumerate() {
            let t1 = seen_at(&events, phase, i);
            // The first request to reach the host after the release.
            let first = served
                .arrivals
                .iter()
                .find(|&&t| t > s.t0 && t <= s.t2)
                .copied();
            if let (Some(ta), false) = (first, *phase == "idle") {
                to_host.push(ms(ta - s.t0));
                if let Some(t1) = t1 {
                    host_to_event.push(ms(t1.saturating_duration_since(ta)));
                    // The request that completed the event is most likely
                    // the last one to arrive before it.
                    let last = served.arrivals.iter().rfind(|&&t| t <= t1);
                    if let Some(&tl) = last {
                        last_to_event.push(ms(t1 - tl));
                    }
                }
            }
            let e2e_ms = t1.map(|t1| ms(t1.saturating_duration_since(s.t0)));
            if *phase != "idle" {
                match t1 {
                    Some(t1) => {
                        e2e.push(ms(t1.saturating_duration_since(s.t0)));
                        if t1 <= s.t2 {
                            before_sync.push(ms(s.t2 - t1));
                        } else {
                            after_sync += 1;
                        }
                    }
                    None => missing += 1,
                }
            }
            jsonl.push_str(&format!(
                "{}\n",
                serde_json::json!({
                    "run": "served", "loop": phase, "step": i,
                    "guest_ms": ms(s.t2 - s.t0), "e2e_ms": e2e_ms,
                })
            ));
        }
        if *phase == "idle" {
            row(
                phase,
                "gammaray: pacing round trip alone (t2 - t0)",
                &guest_ms,
            );
        } else {
            row(phase, "gammaray: write + sync to event (t1 - t0)", &e2e);
            row(phase, "gammaray: guest's write + sync (t2 - t0)", &guest_ms);
            row(
                phase,
                &format!(
                    "gammaray: event ahead of sync's return (t2 - t1; {} of {} ahead, {after_sync} after, {missing} missing)",
                    before_sync.len(),
                    steps.len()
                ),
                &before_sync,
            );
            if a.proxy {
                row(
                    phase,
                    "gammaray: release to the first request at the host (proxy)",
                    &to_host,
                );
                row(
                    phase,
                    "gammaray: first request at the host to event (proxy)",
                    &host_to_event,
                );
                row(
                    phase,
                    "gammaray: last request before the event to event (proxy)",
                    &last_to_event,
                );
            }
        }
        if let Some(p) = &plain {
            let v: Vec<f64> = p[k].iter().map(|s| ms(s.t2 - s.t0)).collect();
            for (i, x) in v.iter().enumerate() {
                jsonl.push_str(&format!(
                    "{}\n",
                    serde_json::json!({"run": "plain", "loop": phase, "step": i, "guest_ms": x})
                ));
            }
            let what = if *phase == "idle" {
                "plain file: pacing round trip alone (t2 - t0)"
            } else {
                "plain file: guest's write + sync (t2 - t0)"
            };
            row(phase, what, &v);
        }
    }
    println!();
    println!(
        "engine (all requests of the run, boot included): {}",
        served.arrival
    );
    println!(
        "{} events read from the pipe; load average {} at the end",
        served.events.len(),
        load()
    );
    std::fs::write(a.out.join("steps.jsonl"), jsonl)?;
    println!("per step: {}", a.out.join("steps.jsonl").display());
    Ok(())
}
