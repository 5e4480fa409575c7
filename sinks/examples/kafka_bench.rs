//! Throughput of the Kafka sink against a plain rdkafka producer sending
//! the same payloads, keys and headers, in one run (bench/kafka.sh starts
//! a tansu broker and runs this).
//!
//! `kafka_bench --brokers HOST:PORT [--events N] [--data BYTES] [--batch N] [--rounds N]`
//!
//! Each round produces N `modify` events with BYTES of data (spread over 64
//! files of 4 VMs) twice, to two fresh topics: once with a bare
//! `ThreadedProducer` (payloads encoded before the clock starts), once
//! through [`KafkaSink::send`] in batches plus [`Sink::flush`] (encoding
//! included, as in the engine). Both use the same librdkafka settings
//! (acks all, idempotent, linger 5 ms). Prints events/s and MB/s (value
//! bytes) for each, and the sink's overhead.

#[path = "shared/bench.rs"]
mod bench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gammaray_config::KafkaSinkConfig;
use gammaray_sinks::kafka::KafkaSink;
use gammaray_sinks::{Sink, Stamped};

use bench::{arg, modify_events};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("create_topics")
    {
        r.expect("topic created");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let brokers = arg(&args, "--brokers", "127.0.0.1:9092");
    let n: u64 = arg(&args, "--events", "200000").parse().expect("--events");
    let data: usize = arg(&args, "--data", "200").parse().expect("--data");
    let batch: usize = arg(&args, "--batch", "256").parse().expect("--batch");
    let rounds: u32 = arg(&args, "--rounds", "3").parse().expect("--rounds");

    let events: Vec<Arc<Stamped>> = modify_events(n, data);
    // The raw producer's input: value, key, headers, encoded beforehand.
    let raw: Vec<(String, String, String, &'static str)> = events
        .iter()
        .map(|s| {
            (
                s.to_json(),
                s.channel(),
                s.seq.to_string(),
                s.event.kind.as_str(),
            )
        })
        .collect();
    let value_bytes: usize = raw.iter().map(|r| r.0.len()).sum();
    println!(
        "kafka_bench: {n} events, {data} data bytes each ({:.0} B JSON values on average), batches of {batch}, {rounds} rounds",
        value_bytes as f64 / n as f64
    );

    let mut raw_best = f64::MAX;
    let mut sink_best = f64::MAX;
    for round in 0..rounds {
        // Plain rdkafka.
        let topic = format!("bench-raw-{}-{round}", std::process::id());
        create_topic(&brokers, &topic);
        let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "100016")
            .create()
            .expect("producer");
        let t0 = Instant::now();
        for (i, (value, key, seq, kind)) in raw.iter().enumerate() {
            let s = &events[i];
            let headers = OwnedHeaders::new_with_capacity(4)
                .insert(Header {
                    key: "host",
                    value: Some(&*s.host),
                })
                .insert(Header {
                    key: "vm",
                    value: Some(&*s.vm),
                })
                .insert(Header {
                    key: "event",
                    value: Some(*kind),
                })
                .insert(Header {
                    key: "seq",
                    value: Some(seq.as_str()),
                });
            let mut rec = BaseRecord::to(&topic)
                .payload(value.as_str())
                .key(key.as_str())
                .headers(headers);
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        p.flush(Duration::from_secs(120)).expect("flush");
        let raw_s = t0.elapsed().as_secs_f64();
        drop(p);

        // The sink.
        let topic = format!("bench-sink-{}-{round}", std::process::id());
        create_topic(&brokers, &topic);
        let mut cfg = KafkaSinkConfig::new(brokers.clone());
        cfg.topic = topic;
        let mut sink = KafkaSink::new("bench", &cfg).expect("sink");
        let t0 = Instant::now();
        for chunk in events.chunks(batch) {
            sink.send(chunk).expect("send");
        }
        sink.flush().expect("flush");
        let sink_s = t0.elapsed().as_secs_f64();
        let st = sink.stats();
        assert_eq!(st.sent, n, "{st:?}");

        let line = |what: &str, s: f64| {
            format!(
                "{what}: {:.3} s, {:.0} events/s, {:.1} MB/s",
                s,
                n as f64 / s,
                value_bytes as f64 / 1e6 / s
            )
        };
        println!(
            "round {round}: {}; {}; overhead {:+.1}%",
            line("rdkafka", raw_s),
            line("sink", sink_s),
            (sink_s / raw_s - 1.0) * 100.0
        );
        raw_best = raw_best.min(raw_s);
        sink_best = sink_best.min(sink_s);
    }
    println!(
        "best: rdkafka {:.0} events/s ({:.1} MB/s), sink {:.0} events/s ({:.1} MB/s), overhead {:+.1}%",
        n as f64 / raw_best,
        value_bytes as f64 / 1e6 / raw_best,
        n as f64 / sink_best,
        value_bytes as f64 / 1e6 / sink_best,
        (sink_best / raw_best - 1.0) * 100.0
    );
}
