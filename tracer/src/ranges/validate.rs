//! What a ranges list may be before it reaches the kernel: bounded in bytes, line length and
//! count (the kernel tables' size), CIDRs without host bits, and — for lists that claim to
//! come from Cloudflare — no default routes, private, loopback or documentation space. Errors
//! quote at most a short, escaped prefix of the input.

use std::{io::Read as _, net::IpAddr, path::Path};

use anyhow::{anyhow, bail, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Ranges per family the kernel tables hold (Cloudflare publishes 15 IPv4 and 7 IPv6).
pub const MAX_PER_FAMILY: usize = 4096;
/// A ranges file or cache larger than this is refused.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// A line longer than this is refused (a CIDR with a comment fits easily).
pub const MAX_LINE_CHARS: usize = 256;
/// Characters of hostile input an error quotes.
const QUOTE_CHARS: usize = 40;

/// At most [`QUOTE_CHARS`] characters of `text`, control characters and escapes shown
/// escaped, so an error stays one printable line.
pub fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(QUOTE_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > QUOTE_CHARS {
        out.push('…');
    }
    format!("'{out}'")
}

/// Reads a file of at most [`MAX_FILE_BYTES`], as UTF-8.
pub fn read_capped(path: &Path) -> Result<String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| anyhow!("cannot read {shown}: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        bail!("{shown} is larger than {MAX_FILE_BYTES} bytes: not a ranges list");
    }
    String::from_utf8(bytes).map_err(|_| anyhow!("{shown} is not UTF-8 text"))
}

/// A CIDR, or a bare address taken as a host route. Host bits are an error: `1.2.3.4/8` is
/// almost always a typo for something else than `1.0.0.0/8`.
pub fn parse_cidr(text: &str) -> Result<IpNet> {
    let text = text.trim();
    if text.chars().count() > MAX_LINE_CHARS {
        bail!("{} is too long for a CIDR", quote(text));
    }
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            bail!(
                "{} has host bits set (the network is {}; write that if it is meant)",
                quote(text),
                net.trunc()
            );
        }
        return Ok(net);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(anyhow!(
        "{} is not a CIDR (expected e.g. 173.245.48.0/20 or 2400:cb00::/32)",
        quote(text)
    ))
}

/// The kernel tables' limit, checked before anything is written to them.
pub fn check_counts(v4: usize, v6: usize) -> Result<()> {
    for (family, n) in [("IPv4", v4), ("IPv6", v6)] {
        if n > MAX_PER_FAMILY {
            bail!(
                "the list has {n} {family} ranges; the kernel tables hold at most {MAX_PER_FAMILY} per family (Cloudflare publishes fewer than 20): merge ranges or use --all-peers"
            );
        }
    }
    Ok(())
}

/// Why `net` cannot be one of Cloudflare's published ranges, if it cannot.
pub fn implausible(net: &IpNet) -> Option<&'static str> {
    let short = match net {
        IpNet::V4(n) => n.prefix_len() < 8,
        IpNet::V6(n) => n.prefix_len() < 16,
    };
    if net.prefix_len() == 0 {
        return Some("a default route (every address)");
    }
    if short {
        return Some("implausibly large");
    }
    let addr = net.network();
    let private = match addr {
        IpAddr::V4(a) => {
            a.is_private()
                || a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64 // 100.64.0.0/10
                || a.is_loopback()
                || a.is_link_local()
                || a.is_multicast()
                || a.is_documentation()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.octets()[0] >= 240 // 240.0.0.0/4, reserved
                || a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18 // 198.18.0.0/15, benchmarking
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (64:ff9b::/96, 64:ff9b:1::/48)
                || a.to_ipv4_mapped().is_some() // IPv4-mapped (::ffff:0:0/96)
        }
    };
    private.then_some(
        "private, loopback, link-local, multicast, documentation, benchmarking, reserved or translation space",
    )
}

/// IPv4 addresses a list claiming to be Cloudflare's may cover in all: one /8 (Cloudflare's
/// own add up to about a /11). A list of many /8s, each plausible alone, is not theirs.
const MAX_V4_ADDRESSES: u64 = 1 << 24;
/// IPv6: a /24's worth (Cloudflare's own add up to less than a /28).
const MAX_V6_ADDRESSES: u128 = 1 << 104;

/// Rejects a list that claims to be Cloudflare's but holds what cannot be.
pub fn check_plausible(v4: &[Ipv4Net], v6: &[Ipv6Net]) -> Result<()> {
    let v4_total: u64 = v4.iter().map(|n| 1u64 << (32 - n.prefix_len())).sum();
    if v4_total > MAX_V4_ADDRESSES {
        bail!(
            "its IPv4 ranges cover {v4_total} addresses, more than a /8: not Cloudflare's ranges"
        );
    }
    let v6_total = v6.iter().fold(0u128, |t, n| {
        t.saturating_add(
            1u128
                .checked_shl(128 - u32::from(n.prefix_len()))
                .unwrap_or(u128::MAX),
        )
    });
    if v6_total > MAX_V6_ADDRESSES {
        bail!("its IPv6 ranges cover more than a /24: not Cloudflare's ranges");
    }
    let all = v4
        .iter()
        .map(|n| IpNet::V4(*n))
        .chain(v6.iter().map(|n| IpNet::V6(*n)));
    for net in all {
        if let Some(why) = implausible(&net) {
            bail!("it lists {net}, {why}: not Cloudflare's ranges");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bits_are_an_error_naming_the_network() {
        let e = parse_cidr("1.2.3.4/8").unwrap_err().to_string();
        assert!(e.contains("host bits") && e.contains("1.0.0.0/8"), "{e}");
        assert_eq!(parse_cidr("1.0.0.0/8").unwrap().to_string(), "1.0.0.0/8");
        assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
    }

    #[test]
    fn errors_quote_a_short_escaped_prefix() {
        let long = format!("\x1b[31m{}", "a".repeat(5_000_000));
        let e = parse_cidr(&long).unwrap_err().to_string();
        assert!(e.len() < 200, "{}", e.len());
        assert!(!e.contains('\x1b') && e.contains("\\u{1b}"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn counts_beyond_the_kernel_tables_are_refused() {
        check_counts(4096, 7).unwrap();
        let e = check_counts(4097, 7).unwrap_err().to_string();
        assert!(e.contains("4097 IPv4 ranges") && e.contains("4096"), "{e}");
        assert!(check_counts(15, 100_000).is_err());
    }

    #[test]
    fn implausible_ranges_for_cloudflare() {
        for bad in [
            "0.0.0.0/0",
            "::/0",
            "10.0.0.0/8",
            "192.168.1.0/24",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "192.0.2.0/24",
            "2001:db8::/32",
            "fd00::/8",
            "4.0.0.0/6",
            "240.0.0.0/4",
            "250.1.0.0/16",
            "198.18.0.0/15",
            "198.19.4.0/24",
            "64:ff9b::/96",
            "64:ff9b:1::/48",
            "::ffff:0:0/96",
        ] {
            assert!(implausible(&bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "173.245.48.0/20",
            "104.16.0.0/13",
            "2606:4700::/32",
            "2a06:98c0::/29",
        ] {
            assert!(implausible(&good.parse().unwrap()).is_none(), "{good}");
        }
        // The published lists pass; many /8s, each plausible alone, do not.
        let set = crate::ranges::RangeSet::embedded();
        check_plausible(&set.v4, &set.v6).unwrap();
        let eights: Vec<Ipv4Net> = (11..14)
            .map(|a| format!("{a}.0.0.0/8").parse().unwrap())
            .collect();
        let e = check_plausible(&eights, &set.v6).unwrap_err().to_string();
        assert!(e.contains("more than a /8"), "{e}");
        let wide: Vec<Ipv6Net> = (0..300u16)
            .map(|i| format!("2{:03x}::/16", i).parse().unwrap())
            .collect();
        assert!(check_plausible(&set.v4, &wide).is_err());
    }
}
