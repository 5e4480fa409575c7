//! The QMP client against a scripted fake QEMU: greeting handling, error
//! replies, events, and timeouts when QEMU stops answering.

use std::time::Duration;

use gammaray_qemu::qmp::{Qmp, QmpError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// A fake QMP server: sends `pre` lines, then the greeting, then answers
/// each command with `answer(command)` (None: stay silent).
async fn fake(
    path: std::path::PathBuf,
    pre: Vec<Value>,
    answer: fn(&str) -> Option<Vec<Value>>,
) -> tokio::task::JoinHandle<()> {
    let l = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        for p in pre {
            w.write_all(format!("{p}\n").as_bytes()).await.unwrap();
        }
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let msg: Value = serde_json::from_str(&line).unwrap();
            let cmd = msg["execute"].as_str().unwrap_or("").to_string();
            if let Some(out) = answer(&cmd) {
                for mut o in out {
                    if o.get("event").is_none() {
                        o["id"] = msg["id"].clone();
                    }
                    w.write_all(format!("{o}\n").as_bytes()).await.unwrap();
                }
            }
        }
    })
}

#[tokio::test]
async fn commands_errors_events_and_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp");
    let _srv = fake(
        path.clone(),
        vec![json!({"event": "RESUME", "data": {}})],
        |cmd| match cmd {
            "qmp_capabilities" => Some(vec![json!({"return": {}})]),
            "query-status" => Some(vec![
                json!({"event": "BLOCK_JOB_READY", "data": {"device": "j"}}),
                json!({"return": {"status": "running"}}),
            ]),
            "bad" => Some(vec![
                json!({"error": {"class": "GenericError", "desc": "nope"}}),
            ]),
            _ => None,
        },
    )
    .await;
    let mut q = Qmp::connect(&path, Duration::from_millis(500))
        .await
        .unwrap();
    let mut ev = q.subscribe();
    let r = q.execute("query-status", Value::Null).await.unwrap();
    assert_eq!(r["status"], "running");
    let e = Qmp::wait_event(&mut ev, "ready", Duration::from_secs(1), |e| {
        e.name == "BLOCK_JOB_READY"
    })
    .await
    .unwrap();
    assert_eq!(e.data["device"], "j");
    match q.execute("bad", Value::Null).await {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(
                (command.as_str(), class.as_str(), desc.as_str()),
                ("bad", "GenericError", "nope")
            );
        }
        other => panic!("{other:?}"),
    }
    // QEMU goes silent: the command times out instead of hanging.
    let t = std::time::Instant::now();
    assert!(matches!(
        q.execute("silent", Value::Null).await,
        Err(QmpError::Timeout { .. })
    ));
    assert!(t.elapsed() < Duration::from_secs(2));
    // Waiting for an event that never comes times out too.
    assert!(matches!(
        Qmp::wait_event(&mut ev, "never", Duration::from_millis(100), |_| false).await,
        Err(QmpError::Timeout { .. })
    ));
    // The session still works after a timeout.
    assert!(q.execute("query-status", Value::Null).await.is_ok());
}

#[tokio::test]
async fn silent_server_times_out_at_the_greeting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp");
    let l = UnixListener::bind(&path).unwrap();
    let _hold = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let e = Qmp::connect(&path, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    // Not QMP at all.
    let path2 = dir.path().join("http");
    let l2 = UnixListener::bind(&path2).unwrap();
    let _srv = tokio::spawn(async move {
        let (mut s, _) = l2.accept().await.unwrap();
        s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let e = Qmp::connect(&path2, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(e, QmpError::Protocol(_)), "{e}");
}
