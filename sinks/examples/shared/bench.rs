//! What the sink benchmarks (`kafka_bench`, `redis_bench`) share: their
//! argument reader and the events they send.

use std::sync::Arc;

use gammaray_core::{EventKind, FileEvent, FileType};
use gammaray_sinks::Stamped;

/// The value after `name` in `args`, else `default`.
pub fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

/// `n` `modify` events of `data` bytes each, spread over 64 log files of
/// 4 VMs of host `bench`, numbered from 1 (four events per sequence
/// number, as four VMs would stamp them).
pub fn modify_events(n: u64, data: usize) -> Vec<Arc<Stamped>> {
    let vms: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("vm{i}"))).collect();
    let host: Arc<str> = "bench".into();
    let bytes = bytes::Bytes::from(vec![b'x'; data]);
    (0..n)
        .map(|i| {
            let mut e = FileEvent::new(
                1,
                EventKind::Modify,
                format!("/var/log/f{}.log", i % 64),
                FileType::File,
                12 + i % 64,
            );
            e.offset = Some(i * data as u64);
            e.len = Some(data as u64);
            e.size = Some((i + 1) * data as u64);
            e.data = Some(bytes.clone());
            Arc::new(Stamped::new(
                i / 4 + 1,
                host.clone(),
                vms[(i % 4) as usize].clone(),
                e,
            ))
        })
        .collect()
}
