//! Live attach and detach while the guest is writing lose no write.
//!
//! One test per attach method (`mirror`, `blklogwrites`). The guest (TCG)
//! boots with QEMU's own `blklogwrites` driver in its drive chain from
//! start-up, writing a *reference* trace to a plain file:
//!
//! ```text
//! virtio-blk -> disk0 (raw) -> disk0-lw (blklogwrites, log ref.log) -> disk0-file (disk.img)
//! ```
//!
//! so `gammaray capture --attach QMP --drive disk0` finds the raw format
//! node it expects, and whatever it inserts (a mirror filter above `disk0`,
//! or a `blklogwrites` node between `disk0` and its file child) sits above
//! the reference. The workload appends to a few files for 20 s of guest
//! time, syncing every third round. Once the guest reports (pacing point
//! `writing`, answered at once) that the loop has started, the host waits
//! 3 s, runs `gammaray capture --attach … --via METHOD --log cap.log`, lets
//! it record for 4 s and sends it SIGTERM (it detaches); the guest is never
//! held at the attach or the detach.
//!
//! What is compared (both traces read with this crate's own dm-log-writes
//! reader, not gammaray's): the *data writes* of each trace (entries with
//! data; flushes, marks and discards are left out, since the mirror
//! forwards no flushes). gammaray's data writes must be non-empty and be
//! exactly the writes of one contiguous window of the reference's data
//! writes, `reference[s..s + n]`, as a multiset: every write (same offset,
//! same length, same bytes) as often in one as in the other, checked
//! byte for byte. So a write the guest made while gammaray was attached
//! and gammaray missed, or a write gammaray made up or altered, fails the
//! test. The order is not compared request by request: both methods were
//! seen (QEMU 10.0) to deliver concurrently in-flight guest writes in a
//! slightly different order from QEMU's own `blklogwrites` below them (up
//! to a few places; the test prints how many moved and how far), never
//! split or merged. Instead the *effect* must match: applying the window
//! and applying gammaray's writes, each in its own order, leaves every
//! touched 512-byte sector with the same final content (so the reordering
//! never involves overlapping writes and a replay of gammaray's trace gives
//! the same disk). The reference must hold data writes both before the
//! window and after it (the attach and the detach happened mid-stream).
//! The reference itself is checked complete: base image + reference trace
//! = the disk the guest left, byte for byte. And the guest finished its
//! workload: ground truth printed (`GR-DONE`, the workload's `stream/done`
//! file in the listing) and `e2fsck -fn` passes on the final disk.
//!
//! The `gammaray` binary comes from `$GAMMARAY_BIN` or is built with
//! `cargo build -p gammaray`. The two tests run one at a time (a lock), so
//! that two TCG guests do not compete for the host's cores and the timing
//! of the attach window stays predictable.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gammaray_testbed::{
    disk, gammaray_binary, guest_available, trace, CaptureProcess, Drive, FsKind, Guest, Pacer,
    RunSpec, DISK_FILE_NODE, DISK_NODE,
};

/// Guest seconds the write loop runs.
const LOOP_SECONDS: u32 = 20;
/// Host wait between the guest starting its loop and the attach.
const BEFORE_ATTACH: Duration = Duration::from_secs(3);
/// How long gammaray stays attached.
const ATTACHED: Duration = Duration::from_secs(4);

/// Serializes the tests of this file (one TCG guest at a time).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn script() -> String {
    format!(
        r#"# attach_while_writing: append to four files without a pause for
# {LOOP_SECONDS} s of guest time, syncing every third round.
op_mkdir /stream
start=$(date +%s)
gr_pace writing
i=0
while [ $(( $(date +%s) - start )) -lt {LOOP_SECONDS} ]; do
  op_append_lines /stream/f$((i % 4)).log "round $i" 8
  if [ $((i % 3)) -eq 2 ]; then op_sync; fi
  i=$((i + 1))
done
op_write /stream/done "rounds $i"
op_sync
"#
    )
}

/// A data write: (byte offset, bytes).
type Write = (u64, Vec<u8>);

/// The data writes of a trace, in order, and how many entries it has.
fn data_writes(path: &Path) -> Result<(Vec<Write>, u64), String> {
    let reader = trace::Reader::open(path).map_err(|e| e.to_string())?;
    let declared = reader.nr_entries;
    let walked = trace::count_entries(path, reader.sector_size).map_err(|e| e.to_string())?;
    if walked != declared {
        return Err(format!(
            "{}: super block says {declared} entries, the file holds {walked}",
            path.display()
        ));
    }
    let mut out = Vec::new();
    for e in reader {
        let e = e.map_err(|e| e.to_string())?;
        if e.flags & (trace::FLAG_MARK | trace::FLAG_DISCARD) != 0 || e.data.is_empty() {
            continue;
        }
        if e.data.len() as u64 != e.len {
            return Err(format!(
                "{}: entry at {} has {} bytes of data for {} bytes",
                path.display(),
                e.offset,
                e.data.len(),
                e.len
            ));
        }
        out.push((e.offset, e.data));
    }
    Ok((out, declared))
}

fn describe(w: &Write) -> String {
    format!("{} bytes at {}", w.1.len(), w.0)
}

fn key(w: &Write) -> u64 {
    let mut h = DefaultHasher::new();
    w.hash(&mut h);
    h.finish()
}

/// The starts of every window `reference[s..s + cap.len()]` holding exactly
/// the writes of `cap`, counted with multiplicity (order aside).
fn windows(reference: &[Write], cap: &[Write]) -> Vec<usize> {
    let n = cap.len();
    let rk: Vec<u64> = reference.iter().map(key).collect();
    // diff = count in cap - count in the window, per write.
    let mut diff: HashMap<u64, i64> = HashMap::new();
    for w in cap {
        *diff.entry(key(w)).or_default() += 1;
    }
    let mut nonzero = diff.len();
    let mut bump = |diff: &mut HashMap<u64, i64>, k: u64, by: i64| {
        let d = diff.entry(k).or_default();
        let was = *d;
        *d += by;
        if was == 0 {
            nonzero += 1;
        } else if *d == 0 {
            nonzero -= 1;
        }
        nonzero
    };
    let mut out = Vec::new();
    for i in 0..rk.len() {
        let mut nz = bump(&mut diff, rk[i], -1);
        if i >= n {
            nz = bump(&mut diff, rk[i - n], 1);
        }
        if i + 1 >= n && nz == 0 {
            out.push(i + 1 - n);
        }
    }
    out
}

/// The final content of every 512-byte sector that `writes` touch.
fn effect(writes: &[Write]) -> BTreeMap<u64, &[u8]> {
    let mut m = BTreeMap::new();
    for (off, data) in writes {
        for (i, s) in data.chunks(512).enumerate() {
            m.insert(off / 512 + i as u64, s);
        }
    }
    m
}

/// How `cap` relates to `reference`: the start of the window it equals, or
/// a description of what is missing or extra.
fn compare(reference: &[Write], cap: &[Write]) -> Result<(usize, usize, usize), String> {
    for s in windows(reference, cap) {
        let window = &reference[s..s + cap.len()];
        // Exact, not only by hash.
        let mut a: Vec<&Write> = window.iter().collect();
        let mut b: Vec<&Write> = cap.iter().collect();
        a.sort();
        b.sort();
        if a != b {
            continue;
        }
        if effect(window) != effect(cap) {
            return Err(format!(
                "the same writes as reference[{s}..{}], but a different final content \
                 (overlapping writes reordered)",
                s + cap.len()
            ));
        }
        // Reordering: pair the k-th occurrence of each write in both.
        let mut at: HashMap<&Write, VecDeque<usize>> = HashMap::new();
        for (j, w) in window.iter().enumerate() {
            at.entry(w).or_default().push_back(j);
        }
        let (mut moved, mut furthest) = (0, 0);
        for (k, w) in cap.iter().enumerate() {
            let j = at.get_mut(w).and_then(VecDeque::pop_front).unwrap_or(k);
            if j != k {
                moved += 1;
                furthest = furthest.max(j.abs_diff(k));
            }
        }
        return Ok((s, moved, furthest));
    }
    // Explain: which captured writes the reference lacks, and which
    // reference writes inside the span gammaray touched it missed.
    let mut left: HashMap<&Write, VecDeque<usize>> = HashMap::new();
    for (j, w) in reference.iter().enumerate() {
        left.entry(w).or_default().push_back(j);
    }
    let mut unknown = Vec::new();
    let mut matched = Vec::new();
    let first = left
        .get(&cap[0])
        .and_then(|q| q.front().copied())
        .unwrap_or(0);
    for w in cap {
        let q = left.entry(w).or_default();
        while q.front().is_some_and(|&j| j < first) {
            q.pop_front();
        }
        match q.pop_front() {
            Some(j) => matched.push(j),
            None => unknown.push(describe(w)),
        }
    }
    let (lo, hi) = (
        matched.iter().min().copied().unwrap_or(0),
        matched.iter().max().copied().unwrap_or(0),
    );
    let missed: Vec<String> = (lo..=hi)
        .filter(|j| !matched.contains(j))
        .map(|j| format!("#{j} {}", describe(&reference[j])))
        .collect();
    Err(format!(
        "gammaray's {} writes are no window of the reference: {} not in the reference ({:?}); \
         reference writes {lo}..={hi} not captured: {} ({:?})",
        cap.len(),
        unknown.len(),
        unknown.iter().take(5).collect::<Vec<_>>(),
        missed.len(),
        missed.iter().take(5).collect::<Vec<_>>()
    ))
}

fn run(via: &str) {
    let name = format!("attach_while_writing_{via}");
    if !guest_available(&name) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::Builder::new()
        .prefix(&format!("gr-{name}-"))
        .tempdir()
        .expect("temp dir");
    let result = check(via, dir.path());
    match result {
        Ok(msg) => eprintln!("{name}: {msg}"),
        Err(msg) => {
            let kept = dir.keep();
            panic!("{name}: {msg}\n(run kept in {})", kept.display());
        }
    }
}

fn check(via: &str, dir: &Path) -> Result<String, String> {
    let t0 = Instant::now();
    let e = |e: gammaray_testbed::Error| e.to_string();
    let guest = Guest::new().map_err(e)?;
    let bin = gammaray_binary().map_err(e)?;
    let base = dir.join("base.img");
    let disk_img = dir.join("disk.img");
    let ref_log = dir.join("ref.log");
    let cap_log = dir.join("cap.log");
    let cap_err = dir.join("capture.stderr");
    let qmp = dir.join("qmp.sock");
    let pace = dir.join("pace.sock");
    disk::make_base_image(FsKind::Ext4, &base, disk::DEFAULT_DISK_MIB).map_err(e)?;
    std::fs::copy(&base, &disk_img).map_err(|x| x.to_string())?;
    std::fs::File::create(&ref_log).map_err(|x| x.to_string())?;

    let path = |p: &Path| p.to_str().expect("UTF-8 temp path").to_string();
    let mut args: Vec<OsString> = Vec::new();
    for b in [
        format!(
            "driver=file,filename={},node-name={DISK_FILE_NODE}",
            path(&disk_img)
        ),
        format!("driver=file,filename={},node-name=reflog", path(&ref_log)),
        format!(
            "driver=blklogwrites,node-name=disk0-lw,file={DISK_FILE_NODE},log=reflog,log-sector-size=512"
        ),
        format!("driver=raw,file=disk0-lw,node-name={DISK_NODE}"),
    ] {
        args.push("-blockdev".into());
        args.push(b.into());
    }
    let mut spec = RunSpec::new(dir, script(), FsKind::Ext4, Drive::Args(args));
    spec.qmp = Some(qmp.clone());
    spec.pace = Some(pace.clone());
    spec.timeout = Duration::from_secs(240);

    let pacer = Pacer::listen(&pace).map_err(e)?;
    let running = guest.spawn(&spec).map_err(e)?;
    let (tx, rx) = mpsc::channel();
    let server = pacer.serve(move |point| {
        let _ = tx.send(point.to_string());
    });
    let attached = (|| -> Result<Duration, String> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(p) if p == "writing" => break,
                Ok(_) => {}
                Err(_) => return Err("the guest never reached its write loop".into()),
            }
        }
        let loop_start = Instant::now();
        std::thread::sleep(BEFORE_ATTACH);
        let cap =
            CaptureProcess::attach(&bin, &qmp, DISK_NODE, via, &cap_log, &cap_err).map_err(e)?;
        std::thread::sleep(ATTACHED);
        cap.terminate();
        cap.wait(Duration::from_secs(30)).map_err(e)?;
        Ok(loop_start.elapsed())
    })();
    let out = running.wait();
    let _ = server.join();
    let detached_after = match (attached, out.as_ref()) {
        (Ok(d), _) => d,
        (Err(a), Err(g)) => return Err(format!("{a} (guest: {g})")),
        (Err(a), Ok(_)) => return Err(a),
    };
    let out = out.map_err(e)?;

    // The guest finished its workload.
    if !out
        .truth
        .listing
        .iter()
        .any(|l| l.path.trim_start_matches('/') == "stream/done")
    {
        return Err("the workload did not finish: no stream/done in the listing".into());
    }
    if detached_after.as_secs() + 2 >= u64::from(LOOP_SECONDS) {
        return Err(format!(
            "detached {detached_after:?} after the loop started, too close to its end ({LOOP_SECONDS} s): host too slow"
        ));
    }
    let e2fsck = gammaray_testbed::find_tool("e2fsck").ok_or("e2fsck not installed")?;
    let fsck = std::process::Command::new(e2fsck)
        .args(["-f", "-n"])
        .arg(&disk_img)
        .output()
        .map_err(|x| format!("e2fsck: {x}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck -fn disk.img: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        ));
    }

    // The reference is complete: base + reference = the final disk.
    let replayed = dir.join("replayed.img");
    trace::replay_to(&base, &ref_log, &replayed).map_err(e)?;
    if let Some(at) = trace::first_difference(&replayed, &disk_img).map_err(e)? {
        return Err(format!(
            "base + reference trace differs from the final disk at byte {at}"
        ));
    }
    let _ = std::fs::remove_file(&replayed);

    // gammaray's writes are exactly the writes of a window of the reference.
    let (reference, ref_entries) = data_writes(&ref_log)?;
    let (cap, cap_entries) = data_writes(&cap_log)?;
    if cap.is_empty() {
        return Err(format!(
            "gammaray captured no data writes ({cap_entries} entries)"
        ));
    }
    let (start, moved, furthest) = compare(&reference, &cap)
        .map_err(|m| format!("{m} (reference: {} data writes)", reference.len()))?;
    let before = start;
    let after = reference.len() - start - cap.len();
    if before == 0 || after == 0 {
        return Err(format!(
            "not attached mid-stream: {before} reference writes before the capture, {after} after"
        ));
    }
    Ok(format!(
        "{} of {} reference data writes captured, none missed, none extra ({before} before \
         the attach, {after} after the detach; {moved} in another order, at most {furthest} \
         places away; entries: reference {ref_entries}, gammaray {cap_entries}); guest \
         {:.1}s, test {:.1}s",
        cap.len(),
        reference.len(),
        out.elapsed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ))
}

#[test]
fn attach_while_writing_mirror() {
    run("mirror");
}

#[test]
fn attach_while_writing_blklogwrites() {
    run("blklogwrites");
}

/// The checker itself, on made-up traces (no guest).
mod checker {
    use super::{compare, Write};

    fn w(sector: u64, byte: u8, sectors: usize) -> Write {
        (sector * 512, vec![byte; 512 * sectors])
    }

    fn reference() -> Vec<Write> {
        (0..10)
            .map(|i| w(i * 8, i as u8, 1 + i as usize % 3))
            .collect()
    }

    #[test]
    fn a_window_in_order_matches() {
        let r = reference();
        assert_eq!(compare(&r, &r[3..7]), Ok((3, 0, 0)));
    }

    #[test]
    fn disjoint_writes_swapped_match() {
        let r = reference();
        let cap = vec![r[4].clone(), r[3].clone(), r[5].clone()];
        assert_eq!(compare(&r, &cap), Ok((3, 2, 1)));
    }

    #[test]
    fn a_missed_write_fails() {
        let r = reference();
        let cap = vec![r[3].clone(), r[5].clone(), r[6].clone()];
        let e = compare(&r, &cap).unwrap_err();
        assert!(e.contains("not captured: 1"), "{e}");
    }

    #[test]
    fn an_altered_or_extra_write_fails() {
        let r = reference();
        let mut altered = r[3..6].to_vec();
        altered[1].1[7] ^= 1;
        assert!(compare(&r, &altered).is_err());
        let mut extra = r[3..6].to_vec();
        extra.push(w(1000, 9, 1));
        assert!(compare(&r, &extra).is_err());
    }

    #[test]
    fn overlapping_writes_swapped_fail() {
        let mut r = reference();
        r[5] = w(24, 0xee, 1); // overlaps r[3] (sectors 24..26)
        let cap = vec![r[2].clone(), r[5].clone(), r[4].clone(), r[3].clone()];
        let e = compare(&r, &cap).unwrap_err();
        assert!(e.contains("different final content"), "{e}");
    }
}
