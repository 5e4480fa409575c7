//! The Kafka sink against a real Kafka-protocol broker (`tansu`, in-memory
//! storage, started by each test on a free loopback port and killed
//! afterwards; topics created explicitly, since tansu does not create
//! them). What each test compares against:
//! (a) the events handed to the sink: each message's value is the event's
//!     DESIGN.md JSON line, headers and keys as configured, a `move` under
//!     both keys;
//! (b) a real guest: a recorded log-append workload replayed with
//!     `gammaray replay --sink kafka://…`, read back by a consumer group,
//!     equals the replay's own JSON lines, and the log files rebuilt from
//!     the consumed `modify` events have the sha256 the guest itself
//!     listed;
//! (c) the broker made unreachable mid-run (a TCP proxy in front of it
//!     that refuses connections, since a tansu restart would lose its
//!     in-memory data) and reachable again: `when_full = "block"` loses
//!     nothing and keeps per-key order; `drop_newest` reports exactly the
//!     events it dropped, in `lost` events and in the sink's stats;
//! (d) `gammaray run` with a configured Kafka sink whose brokers are not
//!     there, or whose topic does not exist: it refuses to start, naming
//!     the sink, without waiting out the health check's timeout for a
//!     port nothing listens on;
//! (e) `gammaray run` end to end: a real guest, its disk served by the
//!     engine, appends to a new log; a `[[route]]` sends `/var/log` to a
//!     `type = "kafka"` sink; a consumer group rebuilds the log from the
//!     `modify` events' offset and data, which must give the lines the
//!     guest wrote and the sha256 the guest itself computed.
//!
//! Skipped with a message when `tansu` is not installed (scripts/
//! setup-host.sh installs it), unless `GAMMARAY_REQUIRE_GUEST` is set.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gammaray_config::{KafkaEncoding, KafkaKey, KafkaOptionValue, KafkaSinkConfig, KafkaWhenFull};
use gammaray_core::{EventKind, FileEvent, FileType};
use gammaray_sinks::kafka::KafkaSink;
use gammaray_sinks::{Sink, Stamped};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

const REQUIRE_ENV: &str = "GAMMARAY_REQUIRE_GUEST";

/// Whether `tansu` runs here; otherwise prints why the test is skipped,
/// or fails when `GAMMARAY_REQUIRE_GUEST` is set.
fn tansu_available(test: &str) -> bool {
    let ok = Command::new("tansu")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return true;
    }
    let required = std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "{test}: tansu not found and {REQUIRE_ENV} is set; run scripts/setup-host.sh"
    );
    eprintln!(
        "\n!!!!! SKIPPING {test}: tansu (the test Kafka broker) not found (run \
         scripts/setup-host.sh, or set {REQUIRE_ENV}=1 to make this a failure) !!!!!\n"
    );
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A tansu broker with in-memory storage, killed on drop.
struct Broker {
    child: Child,
    /// Where clients connect (the broker's port, or a proxy's).
    advertised: u16,
    log: PathBuf,
}

impl Broker {
    /// Starts tansu on a free port, advertising `advertised` (a proxy's
    /// port) or its own port.
    fn start(dir: &Path, advertised: Option<u16>) -> (Broker, u16) {
        let port = free_port();
        let adv = advertised.unwrap_or(port);
        let log = dir.join(format!("tansu-{port}.log"));
        let out = std::fs::File::create(&log).expect("tansu log");
        let child = Command::new("tansu")
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{adv}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("tansu log"))
            .stderr(out)
            .spawn()
            .expect("starting tansu");
        let broker = Broker {
            child,
            advertised: adv,
            log,
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not listen on {port} within 20 s: {}",
                std::fs::read_to_string(&broker.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (broker, port)
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Creates `topic` with `partitions` partitions.
fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = runtime()
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
struct Msg {
    partition: i32,
    key: Option<String>,
    value: Vec<u8>,
    headers: BTreeMap<String, String>,
}

impl Msg {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Msg {
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                let hd = h.get(i);
                headers.insert(
                    hd.key.to_string(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Msg {
            partition: m.partition(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.value).expect("a JSON value")
    }
}

/// A consumer in a fresh group (`PREFIX-TOPIC-PID`) subscribed to
/// `topic`, reading from the beginning.
fn subscribed(brokers: &str, topic: &str, prefix: &str) -> BaseConsumer {
    let group = format!("{prefix}-{}-{}", topic, std::process::id());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `topic` from the beginning in a fresh consumer group until
/// `want` messages came, then one more second to catch surplus ones (the
/// broker's high watermark is not to be trusted, so no end-of-partition
/// logic).
fn consume(brokers: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Msg> {
    let consumer = subscribed(brokers, topic, "gr-test");
    let mut out = Vec::new();
    let started = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        if let Some(t) = done_at {
            if t.elapsed() > Duration::from_secs(1) {
                break;
            }
        } else if started.elapsed() > timeout {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(Msg::of(&m));
                if out.len() >= want && done_at.is_none() {
                    done_at = Some(Instant::now());
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// Reads `topic` from the beginning in a fresh consumer group until no
/// message came for `idle` after the first one (the producer is done
/// before this is called), or `timeout` passed.
fn consume_until_idle(brokers: &str, topic: &str, idle: Duration, timeout: Duration) -> Vec<Msg> {
    let consumer = subscribed(brokers, topic, "gr-idle");
    let mut out = Vec::new();
    let started = Instant::now();
    let mut last = None::<Instant>;
    while started.elapsed() < timeout && last.is_none_or(|t| t.elapsed() < idle) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push(Msg::of(&m));
                last = Some(Instant::now());
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// A TCP proxy to the broker that can be made to refuse connections
/// (the broker "unreachable") and to accept them again.
struct Proxy {
    port: u16,
    paused: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: Arc<Mutex<Option<u16>>>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let paused = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (p, c, s) = (paused.clone(), conns.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                let Some(tport) = *target.lock().unwrap() else {
                    continue;
                };
                if p.load(Ordering::Relaxed) {
                    // Unreachable: close at once, forward nothing.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", tport)) else {
                    continue;
                };
                let _ = server.set_nodelay(true);
                let _ = client.set_nodelay(true);
                {
                    let mut g = c.lock().unwrap();
                    g.push(client.try_clone().expect("clone"));
                    g.push(server.try_clone().expect("clone"));
                }
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy {
            port,
            paused,
            conns,
            stop,
        }
    }

    /// Cuts every connection and refuses new ones.
    fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.pause();
    }
}

fn stamped(seq: u64, vm: &str, kind: EventKind, path: &str, data: Option<&[u8]>) -> Arc<Stamped> {
    let mut e = FileEvent::new(1, kind, path.into(), FileType::File, 12 + seq);
    if let Some(d) = data {
        e.offset = Some(seq * 10);
        e.len = Some(d.len() as u64);
        e.size = Some(seq * 10 + d.len() as u64);
        e.data = Some(bytes::Bytes::copy_from_slice(d));
    }
    Arc::new(Stamped::new(seq, "gs9671".into(), vm.into(), e))
}

fn sink_cfg(brokers: &str, topic: &str) -> KafkaSinkConfig {
    let mut cfg = KafkaSinkConfig::new(brokers);
    cfg.topic = topic.to_string();
    cfg.librdkafka_options.insert(
        "reconnect.backoff.max.ms".into(),
        KafkaOptionValue::Integer(300),
    );
    cfg.librdkafka_options
        .insert("linger.ms".into(), KafkaOptionValue::Integer(1));
    cfg
}

/// (a) Events through the sink arrive with their JSON, headers and keys;
/// a `move` arrives under both keys. Also BSON values with VM keys.
#[test]
fn kafka_sink_events_arrive_with_keys_and_headers() {
    if !tansu_available("kafka_sink_events_arrive_with_keys_and_headers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = Broker::start(dir.path(), None);
    let brokers = broker.brokers();
    create_topic(&brokers, "ev-json", 3);
    create_topic(&brokers, "ev-bson.gs9671.web_1", 2);

    let mut mv = FileEvent::new(
        1,
        EventKind::Move,
        "/var/log/app.log.1".into(),
        FileType::File,
        40,
    );
    mv.old_path = Some("/var/log/app.log".into());
    let mut batch: Vec<Arc<Stamped>> = (1..=20)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/var/log/app.log"
            } else {
                "/var/log/syslog"
            };
            stamped(
                i,
                "web",
                EventKind::Modify,
                path,
                Some(format!("line {i}\n").as_bytes()),
            )
        })
        .collect();
    batch.push(Arc::new(Stamped::new(
        21,
        "gs9671".into(),
        "web".into(),
        mv,
    )));
    batch.push(stamped(
        22,
        "web",
        EventKind::Create,
        "/var/log/app.log",
        None,
    ));

    let mut sink = KafkaSink::new("k", &sink_cfg(&brokers, "ev-json")).unwrap();
    sink.health_check(Duration::from_secs(10)).unwrap();
    let missing = KafkaSink::new("m", &sink_cfg(&brokers, "no-such-topic")).unwrap();
    let e = missing
        .health_check(Duration::from_secs(10))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    sink.send(&batch[..10]).unwrap();
    sink.send(&batch[10..]).unwrap();
    sink.flush().unwrap();
    assert_eq!(sink.stats().sent, 22, "{:?}", sink.stats());
    assert_eq!(sink.stats().failed + sink.stats().dropped, 0);

    let msgs = consume(&brokers, "ev-json", 23, Duration::from_secs(30));
    assert_eq!(msgs.len(), 23, "22 events, the move twice");
    let want: HashMap<String, &Arc<Stamped>> = batch.iter().map(|s| (s.to_json(), s)).collect();
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut move_keys = Vec::new();
    for m in &msgs {
        let text = String::from_utf8(m.value.clone()).unwrap();
        let s = want
            .get(&text)
            .unwrap_or_else(|| panic!("a message that is no event's to_json: {text}"));
        assert_eq!(m.headers["host"], "gs9671");
        assert_eq!(m.headers["vm"], "web");
        assert_eq!(m.headers["event"], s.event.kind.as_str());
        assert_eq!(m.headers["seq"], s.seq.to_string());
        let key = m.key.clone().expect("a key");
        if s.event.kind == EventKind::Move {
            move_keys.push(key.clone());
        } else {
            assert_eq!(key, s.channel());
        }
        per_key.entry(key).or_default().push(s.seq);
    }
    move_keys.sort();
    assert_eq!(
        move_keys,
        [
            "gs9671:web:/var/log/app.log",
            "gs9671:web:/var/log/app.log.1"
        ]
    );
    // Per-key order: each key's messages in seq order, and one key is in
    // one partition.
    for (k, seqs) in &per_key {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{k}: {seqs:?}");
        let parts: std::collections::BTreeSet<i32> = msgs
            .iter()
            .filter(|m| m.key.as_deref() == Some(k))
            .map(|m| m.partition)
            .collect();
        assert_eq!(parts.len(), 1, "{k}");
    }

    // BSON values, VM keys, a topic template.
    let mut cfg = sink_cfg(&brokers, "ev-bson.{host}.{vm}");
    cfg.encoding = KafkaEncoding::Bson;
    cfg.key = KafkaKey::Vm;
    let mut sink = KafkaSink::new("b", &cfg).unwrap();
    let b2: Vec<Arc<Stamped>> = batch
        .iter()
        .map(|s| {
            Arc::new(Stamped::new(
                s.seq,
                s.host.clone(),
                "web:1".into(),
                s.event.clone(),
            ))
        })
        .collect();
    sink.send(&b2).unwrap();
    sink.flush().unwrap();
    let msgs = consume(
        &brokers,
        "ev-bson.gs9671.web_1",
        22,
        Duration::from_secs(30),
    );
    assert_eq!(msgs.len(), 22, "with vm keys a move is sent once");
    let mut seqs = Vec::new();
    for m in &msgs {
        assert_eq!(m.key.as_deref(), Some("gs9671:web:1"));
        let d = bson::Document::from_reader(&mut m.value.as_slice()).unwrap();
        let seq = d.get_i64("seq").unwrap() as u64;
        let s = &b2[(seq - 1) as usize];
        assert_eq!(d.get_str("event").unwrap(), s.event.kind.as_str());
        assert_eq!(d.get_str("path").unwrap(), s.event.path);
        if let Some(data) = &s.event.data {
            assert_eq!(d.get_binary_generic("data").unwrap(), &data[..]);
        }
        seqs.push(seq);
    }
    assert_eq!(
        seqs,
        (1..=22).collect::<Vec<u64>>(),
        "one VM key: seq order"
    );
}

/// (b) A real guest's log-append workload, replayed into Kafka, read back
/// by a consumer group: the same events as the replay's JSON lines, and
/// the log files rebuilt from them match the guest's own sha256.
#[test]
fn kafka_replay_rebuilds_guest_logs() {
    let name = "kafka_replay_rebuilds_guest_logs";
    if !tansu_available(name) || !gammaray_testbed::guest_available(name) {
        return;
    }
    common::in_temp_dir(name, |dir| {
        let rec = common::workload_recording(gammaray_testbed::Workload::Logs)?;
        let (broker, _) = Broker::start(dir, None);
        let brokers = broker.brokers();
        create_topic(&brokers, "guest-logs", 4);
        let events = dir.join("ev.jsonl");
        let (ok, stderr) = common::run(
            Command::new(common::gammaray())
                .arg("replay")
                .arg("--disk")
                .arg(&rec.base)
                .arg("--log")
                .arg(&rec.trace)
                .arg("--vm")
                .arg("logs")
                .arg("--host")
                .arg("gs9671")
                .arg("--events")
                .arg(&events)
                .arg("--sink")
                .arg(format!("kafka://{brokers}/guest-logs")),
            dir,
            "replay",
        )?;
        eprintln!("{}", stderr.trim_end());
        if !ok {
            return Err(format!("gammaray replay --sink failed:\n{stderr}"));
        }
        let text = std::fs::read_to_string(&events).map_err(|e| e.to_string())?;
        let lines: Vec<&str> = text.lines().collect();
        let moves = lines
            .iter()
            .filter(|l| l.contains(r#""event":"move""#))
            .count();
        let msgs = consume(
            &brokers,
            "guest-logs",
            lines.len() + moves,
            Duration::from_secs(60),
        );
        if msgs.len() != lines.len() + moves {
            return Err(format!(
                "consumed {} messages, expected {} events + {moves} second copies of moves",
                msgs.len(),
                lines.len()
            ));
        }
        // Every event once (a move under its old and new key), in seq
        // order per key; rebuild the stream in seq order.
        let mut by_seq: BTreeMap<u64, String> = BTreeMap::new();
        let mut last_per_key: HashMap<String, u64> = HashMap::new();
        for m in &msgs {
            let v = m.json();
            let seq = v["seq"].as_u64().ok_or("no seq")?;
            let key = m.key.clone().ok_or("no key")?;
            if let Some(&prev) = last_per_key.get(&key) {
                if prev >= seq {
                    return Err(format!("key {key}: seq {seq} after {prev}"));
                }
            }
            last_per_key.insert(key, seq);
            let text = String::from_utf8(m.value.clone()).map_err(|e| e.to_string())?;
            if let Some(old) = by_seq.insert(seq, text.clone()) {
                if old != text {
                    return Err(format!("seq {seq}: two different messages"));
                }
            }
        }
        let got: Vec<&str> = by_seq.values().map(String::as_str).collect();
        if got != lines {
            return Err("the consumed events differ from the replay's JSON lines".into());
        }
        // Rebuild every file from the consumed events and compare with the
        // guest's final listing (sha256 computed in the guest).
        let evs = gammaray_testbed::expect::parse_events(&got.join("\n"))?;
        let initial = common::crawl_listing(&rec.base, dir, "base", false)?;
        let report =
            gammaray_testbed::expect::check(&rec.truth.ops, &evs, &initial, &rec.truth.listing);
        let checked: Vec<&str> = report.content.iter().map(|c| c.path.as_str()).collect();
        eprintln!("{name}: files rebuilt from Kafka: {checked:?}");
        // (Files the base image already had, such as /var/log/app.log,
        // cannot be rebuilt from events alone: their old bytes never
        // travel; the check covers every file created during the trace.)
        for want in ["/var/log/nginx/access.log", "/var/log/syslog.1"] {
            if !checked.contains(&want) {
                return Err(format!(
                    "{want} was not rebuilt from the events (rebuilt: {checked:?}; unknown: {:?})",
                    report.content_unknown
                ));
            }
        }
        let bad: Vec<String> = report
            .content
            .iter()
            .filter_map(|c| c.result.as_ref().err().map(|e| format!("{}: {e}", c.path)))
            .collect();
        if !bad.is_empty() {
            return Err(format!(
                "files rebuilt from Kafka differ from the guest's: {bad:?}"
            ));
        }
        Ok(())
    });
}

/// Waits until the sink has nothing in flight.
fn drain(sink: &KafkaSink, within: Duration) {
    let started = Instant::now();
    while sink.in_flight() > 0 {
        assert!(
            started.elapsed() < within,
            "{} messages still in flight after {within:?}",
            sink.in_flight()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker in `dir` whose advertised address is a [`Proxy`] in front of
/// it: clients connect through the proxy, which the outage tests pause.
fn broker_behind_proxy(dir: &Path) -> (Broker, Proxy) {
    let target = Arc::new(Mutex::new(None));
    let proxy = Proxy::start(target.clone());
    let (broker, port) = Broker::start(dir, Some(proxy.port));
    *target.lock().unwrap() = Some(port);
    (broker, proxy)
}

/// (c) The broker unreachable mid-run, then back: `block` holds `send`
/// back and loses nothing, per-key order kept.
#[test]
fn kafka_outage_block_loses_nothing() {
    if !tansu_available("kafka_outage_block_loses_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (broker, proxy) = broker_behind_proxy(dir.path());
    let brokers = broker.brokers();
    create_topic(&brokers, "outage-block", 3);

    let mut cfg = sink_cfg(&brokers, "outage-block");
    cfg.buffer_events = 50;
    const PATHS: [&str; 5] = ["/a", "/b", "/c", "/d", "/e"];
    let ev = move |i: u64| {
        stamped(
            i,
            "vm1",
            EventKind::Modify,
            PATHS[(i % 5) as usize],
            Some(format!("{i}").as_bytes()),
        )
    };
    let mut sink = KafkaSink::new("blk", &cfg).unwrap();
    sink.send(&(1..=100).map(ev).collect::<Vec<_>>()).unwrap();
    sink.flush().unwrap();

    proxy.pause();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let sender = std::thread::spawn(move || {
        // 400 events, one small batch at a time, as the engine would.
        for start in (101..=500).step_by(20) {
            sink.send(&(start..start + 20).map(ev).collect::<Vec<_>>())
                .unwrap();
        }
        d2.store(true, Ordering::Relaxed);
        sink
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !done.load(Ordering::Relaxed),
        "send returned although the broker is unreachable and the buffer holds 50"
    );
    proxy.resume();
    let mut sink = sender.join().unwrap();
    sink.flush().unwrap();
    let st = sink.stats();
    assert_eq!((st.sent, st.failed, st.dropped), (500, 0, 0), "{st:?}");

    let msgs = consume(&brokers, "outage-block", 500, Duration::from_secs(60));
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in &msgs {
        per_key
            .entry(m.key.clone().unwrap())
            .or_default()
            .push(m.json()["seq"].as_u64().unwrap());
    }
    let mut all: Vec<u64> = per_key.values().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=500).collect::<Vec<u64>>(),
        "every event exactly once"
    );
    for (k, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{k} out of order: {seqs:?}"
        );
    }
}

/// (c) With `drop_newest` and a tiny buffer, an outage drops events; once
/// the broker is back, one `lost` event per VM says exactly how many, as
/// do the sink's stats.
#[test]
fn kafka_outage_drop_newest_reports_lost() {
    if !tansu_available("kafka_outage_drop_newest_reports_lost") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (broker, proxy) = broker_behind_proxy(dir.path());
    let brokers = broker.brokers();
    create_topic(&brokers, "outage-drop", 2);

    let mut cfg = sink_cfg(&brokers, "outage-drop");
    cfg.buffer_events = 6;
    cfg.when_full = KafkaWhenFull::DropNewest;
    let mut sink = KafkaSink::new("drp", &cfg).unwrap();
    let vms = ["vm1", "vm2"];
    // Per VM its own seq numbers; events alternate between the VMs.
    let ev = |i: u64| {
        let vm = vms[(i % 2) as usize];
        stamped(i / 2 + 1, vm, EventKind::Modify, "/var/log/x", Some(b"x"))
    };
    // Before the outage: batches the buffer holds, each drained.
    for start in (0..20).step_by(5) {
        sink.send(&(start..start + 5).map(ev).collect::<Vec<_>>())
            .unwrap();
        drain(&sink, Duration::from_secs(30));
    }
    assert_eq!(sink.stats().dropped, 0);

    proxy.pause();
    std::thread::sleep(Duration::from_millis(300));
    let outage: Vec<Arc<Stamped>> = (20..220).map(ev).collect();
    let started = Instant::now();
    sink.send(&outage).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drop_newest must not block"
    );
    let dropped = sink.stats().dropped;
    assert_eq!(dropped, 200 - 6, "{:?}", sink.stats());

    proxy.resume();
    drain(&sink, Duration::from_secs(30));
    for start in (220..240).step_by(4) {
        sink.send(&(start..start + 4).map(ev).collect::<Vec<_>>())
            .unwrap();
        drain(&sink, Duration::from_secs(30));
    }
    sink.flush().unwrap();
    let st = sink.stats();
    assert_eq!(
        (st.sent, st.failed, st.dropped),
        (240 - dropped, 0, dropped),
        "{st:?}"
    );

    let want = 240 - dropped as usize + 2;
    let msgs = consume(&brokers, "outage-drop", want, Duration::from_secs(60));
    assert_eq!(msgs.len(), want, "kept events and one lost event per VM");
    let mut delivered: HashMap<String, u64> = HashMap::new();
    let mut reported: HashMap<String, u64> = HashMap::new();
    for m in &msgs {
        let v = m.json();
        let vm = v["vm"].as_str().unwrap().to_string();
        if v["event"] == "lost" {
            assert_eq!(v["reason"], "sink_overflow");
            assert_eq!(m.headers["event"], "lost");
            assert!(reported
                .insert(vm, v["dropped"].as_u64().unwrap())
                .is_none());
        } else {
            *delivered.entry(vm).or_default() += 1;
        }
    }
    assert_eq!(reported.values().sum::<u64>(), dropped);
    for vm in vms {
        assert_eq!(
            delivered[vm] + reported[vm],
            120,
            "{vm}: delivered plus reported lost is what was sent"
        );
    }
}

/// A `gammaray.toml` with one VM served from `img` on `sock`, and a Kafka
/// sink `logs` on `brokers`/`topic` that receives every `/var/log` event.
fn run_config(img: &Path, sock: &Path, brokers: &str, topic: &str) -> String {
    format!(
        "host = \"h\"\n[metrics]\nenabled = false\n\
         [[vm]]\nname = \"app\"\ndisk = \"{}\"\nsource = {{ type = \"serve\", socket = \"{}\" }}\n\
         [sinks.logs]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
         [[route]]\nchannel = \"*:*:/var/log/**\"\nsinks = [\"logs\"]\n",
        img.display(),
        sock.display()
    )
}

/// (d) `gammaray run` checks its Kafka sink before it serves anything: a
/// port nothing listens on, and then a real broker without the topic, each
/// stop it with an error naming the sink; the dead port well before the
/// health check's 10 s timeout (librdkafka reports every broker down).
#[test]
fn kafka_run_refuses_unreachable_brokers_and_missing_topics() {
    let name = "kafka_run_refuses_unreachable_brokers_and_missing_topics";
    if !tansu_available(name) {
        return;
    }
    common::in_temp_dir(name, |dir| {
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
        let sock = dir.join("nbd.sock");
        let cfg = dir.join("gammaray.toml");
        let run = |toml: &str, label: &str| -> Result<(bool, String, Duration), String> {
            std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
            let t0 = Instant::now();
            let (ok, stderr) = common::run(
                Command::new(common::gammaray())
                    .args(["run", "--for", "60", "-c"])
                    .arg(&cfg),
                dir,
                label,
            )?;
            Ok((ok, stderr, t0.elapsed()))
        };

        let dead = format!("127.0.0.1:{}", free_port());
        let (ok, stderr, took) = run(&run_config(&img, &sock, &dead, "events"), "run-dead")?;
        eprintln!(
            "dead port: {:.2} s: {}",
            took.as_secs_f64(),
            stderr.trim_end()
        );
        let want = format!("sink \"logs\": health check failed: cannot reach Kafka brokers {dead}");
        if ok || !stderr.contains(&want) {
            return Err(format!(
                "run with no broker: ok={ok}, wanted {want:?} in: {stderr}"
            ));
        }
        if took > Duration::from_secs(5) {
            return Err(format!(
                "run with no broker took {:.1} s to give up",
                took.as_secs_f64()
            ));
        }
        if sock.exists() {
            return Err("the VM's disk was served although the sink is unusable".into());
        }

        let (broker, _) = Broker::start(dir, None);
        let brokers = broker.brokers();
        create_topic(&brokers, "other", 1);
        let (ok, stderr, took) = run(&run_config(&img, &sock, &brokers, "events"), "run-topic")?;
        eprintln!(
            "missing topic: {:.2} s: {}",
            took.as_secs_f64(),
            stderr.trim_end()
        );
        let want = "sink \"logs\": health check failed: topic \"events\" does not exist";
        if ok || !stderr.contains(want) {
            return Err(format!(
                "run without the topic: ok={ok}, wanted {want:?} in: {stderr}"
            ));
        }
        if sock.exists() {
            return Err("the VM's disk was served although the topic is missing".into());
        }
        Ok(())
    });
}

/// The line `op_append_lines PATH PREFIX N` appends `N` of (testbed/guest/lib.sh).
fn guest_lines(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{prefix} line {i}: the quick brown fox jumps over the lazy dog\n"))
        .collect()
}

/// (e) `gammaray run` → `[[route]]` → Kafka sink → a consumer group that
/// rebuilds a guest's log files from the `modify` events' offset and data.
/// Ground truth: the lines the guest appended (the workload's known text)
/// and the sha256 of each file computed inside the guest.
#[test]
fn kafka_run_live_guest_log_rebuilt_by_a_consumer_group() {
    let name = "kafka_run_live_guest_log_rebuilt_by_a_consumer_group";
    if !tansu_available(name) || !gammaray_testbed::guest_available(name) {
        return;
    }
    use gammaray_testbed::{disk, Drive, FsKind, Guest, RunSpec};
    use sha2::Digest;
    common::in_temp_dir(name, |dir| {
        let (broker, _) = Broker::start(dir, None);
        let brokers = broker.brokers();
        create_topic(&brokers, "live-logs", 3);
        let img = dir.join("disk.img");
        disk::make_base_image(FsKind::Ext4, &img, disk::DEFAULT_DISK_MIB)
            .map_err(|e| e.to_string())?;
        let sock = dir.join("nbd.sock");
        let mut engine = common::engine::Engine::with_config(
            dir,
            &run_config(&img, &sock, &brokers, "live-logs"),
        )?;
        engine.wait_serving(std::slice::from_ref(&sock))?;
        // Two logs (two keys, so possibly two partitions), appended to in
        // rounds that end mid-block, a sync after each round: every sync
        // rewrites each log's last block, so the events overlap.
        let logs = ["/var/log/kafka.log", "/var/log/app/access.log"];
        let mut script = String::from("op_mkdir /var/log/app\n");
        let mut want = vec![String::new(); logs.len()];
        for log in logs {
            script.push_str(&format!("op_create {log}\n"));
        }
        for round in 0..8usize {
            for (i, log) in logs.iter().enumerate() {
                let (prefix, n) = (format!("r{round}f{i}"), 5 + 11 * round + 17 * i);
                script.push_str(&format!("op_append_lines {log} {prefix} {n}\n"));
                want[i].push_str(&guest_lines(&prefix, n));
            }
            script.push_str("op_sync\n");
        }
        script.push_str(&format!("op_append {} \"last words\"\nop_sync\n", logs[0]));
        want[0].push_str("last words\n");
        let out = Guest::new()
            .map_err(|e| e.to_string())?
            .run(&RunSpec::new(dir, script, FsKind::Ext4, Drive::Nbd(sock)))
            .map_err(|e| format!("guest: {e}"));
        let err = engine.finish();
        let out = out?;
        err?;

        // The engine has exited, so every message is on the broker.
        let msgs = consume_until_idle(
            &brokers,
            "live-logs",
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        for (log, want) in logs.iter().zip(&want) {
            let truth = out
                .truth
                .listing
                .iter()
                .find(|e| e.path == *log)
                .ok_or_else(|| format!("the guest did not list {log}"))?;
            let guest_sha = truth.sha256.clone().ok_or("no sha256 from the guest")?;
            if truth.size != want.len() as u64
                || hex::encode(sha2::Sha256::digest(want.as_bytes())) != guest_sha
            {
                return Err(format!(
                    "the guest's {log} ({} bytes) is not the workload's text ({} bytes)",
                    truth.size,
                    want.len()
                ));
            }
            let key = format!("h:app:{log}");
            let mut events = Vec::new();
            let mut last_seq = None;
            for m in msgs
                .iter()
                .filter(|m| m.key.as_deref() == Some(key.as_str()))
            {
                let text = String::from_utf8(m.value.clone()).map_err(|e| e.to_string())?;
                let ev = gammaray_testbed::expect::parse_events(&text)?
                    .pop()
                    .ok_or("an empty message")?;
                let seq = m.json()["seq"].as_u64().ok_or("no seq")?;
                if last_seq.is_some_and(|l| l >= seq) {
                    return Err(format!("key {key}: seq {seq} after {last_seq:?}"));
                }
                last_seq = Some(seq);
                events.push(ev);
            }
            let modifies = events.iter().filter(|e| e.event == "modify").count();
            let partitions: std::collections::BTreeSet<i32> = msgs
                .iter()
                .filter(|m| m.key.as_deref() == Some(key.as_str()))
                .map(|m| m.partition)
                .collect();
            eprintln!(
                "{name}: {} messages consumed, {} for {key} ({modifies} modify) on partitions {partitions:?}",
                msgs.len(),
                events.len()
            );
            if !events.iter().any(|e| e.event == "create") {
                return Err(format!("no create event for {log}"));
            }
            // Rebuild: each modify's data at its offset, then its size.
            let mut file: Vec<u8> = Vec::new();
            for e in events.iter().filter(|e| e.event == "modify") {
                if let (Some(off), Some(data)) = (e.offset, e.data()) {
                    let off = usize::try_from(off).map_err(|e| e.to_string())?;
                    let end = off + data.len();
                    if file.len() < end {
                        file.resize(end, 0);
                    }
                    file[off..end].copy_from_slice(&data);
                }
                if let Some(n) = e.size {
                    file.resize(usize::try_from(n).map_err(|e| e.to_string())?, 0);
                }
            }
            let got_sha = hex::encode(sha2::Sha256::digest(&file));
            if got_sha != guest_sha {
                let first_diff = file
                    .iter()
                    .zip(want.as_bytes())
                    .position(|(a, b)| a != b)
                    .unwrap_or(file.len().min(want.len()));
                return Err(format!(
                    "{log} rebuilt from Kafka: {} bytes, sha256 {got_sha}; the guest's: {} bytes, \
                     sha256 {guest_sha}; first difference at byte {first_diff}",
                    file.len(),
                    truth.size
                ));
            }
        }
        Ok(())
    });
}
