//! The router: which sinks an event goes to, from `[[route]]`.
//!
//! Each route pairs a [`ChannelPattern`] (`host:vm:/path/glob`; syntax in
//! [`gammaray_config::ChannelPattern`]: `*` and `?` stay within one path
//! segment, a whole-segment `**` matches any depth, unlike Redis
//! `PSUBSCRIBE` globs where `*` crosses `/` and `:`) with sinks. An event
//! goes to the union of the sinks of every matching route, each sink once,
//! in the order of the sink list given to [`Router::new`]. A `move` event
//! also matches routes by its `old_path`, so a route watching a directory
//! sees files leave it.
//!
//! The engine handles one VM per supervisor: [`Router::for_vm`] keeps only
//! the routes whose host and VM parts match, so per event only path globs
//! run.

use gammaray_config::{Route, MAX_SINKS};
use gammaray_core::{EventKind, FileEvent};

pub use gammaray_config::{ChannelPattern, PatternError};

use crate::Stamped;

/// Why routes could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A route's channel pattern does not parse.
    #[error("route[{route}].channel: {source}")]
    Pattern {
        /// The route's index.
        route: usize,
        /// The parse error.
        #[source]
        source: PatternError,
    },
    /// A route names a sink that is not in the list.
    #[error("route[{route}].sinks: no sink named {sink:?} (defined: {defined})")]
    UnknownSink {
        /// The route's index.
        route: usize,
        /// The name.
        sink: String,
        /// The names that exist, comma-separated.
        defined: String,
    },
    /// More sinks than a target mask holds.
    #[error("{count} sinks, at most {MAX_SINKS} are supported")]
    TooManySinks {
        /// How many were given.
        count: usize,
    },
}

/// The sink indices an event goes to; iterates in increasing index order,
/// each once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targets(u64);

impl Targets {
    /// The targets as a bit mask (bit `i` = sink `i`).
    pub fn mask(self) -> u64 {
        self.0
    }

    /// Whether no sink is targeted.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl Iterator for Targets {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        if self.0 == 0 {
            return None;
        }
        let i = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(i as usize)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.0.count_ones() as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Targets {}

#[derive(Debug, Clone)]
struct Compiled {
    pattern: ChannelPattern,
    mask: u64,
}

/// Routes compiled against a list of sink names.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Compiled>,
}

impl Router {
    /// Compiles `routes`; sink names are resolved to their index in
    /// `sink_names` (at most [`MAX_SINKS`]).
    pub fn new(routes: &[Route], sink_names: &[String]) -> Result<Router, RouterError> {
        if sink_names.len() > MAX_SINKS {
            return Err(RouterError::TooManySinks {
                count: sink_names.len(),
            });
        }
        let mut compiled = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let pattern = ChannelPattern::parse(&r.channel)
                .map_err(|source| RouterError::Pattern { route: i, source })?;
            let mut mask = 0u64;
            for s in &r.sinks {
                let Some(idx) = sink_names.iter().position(|n| n == s) else {
                    return Err(RouterError::UnknownSink {
                        route: i,
                        sink: s.clone(),
                        defined: sink_names.join(", "),
                    });
                };
                mask |= 1 << idx;
            }
            compiled.push(Compiled { pattern, mask });
        }
        Ok(Router { routes: compiled })
    }

    /// The sinks for channel `host:vm:path`.
    pub fn targets(&self, host: &str, vm: &str, path: &str) -> Targets {
        Targets(
            self.routes
                .iter()
                .filter(|r| r.pattern.matches(host, vm, path))
                .fold(0, |m, r| m | r.mask),
        )
    }

    /// The sinks for a stamped event; a `move` also matches by `old_path`.
    pub fn targets_for(&self, s: &Stamped) -> Targets {
        let mut t = self.targets(&s.host, &s.vm, &s.event.path);
        if let (EventKind::Move, Some(old)) = (s.event.kind, &s.event.old_path) {
            t.0 |= self.targets(&s.host, &s.vm, old).0;
        }
        t
    }

    /// The routes that can match events of one VM, for its supervisor.
    pub fn for_vm(&self, host: &str, vm: &str) -> VmRoutes {
        VmRoutes {
            routes: self
                .routes
                .iter()
                .filter(|r| r.pattern.matches_vm(host, vm))
                .cloned()
                .collect(),
        }
    }
}

/// A [`Router`] narrowed to one host and VM: only path globs run per event.
#[derive(Debug, Clone)]
pub struct VmRoutes {
    routes: Vec<Compiled>,
}

impl VmRoutes {
    /// The sinks for a path of this VM.
    pub fn targets(&self, path: &str) -> Targets {
        Targets(
            self.routes
                .iter()
                .filter(|r| r.pattern.matches_path(path))
                .fold(0, |m, r| m | r.mask),
        )
    }

    /// The sinks for an event of this VM; a `move` also matches by
    /// `old_path`.
    pub fn targets_for(&self, e: &FileEvent) -> Targets {
        let mut t = self.targets(&e.path);
        if let (EventKind::Move, Some(old)) = (e.kind, &e.old_path) {
            t.0 |= self.targets(old).0;
        }
        t
    }

    /// Whether no route can match this VM (its events go nowhere).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gammaray_core::FileType;
    use std::sync::Arc;

    fn route(channel: &str, sinks: &[&str]) -> Route {
        Route {
            channel: channel.into(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// The paper's Table I, one sink per pattern.
    fn table_one() -> Router {
        Router::new(
            &[
                route("gs9671:test:/var/log/*", &["a"]),
                route("*:*:/var/log/*", &["b"]),
                route("gs9671:*:/var/log/auth.log", &["c"]),
                route("gs9671:test:/var/log/syslog", &["d"]),
            ],
            &names(&["a", "b", "c", "d"]),
        )
        .unwrap()
    }

    fn t(r: &Router, host: &str, vm: &str, path: &str) -> Vec<usize> {
        r.targets(host, vm, path).collect()
    }

    #[test]
    fn paper_table_one() {
        let r = table_one();
        assert_eq!(t(&r, "gs9671", "test", "/var/log/auth.log"), [0, 1, 2]);
        assert_eq!(t(&r, "gs9671", "test", "/var/log/syslog"), [0, 1, 3]);
        assert_eq!(t(&r, "gs9671", "web", "/var/log/auth.log"), [1, 2]);
        assert_eq!(t(&r, "gs9671", "web", "/var/log/syslog"), [1]);
        assert_eq!(t(&r, "other", "test", "/var/log/syslog"), [1]);
        assert_eq!(
            t(&r, "gs9671", "test", "/var/log/apt/history.log"),
            [] as [usize; 0]
        );
        assert_eq!(t(&r, "gs9671", "test", "/etc/passwd"), [] as [usize; 0]);
    }

    #[test]
    fn deduplicated_in_sink_order() {
        let r = Router::new(
            &[
                route("*:*:/**", &["z", "a"]),
                route("*:*:/etc/*", &["a", "m"]),
                route("*:*:/etc/passwd", &["z"]),
            ],
            &names(&["a", "m", "z"]),
        )
        .unwrap();
        let targets = r.targets("h", "v", "/etc/passwd");
        assert_eq!(targets.len(), 3);
        assert_eq!(targets.collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(t(&r, "h", "v", "/var/x"), [0, 2]);
        assert_eq!(r.targets("h", "v", "/var/x").mask(), 0b101);
    }

    #[test]
    fn move_matches_by_old_path() {
        let r = Router::new(
            &[
                route("*:*:/etc/**", &["etc"]),
                route("*:*:/tmp/*", &["tmp"]),
            ],
            &names(&["etc", "tmp"]),
        )
        .unwrap();
        let mut e = FileEvent::new(1, EventKind::Move, "/tmp/shadow".into(), FileType::File, 5);
        e.old_path = Some("/etc/shadow".into());
        let s = Stamped::new(0, Arc::from("h"), Arc::from("v"), e.clone());
        assert_eq!(r.targets_for(&s).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            r.for_vm("h", "v").targets_for(&e).collect::<Vec<_>>(),
            [0, 1]
        );
        // Other kinds do not look at old_path.
        let mut c = e.clone();
        c.kind = EventKind::Create;
        let s = Stamped::new(1, Arc::from("h"), Arc::from("v"), c);
        assert_eq!(r.targets_for(&s).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn for_vm_keeps_only_matching_routes() {
        let r = table_one();
        let web = r.for_vm("gs9671", "web");
        assert!(!web.is_empty());
        assert_eq!(web.targets("/var/log/auth.log").collect::<Vec<_>>(), [1, 2]);
        let test = r.for_vm("gs9671", "test");
        assert_eq!(
            test.targets("/var/log/syslog").collect::<Vec<_>>(),
            [0, 1, 3]
        );
        let none = Router::new(&[route("h1:*:/**", &["a"])], &names(&["a"]))
            .unwrap()
            .for_vm("h2", "v");
        assert!(none.is_empty());
        assert!(none.targets("/x").is_empty());
    }

    #[test]
    fn paths_with_colons_and_stars() {
        let r = Router::new(
            &[route("h:v:/mnt/c:/*", &["a"]), route("*:*:/tmp/*", &["b"])],
            &names(&["a", "b"]),
        )
        .unwrap();
        assert_eq!(t(&r, "h", "v", "/mnt/c:/boot.ini"), [0]);
        assert_eq!(t(&r, "h", "v", "/tmp/*"), [1]);
        assert_eq!(t(&r, "h", "v", "/tmp/a:b"), [1]);
    }

    #[test]
    fn errors_name_the_route() {
        let e =
            Router::new(&[route("*:*:/**", &["foo"])], &names(&["stdout", "file1"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "route[0].sinks: no sink named \"foo\" (defined: stdout, file1)"
        );
        let e = Router::new(
            &[route("*:*:/**", &["a"]), route("nope", &["a"])],
            &names(&["a"]),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("route[1].channel: \"nope\":"),
            "{e}"
        );
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert!(matches!(
            Router::new(&[], &many),
            Err(RouterError::TooManySinks { count: 65 })
        ));
        // 64 sinks are fine, and the last one is reachable.
        let r = Router::new(&[route("*:*:/**", &["s63"])], &many[..64]).unwrap();
        assert_eq!(t(&r, "h", "v", "/"), [63]);
    }

    #[test]
    fn no_routes_no_targets() {
        let r = Router::new(&[], &[]).unwrap();
        assert!(r.targets("h", "v", "/x").is_empty());
    }
}
