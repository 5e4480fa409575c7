//! `gammaray run` against real guests: the guest's disk is served by the
//! engine over NBD, and the events it streams live are checked against the
//! guest's own operations and listing (ground truth from inside the guest).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::engine::Engine;
use common::{check_ops, crawl_listing, gammaray, in_temp_dir, show, verdict, workload_recording};
use gammaray_testbed::{
    disk, expect, guest_available, listing, Drive, FsKind, Guest, RunSpec, Workload,
};

/// Serves a fresh disk with `gammaray run`, boots the guest on it with
/// `workload`, and checks the live events.
fn live(workload: Workload, dir: &Path) -> Result<(), String> {
    live_with(workload, dir, &[]).map(|_| ())
}

/// [`live`] with extra environment for the engine; returns its stderr.
fn live_with(workload: Workload, dir: &Path, env: &[(&str, &str)]) -> Result<String, String> {
    let img = dir.join("disk.img");
    disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB).map_err(|e| e.to_string())?;
    let initial = crawl_listing(&img, dir, "initial", false)?;
    let sock = dir.join("nbd.sock");
    let events = dir.join("events.jsonl");
    let mut engine = Engine::start(
        dir,
        env,
        &[
            "--vm".as_ref(),
            "live".as_ref(),
            "--host".as_ref(),
            "h".as_ref(),
            "--for".as_ref(),
            "300".as_ref(),
            "--serve".as_ref(),
            img.as_os_str(),
            "--socket".as_ref(),
            sock.as_os_str(),
            "--events".as_ref(),
            events.as_os_str(),
        ],
    )?;
    engine.wait_serving(std::slice::from_ref(&sock))?;
    let guest = Guest::new().map_err(|e| e.to_string())?;
    let spec = RunSpec::new(dir, workload.script(), FsKind::Ext4, Drive::Nbd(sock));
    let out = guest.run(&spec);
    let err = engine.finish();
    let out = out.map_err(|e| format!("guest: {e}"))?;
    let err = err?;
    // The disk is the guest's own: its crawl equals the guest's listing.
    let final_listing = crawl_listing(&img, dir, "final", true)?;
    let diff = listing::diff(&final_listing, &out.truth.listing);
    if !diff.is_empty() {
        return Err(format!(
            "the served disk differs from the guest's listing:\n{}",
            show(&diff)
        ));
    }
    // The events streamed live match the operations.
    let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
    let evs = expect::parse_events(&text)?;
    let mut problems = Vec::new();
    check_ops(
        &format!("{workload} (live)"),
        &out.truth.ops,
        &evs,
        &initial,
        &out.truth.listing,
        &mut problems,
    );
    verdict(problems)?;
    if evs.iter().any(|e| e.part != 1) {
        return Err("events without the partition number".into());
    }
    Ok(err)
}

/// Supervision: the inference fails in the middle of the workload (a
/// fault injected at the 60th request); the engine rebuilds it from the
/// disk as it was before that request and goes on. Every operation still
/// has its events and every file its bytes.
#[test]
fn live_inference_restarted_after_a_failure() {
    if guest_available("live_inference_restarted_after_a_failure") {
        in_temp_dir("live-restart", |d| {
            let err = live_with(
                Workload::Tree,
                d,
                &[("GAMMARAY_FAULT_INFER_PANIC_AT", "60")],
            )?;
            if !err.contains("inference restarted 1 times, 0 requests skipped") {
                return Err(format!("no restart reported: {err}"));
            }
            Ok(())
        });
    }
}

/// A VM that fails (its disk holds no file system) is reported, and the
/// other VM of the same engine is followed to the end as if alone.
#[test]
fn live_a_failing_vm_does_not_stop_the_others() {
    if !guest_available("live_a_failing_vm_does_not_stop_the_others") {
        return;
    }
    in_temp_dir("live-one-fails", |dir| {
        let img = dir.join("web.img");
        disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB)
            .map_err(|e| e.to_string())?;
        let initial = crawl_listing(&img, dir, "initial", false)?;
        let blank = dir.join("blank.img");
        std::fs::File::create(&blank)
            .and_then(|f| f.set_len(16 << 20))
            .map_err(|e| e.to_string())?;
        let events = dir.join("web.jsonl");
        let mut cfg = String::from("host = \"h\"\n[metrics]\nenabled = false\n");
        for (name, disk) in [("web", &img), ("blank", &blank)] {
            cfg.push_str(&format!(
                "[[vm]]\nname = \"{name}\"\ndisk = \"{}\"\nsource = {{ type = \"serve\", socket = \"{}\" }}\n",
                disk.display(),
                dir.join(format!("{name}.sock")).display()
            ));
        }
        cfg.push_str(&format!(
            "[sinks.f]\ntype = \"file\"\npath = \"{}\"\n[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"f\"]\n",
            events.display()
        ));
        let mut engine = Engine::with_config(dir, &cfg)?;
        engine.wait_serving(&[dir.join("web.sock")])?;
        let guest = Guest::new().map_err(|e| e.to_string())?;
        let spec = RunSpec::new(
            dir,
            Workload::Logs.script(),
            FsKind::Ext4,
            Drive::Nbd(dir.join("web.sock")),
        );
        let out = guest.run(&spec).map_err(|e| format!("guest: {e}"))?;
        let (status, err) = engine.exit();
        if status.is_none_or(|s| s.success()) {
            return Err(format!(
                "the engine should report the failed VM: {status:?}\n{err}"
            ));
        }
        if !err.contains("vm blank: ") || !err.contains("nothing to follow") {
            return Err(format!("the blank VM's failure is not reported:\n{err}"));
        }
        let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
        let evs = expect::parse_events(&text)?;
        let mut problems = Vec::new();
        check_ops(
            "web, beside a failing VM",
            &out.truth.ops,
            &evs,
            &initial,
            &out.truth.listing,
            &mut problems,
        );
        verdict(problems)
    });
}

/// The lazy-load policy, from the environment layer of the configuration,
/// with a one-byte budget (after every write each file is evicted to the
/// scratch store, and loaded back when a later write needs it): the live
/// events still match every operation of the guest.
#[test]
fn live_lazy_load_tree_ext4() {
    if guest_available("live_lazy_load_tree_ext4") {
        in_temp_dir("live-lazy", |d| {
            let err = live_with(
                Workload::Tree,
                d,
                &[
                    ("GAMMARAY__POLICY__LAZY_LOAD__ENABLED", "true"),
                    ("GAMMARAY__POLICY__LAZY_LOAD__BUDGET_BYTES", "1"),
                ],
            )?;
            if !err.contains("lazy load:") {
                return Err(format!("the engine did not say it loads lazily: {err}"));
            }
            Ok(())
        });
    }
}

#[test]
fn live_serve_logs_ext4() {
    if guest_available("live_serve_logs_ext4") {
        in_temp_dir("live-logs", |d| live(Workload::Logs, d));
    }
}

#[test]
fn live_serve_tree_ext4() {
    if guest_available("live_serve_tree_ext4") {
        in_temp_dir("live-tree", |d| live(Workload::Tree, d));
    }
}

/// Two VMs in one engine, from a configuration file: each VM's events are
/// routed to its own file sink, and each file matches its own guest.
#[test]
fn live_two_vms_from_config() {
    if !guest_available("live_two_vms_from_config") {
        return;
    }
    in_temp_dir("live-two", |dir| {
        let workloads = [("web", Workload::Logs), ("db", Workload::Edits)];
        let mut cfg = String::new();
        let mut initial = Vec::new();
        for (name, _) in workloads {
            let img = dir.join(format!("{name}.img"));
            disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB)
                .map_err(|e| e.to_string())?;
            initial.push(crawl_listing(&img, dir, &format!("{name}-initial"), false)?);
            cfg.push_str(&format!(
                "[[vm]]\nname = \"{name}\"\ndisk = \"{}\"\nsource = {{ type = \"serve\", socket = \"{}\" }}\n\
                 [sinks.{name}]\ntype = \"file\"\npath = \"{}\"\n\
                 [[route]]\nchannel = \"*:{name}:/**\"\nsinks = [\"{name}\"]\n",
                img.display(),
                dir.join(format!("{name}.sock")).display(),
                dir.join(format!("{name}.jsonl")).display(),
            ));
        }
        // A free loopback port for /metrics.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        cfg.insert_str(
            0,
            &format!("host = \"h\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
        let mut engine = Engine::with_config(dir, &cfg)?;
        let socks: Vec<PathBuf> = workloads
            .iter()
            .map(|(name, _)| dir.join(format!("{name}.sock")))
            .collect();
        engine.wait_serving(&socks)?;
        // Both guests at once.
        let guest = Guest::new().map_err(|e| e.to_string())?;
        let mut running = Vec::new();
        for (name, w) in workloads {
            let gdir = dir.join(format!("{name}-guest"));
            std::fs::create_dir_all(&gdir).map_err(|e| e.to_string())?;
            let spec = RunSpec::new(
                &gdir,
                w.script(),
                FsKind::Ext4,
                Drive::Nbd(dir.join(format!("{name}.sock"))),
            );
            running.push(guest.spawn(&spec).map_err(|e| e.to_string())?);
        }
        // While the guests run, /metrics shows their writes being captured.
        let scrape = || -> Option<String> {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            c.read_to_string(&mut text).ok()?;
            Some(text)
        };
        let captured = |text: &str, vm: &str| -> u64 {
            let key = format!("gammaray_writes_captured_total{{vm=\"{vm}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let t2 = Instant::now();
        let mut seen = String::new();
        while t2.elapsed() < Duration::from_secs(120) {
            if let Some(text) = scrape() {
                if captured(&text, "web") > 0 && captured(&text, "db") > 0 {
                    seen = text;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if seen.is_empty() {
            return Err("/metrics never showed both VMs' captured writes".into());
        }
        for want in [
            "gammaray_queue_depth{vm=\"web\"}",
            "gammaray_sink_events_sent_total{sink=\"db\"}",
        ] {
            if !seen.contains(want) {
                return Err(format!("/metrics lacks {want}:\n{seen}"));
            }
        }
        let mut outs = Vec::new();
        for r in running {
            outs.push(r.wait().map_err(|e| format!("guest: {e}"))?);
        }
        engine.finish()?;
        let mut problems = Vec::new();
        for (((name, w), out), initial) in workloads.iter().zip(&outs).zip(&initial) {
            let text = std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
                .map_err(|e| e.to_string())?;
            let evs = expect::parse_events(&text)?;
            let own = format!("\"host\":\"h\",\"vm\":\"{name}\"");
            if text.lines().any(|l| !l.contains(&own)) {
                return Err(format!("{name}.jsonl holds another VM's events"));
            }
            check_ops(
                &format!("{name} ({w})"),
                &out.truth.ops,
                &evs,
                initial,
                &out.truth.listing,
                &mut problems,
            );
        }
        verdict(problems)
    });
}

/// The data-drop policy: with a tiny queue, the big writes of a 4 MiB
/// file switch it on; the file's data is then reported as `lost` (reason
/// `data_drop`) instead of as bytes, while its creation and later small
/// log appends (once the queue has drained and the policy is off again)
/// come out as usual.
#[test]
fn live_data_drop_reports_lost_ranges() {
    if !guest_available("live_data_drop_reports_lost_ranges") {
        return;
    }
    in_temp_dir("live-drop", |dir| {
        let img = dir.join("disk.img");
        disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB)
            .map_err(|e| e.to_string())?;
        let sock = dir.join("nbd.sock");
        let events = dir.join("events.jsonl");
        let cfg = format!(
            "host = \"h\"\n[metrics]\nenabled = false\n\
             [policy]\nqueue_bytes = \"256KiB\"\n[policy.data_drop]\nhigh_water = 0.5\nlow_water = 0.25\n\
             [[vm]]\nname = \"d\"\ndisk = \"{}\"\nsource = {{ type = \"serve\", socket = \"{}\" }}\n\
             [sinks.f]\ntype = \"file\"\npath = \"{}\"\n[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"f\"]\n",
            img.display(),
            sock.display(),
            events.display()
        );
        let mut engine = Engine::with_config(dir, &cfg)?;
        engine.wait_serving(std::slice::from_ref(&sock))?;
        let script = "op_mkdir /data\nop_fill /data/big.bin 4096 z\nop_sync\n\
                      op_append /var/log/app.log \"after the drop\"\nop_sync\n";
        let out = Guest::new()
            .map_err(|e| e.to_string())?
            .run(&RunSpec::new(dir, script, FsKind::Ext4, Drive::Nbd(sock)))
            .map_err(|e| format!("guest: {e}"))?;
        let err = engine.finish()?;
        if !err.contains("data drop was on") {
            return Err(format!("the data drop did not switch on: {err}"));
        }
        let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
        let evs = expect::parse_events(&text)?;
        let big = 4096 * 1024u64;
        if !evs
            .iter()
            .any(|e| e.event == "create" && e.path == "/data/big.bin")
        {
            return Err("no create of /data/big.bin".into());
        }
        // Every byte of the big file is accounted for: seen, or lost.
        let mut ranges: Vec<(u64, u64)> = evs
            .iter()
            .filter(|e| e.path == "/data/big.bin")
            .filter_map(|e| e.range())
            .collect();
        ranges.sort_unstable();
        let mut at = 0;
        for (a, b) in &ranges {
            if *a > at {
                break;
            }
            at = at.max(*b);
        }
        if at < big {
            return Err(format!(
                "/data/big.bin covered only up to {at} of {big}: {ranges:?}"
            ));
        }
        let lost = text
            .lines()
            .filter(|l| l.contains("\"event\":\"lost\"") && l.contains("\"reason\":\"data_drop\""))
            .count();
        if lost == 0 {
            return Err("no lost event with reason data_drop".into());
        }
        // The append after the drop is reported with its bytes.
        let tail = "after the drop\n".len() as u64;
        if !evs.iter().any(|e| {
            e.path == "/var/log/app.log"
                && e.event == "modify"
                && e.range().map(|(a, b)| b - a) == Some(tail)
        }) {
            return Err(format!(
                "the append after the drop has no modify of {tail} bytes"
            ));
        }
        // The disk itself is intact.
        let listing = crawl_listing(&img, dir, "final", true)?;
        let diff = listing::diff(&listing, &out.truth.listing);
        if !diff.is_empty() {
            return Err(format!(
                "the served disk differs from the guest:\n{}",
                show(&diff)
            ));
        }
        Ok(())
    });
}

/// A `replay` source in the configuration: a trace recorded from a real
/// guest, followed by `gammaray run` into a file sink; its events must
/// match the guest's operations (as `gammaray replay`'s do).
#[test]
fn run_with_a_replay_source() {
    if !guest_available("run_with_a_replay_source") {
        return;
    }
    in_temp_dir("run-replay", |dir| {
        let rec = workload_recording(Workload::Edits)?;
        let events = dir.join("events.jsonl");
        let cfg = format!(
            "host = \"h\"\n[metrics]\nenabled = false\n\
             [[vm]]\nname = \"rec\"\ndisk = \"{}\"\nsource = {{ type = \"replay\", log = \"{}\" }}\n\
             [sinks.f]\ntype = \"file\"\npath = \"{}\"\n[[route]]\nchannel = \"*:rec:/**\"\nsinks = [\"f\"]\n",
            rec.base.display(),
            rec.trace.display(),
            events.display()
        );
        let cfg_path = dir.join("gammaray.toml");
        std::fs::write(&cfg_path, cfg).map_err(|e| e.to_string())?;
        let out = Command::new(gammaray())
            .args(["run", "--for", "120", "-c"])
            .arg(&cfg_path)
            .output()
            .map_err(|e| e.to_string())?;
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("gammaray run failed: {err}"));
        }
        let initial = crawl_listing(&rec.base, dir, "initial", false)?;
        let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
        let evs = expect::parse_events(&text)?;
        eprintln!("{err}");
        let mut problems = Vec::new();
        check_ops(
            "replay source",
            &rec.truth.ops,
            &evs,
            &initial,
            &rec.truth.listing,
            &mut problems,
        );
        verdict(problems)
    });
}
