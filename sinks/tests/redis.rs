//! The Redis sink against a real `redis-server` (started here on a free
//! loopback port, stopped afterwards). What the tests compare against:
//! which channels each pattern receives is computed by a tiny reference
//! glob matcher written here (and, for the paper's Table I, also listed
//! by hand); payloads are decoded with the `bson` crate directly and
//! compared with `to_json` of the event sent; split data is reassembled
//! and compared with the bytes sent.

mod redis_server;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use gammaray_config::RedisSinkConfig;
use gammaray_core::{EventKind, FileEvent, FileType, LostReason};
use gammaray_sinks::redis::{RedisSink, RedisSubscriber, SubscribeError};
use gammaray_sinks::{Sink, Stamped};
use redis_server::{command, redis_available, RedisServer};

/// Redis glob semantics for the patterns used here: `*` is any run of
/// characters (including none, `:` and `/`), `?` one character, anything
/// else itself. Written independently of the code under test.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

type Got = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A raw redis-rs (synchronous) subscriber to one pattern, on its own
/// thread, collecting (channel, payload) until stopped.
struct RawSub {
    got: Got,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RawSub {
    fn new(url: &str, pattern: &str) -> RawSub {
        let got: Got = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (g, st, url, pattern) = (
            got.clone(),
            stop.clone(),
            url.to_string(),
            pattern.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let client = redis::Client::open(url.as_str()).unwrap();
            let mut con = client.get_connection().unwrap();
            let mut ps = con.as_pubsub();
            ps.psubscribe(&pattern).unwrap();
            ps.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            ready_tx.send(()).unwrap();
            while !st.load(Ordering::Relaxed) {
                match ps.get_message() {
                    Ok(m) => g.lock().unwrap().push((
                        m.get_channel_name().to_string(),
                        m.get_payload_bytes().to_vec(),
                    )),
                    Err(e) if e.is_timeout() => {}
                    Err(e) => panic!("subscriber {pattern}: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
        RawSub {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits until `n` messages arrived (or 10 s), then 300 ms more for
    /// any extra one, and returns everything received.
    fn finish(mut self, n: usize) -> Vec<(String, Vec<u8>)> {
        let t = Instant::now();
        while self.count() < n && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

fn data(n: usize, seed: u32) -> Bytes {
    Bytes::from(
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// Events over several hosts, VMs and paths, every kind; seq is unique.
fn events() -> Vec<Arc<Stamped>> {
    let mut out = Vec::new();
    let mut seq = 0u64;
    for host in ["gs9671", "gs9672"] {
        for vm in ["test", "web"] {
            for path in [
                "/var/log/auth.log",
                "/var/log/syslog",
                "/var/log/nginx/access.log",
                "/var/log",
                "/etc/passwd",
            ] {
                seq += 1;
                let kind = [
                    EventKind::Modify,
                    EventKind::Create,
                    EventKind::Attrib,
                    EventKind::Lost,
                    EventKind::Delete,
                ][seq as usize % 5];
                let ftype = if path == "/var/log" {
                    FileType::Dir
                } else {
                    FileType::File
                };
                let mut e = FileEvent::new(1, kind, path.into(), ftype, 10 + seq);
                match kind {
                    EventKind::Modify => {
                        let d = data(100 + seq as usize * 37, seq as u32);
                        e.offset = Some(seq * 4096);
                        e.len = Some(d.len() as u64);
                        e.size = Some(seq * 4096 + d.len() as u64);
                        e.data = Some(d);
                    }
                    EventKind::Attrib => e.changed = vec!["mode", "uid"],
                    EventKind::Lost => {
                        e.offset = Some(0);
                        e.len = Some(8192);
                        e.reason = Some(LostReason::DataDrop);
                    }
                    EventKind::Create => e.size = Some(0),
                    _ => {}
                }
                out.push(Arc::new(Stamped::new(seq, host.into(), vm.into(), e)));
            }
        }
    }
    // A rotation: published on the new and the old path's channels.
    seq += 1;
    let mut mv = FileEvent::new(
        1,
        EventKind::Move,
        "/var/log/syslog.1".into(),
        FileType::File,
        99,
    );
    mv.old_path = Some("/var/log/syslog".into());
    out.push(Arc::new(Stamped::new(
        seq,
        "gs9671".into(),
        "test".into(),
        mv,
    )));
    out
}

/// The channels each event is published on (new path, and a move's old).
fn channels(s: &Stamped) -> Vec<String> {
    let mut c = vec![s.channel()];
    if let Some(old) = s.old_channel() {
        c.push(old);
    }
    c
}

/// A BSON payload as JSON, decoded with the bson crate alone: int64 →
/// number, string → string, array → array, binary → returned apart.
fn bson_as_json(payload: &[u8]) -> (serde_json::Value, Option<Vec<u8>>) {
    let doc = bson::Document::from_reader(payload).expect("a BSON document");
    let mut map = serde_json::Map::new();
    let mut bin = None;
    for (k, v) in doc {
        let j = match v {
            bson::Bson::Int64(i) => serde_json::json!(i),
            bson::Bson::String(s) => serde_json::json!(s),
            bson::Bson::Array(a) => serde_json::Value::Array(
                a.into_iter()
                    .map(|x| serde_json::json!(x.as_str().expect("strings")))
                    .collect(),
            ),
            bson::Bson::Binary(b) => {
                assert_eq!(k, "data");
                bin = Some(b.bytes);
                continue;
            }
            other => panic!("field {k}: unexpected BSON {other:?}"),
        };
        map.insert(k, j);
    }
    (serde_json::Value::Object(map), bin)
}

/// The event's JSON without data_b64, and its data.
fn json_of(s: &Stamped) -> (serde_json::Value, Option<Vec<u8>>) {
    let mut v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
    let data = v.as_object_mut().unwrap().remove("data_b64").map(|b| {
        base64::engine::general_purpose::STANDARD
            .decode(b.as_str().unwrap())
            .unwrap()
    });
    (v, data)
}

const TABLE_ONE: [&str; 4] = [
    "gs9671:test:/var/log/*",
    "*:*:/var/log/*",
    "gs9671:*:/var/log/auth.log",
    "gs9671:test:/var/log/syslog",
];

#[test]
fn paper_table_one_patterns_receive_exactly_their_events() {
    if !redis_available("paper_table_one_patterns_receive_exactly_their_events") {
        return;
    }
    let server = RedisServer::start();
    let subs: Vec<RawSub> = TABLE_ONE
        .iter()
        .map(|p| RawSub::new(&server.url(), p))
        .collect();
    let evs = events();
    let mut sink = RedisSink::new("cloud", &RedisSinkConfig::new(server.url())).unwrap();
    // Two batches, to cross a send boundary.
    sink.send(&evs[..7]).unwrap();
    sink.send(&evs[7..]).unwrap();
    sink.flush().unwrap();
    assert_eq!(sink.stats().sent, evs.len() as u64);
    assert_eq!((sink.stats().failed, sink.stats().dropped), (0, 0));

    // By hand: the channels each pattern must see (sorted, with repeats).
    let by_hand: [&[&str]; 4] = [
        &[
            "gs9671:test:/var/log/auth.log",
            "gs9671:test:/var/log/nginx/access.log",
            "gs9671:test:/var/log/syslog",
            "gs9671:test:/var/log/syslog",
            "gs9671:test:/var/log/syslog.1",
        ],
        &[
            "gs9671:test:/var/log/auth.log",
            "gs9671:test:/var/log/nginx/access.log",
            "gs9671:test:/var/log/syslog",
            "gs9671:test:/var/log/syslog",
            "gs9671:test:/var/log/syslog.1",
            "gs9671:web:/var/log/auth.log",
            "gs9671:web:/var/log/nginx/access.log",
            "gs9671:web:/var/log/syslog",
            "gs9672:test:/var/log/auth.log",
            "gs9672:test:/var/log/nginx/access.log",
            "gs9672:test:/var/log/syslog",
            "gs9672:web:/var/log/auth.log",
            "gs9672:web:/var/log/nginx/access.log",
            "gs9672:web:/var/log/syslog",
        ],
        &[
            "gs9671:test:/var/log/auth.log",
            "gs9671:web:/var/log/auth.log",
        ],
        &["gs9671:test:/var/log/syslog", "gs9671:test:/var/log/syslog"],
    ];
    for ((pattern, sub), hand) in TABLE_ONE.iter().zip(subs).zip(by_hand) {
        // Expected by the reference matcher: (channel, seq) per message.
        let mut expected: Vec<(String, u64)> = evs
            .iter()
            .flat_map(|s| channels(s).into_iter().map(move |c| (c, s.seq)))
            .filter(|(c, _)| glob(pattern.as_bytes(), c.as_bytes()))
            .collect();
        expected.sort();
        let mut hand_sorted: Vec<String> = hand.iter().map(|s| s.to_string()).collect();
        hand_sorted.sort();
        let reference: Vec<String> = expected.iter().map(|(c, _)| c.clone()).collect();
        assert_eq!(
            reference, hand_sorted,
            "{pattern}: reference matcher vs by hand"
        );

        let got = sub.finish(expected.len());
        let mut seen: Vec<(String, u64)> = Vec::new();
        for (channel, payload) in &got {
            let (fields, bin) = bson_as_json(payload);
            let seq = fields["seq"].as_u64().unwrap();
            let sent = evs.iter().find(|s| s.seq == seq).expect("an event sent");
            let (want, want_data) = json_of(sent);
            assert_eq!(fields, want, "{pattern}: BSON fields vs to_json");
            assert_eq!(bin, want_data, "{pattern}: data bytes");
            assert!(channels(sent).contains(channel), "{channel}");
            seen.push((channel.clone(), seq));
        }
        seen.sort();
        assert_eq!(seen, expected, "{pattern}: received vs expected");
        eprintln!("{pattern}: {} messages, as expected", seen.len());
    }
}

#[test]
fn data_above_max_data_bytes_is_split_and_reassembles() {
    if !redis_available("data_above_max_data_bytes_is_split_and_reassembles") {
        return;
    }
    let server = RedisServer::start();
    let sub = RawSub::new(&server.url(), "*");
    let mut cfg = RedisSinkConfig::new(server.url());
    cfg.max_data_bytes = 1000;
    let mut sink = RedisSink::new("split", &cfg).unwrap();
    let sizes = [10_000usize, 1000, 1001, 1];
    let batch: Vec<Arc<Stamped>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut e = FileEvent::new(1, EventKind::Modify, format!("/f{i}"), FileType::File, 5);
            e.offset = Some(12_345);
            e.len = Some(n as u64);
            e.data = Some(data(n, i as u32));
            Arc::new(Stamped::new(i as u64 + 1, "h".into(), "v".into(), e))
        })
        .collect();
    sink.send(&batch).unwrap();
    assert_eq!(sink.stats().sent, 4);
    let pieces: Vec<usize> = sizes.iter().map(|n| n.div_ceil(1000)).collect();
    let got = sub.finish(pieces.iter().sum());
    assert_eq!(got.len(), pieces.iter().sum::<usize>());
    for (i, s) in batch.iter().enumerate() {
        let mine: Vec<(serde_json::Value, Vec<u8>)> = got
            .iter()
            .filter(|(c, _)| *c == s.channel())
            .map(|(_, p)| {
                let (f, b) = bson_as_json(p);
                (f, b.unwrap())
            })
            .collect();
        assert_eq!(mine.len(), pieces[i], "{}", s.channel());
        let mut whole = Vec::new();
        let mut next = 12_345u64;
        for (k, (f, b)) in mine.iter().enumerate() {
            assert_eq!(f["seq"], s.seq);
            assert_eq!(f["offset"], next, "pieces in order, contiguous");
            assert_eq!(f["len"], b.len() as u64);
            assert!(b.len() <= 1000);
            if pieces[i] > 1 {
                assert_eq!(
                    (f["piece"].as_u64(), f["pieces"].as_u64()),
                    (Some(k as u64), Some(pieces[i] as u64))
                );
            } else {
                assert!(f.get("piece").is_none());
            }
            next += b.len() as u64;
            whole.extend_from_slice(b);
        }
        assert_eq!(
            &whole[..],
            &s.event.data.as_ref().unwrap()[..],
            "{}",
            s.channel()
        );
    }
}

#[test]
fn acl_user_receives_only_its_own_vm() {
    if !redis_available("acl_user_receives_only_its_own_vm") {
        return;
    }
    let server = RedisServer::start();
    let port = server.port;
    for acl in [
        // The README's recipe: a monitor of one VM.
        "ACL SETUSER monitor1 on >secret resetchannels &gs9671:test:* +psubscribe +subscribe +ping",
        // gammaray's own user: publish anywhere, nothing else.
        "ACL SETUSER gammaray on >pw resetchannels &* +publish +ping",
    ] {
        assert_eq!(command(port, acl).as_deref(), Some("+OK"), "{acl}");
    }
    let url = server.url();
    let sub = |user: &str, pass: &str, pattern: &str| {
        RedisSubscriber::connect(
            &url,
            Some(user),
            Some(pass),
            &[pattern.to_string()],
            Duration::from_secs(5),
        )
    };
    // Other patterns are refused, by name.
    for other in ["gs9671:web:*", "*", "gs9671:*", "*:test:*"] {
        match sub("monitor1", "secret", other) {
            Err(SubscribeError::Refused {
                pattern, message, ..
            }) => {
                assert_eq!(pattern, other);
                assert!(message.to_lowercase().contains("noperm"), "{message}");
            }
            Err(e) => panic!("{other}: wrong error {e}"),
            Ok(_) => panic!("{other}: monitor1 may subscribe to it"),
        }
    }
    assert!(matches!(
        sub("monitor1", "wrong", "gs9671:test:*"),
        Err(SubscribeError::Connect { .. })
    ));
    let mut monitor = sub("monitor1", "secret", "gs9671:test:*").unwrap();
    let everything = RawSub::new(&url, "*");

    let mut cfg = RedisSinkConfig::new(url.clone());
    cfg.username = Some("gammaray".into());
    cfg.password = Some("pw".into());
    let mut sink = RedisSink::new("cloud", &cfg).unwrap();
    let evs = events();
    sink.send(&evs).unwrap();
    let total: usize = evs.iter().map(|s| channels(s).len()).sum();
    assert_eq!(everything.finish(total).len(), total);

    let mut got = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        if let Some(m) = monitor.next(Duration::from_millis(100)).unwrap() {
            got.push((m.channel, m.event.unwrap().seq));
        }
    }
    let mut expected: Vec<(String, u64)> = evs
        .iter()
        .flat_map(|s| channels(s).into_iter().map(move |c| (c, s.seq)))
        .filter(|(c, _)| c.starts_with("gs9671:test:"))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let vms: BTreeSet<&str> = got
        .iter()
        .map(|(c, _)| &c[..c.find(":/").unwrap()])
        .collect();
    assert_eq!(vms, BTreeSet::from(["gs9671:test"]));
}

#[test]
fn redis_down_then_back_counts_and_recovers() {
    if !redis_available("redis_down_then_back_counts_and_recovers") {
        return;
    }
    let mut server = RedisServer::start();
    // Plenty of events with unique seqs: 5 rounds of events().
    let evs: Vec<Arc<Stamped>> = (0..5)
        .flat_map(|_| events())
        .enumerate()
        .map(|(i, s)| {
            Arc::new(Stamped::new(
                i as u64 + 1,
                s.host.clone(),
                s.vm.clone(),
                s.event.clone(),
            ))
        })
        .collect();
    // A backoff long enough that "during the backoff" holds however slow
    // the machine is, and short enough to wait out.
    let mut sink = RedisSink::new("cloud", &RedisSinkConfig::new(server.url()))
        .unwrap()
        .with_backoff(Duration::from_millis(400), Duration::from_millis(800));
    let sub = RawSub::new(&server.url(), "*");
    sink.send(&evs[..3]).unwrap();
    let got = sub.finish(3);
    assert_eq!(got.len(), 3);
    assert_eq!(sink.stats().sent, 3);

    server.stop();
    // The first batch after the crash fails (no panic), the next ones are
    // dropped without an attempt while the backoff lasts.
    let e = sink.send(&evs[3..6]).unwrap_err().to_string();
    assert!(e.contains("publishing to Redis at"), "{e}");
    assert!(!sink.is_up());
    assert_eq!(sink.stats().failed, 3);
    sink.send(&evs[6..8]).unwrap();
    assert_eq!(sink.stats().dropped, 2);
    // Still down after the backoff: failed again, and the backoff grows.
    std::thread::sleep(Duration::from_millis(450));
    assert!(sink.send(&evs[8..9]).is_err());
    assert_eq!(sink.stats().failed, 4);

    server.restart();
    let sub = RawSub::new(&server.url(), "*");
    // Within the (bounded) backoff the sink reconnects and delivers.
    let t = Instant::now();
    let mut delivered = Vec::new();
    let mut i = 9;
    while delivered.is_empty() && i + 10 < evs.len() && t.elapsed() < Duration::from_secs(10) {
        let before = sink.stats().sent;
        let _ = sink.send(&evs[i..i + 1]);
        if sink.stats().sent > before {
            delivered.push(evs[i].seq);
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sink.is_up(), "reconnected within 10 s");
    sink.send(&evs[i..i + 3]).unwrap();
    delivered.extend(evs[i..i + 3].iter().map(|s| s.seq));
    i += 3;
    let got = sub.finish(delivered.len());
    let seqs: Vec<u64> = got
        .iter()
        .map(|(_, p)| bson_as_json(p).0["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, delivered);
    let st = sink.stats();
    assert_eq!(st.sent, 3 + delivered.len() as u64);
    assert_eq!(st.sent + st.failed + st.dropped, i as u64, "{st:?}");

    // A restart between two batches while the sink is up: the stale
    // connection fails, the sink reconnects at once, nothing is lost.
    server.restart();
    let sub = RawSub::new(&server.url(), "*");
    let before = sink.stats();
    sink.send(&evs[i..i + 4]).unwrap();
    assert_eq!(sink.stats().sent, before.sent + 4);
    assert_eq!(sink.stats().failed, before.failed);
    let got = sub.finish(4);
    assert_eq!(got.len(), 4);
}

#[test]
fn unix_socket_url_and_json_encoding() {
    if !redis_available("unix_socket_url_and_json_encoding") {
        return;
    }
    let server = RedisServer::start_with_unix_socket();
    let url = server.unix_url();
    let mut monitor = RedisSubscriber::connect(
        &url,
        None,
        None,
        &["dc1:*:*:/var/log/*".to_string()],
        Duration::from_secs(5),
    )
    .unwrap();
    let raw = RawSub::new(&server.url(), "*");
    let mut cfg = RedisSinkConfig::new(url.clone());
    cfg.encoding = gammaray_config::RedisEncoding::Json;
    cfg.channel_prefix = Some("dc1:".into());
    let mut sink = RedisSink::new("cloud", &cfg).unwrap();
    assert_eq!(sink.url(), url);
    let evs = events();
    sink.send(&evs).unwrap();
    let total: usize = evs.iter().map(|s| channels(s).len()).sum();
    // Raw: every payload is the event's JSON line, on the prefixed channel.
    let got = raw.finish(total);
    assert_eq!(got.len(), total);
    for (channel, payload) in &got {
        let text = std::str::from_utf8(payload).unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let sent = evs
            .iter()
            .find(|s| s.seq == v["seq"].as_u64().unwrap())
            .unwrap();
        assert_eq!(text, sent.to_json());
        let bare = channel.strip_prefix("dc1:").expect("prefixed");
        assert!(channels(sent).iter().any(|c| c == bare), "{channel}");
    }
    // The subscriber decodes JSON as it does BSON.
    let mut seen = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(500) {
        if let Some(m) = monitor.next(Duration::from_millis(100)).unwrap() {
            let e = m.event.unwrap();
            let sent = evs.iter().find(|s| s.seq == e.seq).unwrap();
            assert_eq!(e.to_json(), sent.to_json());
            seen += 1;
        }
    }
    let expected = evs
        .iter()
        .flat_map(|s| channels(s))
        .filter(|c| glob(b"*:*:/var/log/*", c.as_bytes()))
        .count();
    assert_eq!(seen, expected);
}

#[test]
fn a_server_that_stops_answering_stalls_send_boundedly() {
    if !redis_available("a_server_that_stops_answering_stalls_send_boundedly") {
        return;
    }
    let server = RedisServer::start();
    let mut cfg = RedisSinkConfig::new(server.url());
    cfg.timeout_ms = 300;
    let mut sink = RedisSink::new("cloud", &cfg)
        .unwrap()
        .with_backoff(Duration::from_secs(2), Duration::from_secs(2));
    let evs = events();
    sink.send(&evs[..2]).unwrap();
    // Frozen (SIGSTOP): connections are accepted by the kernel, never
    // answered.
    server.signal("STOP");
    let t = Instant::now();
    assert!(sink.send(&evs[2..4]).is_err());
    let took = t.elapsed();
    assert!(took < Duration::from_millis(3 * 300 + 1500), "{took:?}");
    // During the backoff: dropped at once.
    let t = Instant::now();
    sink.send(&evs[4..5]).unwrap();
    assert!(t.elapsed() < Duration::from_millis(250));
    server.signal("CONT");
    let st = sink.stats();
    assert_eq!((st.sent, st.failed, st.dropped), (2, 2, 1));
    // Back: delivered again once the backoff has passed.
    let t = Instant::now();
    while !sink.is_up() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        let _ = sink.send(&evs[5..6]);
    }
    assert!(sink.is_up());
}

#[test]
fn subscriber_resubscribes_after_a_server_restart() {
    if !redis_available("subscriber_resubscribes_after_a_server_restart") {
        return;
    }
    let mut server = RedisServer::start();
    let pattern = "gs9671:test:*".to_string();
    let mut monitor = RedisSubscriber::connect(
        &server.url(),
        None,
        None,
        &[pattern],
        Duration::from_secs(5),
    )
    .unwrap();
    let mut sink = RedisSink::new("cloud", &RedisSinkConfig::new(server.url())).unwrap();
    let evs: Vec<Arc<Stamped>> = events()
        .into_iter()
        .filter(|s| s.channel().starts_with("gs9671:test:"))
        .collect();
    sink.send(&evs[..1]).unwrap();
    let first = monitor
        .next(Duration::from_secs(5))
        .unwrap()
        .expect("a message");
    assert_eq!(first.event.unwrap().seq, evs[0].seq);

    server.restart();
    // Publish until the monitor, subscribing again by itself, sees one.
    let t = Instant::now();
    let mut seen = None;
    while seen.is_none() && t.elapsed() < Duration::from_secs(15) {
        let _ = sink.send(&evs[1..2]);
        if let Some(m) = monitor.next(Duration::from_millis(100)).unwrap() {
            seen = Some(m.event.unwrap().seq);
        }
    }
    assert_eq!(seen, Some(evs[1].seq), "the monitor subscribed again");
}

/// A batch larger than two pipelines (`PIPELINE_COMMANDS` each, the last
/// one partial) arrives whole and in order, and `send` returns once all
/// are answered. Compared with the JSON of each event handed to the sink.
#[test]
fn a_batch_of_several_pipelines_arrives_whole_and_in_order() {
    if !redis_available("a_batch_of_several_pipelines_arrives_whole_and_in_order") {
        return;
    }
    let server = RedisServer::start();
    let raw = RawSub::new(&server.url(), "*");
    let mut cfg = RedisSinkConfig::new(server.url());
    cfg.encoding = gammaray_config::RedisEncoding::Json;
    let mut sink = RedisSink::new("cloud", &cfg).unwrap();
    let n = 2 * gammaray_sinks::redis::PIPELINE_COMMANDS + 17;
    let evs: Vec<Arc<Stamped>> = (0..n)
        .map(|i| {
            let mut e = FileEvent::new(
                1,
                EventKind::Modify,
                format!("/var/log/f{}.log", i % 5),
                FileType::File,
                12 + (i % 5) as u64,
            );
            e.offset = Some(i as u64 * 64);
            e.len = Some(64);
            e.data = Some(data(64, i as u32));
            Arc::new(Stamped::new(i as u64 + 1, "h".into(), "v".into(), e))
        })
        .collect();
    sink.send(&evs).unwrap();
    let st = sink.stats();
    assert_eq!((st.sent, st.failed, st.dropped), (n as u64, 0, 0), "{st:?}");
    let got = raw.finish(n);
    assert_eq!(got.len(), n);
    for ((channel, payload), sent) in got.iter().zip(&evs) {
        assert_eq!(channel, &sent.channel());
        assert_eq!(std::str::from_utf8(payload).unwrap(), sent.to_json());
    }
}
