//! A point-in-time copy of a running VM's drive, made by QEMU itself: a
//! `blockdev-backup` job (`sync: full`) into a raw file gammaray names.
//! The backup job's copy-before-write filter saves each region's old
//! contents before the guest overwrites it, so the file ends up holding the
//! drive exactly as it was when the job started, while the guest keeps
//! running and writing.
//!
//! Live attach uses it with the VM paused for a moment: start the copy,
//! start the tap ([`crate::attach`]), resume. The copy is then the disk as
//! of the first tapped write, which is what crawling while the writes are
//! buffered needs: the writes replayed over the copy give the guest's disk.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::attach::{finish_job, AttachError, DriveInfo};
use crate::qmp::Qmp;

/// Suffix of the backup job's id (`gammaray<pid>-copyjob`).
pub const JOB_SUFFIX: &str = "-copyjob";
/// Suffix of the copy's node name (`gammaray<pid>-copy`).
pub const NODE_SUFFIX: &str = "-copy";
/// Suffix of the copy-before-write filter's node name.
pub const FILTER_SUFFIX: &str = "-cbw";

/// How often a running copy's progress is polled.
const POLL: Duration = Duration::from_millis(100);

/// A copy in progress.
#[derive(Debug, Default)]
pub struct Copy {
    /// The backup job's id.
    pub job: String,
    /// The node that writes the copy file.
    pub node: String,
    /// The copy-before-write filter node the job put above the drive (the
    /// drive's root while the copy runs).
    pub filter: String,
}

/// Whether the VM is running (not paused).
pub async fn is_running(qmp: &mut Qmp) -> Result<bool, AttachError> {
    let st = qmp.execute("query-status", Value::Null).await?;
    Ok(st.get("running").and_then(Value::as_bool).unwrap_or(false))
}

/// Pauses the VM (`stop`): QEMU drains its in-flight I/O first.
pub async fn pause(qmp: &mut Qmp) -> Result<(), AttachError> {
    qmp.execute("stop", Value::Null).await?;
    Ok(())
}

/// Resumes the VM (`cont`).
pub async fn resume(qmp: &mut Qmp) -> Result<(), AttachError> {
    qmp.execute("cont", Value::Null).await?;
    Ok(())
}

/// Starts copying `drive`, as it is now, into the raw file `file`, which
/// must exist with exactly the drive's size, at most `rate` bytes per
/// second (0: no limit; regions the guest overwrites are copied first
/// whatever the limit). `tag` prefixes the names.
pub async fn start_copy(
    qmp: &mut Qmp,
    drive: &DriveInfo,
    file: &Path,
    tag: &str,
    rate: u64,
) -> Result<Copy, AttachError> {
    let node = format!("{tag}{NODE_SUFFIX}");
    let job = format!("{tag}{JOB_SUFFIX}");
    let filter = format!("{tag}{FILTER_SUFFIX}");
    qmp.execute(
        "blockdev-add",
        json!({
            "driver": "raw",
            "node-name": node,
            "file": {"driver": "file", "filename": file.to_string_lossy()},
        }),
    )
    .await?;
    let started = qmp
        .execute(
            "blockdev-backup",
            json!({
                "job-id": job,
                "device": drive.node,
                "target": node,
                "sync": "full",
                "auto-dismiss": false,
                "speed": rate,
                "filter-node-name": filter,
            }),
        )
        .await;
    if let Err(e) = started {
        if let Err(e2) = qmp
            .execute("blockdev-del", json!({"node-name": node}))
            .await
        {
            tracing::warn!("rollback: blockdev-del {node}: {e2}");
        }
        return Err(e.into());
    }
    Ok(Copy { job, node, filter })
}

impl Copy {
    /// Waits (at most `timeout`) for the copy to finish, calling
    /// `progress(done, total)` in bytes as it goes, then removes the job
    /// and the node (QEMU closes the file). An error if the job failed.
    pub async fn finish(
        self,
        qmp: &mut Qmp,
        timeout: Duration,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), AttachError> {
        let deadline = Instant::now() + timeout;
        let outcome = loop {
            let jobs = qmp.execute("query-jobs", Value::Null).await?;
            let Some(j) = jobs
                .as_array()
                .into_iter()
                .flatten()
                .find(|j| j.get("id").and_then(Value::as_str) == Some(self.job.as_str()))
                .cloned()
            else {
                break Err("disappeared before concluding".to_string());
            };
            let num = |k: &str| j.get(k).and_then(Value::as_u64).unwrap_or(0);
            progress(num("current-progress"), num("total-progress"));
            if j.get("status").and_then(Value::as_str) == Some("concluded") {
                break match j.get("error").and_then(Value::as_str) {
                    Some(e) => Err(e.to_string()),
                    None => Ok(()),
                };
            }
            if Instant::now() > deadline {
                break Err(format!("not finished within {timeout:?}"));
            }
            tokio::time::sleep(POLL).await;
        };
        let cleaned = self.remove(qmp).await;
        match outcome {
            Ok(()) => cleaned,
            Err(detail) => Err(AttachError::Job {
                job: self.job,
                detail,
            }),
        }
    }

    /// Cancels the copy (if still running) and removes the job and node.
    pub async fn abort(self, qmp: &mut Qmp) -> Result<(), AttachError> {
        self.remove(qmp).await
    }

    async fn remove(&self, qmp: &mut Qmp) -> Result<(), AttachError> {
        finish_job(qmp, &self.job).await?;
        qmp.execute("blockdev-del", json!({"node-name": self.node}))
            .await?;
        Ok(())
    }
}

/// Every file QEMU has open as a block node (the `file` of each node), so
/// that a copy is never written over one of them.
pub async fn open_files(qmp: &mut Qmp) -> Result<Vec<std::path::PathBuf>, AttachError> {
    let nodes = qmp
        .execute("query-named-block-nodes", json!({"flat": true}))
        .await?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n.get("drv").and_then(Value::as_str) == Some("file"))
        .filter_map(|n| n.get("file").and_then(Value::as_str))
        .map(std::path::PathBuf::from)
        .collect())
}
