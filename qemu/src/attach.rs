//! Attaching gammaray to a running VM over QMP, and detaching so that the
//! VM's block graph is exactly as it was.
//!
//! Two methods (both checked against QEMU 10.0 on this project's hosts):
//!
//! - [`Via::Mirror`]: `blockdev-add` an NBD client node pointing at
//!   gammaray's [`SinkExport`](crate::nbd::SinkExport), then
//!   `blockdev-mirror` with `sync: none` and `copy-mode: write-blocking`
//!   from the drive. Every guest write is copied to gammaray before it
//!   completes, in guest byte space whatever the image format. Guest flushes
//!   are not forwarded. If gammaray dies, the job ends with an error and the
//!   guest carries on unaffected. Detach: `block-job-cancel`, `job-dismiss`,
//!   `blockdev-del`.
//! - [`Via::Blklogwrites`]: `blockdev-add` an NBD client node pointing at
//!   gammaray's [`LogExport`](crate::nbd::LogExport), `blockdev-add` a
//!   `blklogwrites` node over the drive's file child with that log, then
//!   `blockdev-reopen` the drive's format node onto it. Keeps every write
//!   and every flush in order. But a log write that fails fails the guest's
//!   write: if gammaray dies while attached, the guest gets I/O errors.
//!   Detach: `blockdev-reopen` back onto the file child, `blockdev-del` both
//!   nodes.
//!
//! **Default: mirror**, because a dead gammaray must not hurt the guest.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::qmp::{Qmp, QmpError};

/// Errors attaching or detaching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// A QMP step failed.
    #[error(transparent)]
    Qmp(#[from] QmpError),
    /// The drive could not be found or used.
    #[error("drive {drive}: {detail}")]
    Drive {
        /// The name given.
        drive: String,
        /// What is wrong.
        detail: String,
    },
    /// The mirror job failed to start or ended on its own.
    #[error("mirror job {job}: {detail}")]
    Job {
        /// Job id.
        job: String,
        /// What happened.
        detail: String,
    },
}

/// How to tap a running VM's drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Insert a `blklogwrites` filter whose log is gammaray.
    Blklogwrites,
    /// Active mirror (`sync: none`, `write-blocking`) to gammaray.
    Mirror,
}

/// What gammaray learnt about the drive node it taps.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveInfo {
    /// The node name (the format node, e.g. `disk0`).
    pub node: String,
    /// Its driver (`raw`, `qcow2`, ...).
    pub driver: String,
    /// Its virtual size in bytes (what the guest sees).
    pub size: u64,
    /// Node name of its `file` child (the protocol node, e.g. `disk0-file`).
    pub file_child: Option<String>,
    /// Node name of its `backing` child, if any.
    pub backing_child: Option<String>,
    /// Whether it is read-only.
    pub read_only: bool,
    /// Its cache mode `(direct, no-flush)`.
    pub cache: (bool, bool),
    /// Its `detect-zeroes` setting.
    pub detect_zeroes: String,
}

/// Looks up `name` (a node name, or a `-drive` id / qdev id whose inserted
/// node is used) and its children.
pub async fn inspect_drive(qmp: &mut Qmp, name: &str) -> Result<DriveInfo, AttachError> {
    let drive_err = |detail: String| AttachError::Drive {
        drive: name.to_string(),
        detail,
    };
    let nodes = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .await?;
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    let find = |n: &str| {
        nodes
            .iter()
            .find(|v| v.get("node-name").and_then(Value::as_str) == Some(n))
            .cloned()
    };
    let mut node = find(name);
    if node.is_none() {
        // Maybe a drive id or qdev id: use the node inserted in it.
        let blocks = qmp.execute("query-block", Value::Null).await?;
        for b in blocks.as_array().into_iter().flatten() {
            let matches = b.get("device").and_then(Value::as_str) == Some(name)
                || b.get("qdev").and_then(Value::as_str) == Some(name);
            if matches {
                if let Some(n) = b.pointer("/inserted/node-name").and_then(Value::as_str) {
                    node = find(n);
                }
            }
        }
    }
    let node = node.ok_or_else(|| drive_err("no such block node, drive or device".into()))?;
    let node_name = node
        .get("node-name")
        .and_then(Value::as_str)
        .unwrap_or(name)
        .to_string();
    let size = node
        .pointer("/image/virtual-size")
        .and_then(Value::as_u64)
        .ok_or_else(|| drive_err("no virtual size in query-named-block-nodes".into()))?;
    let driver = node
        .get("drv")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    // Children: from the block graph (edges named "file" and "backing").
    let graph = qmp
        .execute("x-debug-query-block-graph", Value::Null)
        .await?;
    let gnodes = graph
        .get("nodes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let id_of = |n: &str| {
        gnodes
            .iter()
            .find(|v| {
                v.get("type").and_then(Value::as_str) == Some("block-driver")
                    && v.get("name").and_then(Value::as_str) == Some(n)
            })
            .and_then(|v| v.get("id").and_then(Value::as_u64))
    };
    let name_of = |id: u64| {
        gnodes
            .iter()
            .find(|v| v.get("id").and_then(Value::as_u64) == Some(id))
            .and_then(|v| v.get("name").and_then(Value::as_str))
            .map(str::to_string)
    };
    let my_id = id_of(&node_name);
    let child = |edge_name: &str| -> Option<String> {
        let my_id = my_id?;
        graph
            .get("edges")?
            .as_array()?
            .iter()
            .find(|e| {
                e.get("parent").and_then(Value::as_u64) == Some(my_id)
                    && e.get("name").and_then(Value::as_str) == Some(edge_name)
            })
            .and_then(|e| e.get("child").and_then(Value::as_u64))
            .and_then(name_of)
    };
    Ok(DriveInfo {
        file_child: child("file"),
        backing_child: child("backing"),
        node: node_name,
        driver,
        size,
        read_only: node.get("ro").and_then(Value::as_bool).unwrap_or(false),
        cache: (
            node.pointer("/cache/direct")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            node.pointer("/cache/no-flush")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ),
        detect_zeroes: node
            .get("detect_zeroes")
            .and_then(Value::as_str)
            .unwrap_or("off")
            .to_string(),
    })
}

/// A live attachment; call [`detach`](Attachment::detach) to undo it.
#[derive(Debug)]
pub struct Attachment {
    /// The method used.
    pub via: Via,
    /// The tapped drive.
    pub drive: DriveInfo,
    /// Node name of the NBD client node gammaray added.
    pub nbd_node: String,
    /// Node name of the `blklogwrites` node (blklogwrites only).
    pub filter_node: Option<String>,
    /// Job id of the mirror (mirror only).
    pub job: Option<String>,
}

fn nbd_node_args(node: &str, socket: &Path) -> Value {
    json!({
        "driver": "nbd",
        "node-name": node,
        "server": {"type": "unix", "path": socket.to_string_lossy()},
        "export": "",
    })
}

/// Reopen options for the drive's format node with `file` as its file child
/// and everything else as it was (driver, backing, read-only, cache,
/// detect-zeroes; `blockdev-reopen` resets options it is not given).
fn reopen_args(d: &DriveInfo, file: &str) -> Value {
    let mut o = json!({
        "driver": d.driver,
        "node-name": d.node,
        "file": file,
        "read-only": d.read_only,
        "cache": {"direct": d.cache.0, "no-flush": d.cache.1},
        "detect-zeroes": d.detect_zeroes,
    });
    if let Some(b) = &d.backing_child {
        o["backing"] = json!(b);
    }
    json!({"options": [o]})
}

/// Attaches to drive `name` with `via`, pointing QEMU at gammaray's NBD
/// server listening on `socket` (already serving the right export:
/// [`SinkExport`](crate::nbd::SinkExport) of `DriveInfo::size` for mirror,
/// [`LogExport`](crate::nbd::LogExport) with `log_sector_size` for
/// blklogwrites). `tag` prefixes the node and job names gammaray creates.
/// On failure the steps already done are undone.
pub async fn attach(
    qmp: &mut Qmp,
    drive: DriveInfo,
    via: Via,
    socket: &Path,
    tag: &str,
    log_sector_size: u32,
) -> Result<Attachment, AttachError> {
    let nbd_node = format!("{tag}-nbd");
    qmp.execute("blockdev-add", nbd_node_args(&nbd_node, socket))
        .await?;
    let res = match via {
        Via::Mirror => attach_mirror(qmp, &drive, &nbd_node, tag)
            .await
            .map(|job| (None, Some(job))),
        Via::Blklogwrites => attach_blklogwrites(qmp, &drive, &nbd_node, tag, log_sector_size)
            .await
            .map(|f| (Some(f), None)),
    };
    match res {
        Ok((filter_node, job)) => Ok(Attachment {
            via,
            drive,
            nbd_node,
            filter_node,
            job,
        }),
        Err(e) => {
            if let Err(e2) = qmp
                .execute("blockdev-del", json!({"node-name": nbd_node}))
                .await
            {
                tracing::warn!("rollback: blockdev-del {nbd_node}: {e2}");
            }
            Err(e)
        }
    }
}

async fn attach_mirror(
    qmp: &mut Qmp,
    d: &DriveInfo,
    target: &str,
    tag: &str,
) -> Result<String, AttachError> {
    let job = format!("{tag}-job");
    let mut events = qmp.subscribe();
    qmp.execute(
        "blockdev-mirror",
        json!({
            "job-id": job,
            "device": d.node,
            "target": target,
            "sync": "none",
            "copy-mode": "write-blocking",
            "auto-dismiss": false,
            "filter-node-name": format!("{tag}-top"),
        }),
    )
    .await?;
    let timeout = qmp.timeout();
    let j = job.clone();
    let ev = Qmp::wait_event(&mut events, "BLOCK_JOB_READY", timeout, |e| {
        e.data.get("device").and_then(Value::as_str) == Some(j.as_str())
            && matches!(
                e.name.as_str(),
                "BLOCK_JOB_READY"
                    | "BLOCK_JOB_COMPLETED"
                    | "BLOCK_JOB_ERROR"
                    | "BLOCK_JOB_CANCELLED"
            )
    })
    .await;
    match ev {
        Ok(ev) if ev.name == "BLOCK_JOB_READY" => Ok(job),
        other => {
            let detail = match other {
                Ok(ev) => format!("{} before ready: {}", ev.name, ev.data),
                Err(e) => e.to_string(),
            };
            let _ = finish_job(qmp, &job).await;
            Err(AttachError::Job { job, detail })
        }
    }
}

async fn attach_blklogwrites(
    qmp: &mut Qmp,
    d: &DriveInfo,
    log: &str,
    tag: &str,
    log_sector_size: u32,
) -> Result<String, AttachError> {
    let file = d.file_child.clone().ok_or_else(|| AttachError::Drive {
        drive: d.node.clone(),
        detail: "has no file child to put blklogwrites over (pass the format node, e.g. disk0)"
            .into(),
    })?;
    let filter = format!("{tag}-lw");
    qmp.execute(
        "blockdev-add",
        json!({
            "driver": "blklogwrites",
            "node-name": filter,
            "file": file,
            "log": log,
            "log-sector-size": log_sector_size,
        }),
    )
    .await?;
    if let Err(e) = qmp
        .execute("blockdev-reopen", reopen_args(d, &filter))
        .await
    {
        if let Err(e2) = qmp
            .execute("blockdev-del", json!({"node-name": filter}))
            .await
        {
            tracing::warn!("rollback: blockdev-del {filter}: {e2}");
        }
        return Err(e.into());
    }
    Ok(filter)
}

/// Cancels (if needed), waits for and dismisses job `job`.
pub(crate) async fn finish_job(qmp: &mut Qmp, job: &str) -> Result<(), AttachError> {
    let timeout = qmp.timeout();
    let deadline = Instant::now() + timeout;
    let mut cancelled = false;
    loop {
        let jobs = qmp.execute("query-jobs", Value::Null).await?;
        let status = jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j.get("id").and_then(Value::as_str) == Some(job))
            .and_then(|j| j.get("status").and_then(Value::as_str).map(str::to_string));
        match status.as_deref() {
            None => return Ok(()),
            Some("concluded") => {
                qmp.execute("job-dismiss", json!({"id": job})).await?;
                return Ok(());
            }
            Some("null") => return Ok(()),
            Some(s) => {
                if !cancelled && !matches!(s, "aborting" | "waiting" | "pending") {
                    qmp.execute("block-job-cancel", json!({"device": job}))
                        .await?;
                    cancelled = true;
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AttachError::Job {
                job: job.to_string(),
                detail: format!("did not conclude within {timeout:?} of block-job-cancel"),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Attachment {
    /// Undoes the attachment: the block graph is as before [`attach`].
    pub async fn detach(self, qmp: &mut Qmp) -> Result<(), AttachError> {
        match self.via {
            Via::Mirror => {
                if let Some(job) = &self.job {
                    finish_job(qmp, job).await?;
                }
            }
            Via::Blklogwrites => {
                let file = self.drive.file_child.clone().unwrap_or_default();
                qmp.execute("blockdev-reopen", reopen_args(&self.drive, &file))
                    .await?;
                if let Some(f) = &self.filter_node {
                    qmp.execute("blockdev-del", json!({"node-name": f})).await?;
                }
            }
        }
        qmp.execute("blockdev-del", json!({"node-name": self.nbd_node}))
            .await?;
        Ok(())
    }
}

/// Prefix of the node and job names gammaray creates (`gammaray<pid>-…`).
pub const TAG_PREFIX: &str = "gammaray";

/// The tag for a gammaray process: `gammaray<pid>`.
pub fn tag_for_pid(pid: u32) -> String {
    format!("{TAG_PREFIX}{pid}")
}

/// The pid in a name made from [`tag_for_pid`] with `suffix`.
fn stale_pid(name: &str, suffix: &str) -> Option<u32> {
    name.strip_prefix(TAG_PREFIX)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// Removes what a gammaray that died while attached left behind: its
/// concluded (or still running) mirror job and its NBD client node, for
/// every tag whose pid `is_alive` says is gone. A `blklogwrites` filter
/// left by a dead gammaray cannot be removed this way (QEMU flushes through
/// the dead log device when reopening the drive, and fails); such nodes are
/// reported and left alone. Returns the names removed.
pub async fn cleanup_stale(
    qmp: &mut Qmp,
    is_alive: impl Fn(u32) -> bool,
) -> Result<Vec<String>, AttachError> {
    let mut removed = Vec::new();
    let jobs = qmp.execute("query-jobs", Value::Null).await?;
    let ids: Vec<String> = jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    for id in ids {
        let stale = ["-job", crate::snapshot::JOB_SUFFIX]
            .iter()
            .any(|suffix| stale_pid(&id, suffix).is_some_and(|pid| !is_alive(pid)));
        if stale {
            finish_job(qmp, &id).await?;
            removed.push(id);
        }
    }
    let nodes = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .await?;
    let names: Vec<String> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            n.get("node-name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    for name in names {
        if let Some(pid) = stale_pid(&name, "-lw") {
            if !is_alive(pid) {
                tracing::warn!(
                    "stale blklogwrites node {name} of dead gammaray {pid} left in place"
                );
            }
        }
        let stale = ["-nbd", crate::snapshot::NODE_SUFFIX]
            .iter()
            .any(|suffix| stale_pid(&name, suffix).is_some_and(|pid| !is_alive(pid)));
        if stale {
            match qmp
                .execute("blockdev-del", json!({"node-name": name}))
                .await
            {
                Ok(_) => removed.push(name),
                Err(e) => tracing::warn!("stale node {name} not removed: {e}"),
            }
        }
    }
    Ok(removed)
}
