//! `gammaray`: watch virtual machines' file systems from outside the guest.
//!
//! Subcommands follow DESIGN.md: `crawl` indexes a disk image, `capture`
//! records a guest's writes from stock QEMU, `replay` follows a recorded
//! trace and reports file events, `run` follows a live VM; `watch` and
//! `tail` are cloud-inotify monitors of the Redis sink's channels.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod capture;
mod crawl;
mod follow;
mod live;
mod replay;
mod tail;
mod watch;

/// gammaray: agentless streaming of guest file-system updates.
#[derive(Debug, Parser)]
#[command(name = "gammaray", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Index a raw disk image: partitions, file systems, files, block map.
    Crawl(CrawlArgs),
    /// Record a guest's disk writes from stock QEMU in dm-log-writes format.
    Capture(CaptureArgs),
    /// Replay a dm-log-writes trace over the image it was recorded from:
    /// file events as JSON lines, and the final state listing.
    Replay(ReplayArgs),
    /// Run the engine: serve a VM's disk over NBD and stream its file
    /// events live (JSON lines on stdout) until the VM disconnects, a
    /// signal arrives, or --for runs out.
    Run(RunArgs),
    /// Validate a configuration file; exits non-zero with a message naming
    /// the offending key.
    Check(CheckArgs),
    /// Subscribe to cloud-inotify channels on Redis (PSUBSCRIBE patterns
    /// over host:vm:/path) and print one line per event, until Ctrl-C.
    Watch(watch::WatchArgs),
    /// Print the bytes appended to the matching files, like `tail -f`
    /// across every guest, until Ctrl-C.
    Tail(tail::TailArgs),
}

/// Arguments of `gammaray run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration (gammaray.toml); without it, the embedded default
    /// (events as JSON lines on stdout, no external services).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also serve this raw image over NBD to QEMU (a VM's disk), besides
    /// the VMs of the configuration.
    #[arg(long, value_name = "DISK", requires = "socket")]
    pub serve: Option<PathBuf>,
    /// Unix socket to serve --serve on (QEMU: file=nbd+unix:///?socket=SOCK).
    #[arg(long, value_name = "SOCK", requires = "serve")]
    pub socket: Option<PathBuf>,
    /// Name of the --serve VM in events (default: DISK's file stem).
    #[arg(long, value_name = "NAME", requires = "serve")]
    pub vm: Option<String>,
    /// Host name in events (default: the configuration's `host`, else
    /// this machine's host name).
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Stop after this many seconds.
    #[arg(long = "for", value_name = "SECS")]
    pub duration: Option<f64>,
    /// Write every event here (JSON lines) instead of to the
    /// configuration's sinks.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Print one short line per event (`host:vm EVENT /path …`) on stdout
    /// instead of using the configuration's sinks.
    #[arg(long, conflicts_with = "events")]
    pub brief: bool,
    /// When a VM's source ends, write what gammaray then knows of its file
    /// systems to DIR/VM.jsonl: the state listing of `crawl --list --hash`.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Arguments of `gammaray check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration to validate.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
}

/// Arguments of `gammaray replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The raw disk image the trace started from (opened read-only).
    #[arg(long, value_name = "BASE")]
    pub disk: PathBuf,
    /// The dm-log-writes trace recorded from BASE. Repeatable: several
    /// traces are replayed in the order given, each continuing from the
    /// disk the one before left (for example the boots of one VM, a crash
    /// and the next boot's journal recovery), with one inference across
    /// them; the summary then gives each trace's entries and events.
    #[arg(long, value_name = "TRACE", required = true)]
    pub log: Vec<PathBuf>,
    /// Host name in events (default: this machine's host name).
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// VM name in events (default: BASE's file stem).
    #[arg(long, value_name = "V")]
    pub vm: Option<String>,
    /// Write events (JSON lines) here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Write the final state listing of every followed partition here.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Add each regular file's sha256 to the state listing (read from the
    /// disk as the trace leaves it). Without --state it has no effect.
    #[arg(long)]
    pub hash: bool,
    /// How long writes to blocks no metadata owns yet are held (seconds of
    /// trace time).
    #[arg(long, value_name = "SECS")]
    pub unknown_ttl: Option<f64>,
    /// At most this many bytes of such writes are held.
    #[arg(long, value_name = "BYTES")]
    pub unknown_budget: Option<u64>,
    /// Also publish every event to this sink (repeatable):
    /// redis://HOST:PORT[/DB] or unix:///SOCKET (cloud-inotify channels,
    /// BSON), kafka://HOST:PORT[,HOST:PORT…]/TOPIC (JSON values keyed by
    /// channel), file:PATH (JSON lines). Replay fails at the end if a sink
    /// could not deliver every event.
    #[arg(long = "sink", value_name = "URL")]
    pub sinks: Vec<String>,
    /// The lazy-load policy: keep at most SIZE of file records and names
    /// resident (e.g. 64MiB), the rest in a scratch store in TMPDIR,
    /// loaded when a write needs them. Default: all resident.
    #[arg(long = "lazy-load", value_name = "SIZE", value_parser = parse_budget)]
    pub lazy_load: Option<u64>,
    /// Apply the trace to FILE (made a sparse copy of BASE first) instead
    /// of holding the written data in memory: for traces larger than
    /// memory. BASE is still never written.
    #[arg(long, value_name = "FILE")]
    pub scratch: Option<PathBuf>,
}

/// A `--lazy-load` size: bytes, or with a KiB/MiB/GiB suffix; above 0.
fn parse_budget(s: &str) -> Result<u64, String> {
    match gammaray_config::size::parse_size(s) {
        Some(0) => Err("must be greater than 0".into()),
        Some(n) => Ok(n),
        None => Err(format!("{s:?} is not a size (e.g. 65536, 64KiB, 256MiB)")),
    }
}

/// Arguments of `gammaray crawl`.
#[derive(Debug, clap::Args)]
pub struct CrawlArgs {
    /// The raw disk image to index.
    pub disk: PathBuf,
    /// Where to write the index (default: DISK.gammaray).
    #[arg(short = 'o', long = "output", value_name = "INDEX")]
    pub output: Option<PathBuf>,
    /// Print the state listing (one JSON object per name) to stdout.
    #[arg(long)]
    pub list: bool,
    /// Add each regular file's sha256 to the listing (read through the block map).
    #[arg(long)]
    pub hash: bool,
    /// Load an existing index instead of crawling (for timing the load).
    #[arg(long, value_name = "INDEX", conflicts_with = "output")]
    pub load: Option<PathBuf>,
}

/// How `gammaray capture --attach` taps a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttachVia {
    /// Insert a `blklogwrites` node whose log is gammaray's NBD server.
    Blklogwrites,
    /// Start a `blockdev-mirror` (write-blocking) to gammaray's NBD target.
    Mirror,
}

/// Arguments of `gammaray capture`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["serve", "attach"])))]
pub struct CaptureArgs {
    /// Serve this raw image over NBD to QEMU and record its writes.
    #[arg(long, value_name = "DISK", requires = "socket")]
    pub serve: Option<PathBuf>,
    /// Unix socket to serve NBD on (QEMU: file=nbd+unix:///?socket=SOCK).
    #[arg(long, value_name = "SOCK")]
    pub socket: Option<PathBuf>,
    /// Attach to a running VM through its QMP unix socket.
    #[arg(long, value_name = "QMP_SOCK", requires = "drive")]
    pub attach: Option<PathBuf>,
    /// The node name of the drive to tap (with --attach).
    #[arg(long, value_name = "NODE")]
    pub drive: Option<String>,
    /// How to tap the drive (with --attach). `mirror` (the default) leaves
    /// the guest unharmed if gammaray dies while attached but does not see
    /// flushes; `blklogwrites` records flushes too, but the guest's writes
    /// fail if gammaray dies while attached.
    #[arg(long, value_enum, default_value = "mirror")]
    pub via: AttachVia,
    /// Where to write the dm-log-writes trace.
    #[arg(long, value_name = "TRACE")]
    pub log: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GAMMARAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crawl(args) => crawl::run(&args),
        Command::Capture(args) => capture::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Run(args) => live::run(&args),
        Command::Check(args) => live::check(&args),
        Command::Watch(args) => watch::run(&args),
        Command::Tail(args) => tail::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gammaray: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
