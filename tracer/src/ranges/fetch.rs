//! Refreshing the ranges from Cloudflare's API, with a validated on-disk cache and fallbacks:
//! API, then cache, then the embedded list — each fallback said in one line.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{parse_api_json, RangeSet, RangeSource};

pub const API_URL: &str = "https://api.cloudflare.com/client/v4/ips";
/// Larger answers are refused: the real one is under 1 KiB.
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Bounds of TRACER_RANGES_TIMEOUT_SECS.
const TIMEOUT_SECS: std::ops::RangeInclusive<f64> = 0.1..=120.0;

/// Whole-request time limit; TRACER_RANGES_TIMEOUT_SECS overrides it ([`check_env`] refuses
/// a bad value before any fetch).
fn timeout() -> Duration {
    timeout_from(crate::environment::get().ranges_timeout_secs.as_deref())
        .unwrap_or(Duration::from_secs(10))
}

fn timeout_from(value: Option<&str>) -> Result<Duration> {
    let Some(v) = value else {
        return Ok(Duration::from_secs(10));
    };
    match v.trim().parse::<f64>() {
        Ok(s) if TIMEOUT_SECS.contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => bail!(
            "TRACER_RANGES_TIMEOUT_SECS={} is not a number of seconds from {} to {}",
            super::validate::quote(v),
            TIMEOUT_SECS.start(),
            TIMEOUT_SECS.end()
        ),
    }
}

/// Where the API is (TRACER_RANGES_URL overrides it, for mirrors and tests).
pub fn api_url() -> String {
    crate::environment::get()
        .ranges_url
        .clone()
        .unwrap_or_else(|| API_URL.to_string())
}

/// The refresh settings from the environment, checked once before any fetch: the timeout in
/// bounds, and https unless the mirror is on this host or TRACER_RANGES_ALLOW_HTTP=1 says
/// plain http is meant (a list fetched in the clear can be swapped on the way).
pub fn check_env() -> Result<()> {
    let env = crate::environment::get();
    timeout_from(env.ranges_timeout_secs.as_deref())?;
    check_url(&api_url(), env.ranges_allow_http)
}

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// A redirect's target, held to the configured URL's rule.
fn check_hop(url: &str, allow_http: bool) -> Result<()> {
    check_url(url, allow_http).map_err(|_| {
        anyhow!(
            "redirected to {}: refused (plain http, where the list can be swapped on the way)",
            super::validate::quote(url)
        )
    })
}

fn check_url(url: &str, allow_http: bool) -> Result<()> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        anyhow!(
            "TRACER_RANGES_URL {} is not a URL ({e})",
            super::validate::quote(url)
        )
    })?;
    let host = parsed.host_str().unwrap_or("");
    let local = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if local || allow_http => Ok(()),
        "http" => bail!(
            "TRACER_RANGES_URL {} is plain http: use https, or set TRACER_RANGES_ALLOW_HTTP=1 if a mirror in the clear is meant",
            super::validate::quote(url)
        ),
        other => bail!("TRACER_RANGES_URL scheme {other} is not http or https"),
    }
}

/// The cache file, in the state directory.
pub fn cache_path() -> PathBuf {
    crate::environment::get().state_dir().join("ranges.json")
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    fetched_at: String,
    etag: Option<String>,
    /// The HTTP ETag header, for If-None-Match.
    http_etag: Option<String>,
    ipv4_cidrs: Vec<String>,
    ipv6_cidrs: Vec<String>,
}

/// The cache, read as the tracer's own file: from a trusted state directory only, never
/// through a symlink or from a FIFO, bounded.
pub fn load_cache(path: &Path) -> Result<(RangeSet, Option<String>)> {
    if let Some(dir) = path.parent() {
        crate::sys::safe_fs::trusted_dir(dir)?;
    }
    let bytes = crate::sys::safe_fs::read_own(path, super::validate::MAX_FILE_BYTES)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("not UTF-8 text"))?;
    let c: CacheFile = serde_json::from_str(&text).context("cache is not valid JSON")?;
    // Re-validate as if it came from the API: a damaged cache must not be trusted.
    let body = serde_json::json!({
        "success": true,
        "result": {"ipv4_cidrs": c.ipv4_cidrs, "ipv6_cidrs": c.ipv6_cidrs, "etag": c.etag}
    });
    let (v4, v6, etag) = parse_api_json(&body.to_string())?;
    super::validate::check_plausible(&v4, &v6)?;
    Ok((
        RangeSet {
            v4,
            v6,
            source: RangeSource::Cache,
            etag,
            fetched_at: humantime::parse_rfc3339_weak(&c.fetched_at).ok(),
            path: Some(path.display().to_string()),
        },
        c.http_etag,
    ))
}

fn save_cache(path: &Path, set: &RangeSet, http_etag: Option<&str>) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::sys::safe_fs::private_dir(dir, 0o755)?;
    }
    let c = CacheFile {
        fetched_at: humantime::format_rfc3339_seconds(
            set.fetched_at.unwrap_or_else(SystemTime::now),
        )
        .to_string(),
        etag: set.etag.clone(),
        http_etag: http_etag.map(str::to_string),
        ipv4_cidrs: set.v4.iter().map(ToString::to_string).collect(),
        ipv6_cidrs: set.v6.iter().map(ToString::to_string).collect(),
    };
    // A new temporary file renamed into place: a reader never sees half a file, and a
    // symlink planted in the directory is never followed.
    crate::sys::safe_fs::write_atomic(path, &serde_json::to_vec_pretty(&c)?, 0o644)?;
    Ok(())
}

/// Fetches and validates the list. `Ok(None)` when the server says it has not changed (304).
async fn fetch(
    url: &str,
    if_none_match: Option<&str>,
) -> Result<Option<(RangeSet, Option<String>)>> {
    // Every hop of a redirect is held to the rule the configured URL is: https, or plain http
    // only on this host or when TRACER_RANGES_ALLOW_HTTP=1 says so.
    let allow_http = crate::environment::get().ranges_allow_http;
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if let Err(e) = check_hop(attempt.url().as_str(), allow_http) {
            attempt.error(e.to_string())
        } else {
            attempt.follow()
        }
    });
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(super::trust::client_config()?)
        .redirect(policy)
        .timeout(timeout())
        .connect_timeout(timeout().min(Duration::from_secs(5)))
        .user_agent(concat!("cf521-tracer/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut req = client.get(url);
    if let Some(tag) = if_none_match {
        req = req.header(reqwest::header::IF_NONE_MATCH, tag);
    }
    let mut resp = req
        .send()
        .await
        .map_err(|e| anyhow!("{}", short_error(&e)))?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    if !resp.status().is_success() {
        bail!("HTTP {}", resp.status());
    }
    let http_etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| anyhow!("{}", short_error(&e)))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_BODY_BYTES {
            bail!("answer larger than {MAX_BODY_BYTES} bytes");
        }
    }
    let text = String::from_utf8(body).map_err(|_| anyhow!("answer is not UTF-8 text"))?;
    if text.trim_start().starts_with('<') {
        bail!("answer is HTML, not the JSON list (a challenge or error page?)");
    }
    let (v4, v6, etag) = parse_api_json(&text)?;
    super::validate::check_plausible(&v4, &v6)?;
    Ok(Some((
        RangeSet {
            v4,
            v6,
            source: RangeSource::Api,
            etag,
            fetched_at: Some(SystemTime::now()),
            path: None,
        },
        http_etag,
    )))
}

/// reqwest's errors nest causes; one line with the innermost is what a person needs.
fn short_error(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        format!("timed out after {:.1} s", timeout().as_secs_f64())
    } else {
        msg
    }
}

/// Refreshes from the API; on failure falls back to the cache, then the embedded list.
/// Returns the set and, for a fallback, the one line that says so.
pub async fn refresh() -> (RangeSet, Option<String>) {
    let url = api_url();
    let cache = cache_path();
    let (cached, cache_note) = read_cache(&cache);
    let http_etag = cached.as_ref().and_then(|(_, t)| t.clone());
    match fetch(&url, http_etag.as_deref()).await {
        Ok(Some((set, tag))) => {
            let note = save_cache(&cache, &set, tag.as_deref())
                .err()
                .map(|e| format!("ranges fetched but not cached at {} ({e:#})", cache.display()));
            (set, note)
        }
        Ok(None) => match cached {
            Some((mut set, tag)) => {
                // 304: the cached list is current.
                set.fetched_at = Some(SystemTime::now());
                let _ = save_cache(&cache, &set, tag.as_deref());
                set.source = RangeSource::Api;
                (set, None)
            }
            None => (
                RangeSet::embedded(),
                Some(format!(
                    "{url} answered 304 with no cached list; using the embedded list"
                )),
            ),
        },
        Err(e) => match cached {
            Some((set, _)) => {
                let when = set
                    .fetched_at
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                    .unwrap_or_else(|| "unknown time".into());
                (
                    set,
                    Some(format!("cannot refresh ranges from {url} ({e:#}); using the cached list from {when}")),
                )
            }
            None => (
                RangeSet::embedded(),
                Some(format!(
                    "cannot refresh ranges from {url} ({e:#}); {}using the embedded list recorded {}",
                    cache_note.map(|n| format!("{n}; ")).unwrap_or_default(),
                    super::EMBEDDED_RECORDED
                )),
            ),
        },
    }
}

/// The ranges to use, for every command: a file, a refresh, or else the cache of an earlier
/// refresh, or else the embedded list.
pub async fn resolve(file: Option<&Path>, refresh_now: bool) -> Result<(RangeSet, Option<String>)> {
    if refresh_now && file.is_none() {
        check_env()?;
        return Ok(refresh().await);
    }
    resolve_offline(file)
}

/// [`resolve`] without a refresh (nothing is fetched): the file, or else the cache of an
/// earlier refresh, or else the embedded list; with a note when the cache is unusable.
pub fn resolve_offline(file: Option<&Path>) -> Result<(RangeSet, Option<String>)> {
    if let Some(path) = file {
        return Ok((RangeSet::from_file(path)?, None));
    }
    match read_cache(&cache_path()) {
        (Some((set, _)), _) => Ok((set, None)),
        (None, note) => Ok((
            RangeSet::embedded(),
            note.map(|n| format!("{n}; using the embedded list")),
        )),
    }
}

/// The cache if it is usable; when it exists but is not, a note naming it and why (a
/// missing cache is normal and says nothing).
fn read_cache(path: &Path) -> (Option<(RangeSet, Option<String>)>, Option<String>) {
    match load_cache(path) {
        Ok(c) => (Some(c), None),
        Err(_) if !path.exists() => (None, None),
        Err(e) => (
            None,
            Some(format!(
                "the ranges cache {} is unusable ({e:#})",
                path.display()
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_settings_are_checked() {
        assert_eq!(timeout_from(None).unwrap(), Duration::from_secs(10));
        assert_eq!(
            timeout_from(Some("2.5")).unwrap(),
            Duration::from_millis(2500)
        );
        for bad in ["0", "-1", "abc", "1e9", "inf", "NaN"] {
            let e = timeout_from(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("TRACER_RANGES_TIMEOUT_SECS"), "{e}");
        }
        check_url(API_URL, false).unwrap();
        check_url("http://127.0.0.1:8080/ips", false).unwrap();
        check_url("http://[::1]:8080/ips", false).unwrap();
        let e = check_url("http://mirror.example/ips", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain http") && e.contains("TRACER_RANGES_ALLOW_HTTP=1"),
            "{e}"
        );
        check_url("http://mirror.example/ips", true).unwrap();
        assert!(check_url("ftp://x/ips", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }
}
