//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find
//! where a struct keeps a member: the drop program reads `struct sk_buff`
//! fields whose offsets change between kernels and configs, and Rust eBPF
//! has no CO-RE relocations, so userspace looks them up and hands them
//! over (DROP_CONFIG). Format: the kernel's Documentation/bpf/btf.rst.
use std::io;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// One type: kind, name, and for structs and unions their members
/// (name offset, type id, bit offset).
struct Type {
    kind: u32,
    name: u32,
    members: Vec<(u32, u32, u32)>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn u32_at(data: &[u8], at: usize) -> io::Result<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| bad(format!("BTF cut short at byte {at}")))
}

impl Btf {
    pub fn load(path: &str) -> io::Result<Btf> {
        Btf::parse(&std::fs::read(path)?)
    }

    pub fn parse(data: &[u8]) -> io::Result<Btf> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(bad("not little-endian BTF (magic 0xeb9f)"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .ok_or_else(|| bad("BTF section outside the file"))
        };
        let types_data = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        // Type id 0 is void; ids count from 1.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_data.len() {
            let name = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let (kind, vlen, kind_flag) =
                ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31);
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                4 | 5 => {
                    for m in 0..vlen {
                        let base = at + m * 12;
                        let offset = u32_at(types_data, base + 8)?;
                        // With kind_flag, the top 8 bits are a bitfield's size.
                        let bits = if kind_flag == 1 {
                            offset & 0xff_ffff
                        } else {
                            offset
                        };
                        members.push((
                            u32_at(types_data, base)?,
                            u32_at(types_data, base + 4)?,
                            bits,
                        ));
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // enum, func_proto
                15 | 19 => vlen * 12,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
                other => return Err(bad(format!("unknown BTF kind {other}"))),
            };
            at += extra;
            types.push(Type {
                kind,
                name,
                members,
            });
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Byte offset of `member` in struct `name`, looking through anonymous
    /// structs and unions as C does.
    pub fn member_offset(&self, name: &str, member: &str) -> io::Result<u32> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && self.name(t.name) == name.as_bytes())
            .ok_or_else(|| bad(format!("no struct {name} in BTF")))?;
        let bits = self
            .find(id, member.as_bytes(), 0)
            .ok_or_else(|| bad(format!("struct {name} has no member {member}")))?;
        if bits % 8 != 0 {
            return Err(bad(format!("{name}.{member} is a bitfield")));
        }
        Ok(bits / 8)
    }

    fn find(&self, id: usize, member: &[u8], depth: u32) -> Option<u32> {
        // Anonymous members nest a few levels deep in sk_buff; the bound
        // keeps a malformed file from recursing forever.
        if depth > 8 {
            return None;
        }
        let t = self.types.get(id)?;
        for &(name, type_id, bits) in &t.members {
            if self.name(name) == member {
                return Some(bits);
            }
            if name == 0 {
                let inner = self.resolve(type_id as usize);
                if let Some(found) = self.find(inner, member, depth + 1) {
                    return Some(bits + found);
                }
            }
        }
        None
    }

    /// The struct or union behind a member's type id (anonymous members
    /// are direct, but a modifier may sit in between).
    fn resolve(&self, id: usize) -> usize {
        match self.types.get(id) {
            Some(t) if t.kind == KIND_STRUCT || t.kind == KIND_UNION => id,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's own BTF: sk_buff's members move between
    /// kernels, but `head` is always a pointer after `tail` and `end`,
    /// and `network_header` sits in the headers group before them.
    #[test]
    fn finds_sk_buff_members_through_anonymous_groups() {
        let Ok(btf) = Btf::load(VMLINUX) else {
            panic!("{VMLINUX} is needed: every kernel crossover supports has it");
        };
        let head = btf.member_offset("sk_buff", "head").unwrap();
        let network = btf.member_offset("sk_buff", "network_header").unwrap();
        let len = btf.member_offset("sk_buff", "len").unwrap();
        assert!(network < head && len < network, "{len} {network} {head}");
        assert_eq!(head % 8, 0, "a pointer is aligned");
        let err = btf.member_offset("sk_buff", "no_such_member").unwrap_err();
        assert!(
            err.to_string().contains("has no member no_such_member"),
            "{err}"
        );
        assert!(Btf::parse(b"not btf at all, not at all").is_err());
    }
}
