//! The agent's JSON-lines log, bounded whatever arrives: event lines are rate-limited per
//! kind and peer range (what is held back is summed up once a second in one line), a log file
//! is rotated at a size cap (one old file kept), and write failures are counted and warned
//! about at most once a minute. An attacker who can send SYNs cannot fill the disk through it.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Event lines per second for one (kind, peer range).
const PER_KEY_PER_SEC: u32 = 20;
/// Event lines per second in all.
const TOTAL_PER_SEC: u32 = 200;
/// Distinct keys tracked per second; the rest share one.
const MAX_KEYS: usize = 256;
/// Write failures are warned about at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What an event line is limited by: its kind and the peer's range (the watched range it is
/// in, or its /24 or /48).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LimitKey {
    pub kind: &'static str,
    pub peers: String,
}

enum Output {
    Stdout(BufWriter<std::io::Stdout>),
    File { path: PathBuf, out: BufWriter<File> },
}

pub struct EventLog {
    out: Output,
    /// Rotate the file beyond this many bytes (`None`: never; stdout is never rotated).
    max_bytes: Option<u64>,
    written: u64,
    second: Instant,
    total: u32,
    /// Lines written and held back this second, per key.
    keys: BTreeMap<LimitKey, (u32, u64)>,
    /// Event lines held back, and write failures, since start.
    pub suppressed: u64,
    pub write_errors: u64,
    /// Rotations that failed (the file was cut back to empty instead), since start.
    pub rotation_failures: u64,
    last_warn: Option<Instant>,
}

fn open_log(path: &Path) -> Result<File> {
    crate::sys::safe_fs::open_append(path, 0o640).with_context(|| {
        format!(
            "cannot open log file {} (a symlink, a FIFO or a directory there is refused)",
            path.display()
        )
    })
}

impl EventLog {
    pub fn open(path: Option<&Path>, mut max_bytes: Option<u64>) -> Result<Self> {
        let (out, written) = match path {
            None => (Output::Stdout(BufWriter::new(std::io::stdout())), 0),
            Some(p) => {
                let f = open_log(p)?;
                // A device (`/dev/null`) has no size to cap and must never be renamed.
                if !f.metadata().is_ok_and(|m| m.is_file()) {
                    max_bytes = None;
                }
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                (
                    Output::File {
                        path: p.to_path_buf(),
                        out: BufWriter::new(f),
                    },
                    len,
                )
            }
        };
        Ok(Self {
            out,
            max_bytes,
            written,
            second: Instant::now(),
            total: 0,
            keys: BTreeMap::new(),
            suppressed: 0,
            write_errors: 0,
            rotation_failures: 0,
            last_warn: None,
        })
    }

    /// Reopens the file (SIGHUP from logrotate).
    pub fn reopen(&mut self) -> Result<()> {
        if let Output::File { path, out } = &mut self.out {
            out.flush()?;
            let f = open_log(path)?;
            if !f.metadata().is_ok_and(|m| m.is_file()) {
                self.max_bytes = None;
            }
            self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
            *out = BufWriter::new(f);
        }
        Ok(())
    }

    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.out {
            Output::Stdout(w) => w,
            Output::File { out, .. } => out,
        }
    }

    /// A line that is always written (verdict records, summaries) — unless the file is at its
    /// cap and could be neither rotated nor cut back: then it is counted as not written.
    pub fn line(&mut self, text: &str) {
        if self.max_bytes.is_some_and(|m| self.written >= m) {
            self.failed(&std::io::Error::other(
                "the log file is at its size cap and can be neither rotated nor truncated",
            ));
            return;
        }
        if let Err(e) = writeln!(self.writer(), "{text}") {
            self.failed(&e);
            return;
        }
        self.written += text.len() as u64 + 1;
        if self.max_bytes.is_some_and(|m| self.written >= m) {
            self.rotate();
        }
    }

    /// An event line, written unless its key or the whole log is over this second's budget.
    pub fn event(&mut self, key: LimitKey, now: Instant, text: impl FnOnce() -> String) {
        self.roll(now);
        let key = if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&key) {
            LimitKey {
                kind: key.kind,
                peers: "other peers".into(),
            }
        } else {
            key
        };
        let entry = self.keys.entry(key).or_default();
        if entry.0 >= PER_KEY_PER_SEC || self.total >= TOTAL_PER_SEC {
            entry.1 += 1;
            self.suppressed += 1;
            return;
        }
        entry.0 += 1;
        self.total += 1;
        self.line(&text());
    }

    /// Closes the second when it is over: one summary line per key that was held back.
    pub fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.second);
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let ts = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
        let held: Vec<(LimitKey, u64)> = self
            .keys
            .iter()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(k, (_, n))| (k.clone(), *n))
            .collect();
        for (key, n) in held {
            self.line(&summary_line(&ts, &key, n, elapsed.as_secs_f64()));
        }
        self.keys.clear();
        self.total = 0;
        self.second = now;
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.writer().flush() {
            self.failed(&e);
        }
    }

    fn failed(&mut self, e: &std::io::Error) {
        self.write_errors += 1;
        let now = Instant::now();
        if self
            .last_warn
            .is_none_or(|t| now.duration_since(t) >= WARN_EVERY)
        {
            tracing::warn!(
                failures = self.write_errors,
                "cannot write the log: {e} (counted in tracer_log_write_errors_total; said again in a minute at most)"
            );
            self.last_warn = Some(now);
        }
    }

    /// Renames the full file to `<path>.1` (replacing an older one) and starts a new one.
    fn rotate(&mut self) {
        let Output::File { path, out } = &mut self.out else {
            return;
        };
        let _ = out.flush();
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        let rotated = std::fs::rename(&*path, &old)
            .map_err(anyhow::Error::from)
            .and_then(|()| open_log(path));
        match rotated {
            Ok(f) => {
                *out = BufWriter::new(f);
                self.written = 0;
                tracing::info!(
                    "log file reached its size cap: rotated to {}",
                    Path::new(&old).display()
                );
            }
            Err(e) => {
                // The cap holds whatever squats `<path>.1` (a directory, a file of another
                // owner): the file is cut back to empty, the lines it held lost, and said.
                self.rotation_failures += 1;
                let _ = out.flush();
                match out.get_ref().set_len(0) {
                    Ok(()) => {
                        self.written = 0;
                        tracing::warn!(
                            failures = self.rotation_failures,
                            "cannot rotate the log to {}: {e:#}; the log was truncated to keep its size cap (counted in tracer_log_rotation_failures_total)",
                            Path::new(&old).display()
                        );
                    }
                    // `line` writes nothing more while the file stays at its cap.
                    Err(t) => self.failed(&std::io::Error::other(format!(
                        "cannot rotate the log ({e:#}) nor truncate it ({t}): lines over its size cap are not written"
                    ))),
                }
            }
        }
    }
}

/// `{"ts":...,"kind":"suppressed","event":"reset_sent","peers":"173.245.48.0/20",
/// "count":51234,"secs":1.0,"message":"… 51,234 more reset_sent events from 173.245.48.0/20 in
/// the last second"}`
fn summary_line(ts: &str, key: &LimitKey, n: u64, secs: f64) -> String {
    serde_json::json!({
        "ts": ts,
        "kind": "suppressed",
        "schema": super::LOG_SCHEMA,
        "event": key.kind,
        "peers": key.peers,
        "count": n,
        "secs": (secs * 10.0).round() / 10.0,
        "message": format!(
            "… {} more {} events from {} in the last {}",
            thousands(n),
            key.kind,
            key.peers,
            if secs < 1.5 { "second".to_string() } else { format!("{secs:.0} seconds") }
        ),
    })
    .to_string()
}

/// 51234 -> "51,234"
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("event-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn key(peers: &str) -> LimitKey {
        LimitKey {
            kind: "reset_sent",
            peers: peers.into(),
        }
    }

    #[test]
    fn a_flood_is_written_at_the_rate_limit_and_summed_up() {
        let d = scratch("flood");
        let path = d.join("log");
        let mut log = EventLog::open(Some(&path), None).unwrap();
        let t0 = Instant::now();
        for _ in 0..100_000 {
            log.event(key("173.245.48.0/20"), t0, || {
                "{\"kind\":\"reset_sent\"}".into()
            });
        }
        log.roll(t0 + Duration::from_secs(1));
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), PER_KEY_PER_SEC as usize + 1, "{text}");
        let summary: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        assert_eq!(summary["kind"], "suppressed");
        assert_eq!(summary["count"], 100_000 - u64::from(PER_KEY_PER_SEC));
        assert_eq!(
            summary["message"],
            "… 99,980 more reset_sent events from 173.245.48.0/20 in the last second"
        );
        assert_eq!(log.suppressed, 99_980);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_total_is_capped_across_keys_and_keys_are_bounded() {
        let d = scratch("keys");
        let path = d.join("log");
        let mut log = EventLog::open(Some(&path), None).unwrap();
        let t0 = Instant::now();
        for i in 0..10_000 {
            log.event(key(&format!("10.{}.{}.0/24", i / 256, i % 256)), t0, || {
                "x".into()
            });
        }
        assert_eq!(log.total, TOTAL_PER_SEC);
        assert!(log.keys.len() <= MAX_KEYS + 1);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_file_rotates_at_its_cap() {
        let d = scratch("rotate");
        let path = d.join("log");
        let mut log = EventLog::open(Some(&path), Some(1000)).unwrap();
        for _ in 0..300 {
            log.line("0123456789");
        }
        log.flush();
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(d.join("log.1")).unwrap().len();
        assert!(cur < 1000 && (1000..1100).contains(&old), "{cur} {old}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// `--log-file /dev/null` discards the log: a device is never size-capped, so never
    /// renamed (rotating it would move the system's /dev/null).
    #[test]
    fn a_device_is_never_rotated() {
        use std::os::unix::fs::FileTypeExt as _;
        let mut log = EventLog::open(Some(Path::new("/dev/null")), Some(10)).unwrap();
        for i in 0..100 {
            log.line(&format!("{{\"n\":{i}}}"));
        }
        log.flush();
        assert_eq!((log.rotation_failures, log.write_errors), (0, 0));
        let t = std::fs::symlink_metadata("/dev/null").unwrap().file_type();
        assert!(t.is_char_device());
        assert!(!Path::new("/dev/null.1").exists());
    }

    #[test]
    fn a_blocked_rotation_keeps_the_cap() {
        let dir = scratch("blocked");
        let path = dir.join("events.jsonl");
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::create_dir_all(&old).unwrap();
        let mut log = EventLog::open(Some(&path), Some(1000)).unwrap();
        for i in 0..500 {
            log.line(&format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(40)));
        }
        log.flush();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 1000 + 60, "{size}");
        assert!(log.rotation_failures > 0);
        // The newest lines are the ones kept.
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"n\":499"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_failures_are_counted() {
        let mut log = EventLog::open(None, None).unwrap();
        log.failed(&std::io::Error::other("disk full"));
        log.failed(&std::io::Error::other("disk full"));
        assert_eq!(log.write_errors, 2);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(51234), "51,234");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
