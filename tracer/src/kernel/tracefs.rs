//! Tracepoint layouts read from tracefs `format` files, so no offset is compiled in for one kernel.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Finds tracefs, mounting it at /sys/kernel/tracing when absent (as `ip netns exec` leaves it).
pub fn ensure_mounted() -> Result<PathBuf> {
    for dir in CANDIDATES {
        match std::fs::metadata(Path::new(dir).join("events")) {
            Ok(m) if m.is_dir() => return Ok(PathBuf::from(dir)),
            // Mounted, but this user may not look inside (a non-root user with CAP_BPF,
            // CAP_PERFMON and CAP_NET_ADMIN): mounting again would not help.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "tracefs at {dir} is mounted but not readable by this user ({e}): run as root, or let this user read it (e.g. `mount -o remount,mode=755 {dir}`)"
            ),
            _ => {}
        }
    }
    let target = CANDIDATES[0];
    let c_target = CString::new(target)?;
    let fstype = CString::new("tracefs")?;
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !Path::new(target).join("events").is_dir() {
        bail!(
            "tracefs is not mounted and mounting it failed ({}): run `mount -t tracefs tracefs {target}` as root",
            std::io::Error::last_os_error()
        );
    }
    Ok(PathBuf::from(target))
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u16,
    pub size: u16,
}

/// A parsed `format` file.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub fields: HashMap<String, Field>,
    pub print_fmt: String,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "tracepoint {category}:{name} is missing ({})",
                path.display()
            )
        })?;
        Self::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let mut fields = HashMap::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                print_fmt = rest.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or_default();
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse::<u16>().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse::<u16>().ok();
                }
            }
            let name = decl
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()
                .unwrap_or_default();
            let name = name.split('[').next().unwrap_or_default();
            match (offset, size) {
                (Some(offset), Some(size)) if !name.is_empty() => {
                    fields.insert(name.to_string(), Field { offset, size });
                }
                _ => bail!("malformed field line: {line}"),
            }
        }
        if fields.is_empty() {
            return Err(anyhow!("no fields"));
        }
        Ok(Self { fields, print_fmt })
    }

    pub fn offset(&self, name: &str) -> Option<u16> {
        self.fields.get(name).map(|f| f.offset)
    }

    /// The `__print_symbolic(REC->field, { N, "NAME" }, ...)` table for `field`, if any.
    pub fn symbols(&self, field: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        let marker = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&marker) else {
            return out;
        };
        let mut rest = &self.print_fmt[start + marker.len()..];
        // Entries look like `{ 3, "NO_SOCKET" }`; the table ends at the first `)` outside one.
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some(body) = rest.strip_prefix('{') else {
                break;
            };
            let Some(end) = body.find('}') else { break };
            let entry = &body[..end];
            rest = &body[end + 1..];
            let mut kv = entry.splitn(2, ',');
            let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            let k = k.trim();
            let parsed = k
                .strip_prefix("0x")
                .map(|h| u32::from_str_radix(h, 16))
                .unwrap_or_else(|| k.parse::<u32>());
            if let Ok(k) = parsed {
                out.insert(k, v.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE_SKB_6_18: &str = "name: kfree_skb
ID: 1634
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;

print fmt: \"skbaddr=%p rx_sk=%p protocol=%u location=%pS reason: %s\", REC->skbaddr, REC->rx_sk, REC->protocol, REC->location, __print_symbolic(REC->reason, { 2, \"NOT_SPECIFIED\" }, { 3, \"NO_SOCKET\" }, { 12, \"NETFILTER_DROP\" }, { 0x28, \"TCP_LISTEN_OVERFLOW\" })
";

    const SEND_RESET_6_6: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
print fmt: \"x\"
";

    #[test]
    fn parses_kfree_skb_of_6_18() {
        let f = Format::parse(KFREE_SKB_6_18).unwrap();
        assert_eq!(f.offset("skbaddr"), Some(8));
        assert_eq!(f.offset("protocol"), Some(32));
        assert_eq!(f.offset("reason"), Some(36));
        assert_eq!(f.fields["reason"].size, 4);
        assert_eq!(f.offset("common_pid"), Some(4));
        let symbols = f.symbols("reason");
        assert_eq!(symbols[&3], "NO_SOCKET");
        assert_eq!(symbols[&12], "NETFILTER_DROP");
        assert_eq!(symbols[&40], "TCP_LISTEN_OVERFLOW");
        assert_eq!(symbols.len(), 4);
    }

    #[test]
    fn parses_array_fields_of_6_6_send_reset() {
        let f = Format::parse(SEND_RESET_6_6).unwrap();
        assert_eq!(f.offset("saddr"), Some(34));
        assert_eq!(
            f.fields["saddr_v6"],
            Field {
                offset: 42,
                size: 16
            }
        );
        assert_eq!(f.offset("reason"), None);
        assert!(f.symbols("reason").is_empty());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("hello").is_err());
        assert!(Format::parse("field:int x;\toffset:zz;\tsize:4;").is_err());
    }
}
