//! Channel patterns: `host:vm:/path/glob`, the routing keys of `[[route]]`.
//! The syntax is documented on [`ChannelPattern`].

use std::fmt;

/// Why a channel pattern could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?}: {problem}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One token of a glob inside a name or path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A literal run.
    Lit(String),
    /// `?`: one character.
    One,
    /// `*`: any run of characters (within the segment, for paths).
    Star,
}

/// A glob over one name (host, VM, or one path segment).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    toks: Vec<Tok>,
}

impl Glob {
    fn parse(s: &str) -> Glob {
        let mut toks = Vec::new();
        let mut lit = String::new();
        for c in s.chars() {
            match c {
                '*' | '?' => {
                    if !lit.is_empty() {
                        toks.push(Tok::Lit(std::mem::take(&mut lit)));
                    }
                    let t = if c == '*' { Tok::Star } else { Tok::One };
                    // `**` inside a name means the same as `*`.
                    if !(t == Tok::Star && toks.last() == Some(&Tok::Star)) {
                        toks.push(t);
                    }
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        Glob { toks }
    }

    /// Whether this glob matches all of `s`. Classic wildcard matching with
    /// backtracking to the last `*` only: `O(len(pattern) × len(s))`.
    fn matches(&self, s: &str) -> bool {
        let toks = &self.toks;
        let (mut p, mut t) = (0usize, 0usize);
        // (token after the last star, text position that star resumes at)
        let mut star: Option<(usize, usize)> = None;
        loop {
            if let Some(tok) = toks.get(p) {
                match tok {
                    Tok::Star => {
                        star = Some((p + 1, t));
                        p += 1;
                        continue;
                    }
                    Tok::One => {
                        if let Some(c) = s[t..].chars().next() {
                            p += 1;
                            t += c.len_utf8();
                            continue;
                        }
                    }
                    Tok::Lit(l) => {
                        if s[t..].starts_with(l.as_str()) {
                            p += 1;
                            t += l.len();
                            continue;
                        }
                    }
                }
            } else if t == s.len() {
                return true;
            }
            // Mismatch: let the last star swallow one more character.
            match star {
                Some((sp, st)) => match s[st..].chars().next() {
                    Some(c) => {
                        let nt = st + c.len_utf8();
                        star = Some((sp, nt));
                        p = sp;
                        t = nt;
                    }
                    None => return false,
                },
                None => return false,
            }
        }
    }

    fn is_match_all(&self) -> bool {
        self.toks == [Tok::Star]
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// `**`: any number of whole segments.
    Any,
    /// A glob within one segment.
    Glob(Glob),
}

/// Iterates the segments of an absolute path without allocating: segment at
/// byte `t`, and where the next one starts (`len + 1` past the last one).
fn segment_at(s: &str, t: usize) -> Option<(&str, usize)> {
    let rest = s.get(t..)?;
    match rest.find('/') {
        Some(i) => Some((&rest[..i], t + i + 1)),
        None => Some((rest, s.len() + 1)),
    }
}

/// A parsed channel pattern, `host:vm:/path/glob`.
///
/// The routing keys of `[[route]]`.
///
/// A pattern has three parts, split at the first two `:` (so a path may
/// itself contain `:`):
///
/// - **host** and **vm** are globs over the whole name: `*` matches any
///   sequence (including none), `?` one character, everything else is
///   literal.
/// - **path** must start with `/`. It is matched segment by segment (a
///   segment is the text between two `/`):
///   - `*` matches any sequence of characters *within one segment*;
///   - `?` matches one character other than `/`;
///   - `**`, which must be a whole segment, matches any number of whole
///     segments, including none: `/var/**` matches `/var`, `/var/log` and
///     `/var/log/apt/history.log`; `/**` matches every path;
///   - everything else is literal. There is no escape and no `[...]` class:
///     a file whose name contains `*` or `?` is matched by those wildcards.
///
/// **This differs from Redis `PSUBSCRIBE` on purpose.** In a Redis pattern
/// `*` crosses both `:` and `/`, so `*:*:/var/log/*` also matches
/// `h:v:/var/log/apt/history.log`. A route is meant to select files, like a
/// shell glob, so here `*` stays inside one path segment and `**` is the way
/// to say "any depth". The Redis sink (issue 6) publishes on the literal
/// channel `host:vm:/path`; what a Redis subscriber's pattern matches is
/// Redis's business, not the router's.
///
/// Matching runs in `O(pattern × path)` time without allocating: paths come
/// from guests and are untrusted, so there is no exponential backtracking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    text: String,
    host: Glob,
    vm: Glob,
    path: Vec<Seg>,
}

impl ChannelPattern {
    /// Parses `host:vm:/path/glob`.
    pub fn parse(pattern: &str) -> Result<ChannelPattern, PatternError> {
        let err = |problem: &str| PatternError {
            pattern: pattern.to_string(),
            problem: problem.to_string(),
        };
        let mut parts = pattern.splitn(3, ':');
        let (Some(host), Some(vm), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("expected host:vm:/path (use * for any host or VM)"));
        };
        if host.is_empty() {
            return Err(err("the host part is empty (use * for any host)"));
        }
        if vm.is_empty() {
            return Err(err("the VM part is empty (use * for any VM)"));
        }
        if !path.starts_with('/') {
            return Err(err("the path part must start with '/'"));
        }
        if path.len() > 1 && path.ends_with('/') {
            return Err(err(
                "the path ends with '/'; use /dir/** for everything below a directory",
            ));
        }
        if path.contains("//") {
            return Err(err("the path has an empty segment ('//')"));
        }
        let mut segs = Vec::new();
        for seg in path.split('/') {
            if seg == "**" {
                // Consecutive `**` segments mean the same as one.
                if segs.last() != Some(&Seg::Any) {
                    segs.push(Seg::Any);
                }
            } else if seg.contains("**") {
                return Err(err(&format!(
                    "'**' must be a whole path segment (found in {seg:?}); use '*' within a name"
                )));
            } else {
                segs.push(Seg::Glob(Glob::parse(seg)));
            }
        }
        Ok(ChannelPattern {
            text: pattern.to_string(),
            host: Glob::parse(host),
            vm: Glob::parse(vm),
            path: segs,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern matches every host and every VM (only the path
    /// part selects).
    pub fn matches_any_vm(&self) -> bool {
        self.host.is_match_all() && self.vm.is_match_all()
    }

    /// Whether the host and VM parts match.
    pub fn matches_vm(&self, host: &str, vm: &str) -> bool {
        self.host.matches(host) && self.vm.matches(vm)
    }

    /// Whether the path part matches an absolute path.
    pub fn matches_path(&self, path: &str) -> bool {
        let pat = &self.path;
        let (mut p, mut t) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        loop {
            let seg = segment_at(path, t);
            match pat.get(p) {
                Some(Seg::Any) => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(Seg::Glob(g)) => {
                    if let Some((s, next)) = seg {
                        if g.matches(s) {
                            p += 1;
                            t = next;
                            continue;
                        }
                    }
                }
                None => {
                    if seg.is_none() {
                        return true;
                    }
                }
            }
            // Mismatch: let the last `**` swallow one more segment.
            match star {
                Some((sp, st)) => match segment_at(path, st) {
                    Some((_, next)) => {
                        star = Some((sp, next));
                        p = sp;
                        t = next;
                    }
                    None => return false,
                },
                None => return false,
            }
        }
    }

    /// Whether the pattern matches the channel `host:vm:path`.
    pub fn matches(&self, host: &str, vm: &str, path: &str) -> bool {
        self.matches_vm(host, vm) && self.matches_path(path)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for ChannelPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChannelPattern::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pat: &str, host: &str, vm: &str, path: &str) -> bool {
        ChannelPattern::parse(pat).unwrap().matches(host, vm, path)
    }

    #[test]
    fn paper_table_one() {
        // gs9671:test:/var/log/* — all log files of one VM (one level)
        assert!(m(
            "gs9671:test:/var/log/*",
            "gs9671",
            "test",
            "/var/log/syslog"
        ));
        assert!(!m(
            "gs9671:test:/var/log/*",
            "gs9671",
            "other",
            "/var/log/syslog"
        ));
        assert!(!m(
            "gs9671:test:/var/log/*",
            "gs9671",
            "test",
            "/var/log/apt/history.log"
        ));
        assert!(!m("gs9671:test:/var/log/*", "gs9671", "test", "/var/log"));
        // *:*:/var/log/* — log files of every VM on every host
        assert!(m("*:*:/var/log/*", "h1", "v1", "/var/log/auth.log"));
        assert!(m("*:*:/var/log/*", "gs9671", "test", "/var/log/syslog"));
        assert!(!m("*:*:/var/log/*", "h1", "v1", "/etc/passwd"));
        // gs9671:*:/var/log/auth.log — one file on every VM of one host
        assert!(m(
            "gs9671:*:/var/log/auth.log",
            "gs9671",
            "a",
            "/var/log/auth.log"
        ));
        assert!(m(
            "gs9671:*:/var/log/auth.log",
            "gs9671",
            "b",
            "/var/log/auth.log"
        ));
        assert!(!m(
            "gs9671:*:/var/log/auth.log",
            "gs9672",
            "a",
            "/var/log/auth.log"
        ));
        assert!(!m(
            "gs9671:*:/var/log/auth.log",
            "gs9671",
            "a",
            "/var/log/auth.log.1"
        ));
        // gs9671:test:/var/log/syslog — exactly one channel
        assert!(m(
            "gs9671:test:/var/log/syslog",
            "gs9671",
            "test",
            "/var/log/syslog"
        ));
        assert!(!m(
            "gs9671:test:/var/log/syslog",
            "gs9671",
            "test2",
            "/var/log/syslog"
        ));
    }

    #[test]
    fn double_star_any_depth_including_none() {
        assert!(m("*:*:/**", "h", "v", "/"));
        assert!(m("*:*:/**", "h", "v", "/a/b/c"));
        assert!(m("*:*:/var/**", "h", "v", "/var"));
        assert!(m("*:*:/var/**", "h", "v", "/var/log/apt/history.log"));
        assert!(!m("*:*:/var/**", "h", "v", "/varx"));
        assert!(m("*:*:/var/**/*.log", "h", "v", "/var/app.log"));
        assert!(m("*:*:/var/**/*.log", "h", "v", "/var/log/apt/history.log"));
        assert!(!m(
            "*:*:/var/**/*.log",
            "h",
            "v",
            "/var/log/apt/history.txt"
        ));
        assert!(m("*:*:/**/passwd", "h", "v", "/etc/passwd"));
        assert!(m("*:*:/**/**/passwd", "h", "v", "/passwd"));
    }

    #[test]
    fn star_and_question_mark_stay_in_one_segment() {
        assert!(m("*:*:/etc/*", "h", "v", "/etc/passwd"));
        assert!(!m("*:*:/etc/*", "h", "v", "/etc/ssh/sshd_config"));
        assert!(m("*:*:/etc/pass??", "h", "v", "/etc/passwd"));
        assert!(!m("*:*:/etc/pass?", "h", "v", "/etc/pass/"));
        assert!(m("*:*:/var/log/*.log", "h", "v", "/var/log/.log"));
        assert!(m("*:*:/tmp/ä?", "h", "v", "/tmp/äö"));
        assert!(m("web-*:db?:/", "web-1", "db2", "/"));
        assert!(!m("web-*:db?:/", "web-1", "db22", "/"));
    }

    #[test]
    fn colons_and_literal_wildcards_in_paths() {
        // The path is everything after the second ':'.
        assert!(m("h:v:/c:/x", "h", "v", "/c:/x"));
        assert!(m("*:*:/data/a:b*", "h", "v", "/data/a:bc"));
        // A file named with a literal '*' is matched by the wildcard.
        assert!(m("*:*:/tmp/*", "h", "v", "/tmp/*"));
        assert!(m("*:*:/tmp/a*b", "h", "v", "/tmp/a*b"));
    }

    #[test]
    fn unparseable_patterns() {
        for (p, needle) in [
            ("/var/log/*", "host:vm:/path"),
            ("h:/var", "host:vm:/path"),
            (":v:/x", "host part is empty"),
            ("h::/x", "VM part is empty"),
            ("h:v:var/log", "must start with '/'"),
            ("h:v:/var/log/", "ends with '/'"),
            ("h:v:/var/a**b", "whole path segment"),
            ("h:v:/var//log", "empty segment"),
        ] {
            let e = ChannelPattern::parse(p).unwrap_err();
            assert!(e.to_string().contains(needle), "{p}: {e}");
        }
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let pat = ChannelPattern::parse("*:*:/**/a/**/a/**/a/**/a/**/b").unwrap();
        let path = "/a".repeat(2000);
        assert!(!pat.matches("h", "v", &path));
        let g = ChannelPattern::parse("*:*:/*a*a*a*a*a*a*b").unwrap();
        assert!(!g.matches("h", "v", &format!("/{}", "a".repeat(5000))));
    }
}
