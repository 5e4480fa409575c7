//! Capture overhead as the guest sees it: one write-heavy workload on ext4
//! in a real Linux guest, run on a plain disk file and through each of
//! `gammaray capture`'s three paths (`--serve`, `--attach --via
//! blklogwrites`, `--attach --via mirror`), interleaved, several times.
//!
//! The workload (busybox ash, in the guest): `dd ... conv=fsync` of
//! `--big-files` files of `--big-mib` MiB each (non-zero data from a tmpfs
//! source), then `--small` files of about 3 KiB in directories of 500 with a
//! `sync` every `--sync-every` files, then a final `sync`. It is timed in
//! the guest (`/proc/uptime`, 10 ms resolution, printed on the serial
//! console) and on the host (between the guest's `bench-start` and
//! `bench-end` pauses on the pacing port). Every configuration boots with
//! the same QEMU options apart from the drive, and with the pacing port;
//! the attach paths attach while the guest is held before mounting and
//! detach after it unmounted, as in `tests/capture_paths.rs`.
//!
//! Driven by `bench/capture-overhead.sh`; prints one line per run and a
//! Markdown table (median and min per configuration, ratios to the plain
//! file) and writes `results.jsonl` in `--out`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use gammaray_testbed::{
    disk, gammaray_binary, CaptureProcess, Drive, FsKind, Guest, Pacer, RunSpec, DISK_NODE,
    GAMMARAY_BIN_ENV,
};

#[derive(Parser)]
#[command(about = "guest-visible overhead of gammaray's capture paths")]
struct Args {
    /// Working directory (disks, traces, logs, results.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// Rounds; each round runs every configuration once (order rotated).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Configurations: plain, serve, blklogwrites, mirror.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,serve,blklogwrites,mirror"
    )]
    configs: Vec<String>,
    /// Number of large files written with `dd conv=fsync`.
    #[arg(long, default_value_t = 8)]
    big_files: u32,
    /// Size of each large file in MiB.
    #[arg(long, default_value_t = 64)]
    big_mib: u32,
    /// Number of small files.
    #[arg(long, default_value_t = 12000)]
    small: u32,
    /// `sync` after every this many small files.
    #[arg(long, default_value_t = 250)]
    sync_every: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Kill a run after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Keep every run's disk and trace (they are deleted after each run by
    /// default, so that their dirty pages do not disturb the next run).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Plain,
    Serve,
    Blklogwrites,
    Mirror,
}

impl Config {
    fn parse(s: &str) -> anyhow::Result<Config> {
        Ok(match s {
            "plain" => Config::Plain,
            "serve" => Config::Serve,
            "blklogwrites" => Config::Blklogwrites,
            "mirror" => Config::Mirror,
            _ => bail!("unknown configuration {s:?} (plain, serve, blklogwrites, mirror)"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Config::Plain => "plain",
            Config::Serve => "serve",
            Config::Blklogwrites => "blklogwrites",
            Config::Mirror => "mirror",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Config::Plain => "plain file (`-blockdev driver=file` + `raw`)",
            Config::Serve => "`capture --serve` (NBD)",
            Config::Blklogwrites => "`capture --attach --via blklogwrites`",
            Config::Mirror => "`capture --attach --via mirror`",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
struct Sample {
    config: Config,
    round: usize,
    /// Workload time measured in the guest.
    guest_s: f64,
    /// The `dd` phase, in the guest.
    big_s: f64,
    /// The small-file phase, in the guest.
    small_s: f64,
    /// Workload time measured on the host (between the pacing points).
    host_s: f64,
    /// QEMU start to exit (boot, workload, unmount, power-off).
    total_s: f64,
    /// `gammaray capture`'s summary line, if any.
    capture: String,
}

fn script(a: &Args) -> String {
    format!(
        r#"# capture-overhead workload (busybox ash)
up() {{ read -r _u _ < /proc/uptime; echo "$_u"; }}
# Non-zero source data in guest RAM: 1 MiB of random bytes repeated.
dd if=/dev/urandom of=/tmp/chunk bs=1M count=1 2>/dev/null
: > /tmp/src
j=0
while [ $j -lt {big_mib} ]; do cat /tmp/chunk >> /tmp/src; j=$((j + 1)); done
S=$(head -c 1536 /tmp/chunk | od -A n -t x1 | tr -d ' \n')
sync
gr_pace bench-start
T0=$(up)
i=0
while [ $i -lt {big_files} ]; do
  dd if=/tmp/src of=big$i bs=1M conv=fsync 2>/dev/null
  i=$((i + 1))
done
T1=$(up)
i=0
while [ $i -lt {small} ]; do
  d=s$((i / 500))
  [ -d $d ] || mkdir $d
  printf '%s %d\n' "$S" $i > $d/f$i
  i=$((i + 1))
  [ $((i % {sync_every})) -ne 0 ] || sync
done
sync
T2=$(up)
echo "GR-BENCH big=$T0..$T1 small=$T1..$T2"
gr_pace bench-end
rm -f /tmp/src /tmp/chunk
cd /
umount /mnt
sync
gr_pace done
echo GR-DONE
poweroff -f
"#,
        big_mib = a.big_mib,
        big_files = a.big_files,
        small = a.small,
        sync_every = a.sync_every,
    )
}

/// Seconds between the first and last uptime printed in `GR-BENCH`.
fn guest_seconds(serial: &Path) -> anyhow::Result<(f64, f64, f64)> {
    let text =
        std::fs::read_to_string(serial).with_context(|| format!("reading {}", serial.display()))?;
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("GR-BENCH "))
        .with_context(|| format!("no GR-BENCH line in {}", serial.display()))?;
    let mut t = Vec::new();
    for part in line.split_whitespace() {
        let (_, range) = part.split_once('=').context("bad GR-BENCH line")?;
        let (a, b) = range.split_once("..").context("bad GR-BENCH line")?;
        t.push(a.parse::<f64>()?);
        t.push(b.parse::<f64>()?);
    }
    if t.len() != 4 {
        bail!("bad GR-BENCH line {line:?}");
    }
    Ok((t[3] - t[0], t[1] - t[0], t[3] - t[2]))
}

fn sparse_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(to);
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()?;
    if !st.success() {
        bail!("cp {} {} failed", from.display(), to.display());
    }
    std::fs::File::open(to)?.sync_all()?;
    Ok(())
}

fn run_one(
    guest: &Guest,
    bin: &Path,
    a: &Args,
    base: &Path,
    config: Config,
    round: usize,
) -> anyhow::Result<Sample> {
    let dir = a.out.join(format!("{}-{round}", config.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let img = dir.join("disk.img");
    let trace = dir.join("trace.log");
    let cap_err = dir.join("capture.stderr");
    sparse_copy(base, &img)?;
    let pace = dir.join("pace.sock");
    let mut pacer = Pacer::listen(&pace)?;
    let step = Duration::from_secs(a.timeout);
    let mut serve = None;
    let drive = match config {
        Config::Serve => {
            let sock = dir.join("nbd.sock");
            serve = Some(CaptureProcess::serve(bin, &img, &sock, &trace, &cap_err)?);
            Drive::Nbd(sock)
        }
        _ => Drive::Raw(img.clone()),
    };
    let mut run = RunSpec::new(&dir, script(a), FsKind::Ext4, drive);
    run.timeout = step;
    run.memory_mib = a.memory_mib;
    run.pace = Some(pace);
    let qmp = dir.join("qmp.sock");
    if matches!(config, Config::Blklogwrites | Config::Mirror) {
        run.qmp = Some(qmp.clone());
    }
    let started = Instant::now();
    let mut guest_run = guest.spawn(&run)?;
    let paced = (|| -> anyhow::Result<f64> {
        pacer.wait_for("boot", step)?;
        let attached = match config {
            Config::Blklogwrites | Config::Mirror => Some(CaptureProcess::attach(
                bin,
                &qmp,
                DISK_NODE,
                config.name(),
                &trace,
                &cap_err,
            )?),
            _ => None,
        };
        pacer.resume()?;
        pacer.step("mounted", step)?;
        pacer.wait_for("bench-start", step)?;
        let t0 = Instant::now();
        pacer.resume()?;
        pacer.wait_for("bench-end", step)?;
        let host = t0.elapsed().as_secs_f64();
        pacer.resume()?;
        pacer.wait_for("done", step)?;
        if let Some(cap) = attached {
            cap.terminate();
            cap.wait(Duration::from_secs(60))?;
        }
        pacer.resume()?;
        Ok(host)
    })();
    let exited = guest_run.wait_exit();
    let total_s = started.elapsed().as_secs_f64();
    let host_s = paced.with_context(|| format!("{} round {round}", config.name()))?;
    exited?;
    if let Some(cap) = serve {
        cap.wait(Duration::from_secs(60))?;
    }
    let serial = dir.join("serial.log");
    if !std::fs::read_to_string(&serial)?.contains("GR-DONE") {
        bail!("{}: no GR-DONE", serial.display());
    }
    let (guest_s, big_s, small_s) = guest_seconds(&serial)?;
    let capture = std::fs::read_to_string(&cap_err)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains(" writes ("))
        .map(|l| l.trim_start_matches("gammaray capture: ").to_string())
        .unwrap_or_default();
    println!(
        "{:<13} round {round}: guest {guest_s:7.2}s (dd {big_s:6.2}s, small files {small_s:6.2}s), host {host_s:7.2}s, qemu total {total_s:7.2}s, load {}{}",
        config.name(),
        load(),
        if capture.is_empty() { String::new() } else { format!("\n    capture: {capture}") }
    );
    if !a.keep {
        for f in [&img, &trace] {
            let _ = std::fs::remove_file(f);
        }
    }
    Ok(Sample {
        config,
        round,
        guest_s,
        big_s,
        small_s,
        host_s,
        total_s,
        capture,
    })
}

/// Picks one measurement out of a [`Sample`].
type Field = fn(&Sample) -> f64;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let configs = a
        .configs
        .iter()
        .map(|s| Config::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(&a.out)?;
    if std::env::var_os(GAMMARAY_BIN_ENV).is_none_or(|v| v.is_empty()) {
        bail!("set {GAMMARAY_BIN_ENV} to a release build of gammaray (bench/capture-overhead.sh does)");
    }
    let bin = gammaray_binary()?;
    let guest = Guest::new()?;
    println!(
        "guest {:?}, {} MiB RAM; workload: {} x {} MiB dd conv=fsync, {} small files, sync every {}",
        guest.accel, a.memory_mib, a.big_files, a.big_mib, a.small, a.sync_every
    );
    let base = a.out.join("base.img");
    // Room for the files, the small files and their metadata.
    let disk_mib = u64::from(a.big_files * a.big_mib) + u64::from(a.small) * 8 / 1024 + 192;
    disk::make_base_image(FsKind::Ext4, &base, disk_mib)?;
    let mut samples = Vec::new();
    let results = a.out.join("results.jsonl");
    let mut jsonl = String::new();
    for round in 0..a.runs {
        for k in 0..configs.len() {
            let config = configs[(k + round) % configs.len()];
            let s = run_one(&guest, &bin, &a, &base, config, round)?;
            jsonl.push_str(&format!(
                "{}\n",
                serde_json::json!({
                    "config": s.config.name(), "round": s.round, "guest_s": s.guest_s,
                    "dd_s": s.big_s, "small_s": s.small_s,
                    "host_s": s.host_s, "qemu_total_s": s.total_s, "load1": load(),
                    "capture": s.capture,
                })
            ));
            std::fs::write(&results, &jsonl)?;
            samples.push(s);
        }
    }
    // Summary.
    let stats = |c: Config, f: fn(&Sample) -> f64| -> (f64, f64) {
        let mut v: Vec<f64> = samples.iter().filter(|s| s.config == c).map(f).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        (median(&mut v), min)
    };
    let plain = |f: fn(&Sample) -> f64| {
        configs
            .contains(&Config::Plain)
            .then(|| stats(Config::Plain, f))
    };
    let ratio = |x: f64, base: Option<f64>| {
        base.map_or_else(|| "-".to_string(), |b| format!("{:.3}", x / b))
    };
    let fields: [(&str, Field); 4] = [
        ("whole workload (guest)", |s| s.guest_s),
        ("dd phase (guest)", |s| s.big_s),
        ("small-file phase (guest)", |s| s.small_s),
        ("whole workload (host)", |s| s.host_s),
    ];
    println!();
    println!("| configuration | measured | median s | min s | ratio of medians | ratio of mins |");
    println!("|---|---|---|---|---|---|");
    for &c in &configs {
        for (what, f) in fields {
            let (m, min) = stats(c, f);
            let p = plain(f);
            println!(
                "| {} | {what} | {m:.2} | {min:.2} | {} | {} |",
                c.label(),
                ratio(m, p.map(|p| p.0)),
                ratio(min, p.map(|p| p.1)),
            );
        }
        let (tm, tmin) = stats(c, |s| s.total_s);
        println!(
            "| {} | QEMU run incl. boot (host) | {tm:.2} | {tmin:.2} | | |",
            c.label()
        );
    }
    println!("\nraw results: {}", results.display());
    Ok(())
}
