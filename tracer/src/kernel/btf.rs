//! Kernel struct offsets and enum names from the running kernel's BTF.
//!
//! A lean reader: the raw file plus one index of type offsets. A general BTF library
//! (btf-rs) materialises every type of vmlinux and peaked at ~55 MB here, for the few offsets
//! we need.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _, Result};
use tracer_common::{KernelOffsets, SockOffsets, FIELD_ABSENT};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

pub struct KernelBtf {
    data: Vec<u8>,
    /// Byte offset of each type record (index = type id - 1) in `data`.
    types: Vec<u32>,
    strings: usize,
    strings_end: usize,
}

struct TypeRec {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the kind-specific data that follows the common header.
    extra: usize,
}

/// A little-endian BTF blob: 24-byte header, then the type records and the string section.
fn btf_blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    blob.extend_from_slice(&[1, 0]); // version, flags
    let (types_len, strings_len) = (types.len() as u32, strings.len() as u32);
    // hdr_len, type_off, type_len, str_off, str_len
    for word in [24, 0, types_len, types_len, strings_len] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob.extend_from_slice(types);
    blob.extend_from_slice(strings);
    blob
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let data = std::fs::read(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if u16_at(0) != Some(BTF_MAGIC) {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(4).ok_or_else(|| anyhow!("short BTF header"))? as usize;
        let field = |o: usize| {
            u32_at(8 + o)
                .map(|v| v as usize)
                .ok_or_else(|| anyhow!("short BTF header"))
        };
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(4)?, field(8)?, field(12)?);
        let (types_start, types_end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        let strings = hdr_len + str_off;
        if types_end > data.len() || strings + str_len > data.len() {
            bail!("BTF sections out of bounds");
        }
        let mut types = Vec::with_capacity(type_len / 16);
        let mut at = types_start;
        while at + 12 <= types_end {
            types.push(at as u32);
            let info = u32_at(at + 4).unwrap_or(0);
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            at += 12 + extra;
        }
        Ok(Self {
            strings,
            strings_end: strings + str_len,
            types,
            data,
        })
    }

    fn u32_at(&self, o: usize) -> u32 {
        self.data
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0)
    }

    fn name(&self, off: u32) -> &str {
        let start = self.strings + off as usize;
        if start >= self.strings_end {
            return "";
        }
        let bytes = &self.data[start..self.strings_end];
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or("")
    }

    fn rec(&self, id: u32) -> Option<TypeRec> {
        let at = *self.types.get((id as usize).checked_sub(1)?)? as usize;
        let info = self.u32_at(at + 4);
        Some(TypeRec {
            name_off: self.u32_at(at),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8),
            extra: at + 12,
        })
    }

    fn ids_named(&self, name: &str, kinds: &[u32]) -> Vec<u32> {
        (1..=self.types.len() as u32)
            .filter(|id| {
                self.rec(*id)
                    .is_some_and(|r| kinds.contains(&r.kind) && self.name(r.name_off) == name)
            })
            .collect()
    }

    /// What aya needs to load BTF tracepoints: it looks up the typedef `btf_trace_<name>` in
    /// an `aya::Btf` for the id to attach to. Parsing vmlinux into one costs ~11 MB at start
    /// (the agent's peak RSS is a target), so this is a stand-in holding just those typedefs
    /// at their vmlinux ids, `const void` placeholders before them. Tracepoints this kernel
    /// lacks are left out (loading them then fails and says so).
    pub fn tracepoint_btf(&self, tracepoints: &[&str]) -> Result<aya::Btf> {
        let mut strings = vec![0u8];
        let mut at_id = HashMap::new();
        for tp in tracepoints {
            let name = format!("btf_trace_{tp}");
            if let Some(&id) = self.ids_named(&name, &[KIND_TYPEDEF]).first() {
                at_id.insert(id, strings.len() as u32);
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
            }
        }
        let last = at_id.keys().copied().max().unwrap_or(0);
        let mut types = Vec::with_capacity(last as usize * 12);
        for id in 1..=last {
            let (name_off, kind) = match at_id.get(&id) {
                Some(&off) => (off, KIND_TYPEDEF),
                None => (0, KIND_CONST),
            };
            for word in [name_off, kind << 24, 0] {
                types.extend_from_slice(&word.to_le_bytes());
            }
        }
        aya::Btf::parse(&btf_blob(&types, &strings), aya::Endianness::default())
            .context("building tracepoint BTF")
    }

    /// Follows typedef/const/volatile/restrict/type-tag to a struct or union.
    fn composite(&self, mut id: u32) -> Option<TypeRec> {
        for _ in 0..16 {
            let r = self.rec(id)?;
            match r.kind {
                KIND_STRUCT | KIND_UNION => return Some(r),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = r.size_or_type;
                }
                _ => return None,
            }
        }
        None
    }

    /// (byte offset, type id) of `member` in `s`, looking through anonymous structs/unions.
    fn find_member(&self, s: &TypeRec, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for i in 0..s.vlen {
            let m = s.extra + 12 * i;
            let (name_off, ty, raw_off) = (self.u32_at(m), self.u32_at(m + 4), self.u32_at(m + 8));
            let bit_off = if s.kind_flag {
                raw_off & 0xff_ffff
            } else {
                raw_off
            };
            let name = self.name(name_off);
            if name == member {
                return Some((bit_off / 8, ty));
            }
            if name.is_empty() {
                if let Some(inner) = self.composite(ty) {
                    if let Some((off, t)) = self.find_member(&inner, member, depth + 1) {
                        return Some((bit_off / 8 + off, t));
                    }
                }
            }
        }
        None
    }

    /// Offset of a dotted member path, e.g. `("sock", "__sk_common.skc_net.net")`.
    pub fn offset_of(&self, struct_name: &str, path: &str) -> Result<u16> {
        let id = *self
            .ids_named(struct_name, &[KIND_STRUCT])
            .first()
            .ok_or_else(|| anyhow!("struct {struct_name} not in BTF"))?;
        let mut current = self
            .composite(id)
            .ok_or_else(|| anyhow!("struct {struct_name} unreadable"))?;
        let mut total = 0u32;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, ty) = self
                .find_member(&current, part, 0)
                .ok_or_else(|| anyhow!("{struct_name}.{path}: no member {part}"))?;
            total += off;
            if i + 1 < parts.len() {
                current = self
                    .composite(ty)
                    .ok_or_else(|| anyhow!("{struct_name}.{path}: {part} is not a struct"))?;
            }
        }
        u16::try_from(total).map_err(|_| anyhow!("{struct_name}.{path}: offset {total} too large"))
    }

    /// The kernel struct offsets the programs need; members this kernel lacks stay absent.
    pub fn kernel_offsets(&self) -> (KernelOffsets, Vec<String>) {
        let mut missing = Vec::new();
        let mut get = |s: &str, p: &str| match self.offset_of(s, p) {
            Ok(v) => v,
            Err(e) => {
                missing.push(e.to_string());
                FIELD_ABSENT
            }
        };
        let offsets = KernelOffsets {
            skb_sk: get("sk_buff", "sk"),
            skb_dev: get("sk_buff", "dev"),
            skb_head: get("sk_buff", "head"),
            skb_network_header: get("sk_buff", "network_header"),
            skb_transport_header: get("sk_buff", "transport_header"),
            dev_nd_net: get("net_device", "nd_net.net"),
            sk_net: get("sock", "__sk_common.skc_net.net"),
            net_inum: get("net", "ns.inum"),
            skb_protocol: get("sk_buff", "protocol"),
            net_user_ns: get("net", "user_ns"),
            userns_level: get("user_namespace", "level"),
            _pad: [0; 1],
        };
        (offsets, missing)
    }

    /// `struct sock` members for the BTF `inet_sock_set_state` program; absent ones stay absent.
    pub fn sock_offsets(&self) -> SockOffsets {
        let get = |p: &str| self.offset_of("sock", p).unwrap_or(FIELD_ABSENT);
        SockOffsets {
            family: get("__sk_common.skc_family"),
            protocol: get("sk_protocol"),
            sport: self
                .offset_of("inet_sock", "inet_sport")
                .unwrap_or(FIELD_ABSENT),
            dport: get("__sk_common.skc_dport"),
            rcv_saddr: get("__sk_common.skc_rcv_saddr"),
            daddr: get("__sk_common.skc_daddr"),
            v6_rcv_saddr: get("__sk_common.skc_v6_rcv_saddr"),
            v6_daddr: get("__sk_common.skc_v6_daddr"),
        }
    }

    /// Values of an enum, names with `strip_prefix` removed (`SKB_DROP_REASON_NO_SOCKET` ->
    /// `NO_SOCKET`).
    pub fn enum_names(&self, enum_name: &str, strip_prefix: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        for id in self.ids_named(enum_name, &[KIND_ENUM, KIND_ENUM64]) {
            let Some(r) = self.rec(id) else { continue };
            let stride = if r.kind == KIND_ENUM { 8 } else { 12 };
            for i in 0..r.vlen {
                let m = r.extra + stride * i;
                let name = self.name(self.u32_at(m));
                let short = name.strip_prefix(strip_prefix).unwrap_or(name);
                out.insert(self.u32_at(m + 4), short.to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: `struct inner { int a; int b; }`, `struct outer { long x; union {
    /// struct inner in; }; }` (kind_flag bitfield offsets), `enum e { E_ONE = 1, E_TWO = 2 }`.
    fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut s = |n: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            off
        };
        let (int, a, b, inner, outer, x, inn, e, one, two) = (
            s("int"),
            s("a"),
            s("b"),
            s("inner"),
            s("outer"),
            s("x"),
            s("in"),
            s("e"),
            s("E_ONE"),
            s("E_TWO"),
        );
        let mut t = Vec::new();
        let mut rec = |name: u32, kind: u32, vlen: u32, flag: u32, size: u32, extra: &[u32]| {
            for v in [name, (flag << 31) | (kind << 24) | vlen, size]
                .iter()
                .chain(extra)
            {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        rec(int, KIND_INT, 0, 0, 4, &[32]); // 1: int
        rec(inner, KIND_STRUCT, 2, 0, 8, &[a, 1, 0, b, 1, 32]); // 2: struct inner
        rec(0, KIND_UNION, 1, 0, 8, &[inn, 2, 0]); // 3: anonymous union { struct inner in; }
        rec(outer, KIND_STRUCT, 2, 1, 16, &[x, 1, 0, 0, 3, 64]); // 4: struct outer (kind_flag)
        rec(e, KIND_ENUM, 2, 0, 4, &[one, 1, two, 2]); // 5: enum e
        btf_blob(&t, &strings)
    }

    #[test]
    fn offsets_through_anonymous_unions() {
        let btf = KernelBtf::parse(blob()).unwrap();
        assert_eq!(btf.offset_of("inner", "b").unwrap(), 4);
        assert_eq!(btf.offset_of("outer", "in").unwrap(), 8);
        assert_eq!(btf.offset_of("outer", "in.b").unwrap(), 12);
        assert!(btf.offset_of("outer", "nope").is_err());
        assert!(btf.offset_of("missing", "x").is_err());
        let names = btf.enum_names("e", "E_");
        assert_eq!(names[&1], "ONE");
        assert_eq!(names[&2], "TWO");
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(KernelBtf::parse(b"hello world, not btf at all".to_vec()).is_err());
        let mut short = blob();
        short.truncate(40);
        assert!(KernelBtf::parse(short).is_err());
    }

    #[test]
    fn reads_this_kernels_btf() {
        // Every supported machine has vmlinux BTF; it is world-readable.
        let btf = KernelBtf::load().expect("vmlinux BTF");
        let (offsets, missing) = btf.kernel_offsets();
        assert!(missing.is_empty(), "{missing:?}");
        // The stand-in carries each tracepoint's typedef at its vmlinux id.
        let ids = btf.tracepoint_btf(&["kfree_skb", "inet_sock_set_state", "no_such_tp"]);
        let ids = ids.unwrap();
        for tp in ["kfree_skb", "inet_sock_set_state"] {
            let name = format!("btf_trace_{tp}");
            assert_eq!(
                ids.id_by_type_name_kind(&name, aya_obj::btf::BtfKind::Typedef)
                    .unwrap(),
                btf.ids_named(&name, &[KIND_TYPEDEF])[0]
            );
        }
        assert_ne!(offsets.skb_head, FIELD_ABSENT);
        assert!(btf
            .enum_names("skb_drop_reason", "SKB_DROP_REASON_")
            .values()
            .any(|n| n == "NO_SOCKET"));
    }
}
