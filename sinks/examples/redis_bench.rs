//! Throughput of the Redis sink against a plain redis-rs client publishing
//! the same payloads, in one run (bench/redis.sh starts a redis-server and
//! runs this, then `redis-benchmark` with a PUBLISH of the same size).
//!
//! `redis_bench --url redis://HOST:PORT [--events N] [--data BYTES] [--batch N] [--rounds N]`
//!
//! Each round publishes N `modify` events with BYTES of data (spread over
//! 64 files of 4 VMs) twice: once with a bare multiplexed connection,
//! pipelined in the sink's own chunks ([`PIPELINE_COMMANDS`] commands, with
//! payloads encoded before the clock starts), once through
//! [`RedisSink::send`] in batches (encoding included, as in the engine).
//! One subscriber is listening on `*`, so the server really delivers
//! every message. Prints events/s and MB/s (payload bytes) for each, and
//! the sink's overhead.

#[path = "shared/bench.rs"]
mod bench;

use std::sync::Arc;
use std::time::Instant;

use gammaray_config::{RedisEncoding, RedisSinkConfig};
use gammaray_sinks::redis::payload::encode;
use gammaray_sinks::redis::{RedisSink, PIPELINE_COMMANDS};
use gammaray_sinks::{Sink, Stamped};

use bench::{arg, modify_events};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url", "redis://127.0.0.1:6379");
    let n: u64 = arg(&args, "--events", "200000").parse().expect("--events");
    let data: usize = arg(&args, "--data", "200").parse().expect("--data");
    let batch: usize = arg(&args, "--batch", "256").parse().expect("--batch");
    let rounds: u32 = arg(&args, "--rounds", "3").parse().expect("--rounds");

    let events: Vec<Arc<Stamped>> = modify_events(n, data);
    let mut raw = Vec::new();
    let t0 = Instant::now();
    for s in &events {
        encode(s, RedisEncoding::Bson, usize::MAX, "", &mut raw).expect("encode");
    }
    let encode_s = t0.elapsed().as_secs_f64();
    let payload_bytes: usize = raw.iter().map(|m| m.payload.len()).sum();
    println!(
        "redis_bench: {n} events, {data} data bytes each ({:.0} B BSON payloads on average), batches of {batch}, {rounds} rounds",
        payload_bytes as f64 / n as f64
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = redis::Client::open(url.as_str()).expect("url");
    // A subscriber on everything, draining in the background.
    let mut sub = client.get_connection().expect("subscriber connection");
    let counted = std::thread::spawn(move || {
        let mut ps = sub.as_pubsub();
        ps.psubscribe("*").expect("psubscribe");
        let mut got = 0u64;
        while let Ok(m) = ps.get_message() {
            if m.get_channel_name() == "bench-stop" {
                break;
            }
            got += 1;
        }
        got
    });
    std::thread::sleep(std::time::Duration::from_millis(200));

    let mut raw_best = f64::MAX;
    let mut sink_best = f64::MAX;
    for _ in 0..rounds {
        // Plain redis-rs, pipelined.
        let mut conn = rt
            .block_on(client.get_multiplexed_async_connection())
            .expect("connection");
        let t0 = Instant::now();
        for chunk in raw.chunks(PIPELINE_COMMANDS) {
            let mut p = redis::pipe();
            for m in chunk {
                p.cmd("PUBLISH")
                    .arg(&m.channel)
                    .arg(&m.payload[..])
                    .ignore();
            }
            rt.block_on(p.query_async::<()>(&mut conn))
                .expect("publish");
        }
        let raw_s = t0.elapsed().as_secs_f64();
        raw_best = raw_best.min(raw_s);

        // The sink.
        let mut sink = RedisSink::new("bench", &RedisSinkConfig::new(url.clone())).expect("sink");
        let t0 = Instant::now();
        for chunk in events.chunks(batch) {
            sink.send(chunk).expect("send");
        }
        sink.flush().expect("flush");
        let sink_s = t0.elapsed().as_secs_f64();
        sink_best = sink_best.min(sink_s);
        assert_eq!(sink.stats().sent, n, "the sink sent every event");
        println!(
            "  round: plain {:.0} events/s {:.1} MB/s | sink {:.0} events/s {:.1} MB/s",
            n as f64 / raw_s,
            payload_bytes as f64 / raw_s / 1e6,
            n as f64 / sink_s,
            payload_bytes as f64 / sink_s / 1e6
        );
    }
    let mut conn = client.get_connection().expect("connection");
    let _: () = redis::cmd("PUBLISH")
        .arg("bench-stop")
        .arg("")
        .query(&mut conn)
        .expect("stop");
    let got = counted.join().expect("subscriber");
    println!(
        "best: plain {:.0} events/s ({:.1} MB/s), sink {:.0} events/s ({:.1} MB/s): sink overhead {:.0}%; BSON encoding alone {:.0} events/s; a subscriber on `*` received {got} of {} messages (Redis disconnects a subscriber that falls behind)",
        n as f64 / raw_best,
        payload_bytes as f64 / raw_best / 1e6,
        n as f64 / sink_best,
        payload_bytes as f64 / sink_best / 1e6,
        (sink_best / raw_best - 1.0) * 100.0,
        n as f64 / encode_s,
        2 * u64::from(rounds) * n
    );
}
