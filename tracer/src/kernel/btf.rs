//! Kernel struct offsets and enum names from the running kernel's BTF.

use std::collections::HashMap;

use anyhow::{anyhow, Context as _, Result};
use btf_rs::{Btf, Type};
use tracer_common::{KernelOffsets, FIELD_ABSENT};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let btf = Btf::from_file(VMLINUX_BTF).with_context(|| format!("reading {VMLINUX_BTF}"))?;
        Ok(Self { btf })
    }

    fn named_struct(&self, name: &str) -> Result<btf_rs::Struct> {
        for ty in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            if let Type::Struct(s) = ty {
                return Ok(s);
            }
        }
        Err(anyhow!("struct {name} not in BTF"))
    }

    /// Strips typedef/const/volatile to reach a struct or union.
    fn composite(&self, mut ty: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match ty {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::TypeTag(_) => {
                    ty = self.btf.resolve_chained_type(ty.as_btf_type()?).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Byte offset of `member` in `s`, looking through anonymous structs and unions.
    fn find_member(&self, s: &btf_rs::Struct, member: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                let ty = self.btf.resolve_chained_type(m).ok()?;
                return Some((m.bit_offset() / 8, ty));
            }
            if name.is_empty() {
                let inner = self.composite(self.btf.resolve_chained_type(m).ok()?)?;
                if let Some((off, ty)) = self.find_member(&inner, member, depth + 1) {
                    return Some((m.bit_offset() / 8 + off, ty));
                }
            }
        }
        None
    }

    /// Offset of a dotted member path, e.g. `("sock", "__sk_common.skc_net")`.
    pub fn offset_of(&self, struct_name: &str, path: &str) -> Result<u16> {
        let mut current = self.named_struct(struct_name)?;
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
        };
        (offsets, missing)
    }

    /// Values of an enum, names with `strip_prefix` removed (`SKB_DROP_REASON_NO_SOCKET` ->
    /// `NO_SOCKET`).
    pub fn enum_names(&self, enum_name: &str, strip_prefix: &str) -> HashMap<u32, String> {
        let mut out = HashMap::new();
        for ty in self
            .btf
            .resolve_types_by_name(enum_name)
            .unwrap_or_default()
        {
            if let Type::Enum(e) = ty {
                for m in &e.members {
                    if let Ok(name) = self.btf.resolve_name(m) {
                        let short = name.strip_prefix(strip_prefix).unwrap_or(&name);
                        out.insert(m.val(), short.to_string());
                    }
                }
            }
        }
        out
    }
}
