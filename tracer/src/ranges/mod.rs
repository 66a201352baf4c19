//! The watched peer ranges (Cloudflare's by default): parsing, validation and matching.

pub mod fetch;
pub mod trust;
pub mod validate;

use std::{fmt, net::IpAddr, path::Path, time::SystemTime};

use anyhow::{anyhow, bail, Context as _, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

/// Cloudflare's ranges as its API returned them on 2026-10-02 (the project's own copy).
const EMBEDDED_JSON: &str = include_str!("../../data/cloudflare-ips.json");
/// When the embedded snapshot was recorded (RFC 3339).
pub const EMBEDDED_RECORDED: &str = "2026-10-02T00:00:00Z";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeSource {
    Embedded,
    File,
    Api,
    Cache,
}

impl fmt::Display for RangeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Embedded => "embedded",
            Self::File => "file",
            Self::Api => "api",
            Self::Cache => "cache",
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RangeSet {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
    pub source: RangeSource,
    pub etag: Option<String>,
    /// When the list was fetched from the API (api/cache) or recorded (embedded).
    pub fetched_at: Option<SystemTime>,
    /// The file it came from, for `file`.
    pub path: Option<String>,
}

/// The API's answer: `{"result":{"ipv4_cidrs":[..],"ipv6_cidrs":[..],"etag":".."},"success":true}`.
#[derive(Deserialize)]
struct ApiAnswer {
    success: bool,
    result: Option<ApiResult>,
}

#[derive(Deserialize)]
struct ApiResult {
    ipv4_cidrs: Vec<String>,
    ipv6_cidrs: Vec<String>,
    etag: Option<String>,
}

/// Ranges parsed from the API's JSON shape: (v4, v6, etag). Both families must be non-empty.
pub fn parse_api_json(text: &str) -> Result<(Vec<Ipv4Net>, Vec<Ipv6Net>, Option<String>)> {
    let answer: ApiAnswer =
        serde_json::from_str(text).map_err(|e| anyhow!("not the Cloudflare API's JSON: {e}"))?;
    if !answer.success {
        bail!("the answer says success=false");
    }
    let result = answer
        .result
        .ok_or_else(|| anyhow!("the answer has no `result`"))?;
    let mut v4 = Vec::new();
    for cidr in &result.ipv4_cidrs {
        match parse_cidr(cidr)? {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(_) => bail!("{cidr} is IPv6 but listed in ipv4_cidrs"),
        }
    }
    let mut v6 = Vec::new();
    for cidr in &result.ipv6_cidrs {
        match parse_cidr(cidr)? {
            IpNet::V6(n) => v6.push(n),
            IpNet::V4(_) => bail!("{cidr} is IPv4 but listed in ipv6_cidrs"),
        }
    }
    if v4.is_empty() || v6.is_empty() {
        bail!("the answer lists no IPv4 or no IPv6 ranges");
    }
    validate::check_counts(v4.len(), v6.len())?;
    Ok((v4, v6, result.etag))
}

use validate::parse_cidr;

/// One CIDR per line; `#` starts a comment; blank lines are skipped.
pub fn parse_lines(text: &str) -> Result<(Vec<Ipv4Net>, Vec<Ipv6Net>)> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.chars().count() > validate::MAX_LINE_CHARS {
            bail!(
                "line {} is longer than {} characters: {}",
                i + 1,
                validate::MAX_LINE_CHARS,
                validate::quote(line)
            );
        }
        let body = line.split('#').next().unwrap_or_default().trim();
        if body.is_empty() {
            continue;
        }
        let net = parse_cidr(body).with_context(|| format!("line {}", i + 1))?;
        if net.prefix_len() == 0 {
            bail!(
                "line {}: {net} is every address (to watch every peer, use --all-peers)",
                i + 1
            );
        }
        match net {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }
    if v4.is_empty() && v6.is_empty() {
        bail!("no ranges in it");
    }
    validate::check_counts(v4.len(), v6.len())?;
    Ok((v4, v6))
}

impl RangeSet {
    /// The compiled-in snapshot of Cloudflare's ranges.
    pub fn embedded() -> Self {
        let (v4, v6, etag) = parse_api_json(EMBEDDED_JSON).expect("embedded ranges are valid");
        Self {
            v4,
            v6,
            source: RangeSource::Embedded,
            etag,
            fetched_at: humantime::parse_rfc3339(EMBEDDED_RECORDED).ok(),
            path: None,
        }
    }

    /// A ranges file: the API's JSON shape, or one CIDR per line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display();
        let text =
            validate::read_capped(path).map_err(|e| anyhow!("cannot use ranges file: {e:#}"))?;
        let (v4, v6, etag) = if text.trim_start().starts_with('{') {
            parse_api_json(&text).map_err(|e| anyhow!("malformed ranges file {shown}: {e}"))?
        } else {
            let (v4, v6) =
                parse_lines(&text).map_err(|e| anyhow!("malformed ranges file {shown}: {e:#}"))?;
            (v4, v6, None)
        };
        Ok(Self {
            v4,
            v6,
            source: RangeSource::File,
            etag,
            fetched_at: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
            path: Some(shown.to_string()),
        })
    }

    #[cfg(test)]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.iter().any(|n| n.contains(&a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a4) => self.v4.iter().any(|n| n.contains(&a4)),
                None => self.v6.iter().any(|n| n.contains(&a)),
            },
        }
    }

    /// The watched range `ip` belongs to.
    pub fn range_of(&self, ip: IpAddr) -> Option<ipnet::IpNet> {
        let v4 = |a: std::net::Ipv4Addr| {
            self.v4
                .iter()
                .find(|n| n.contains(&a))
                .map(|n| ipnet::IpNet::V4(*n))
        };
        match ip {
            IpAddr::V4(a) => v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a4) => v4(a4),
                None => self
                    .v6
                    .iter()
                    .find(|n| n.contains(&a))
                    .map(|n| ipnet::IpNet::V6(*n)),
            },
        }
    }

    /// Seconds since the list was fetched or recorded.
    pub fn age_secs(&self) -> Option<u64> {
        self.fetched_at
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map(|d| d.as_secs())
    }
}

/// Pre-filter bitmap for the kernel: one bit per value of an address's first 16 bits that
/// overlaps one of the networks (given as (first 16 bits, prefix length)).
fn prefilter(nets: impl Iterator<Item = (u16, u8)>) -> Vec<u64> {
    let mut words = vec![0u64; tracer_common::PREFILTER_WORDS as usize];
    for (first16, len) in nets {
        let (lo, hi) = if len >= 16 {
            (first16, first16)
        } else {
            let span = 1u32 << (16 - u32::from(len));
            let lo = (u32::from(first16) & !(span - 1)) as u16;
            (lo, (u32::from(lo) + span - 1) as u16)
        };
        for v in u32::from(lo)..=u32::from(hi) {
            words[(v >> 6) as usize] |= 1u64 << (v & 63);
        }
    }
    words
}

/// Sparse bitmap: word index -> word.
pub type SparseBits = std::collections::BTreeMap<u32, u64>;

impl RangeSet {
    /// IPv4 /24 bitmaps for the kernel: (fully covered /24s, /24s holding a longer prefix).
    pub fn slash24_v4(&self) -> (SparseBits, SparseBits) {
        let mut full = SparseBits::new();
        let mut part = SparseBits::new();
        for n in &self.v4 {
            let first = u32::from(n.network()) >> 8;
            if n.prefix_len() <= 24 {
                let count = 1u32 << (24 - n.prefix_len());
                for i in first..first + count {
                    *full.entry(i >> 6).or_default() |= 1u64 << (i & 63);
                }
            } else {
                *part.entry(first >> 6).or_default() |= 1u64 << (first & 63);
            }
        }
        (full, part)
    }

    pub fn prefilter_v6(&self) -> Vec<u64> {
        prefilter(self.v6.iter().map(|n| {
            let o = n.network().octets();
            (u16::from_be_bytes([o[0], o[1]]), n.prefix_len())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(words: &[u64], v: u16) -> bool {
        words[usize::from(v >> 6)] & (1u64 << (v & 63)) != 0
    }

    #[test]
    fn prefilter_covers_every_range_and_little_else() {
        let set = RangeSet::embedded();
        let (full, part) = set.slash24_v4();
        let has = |m: &SparseBits, a: [u8; 3]| {
            let i = u32::from_be_bytes([0, a[0], a[1], a[2]]);
            m.get(&(i >> 6))
                .is_some_and(|w| w & (1u64 << (i & 63)) != 0)
        };
        // 104.16.0.0/13 covers 104.16.0 .. 104.23.255.
        assert!(has(&full, [104, 16, 0]) && has(&full, [104, 23, 255]));
        assert!(!has(&full, [104, 24 + 8, 0]) && !has(&full, [104, 15, 255]));
        assert!(has(&full, [173, 245, 48]) && !has(&full, [192, 0, 2]));
        assert!(part.is_empty());
        let bits: u32 = full.values().map(|w| w.count_ones()).sum();
        // 15 ranges from /13 to /22.
        assert_eq!(
            bits,
            set.v4
                .iter()
                .map(|n| 1u32 << (24 - n.prefix_len()))
                .sum::<u32>()
        );
        let host = RangeSet {
            v4: vec!["192.0.2.7/32".parse().unwrap()],
            ..RangeSet::embedded()
        };
        let (f, p) = host.slash24_v4();
        assert!(f.is_empty() && has(&p, [192, 0, 2]));
        let w6 = set.prefilter_v6();
        assert!(bit(&w6, 0x2606) && bit(&w6, 0x2a06) && !bit(&w6, 0x2001));
    }

    #[test]
    fn embedded_snapshot_has_cloudflares_ranges() {
        let set = RangeSet::embedded();
        assert_eq!(set.v4.len(), 15);
        assert_eq!(set.v6.len(), 7);
        assert_eq!(
            set.etag.as_deref(),
            Some("38f79d050aa027e3be3865e495dcc9bc")
        );
        assert_eq!(set.source, RangeSource::Embedded);
        assert!(set.contains("173.245.48.10".parse().unwrap()));
        assert!(set.contains("104.16.0.1".parse().unwrap()));
        assert!(set.contains("172.71.255.255".parse().unwrap()));
        assert!(!set.contains("172.72.0.0".parse().unwrap()));
        assert!(!set.contains("192.0.2.10".parse().unwrap()));
        assert!(set.contains("2606:4700::10".parse().unwrap()));
        assert!(set.contains("2a06:98c7:ffff::1".parse().unwrap()));
        assert!(!set.contains("2001:db8::10".parse().unwrap()));
        assert!(set.contains("::ffff:173.245.48.10".parse().unwrap()));
    }

    #[test]
    fn lines_with_comments_and_bare_hosts() {
        let (v4, v6) =
            parse_lines("# edge\n10.0.0.0/8  # lab\n\n192.0.2.7\n2001:db8::/32\n").unwrap();
        assert_eq!(
            v4,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
        assert_eq!(v6, vec!["2001:db8::/32".parse::<Ipv6Net>().unwrap()]);
    }

    #[test]
    fn host_bits_are_an_error_naming_the_line_and_the_network() {
        let msg = format!("{:#}", parse_lines("173.245.48.1/20").unwrap_err());
        assert!(
            msg.contains("line 1") && msg.contains("173.245.48.0/20"),
            "{msg}"
        );
    }

    #[test]
    fn long_lines_every_address_and_too_many_ranges_are_refused() {
        let msg = format!("{:#}", parse_lines(&"1".repeat(300)).unwrap_err());
        assert!(msg.contains("longer than 256") && msg.len() < 200, "{msg}");
        let msg = format!("{:#}", parse_lines("0.0.0.0/0").unwrap_err());
        assert!(msg.contains("--all-peers"), "{msg}");
        let many: String = (0..4097)
            .map(|i| format!("10.{}.{}.0/24\n", i / 256, i % 256))
            .collect();
        let msg = format!("{:#}", parse_lines(&many).unwrap_err());
        assert!(
            msg.contains("4097 IPv4 ranges") && msg.contains("4096"),
            "{msg}"
        );
        let ok: String = (0..4096)
            .map(|i| format!("10.{}.{}.0/24\n", i / 256, i % 256))
            .collect();
        assert_eq!(parse_lines(&ok).unwrap().0.len(), 4096);
    }

    #[test]
    fn bad_line_names_its_number() {
        let err = parse_lines("10.0.0.0/8\n\n10.0.0.0/33\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("10.0.0.0/33"), "{msg}");
    }

    #[test]
    fn merged_v4_v6_line_is_rejected() {
        // The classic bug: ips-v4 without trailing newline concatenated with ips-v6.
        assert!(parse_lines("131.0.72.0/222400:cb00::/32").is_err());
    }

    #[test]
    fn empty_list_is_rejected() {
        assert!(parse_lines("# nothing\n\n").is_err());
    }

    #[test]
    fn api_json_validation() {
        assert!(parse_api_json("<html>challenge</html>").is_err());
        assert!(parse_api_json(r#"{"success":false,"result":null}"#).is_err());
        assert!(parse_api_json(
            r#"{"success":true,"result":{"ipv4_cidrs":["1.2.3.0/24"],"ipv6_cidrs":[]}}"#
        )
        .is_err());
        assert!(parse_api_json(
            r#"{"success":true,"result":{"ipv4_cidrs":["1.2.3.0/24","nope"],"ipv6_cidrs":["2001:db8::/32"]}}"#
        )
        .is_err());
        assert!(parse_api_json(
            r#"{"success":true,"result":{"ipv4_cidrs":["2001:db8::/32"],"ipv6_cidrs":["2001:db8::/32"]}}"#
        )
        .is_err());
        let (v4, v6, etag) = parse_api_json(
            r#"{"success":true,"result":{"ipv4_cidrs":["1.2.3.0/24"],"ipv6_cidrs":["2001:db8::/32"],"etag":"e1"}}"#,
        )
        .unwrap();
        assert_eq!((v4.len(), v6.len(), etag.as_deref()), (1, 1, Some("e1")));
    }
}
