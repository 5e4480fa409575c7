//! Tests of loading, layering and validation. Each validation test asserts
//! the key and the problem an operator reads in the message.

use super::*;
use std::io::Write;

fn err(toml: &str) -> String {
    parse_str(toml).unwrap_err().to_string()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn tmp_toml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn default_config() {
    let cfg = load_with_env(None, Vec::new()).unwrap();
    assert_eq!(cfg.host, default_host());
    assert!(!cfg.host.is_empty());
    assert!(cfg.vm.is_empty());
    assert_eq!(cfg.policy, Policy::default());
    assert_eq!(cfg.policy.queue_bytes, 250 << 20);
    assert_eq!(cfg.policy.flush_timeout_ms, 5000);
    assert_eq!(cfg.policy.unknown_ttl_ms, 30_000);
    assert_eq!(cfg.policy.unknown_budget_bytes, 64 << 20);
    assert!(cfg.policy.data_drop.enabled);
    assert!(!cfg.policy.lazy_load.enabled);
    assert_eq!(cfg.sinks.len(), 1);
    assert_eq!(cfg.sinks["stdout"], SinkConfig::Stdout(StdoutSinkConfig {}));
    assert_eq!(
        cfg.route,
        vec![Route {
            channel: "*:*:/**".into(),
            sinks: vec!["stdout".into()]
        }]
    );
    assert_eq!(cfg.metrics, Metrics::default());
    assert_eq!(cfg.metrics.listen.to_string(), "127.0.0.1:9187");
}

#[test]
fn empty_file_equals_embedded_default() {
    assert_eq!(
        parse_str("").unwrap(),
        load_with_env(None, Vec::new()).unwrap()
    );
}

#[test]
fn full_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("web.img");
    let log = dir.path().join("web.trace");
    std::fs::write(&disk, b"").unwrap();
    std::fs::write(&log, b"").unwrap();
    let toml = format!(
        r#"
host = "gs9671"
[[vm]]
name = "web"
disk = "{disk}"
source = {{ type = "serve", socket = "{dir}/web.sock" }}
[[vm]]
name = "db"
disk = "{disk}"
index = "{dir}/db.idx"
[vm.source]
type = "attach"
qmp = "/run/qmp.sock"
drive = "drive0"
via = "blklogwrites"
[[vm]]
name = "old"
disk = "{disk}"
source = {{ type = "replay", log = "{log}", pace = true }}
[policy]
queue_bytes = "1GiB"
unknown_budget_bytes = 1048576
[policy.data_drop]
high_water = 0.9
low_water = 0.25
[policy.lazy_load]
enabled = true
budget_bytes = "32MiB"
[sinks.out]
type = "stdout"
[sinks.log]
type = "file"
path = "{dir}/events.jsonl"
[[route]]
channel = "gs9671:*:/var/log/auth.log"
sinks = ["log", "out"]
[metrics]
listen = "[::1]:9000"
"#,
        disk = disk.display(),
        log = log.display(),
        dir = dir.path().display()
    );
    let cfg = parse_str(&toml).unwrap();
    assert_eq!(cfg.host, "gs9671");
    assert_eq!(cfg.vm.len(), 3);
    assert_eq!(
        cfg.vm[0].source,
        Source::Serve {
            socket: dir.path().join("web.sock")
        }
    );
    assert_eq!(
        cfg.vm[1].source,
        Source::Attach {
            qmp: "/run/qmp.sock".into(),
            drive: "drive0".into(),
            via: AttachVia::Blklogwrites,
            copy_rate: 0,
        }
    );
    assert_eq!(cfg.vm[1].index, Some(dir.path().join("db.idx")));
    assert_eq!(
        cfg.vm[2].source,
        Source::Replay {
            log: log.clone(),
            pace: true
        }
    );
    assert_eq!(cfg.policy.queue_bytes, 1 << 30);
    assert_eq!(cfg.policy.unknown_budget_bytes, 1 << 20);
    assert_eq!(cfg.policy.data_drop.high_water, 0.9);
    assert_eq!(cfg.policy.lazy_load.budget_bytes, 32 << 20);
    assert_eq!(
        cfg.sinks["log"],
        SinkConfig::File(FileSinkConfig {
            path: dir.path().join("events.jsonl")
        })
    );
    assert_eq!(cfg.metrics.listen.to_string(), "[::1]:9000");

    // Round trip: serialize and read back.
    let again = parse_str(&cfg.to_toml()).unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn default_round_trips() {
    let cfg = load_with_env(None, Vec::new()).unwrap();
    assert_eq!(parse_str(&cfg.to_toml()).unwrap(), cfg);
}

#[test]
fn attach_via_defaults_to_mirror_and_replay_pace_to_false() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, b"").unwrap();
    let cfg = parse_str(&format!(
        "[[vm]]\nname = \"a\"\ndisk = \"{d}\"\nsource = {{ type = \"attach\", qmp = \"/q\", drive = \"d0\" }}\n\
         [[vm]]\nname = \"b\"\ndisk = \"{d}\"\nsource = {{ type = \"replay\", log = \"{d}\" }}\n",
        d = disk.display()
    ))
    .unwrap();
    assert!(matches!(
        cfg.vm[0].source,
        Source::Attach {
            via: AttachVia::Mirror,
            ..
        }
    ));
    assert!(matches!(
        cfg.vm[1].source,
        Source::Replay { pace: false, .. }
    ));
}

#[test]
fn examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    // The examples name disks that do not exist on a test machine: check
    // the syntax and types with the file layer, then validate everything
    // except file existence by pointing the VMs at a real file.
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, b"").unwrap();
    for name in ["gammaray.toml", "minimal.toml"] {
        let path = root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut fixed = cfg.clone();
        for vm in &mut fixed.vm {
            vm.disk = disk.clone();
            match &mut vm.source {
                Source::Replay { log, .. } => *log = disk.clone(),
                Source::Serve { socket } => *socket = dir.path().join("s.sock"),
                Source::Attach { .. } => {}
            }
            vm.index = None;
        }
        for sink in fixed.sinks.values_mut() {
            if let SinkConfig::File(f) = sink {
                f.path = dir.path().join("events.jsonl");
            }
        }
        fixed.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        // And through the real loader (config crate + env layer), which
        // must agree with plain toml up to the missing files.
        match load_with_env(Some(&path), Vec::new()) {
            Ok(loaded) => assert_eq!(loaded, cfg),
            Err(e) => assert!(e.to_string().contains("does not exist"), "{name}: {e}"),
        }
    }
    let full =
        toml::from_str::<Config>(&std::fs::read_to_string(root.join("gammaray.toml")).unwrap())
            .unwrap();
    assert!(full.vm.len() >= 3, "the full example shows every source");
    assert!(full.sinks.len() >= 2);
}

#[test]
fn unknown_key_top_level() {
    let e = err("hots = \"x\"\n");
    assert!(e.contains("hots"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn unknown_key_names_section_and_key() {
    let e = err("[policy]\nqueue_byte = 1\n");
    assert!(
        e.starts_with(
            "<string>: policy: unknown field `queue_byte`, expected one of `queue_bytes`"
        ),
        "{e}"
    );
    assert_eq!(
        parse_str("[policy]\nqueue_byte = 1\n").unwrap_err().key(),
        Some("policy")
    );
    let e = err("[policy.data_drop]\nhigh = 0.5\n");
    assert!(e.contains("policy.data_drop") && e.contains("high"), "{e}");
    let e = err("[metrics]\nport = 1\n");
    assert!(e.contains("metrics") && e.contains("port"), "{e}");
    let e = err("[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"stdout\"]\nsink = \"x\"\n");
    assert!(e.contains("route") && e.contains("sink"), "{e}");
}

#[test]
fn unknown_key_in_sink_and_source() {
    let e = err("[sinks.f]\ntype = \"file\"\npath = \"/tmp/x\"\nmode = 1\n");
    assert!(e.contains("sinks.f") && e.contains("mode"), "{e}");
    let e = err("[sinks.f]\ntype = \"carrier-pigeon\"\n");
    assert!(e.contains("sinks.f") && e.contains("carrier-pigeon"), "{e}");
    let e = err(
        "[[vm]]\nname = \"a\"\ndisk = \"/\"\nsource = { type = \"serve\", socket = \"/tmp/s\", port = 1 }\n",
    );
    assert!(
        e.starts_with("<string>: vm[0].source: unknown field `port`"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_key() {
    let e = err("[policy]\nflush_timeout_ms = \"soon\"\n");
    assert!(e.contains("policy.flush_timeout_ms"), "{e}");
    let e = err("[policy]\nqueue_bytes = \"lots\"\n");
    assert!(
        e.contains("policy.queue_bytes") && e.contains("lots"),
        "{e}"
    );
}

#[test]
fn missing_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("a.img");
    std::fs::write(&disk, b"").unwrap();
    let e = parse_str(&format!(
        "[[vm]]\nname = \"a\"\ndisk = \"{}\"\nsource = {{ type = \"serve\", socket = \"/tmp/a.sock\" }}\n\
         [[vm]]\nname = \"b\"\ndisk = \"/x/y.img\"\nsource = {{ type = \"serve\", socket = \"/tmp/b.sock\" }}\n",
        disk.display()
    ))
    .unwrap_err();
    assert_eq!(e.key(), Some("vm[1].disk"));
    assert_eq!(e.to_string(), "vm[1].disk: /x/y.img does not exist");
}

#[test]
fn missing_replay_log_and_socket_dir() {
    let e = err(
        "[[vm]]\nname = \"a\"\ndisk = \"/\"\nsource = { type = \"replay\", log = \"/no/trace\" }\n",
    );
    assert_eq!(e, "vm[0].source.log: /no/trace does not exist");
    let e = err("[[vm]]\nname = \"a\"\ndisk = \"/\"\nsource = { type = \"serve\", socket = \"/no/dir/s.sock\" }\n");
    assert!(
        e.starts_with("vm[0].source.socket:") && e.contains("/no/dir does not exist"),
        "{e}"
    );
}

#[test]
fn missing_vm_fields() {
    let e = err("[[vm]]\nname = \"a\"\ndisk = \"/\"\n");
    assert_eq!(e, "<string>: vm[0].source: missing (this key is required)");
}

#[test]
fn duplicate_vm_names() {
    let vm = "[[vm]]\nname = \"web\"\ndisk = \"/\"\nsource = { type = \"serve\", socket = \"/tmp/s\" }\n";
    let e = err(&format!("{vm}{vm}"));
    assert_eq!(e, "vm[1].name: duplicate VM name \"web\" (also vm[0])");
}

#[test]
fn vm_and_host_names_without_colon() {
    let e = err("[[vm]]\nname = \"a:b\"\ndisk = \"/\"\nsource = { type = \"serve\", socket = \"/tmp/s\" }\n");
    assert!(e.starts_with("vm[0].name:") && e.contains("':'"), "{e}");
    let e = err("host = \"\"\n");
    assert!(e.starts_with("host:") && e.contains("empty"), "{e}");
}

#[test]
fn route_to_undefined_sink() {
    let e = err(
        "[sinks.stdout]\ntype = \"stdout\"\n[sinks.file1]\ntype = \"file\"\npath = \"/tmp/e.jsonl\"\n\
         [[route]]\nchannel = \"*:*:/**\"\nsinks = [\"foo\"]\n",
    );
    assert_eq!(
        e,
        "route[0].sinks: no sink named \"foo\" (defined: file1, stdout)"
    );
}

#[test]
fn route_with_no_sinks_and_sinks_without_routes() {
    let e = err("[[route]]\nchannel = \"*:*:/**\"\nsinks = []\n");
    assert!(e.starts_with("route[0].sinks:"), "{e}");
    // Defining sinks but no routes keeps the default route to "stdout",
    // which then has to exist.
    let e = err("[sinks.f]\ntype = \"file\"\npath = \"/tmp/e.jsonl\"\n");
    assert_eq!(e, "route[0].sinks: no sink named \"stdout\" (defined: f)");
}

#[test]
fn unparseable_channel() {
    let e = err("[[route]]\nchannel = \"/var/log/*\"\nsinks = [\"stdout\"]\n");
    assert!(e.starts_with("route[0].channel: \"/var/log/*\":"), "{e}");
    let e = err(
        "[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"stdout\"]\n[[route]]\nchannel = \"h:v:/a**\"\nsinks = [\"stdout\"]\n",
    );
    assert!(
        e.starts_with("route[1].channel:") && e.contains("whole path segment"),
        "{e}"
    );
}

#[test]
fn impossible_thresholds() {
    let e = err("[policy.data_drop]\nhigh_water = 0.5\nlow_water = 0.5\n");
    assert_eq!(
        e,
        "policy.data_drop.low_water: 0.5 must be below policy.data_drop.high_water (0.5)"
    );
    let e = err("[policy.data_drop]\nhigh_water = 1.5\n");
    assert!(
        e.starts_with("policy.data_drop.high_water: 1.5 is outside (0, 1]"),
        "{e}"
    );
    let e = err("[policy.data_drop]\nlow_water = 0\n");
    assert!(
        e.starts_with("policy.data_drop.low_water: 0 is outside (0, 1]"),
        "{e}"
    );
    let e = err("[policy.data_drop]\nhigh_water = nan\n");
    assert!(e.starts_with("policy.data_drop.high_water: NaN"), "{e}");
    let e = err("[policy]\nqueue_bytes = 0\n");
    assert_eq!(e, "policy.queue_bytes: must be greater than 0");
    let e = err("[policy]\nflush_timeout_ms = 0\n");
    assert_eq!(e, "policy.flush_timeout_ms: must be greater than 0");
    let e = err("[policy.lazy_load]\nenabled = true\nbudget_bytes = 0\n");
    assert!(e.starts_with("policy.lazy_load.budget_bytes:"), "{e}");
    // high_water = 1 is allowed (an integer where a float is expected, too).
    parse_str("[policy.data_drop]\nhigh_water = 1\n").unwrap();
}

#[test]
fn negative_size_rejected() {
    let e = err("[policy]\nqueue_bytes = -1\n");
    assert!(e.contains("policy.queue_bytes"), "{e}");
}

#[test]
fn metrics_must_be_loopback_unless_allowed() {
    let e = err("[metrics]\nlisten = \"0.0.0.0:9187\"\n");
    assert!(
        e.starts_with("metrics.listen: 0.0.0.0:9187 is not a loopback address"),
        "{e}"
    );
    assert!(e.contains("metrics.allow_remote"), "{e}");
    parse_str("[metrics]\nlisten = \"0.0.0.0:9187\"\nallow_remote = true\n").unwrap();
    parse_str("[metrics]\nlisten = \"0.0.0.0:9187\"\nenabled = false\n").unwrap();
    let e = err("[metrics]\nlisten = \"localhost\"\n");
    assert!(e.contains("metrics.listen"), "{e}");
}

#[test]
fn env_overrides() {
    let cfg = load_with_env(
        None,
        env(&[
            ("GAMMARAY__POLICY__QUEUE_BYTES", "1073741824"),
            ("GAMMARAY__POLICY__UNKNOWN_BUDGET_BYTES", "8MiB"),
            ("GAMMARAY__POLICY__DATA_DROP__HIGH_WATER", "0.95"),
            ("GAMMARAY__POLICY__DATA_DROP__ENABLED", "false"),
            ("GAMMARAY__POLICY__FLUSH_TIMEOUT_MS", "100"),
            ("GAMMARAY__HOST", "h1"),
            ("GAMMARAY__METRICS__LISTEN", "127.0.0.1:9999"),
            ("GAMMARAY_LOG", "debug"), // single '_': not ours
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.policy.queue_bytes, 1 << 30);
    assert_eq!(cfg.policy.unknown_budget_bytes, 8 << 20);
    assert_eq!(cfg.policy.data_drop.high_water, 0.95);
    assert!(!cfg.policy.data_drop.enabled);
    assert_eq!(cfg.policy.flush_timeout_ms, 100);
    assert_eq!(cfg.host, "h1");
    assert_eq!(cfg.metrics.listen.port(), 9999);
}

#[test]
fn env_overrides_file_and_sink_path() {
    let dir = tempfile::tempdir().unwrap();
    let f = tmp_toml(
        "host = \"from-file\"\n[policy]\nqueue_bytes = \"10MiB\"\n[sinks.log]\ntype = \"file\"\npath = \"/tmp/a.jsonl\"\n\
         [[route]]\nchannel = \"*:*:/**\"\nsinks = [\"log\"]\n",
    );
    let target = dir.path().join("b.jsonl");
    let cfg = load_with_env(
        Some(f.path()),
        env(&[
            ("GAMMARAY__POLICY__QUEUE_BYTES", "20MiB"),
            ("GAMMARAY__SINKS__LOG__PATH", target.to_str().unwrap()),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.host, "from-file");
    assert_eq!(cfg.policy.queue_bytes, 20 << 20);
    assert_eq!(
        cfg.sinks["log"],
        SinkConfig::File(FileSinkConfig { path: target })
    );
}

#[test]
fn bad_env_value_names_the_variable() {
    let e = load_with_env(
        None,
        env(&[
            ("GAMMARAY__HOST", "fine"),
            ("GAMMARAY__POLICY__FLUSH_TIMEOUT_MS", "soon"),
        ]),
    )
    .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("environment variable GAMMARAY__POLICY__FLUSH_TIMEOUT_MS=\"soon\": "),
        "{s}"
    );
    assert!(s.contains("policy.flush_timeout_ms"), "{s}");
    assert!(!s.contains("<default>"), "{s}");

    let e = load_with_env(None, env(&[("GAMMARAY__POLICY__QUEUE_BYTES", "lots")])).unwrap_err();
    assert!(
        e.to_string().contains("GAMMARAY__POLICY__QUEUE_BYTES"),
        "{e}"
    );

    // A valid type but an impossible value is blamed on the variable too.
    let e = load_with_env(
        None,
        env(&[("GAMMARAY__POLICY__DATA_DROP__LOW_WATER", "0.9")]),
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Env { .. }));
    assert_eq!(e.key(), Some("policy.data_drop.low_water"));
    assert!(
        e.to_string()
            .contains("GAMMARAY__POLICY__DATA_DROP__LOW_WATER"),
        "{e}"
    );
}

#[test]
fn unknown_env_key_names_the_variable() {
    let e = load_with_env(None, env(&[("GAMMARAY__POLICY__QUEUEBYTES", "1")])).unwrap_err();
    let s = e.to_string();
    assert!(
        s.contains("GAMMARAY__POLICY__QUEUEBYTES") && s.contains("queuebytes"),
        "{s}"
    );
}

#[test]
fn file_errors_are_not_blamed_on_env() {
    let f = tmp_toml("[policy]\nqueue_bytes = 0\n");
    let e = load_with_env(Some(f.path()), env(&[("GAMMARAY__HOST", "h")])).unwrap_err();
    assert_eq!(e.to_string(), "policy.queue_bytes: must be greater than 0");
}

#[test]
fn missing_file_and_bad_toml() {
    let e = load_with_env(Some(Path::new("/no/such/gammaray.toml")), Vec::new()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string().starts_with("reading /no/such/gammaray.toml:"),
        "{e}"
    );
    let f = tmp_toml("[policy\n");
    let e = load_with_env(Some(f.path()), Vec::new()).unwrap_err();
    assert!(
        e.to_string().starts_with(&f.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn redis_sink_defaults_and_keys() {
    let cfg = parse_str(
        "[sinks.r]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/2\"\n\
         [[route]]\nchannel = \"*:*:/**\"\nsinks = [\"r\"]\n",
    )
    .unwrap();
    assert_eq!(
        cfg.sinks["r"],
        SinkConfig::Redis(RedisSinkConfig::new("redis://127.0.0.1:6379/2"))
    );
    assert_eq!(cfg.sinks["r"].type_name(), "redis");
    let SinkConfig::Redis(r) = &cfg.sinks["r"] else {
        unreachable!()
    };
    assert_eq!(r.encoding, RedisEncoding::Bson);
    assert_eq!(r.max_data_bytes, 512 << 10);
    assert_eq!(r.timeout_ms, 2000);
    // Every key, and a round trip through to_toml.
    let cfg = parse_str(
        "[sinks.r]\ntype = \"redis\"\nurl = \"unix:///run/redis.sock\"\nusername = \"gammaray\"\n\
         password = \"s3cret\"\nencoding = \"json\"\nmax_data_bytes = \"64KiB\"\n\
         channel_prefix = \"dc1:\"\ntimeout_ms = 500\n\
         [[route]]\nchannel = \"*:*:/**\"\nsinks = [\"r\"]\n",
    )
    .unwrap();
    let SinkConfig::Redis(r) = &cfg.sinks["r"] else {
        unreachable!()
    };
    assert_eq!(r.username.as_deref(), Some("gammaray"));
    assert_eq!(r.password.as_deref(), Some("s3cret"));
    assert_eq!(r.encoding, RedisEncoding::Json);
    assert_eq!(r.max_data_bytes, 64 << 10);
    assert_eq!(r.channel_prefix.as_deref(), Some("dc1:"));
    assert_eq!(r.timeout_ms, 500);
    assert_eq!(parse_str(&cfg.to_toml()).unwrap(), cfg);
}

#[test]
fn redis_sink_errors_name_the_key() {
    let sink = |body: &str| {
        err(&format!(
            "[sinks.r]\ntype = \"redis\"\n{body}\n[[route]]\nchannel = \"*:*:/**\"\nsinks = [\"r\"]\n"
        ))
    };
    let e = sink("");
    assert!(e.contains("sinks.r") && e.contains("url"), "{e}");
    let e = sink("url = \"localhost:6379\"");
    assert!(
        e.starts_with("sinks.r.url: \"localhost:6379\" is not a URL"),
        "{e}"
    );
    let e = sink("url = \"kafka://h:9092\"");
    assert!(
        e.starts_with("sinks.r.url:") && e.contains("unknown scheme"),
        "{e}"
    );
    let e = sink("url = \"rediss://h:6380\"");
    assert!(e.starts_with("sinks.r.url:") && e.contains("TLS"), "{e}");
    let e = sink("url = \"redis://h:99999\"");
    assert!(e.starts_with("sinks.r.url:") && e.contains("port"), "{e}");
    let e = sink("url = \"redis://h:6379/x\"");
    assert!(
        e.starts_with("sinks.r.url:") && e.contains("database"),
        "{e}"
    );
    let e = sink("url = \"redis://:6379\"");
    assert!(
        e.starts_with("sinks.r.url:") && e.contains("no host"),
        "{e}"
    );
    let e = sink("url = \"unix://relative.sock\"");
    assert!(
        e.starts_with("sinks.r.url:") && e.contains("absolute"),
        "{e}"
    );
    let e = sink("url = \"redis://h\"\nusername = \"u\"");
    assert_eq!(
        e,
        "sinks.r.password: missing: an ACL username needs its password"
    );
    let e = sink("url = \"redis://u:p@h\"\npassword = \"p\"");
    assert!(
        e.starts_with("sinks.r.username: credentials are given both"),
        "{e}"
    );
    let e = sink("url = \"redis://h\"\nmax_data_bytes = 0");
    assert!(e.starts_with("sinks.r.max_data_bytes: 0 is outside"), "{e}");
    let e = sink("url = \"redis://h\"\nmax_data_bytes = \"1GiB\"");
    assert!(e.starts_with("sinks.r.max_data_bytes:"), "{e}");
    let e = sink("url = \"redis://h\"\nencoding = \"xml\"");
    assert!(e.contains("sinks.r") && e.contains("xml"), "{e}");
    let e = sink("url = \"redis://h\"\ntimeout_ms = 0");
    assert!(e.starts_with("sinks.r.timeout_ms:"), "{e}");
    let e = sink("url = \"redis://h\"\nchannel = \"x\"");
    assert!(e.contains("sinks.r") && e.contains("channel"), "{e}");
    // IPv6 and databases are fine.
    assert!(check_redis_url("redis://[::1]:6379/3").is_ok());
    assert!(check_redis_url("redis+unix:///tmp/r.sock").is_ok());
}

#[test]
fn redis_password_from_the_environment() {
    let f = tmp_toml(
        "[sinks.r]\ntype = \"redis\"\nurl = \"redis://127.0.0.1\"\nusername = \"g\"\npassword = \"x\"\n\
         [[route]]\nchannel = \"*:*:/**\"\nsinks = [\"r\"]\n",
    );
    let cfg = load_with_env(
        Some(f.path()),
        env(&[("GAMMARAY__SINKS__R__PASSWORD", "FromEnv")]),
    )
    .unwrap();
    let SinkConfig::Redis(r) = &cfg.sinks["r"] else {
        unreachable!()
    };
    assert_eq!(r.password.as_deref(), Some("FromEnv"));
}
