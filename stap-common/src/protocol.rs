//! The control-channel protocol (`.cmd`) of both SystemTap generations.
//!
//! Every message is `u32 type` followed by a payload, in host byte order
//! (the kernel and the tools share one machine, so the C structures are
//! native-endian; we encode with `to_ne_bytes` explicitly and with fixed,
//! named sizes). One `read()` returns one message.
//!
//! Generation 4 (SystemTap 4.x, Debian bookworm's 4.8) numbers the
//! messages from 0; generation 5 renumbered them from 0x50 in the same
//! order. The relay record header also differs (see [`crate::record`]).
//! The generation is learnt from the module's own answers (see
//! [`Generation::probe_order`]), never from user input.
#![forbid(unsafe_code)]

use std::fmt;

use thiserror::Error;

pub const MODULE_NAME_LEN: usize = 128;
pub const SYMBOL_NAME_LEN: usize = 128;
pub const TZ_NAME_LEN: usize = 64;
pub const REMOTE_URI_LEN: usize = 128;
/// Largest payload the kernel queues (`STP_CTL_BUFFER_SIZE`).
pub const CTL_BUFFER_SIZE: usize = 384;
/// Largest message stapio writes (`send_request`'s limit).
pub const MAX_REQUEST: usize = 1024;
/// Read buffer for one kernel message: generous, as a short buffer makes
/// the kernel drop the message with EFAULT.
pub const READ_BUFFER: usize = 8192 + 4;

/// A SystemTap transport generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// SystemTap before 5.0: messages from 0, 8-byte relay header.
    V4,
    /// SystemTap 5.0 and later: messages from 0x50, 12-byte relay header
    /// with a magic.
    V5,
}

impl Generation {
    /// Order in which to try generations when probing a module: the
    /// module answers EINVAL to a message type it does not know.
    pub fn probe_order() -> [Generation; 2] {
        [Generation::V5, Generation::V4]
    }

    fn base(self) -> u32 {
        match self {
            Generation::V4 => 0,
            Generation::V5 => 0x50,
        }
    }

    /// The wire number of `kind` in this generation.
    pub fn number(self, kind: MsgKind) -> u32 {
        self.base() + kind as u32
    }

    /// Whether this generation has message `kind`: 4.x ends with
    /// `STP_NAMESPACES_PID` (18); `STP_MNT_NS_FDS` came with 5.1 (PR31060).
    pub fn defines(self, kind: MsgKind) -> bool {
        match self {
            Generation::V4 => kind != MsgKind::MntNsFds,
            Generation::V5 => true,
        }
    }

    /// The kind of wire number `n`, if this generation defines it.
    pub fn kind(self, n: u32) -> Option<MsgKind> {
        let i = n.checked_sub(self.base())?;
        let kind = MsgKind::ALL.get(usize::try_from(i).ok()?).copied()?;
        self.defines(kind).then_some(kind)
    }

    /// Generation of a module whose first message had wire number `n`
    /// and was `STP_TRANSPORT`.
    pub fn from_transport_number(n: u32) -> Option<Generation> {
        [Generation::V4, Generation::V5]
            .into_iter()
            .find(|g| g.number(MsgKind::Transport) == n)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Generation::V4 => f.write_str("4.x"),
            Generation::V5 => f.write_str("5.x"),
        }
    }
}

/// Message kinds, in protocol order (the discriminant is the offset from
/// the generation's base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgKind {
    Start = 0,
    Exit,
    OobData,
    System,
    Transport,
    Connect,
    Disconnect,
    Bulk,
    Ready,
    Relocation,
    BufInfo,
    SubbufsConsumed,
    RealtimeData,
    RequestExit,
    TzInfo,
    PrivilegeCredentials,
    RemoteId,
    MaxCmd,
    NamespacesPid,
    MntNsFds,
}

impl MsgKind {
    pub const ALL: [MsgKind; 20] = [
        MsgKind::Start,
        MsgKind::Exit,
        MsgKind::OobData,
        MsgKind::System,
        MsgKind::Transport,
        MsgKind::Connect,
        MsgKind::Disconnect,
        MsgKind::Bulk,
        MsgKind::Ready,
        MsgKind::Relocation,
        MsgKind::BufInfo,
        MsgKind::SubbufsConsumed,
        MsgKind::RealtimeData,
        MsgKind::RequestExit,
        MsgKind::TzInfo,
        MsgKind::PrivilegeCredentials,
        MsgKind::RemoteId,
        MsgKind::MaxCmd,
        MsgKind::NamespacesPid,
        MsgKind::MntNsFds,
    ];
}

/// Privilege bits, as embedded in modules (`privilege.h`).
pub mod privilege {
    pub const STAPUSR: i32 = 2;
    pub const STAPSYS: i32 = 4;
    pub const STAPDEV: i32 = 8;
    pub const ALL: i32 = STAPUSR | STAPSYS | STAPDEV;
}

/// A message from the tools to the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Start {
        target: i32,
    },
    Exit,
    Bulk,
    Ready,
    Relocation {
        module: String,
        reloc: String,
        address: u64,
    },
    TzInfo {
        gmtoff: i64,
        name: String,
    },
    PrivilegeCredentials {
        mask: i32,
    },
    RemoteId {
        id: i32,
        uri: String,
    },
    NamespacesPid {
        target: i32,
    },
    /// `STP_MNT_NS_FDS` (5.1+, PR31060): `struct _stp_msg_mnt_ns_fds { int
    /// target_fd; int orig_fd; }`, two descriptor **numbers** in the
    /// sender's own table (the module `fget`s them in stapio's context while
    /// it starts its probes), for `/proc/PID/ns/mnt` of the `-N` process and
    /// stapio's own mount namespace. Not a message of 4.x.
    MntNsFds {
        target_fd: i32,
        orig_fd: i32,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{field} {value:?} does not fit in {limit} bytes")]
    TooLong {
        field: &'static str,
        value: String,
        limit: usize,
    },
    #[error("{field} contains a NUL byte")]
    Nul { field: &'static str },
    #[error("{kind:?} is not a message of the {generation} control protocol")]
    NotInGeneration {
        kind: MsgKind,
        generation: Generation,
    },
}

fn put_fixed(
    out: &mut Vec<u8>,
    field: &'static str,
    s: &str,
    size: usize,
) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError::Nul { field });
    }
    // Leave room for the terminating NUL.
    if s.len() >= size {
        return Err(EncodeError::TooLong {
            field,
            value: s.to_string(),
            limit: size - 1,
        });
    }
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (size - s.len()), 0);
    Ok(())
}

impl Request {
    pub fn kind(&self) -> MsgKind {
        match self {
            Request::Start { .. } => MsgKind::Start,
            Request::Exit => MsgKind::Exit,
            Request::Bulk => MsgKind::Bulk,
            Request::Ready => MsgKind::Ready,
            Request::Relocation { .. } => MsgKind::Relocation,
            Request::TzInfo { .. } => MsgKind::TzInfo,
            Request::PrivilegeCredentials { .. } => MsgKind::PrivilegeCredentials,
            Request::RemoteId { .. } => MsgKind::RemoteId,
            Request::NamespacesPid { .. } => MsgKind::NamespacesPid,
            Request::MntNsFds { .. } => MsgKind::MntNsFds,
        }
    }

    /// The exact bytes of one `write()` to `.cmd`.
    pub fn encode(&self, generation: Generation) -> Result<Vec<u8>, EncodeError> {
        if !generation.defines(self.kind()) {
            return Err(EncodeError::NotInGeneration {
                kind: self.kind(),
                generation,
            });
        }
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&generation.number(self.kind()).to_ne_bytes());
        match self {
            Request::Start { target } => {
                out.extend_from_slice(&target.to_ne_bytes());
                out.extend_from_slice(&0i32.to_ne_bytes());
            }
            Request::Exit | Request::Ready => {}
            // The C tools send a zeroed 128-byte payload.
            Request::Bulk => out.resize(out.len() + 128, 0),
            Request::Relocation {
                module,
                reloc,
                address,
            } => {
                put_fixed(&mut out, "module name", module, MODULE_NAME_LEN)?;
                put_fixed(&mut out, "symbol name", reloc, SYMBOL_NAME_LEN)?;
                out.extend_from_slice(&address.to_ne_bytes());
            }
            Request::TzInfo { gmtoff, name } => {
                out.extend_from_slice(&gmtoff.to_ne_bytes());
                put_fixed(&mut out, "time zone name", name, TZ_NAME_LEN)?;
            }
            Request::PrivilegeCredentials { mask } => out.extend_from_slice(&mask.to_ne_bytes()),
            Request::RemoteId { id, uri } => {
                out.extend_from_slice(&id.to_ne_bytes());
                put_fixed(&mut out, "remote URI", uri, REMOTE_URI_LEN)?;
            }
            Request::NamespacesPid { target } => out.extend_from_slice(&target.to_ne_bytes()),
            Request::MntNsFds { target_fd, orig_fd } => {
                out.extend_from_slice(&target_fd.to_ne_bytes());
                out.extend_from_slice(&orig_fd.to_ne_bytes());
            }
        }
        debug_assert!(out.len() <= MAX_REQUEST);
        Ok(out)
    }

    /// Decode a request (used by the simulated kernel, which plays the
    /// module's side).
    pub fn decode(generation: Generation, bytes: &[u8]) -> Result<Request, DecodeError> {
        let (kind, p) = split(generation, bytes)?;
        let need = |n: usize| {
            if p.len() < n {
                Err(DecodeError::Short {
                    kind,
                    len: p.len(),
                    need: n,
                })
            } else {
                Ok(())
            }
        };
        Ok(match kind {
            MsgKind::Start => {
                need(8)?;
                Request::Start {
                    target: i32_at(p, 0),
                }
            }
            MsgKind::Exit => Request::Exit,
            MsgKind::Bulk => Request::Bulk,
            MsgKind::Ready => Request::Ready,
            MsgKind::Relocation => {
                need(MODULE_NAME_LEN + SYMBOL_NAME_LEN + 8)?;
                Request::Relocation {
                    module: cstr(&p[..MODULE_NAME_LEN]),
                    reloc: cstr(&p[MODULE_NAME_LEN..MODULE_NAME_LEN + SYMBOL_NAME_LEN]),
                    address: u64::from_ne_bytes(p[256..264].try_into().map_err(|_| {
                        DecodeError::Short {
                            kind,
                            len: p.len(),
                            need: 264,
                        }
                    })?),
                }
            }
            MsgKind::TzInfo => {
                need(8 + TZ_NAME_LEN)?;
                Request::TzInfo {
                    gmtoff: i64::from_ne_bytes(p[..8].try_into().map_err(|_| {
                        DecodeError::Short {
                            kind,
                            len: p.len(),
                            need: 8,
                        }
                    })?),
                    name: cstr(&p[8..8 + TZ_NAME_LEN]),
                }
            }
            MsgKind::PrivilegeCredentials => {
                need(4)?;
                Request::PrivilegeCredentials { mask: i32_at(p, 0) }
            }
            MsgKind::RemoteId => {
                need(4 + REMOTE_URI_LEN)?;
                Request::RemoteId {
                    id: i32_at(p, 0),
                    uri: cstr(&p[4..4 + REMOTE_URI_LEN]),
                }
            }
            MsgKind::NamespacesPid => {
                need(4)?;
                Request::NamespacesPid {
                    target: i32_at(p, 0),
                }
            }
            MsgKind::MntNsFds => {
                need(8)?;
                Request::MntNsFds {
                    target_fd: i32_at(p, 0),
                    orig_fd: i32_at(p, 4),
                }
            }
            other => return Err(DecodeError::Unexpected(other)),
        })
    }
}

/// A message from the module to the tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Reply to `STP_START`: the result of the module's probe start-up.
    Start {
        res: i32,
    },
    Exit,
    /// Text for stderr; `WARNING: ` and `ERROR: ` prefixes are protocol.
    OobData(String),
    /// A command to run as the user.
    System(String),
    Transport,
    RequestExit,
    /// Transport v1 data on the control channel.
    RealtimeData(Vec<u8>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("control message of {0} bytes is shorter than its 4-byte type")]
    NoType(usize),
    #[error("control message of {len} bytes exceeds the {limit}-byte limit")]
    Oversized { len: usize, limit: usize },
    #[error("unknown control message type {0}")]
    UnknownType(u32),
    #[error("{kind:?} message has {len} payload bytes, needs {need}")]
    Short {
        kind: MsgKind,
        len: usize,
        need: usize,
    },
    #[error("unexpected {0:?} message from the module")]
    Unexpected(MsgKind),
}

fn split(generation: Generation, bytes: &[u8]) -> Result<(MsgKind, &[u8]), DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::NoType(bytes.len()));
    }
    let n = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let kind = generation.kind(n).ok_or(DecodeError::UnknownType(n))?;
    Ok((kind, &bytes[4..]))
}

fn i32_at(p: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// A C string from a fixed-size field: up to the first NUL, lossy UTF-8.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Notice {
    /// Decode one message read from `.cmd`. Nothing in it is trusted:
    /// sizes are checked, strings end at the first NUL and are made UTF-8.
    pub fn decode(generation: Generation, bytes: &[u8]) -> Result<Notice, DecodeError> {
        if bytes.len() > 4 + CTL_BUFFER_SIZE {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                limit: 4 + CTL_BUFFER_SIZE,
            });
        }
        let (kind, p) = split(generation, bytes)?;
        Ok(match kind {
            MsgKind::Start => {
                if p.len() < 8 {
                    return Err(DecodeError::Short {
                        kind,
                        len: p.len(),
                        need: 8,
                    });
                }
                Notice::Start { res: i32_at(p, 4) }
            }
            MsgKind::Exit => Notice::Exit,
            MsgKind::OobData => Notice::OobData(cstr(p)),
            MsgKind::System => Notice::System(cstr(p)),
            MsgKind::Transport => Notice::Transport,
            MsgKind::RequestExit => Notice::RequestExit,
            MsgKind::RealtimeData => Notice::RealtimeData(p.to_vec()),
            other => return Err(DecodeError::Unexpected(other)),
        })
    }

    /// Encode as the module would (used by the simulated kernel).
    pub fn encode(&self, generation: Generation) -> Vec<u8> {
        let (kind, payload): (MsgKind, Vec<u8>) = match self {
            Notice::Start { res } => {
                let mut v = 0i32.to_ne_bytes().to_vec();
                v.extend_from_slice(&res.to_ne_bytes());
                (MsgKind::Start, v)
            }
            Notice::Exit => (MsgKind::Exit, vec![]),
            Notice::OobData(s) => (MsgKind::OobData, nul_terminated(s)),
            Notice::System(s) => (MsgKind::System, nul_terminated(s)),
            Notice::Transport => (MsgKind::Transport, vec![]),
            Notice::RequestExit => (MsgKind::RequestExit, vec![]),
            Notice::RealtimeData(d) => (MsgKind::RealtimeData, d.clone()),
        };
        let mut out = generation.number(kind).to_ne_bytes().to_vec();
        out.extend_from_slice(&payload);
        out
    }
}

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_of_both_generations() {
        // Facts from transport_msgs.h of 4.8 and 5.x.
        let g4 = Generation::V4;
        let g5 = Generation::V5;
        assert_eq!(g4.number(MsgKind::Start), 0);
        assert_eq!(g4.number(MsgKind::Transport), 4);
        assert_eq!(g4.number(MsgKind::Ready), 8);
        assert_eq!(g4.number(MsgKind::RequestExit), 13);
        assert_eq!(g4.number(MsgKind::PrivilegeCredentials), 15);
        assert_eq!(g4.number(MsgKind::RemoteId), 16);
        assert_eq!(g4.number(MsgKind::NamespacesPid), 18);
        assert_eq!(g5.number(MsgKind::Start), 80);
        assert_eq!(g5.number(MsgKind::Bulk), 87);
        assert_eq!(g5.number(MsgKind::PrivilegeCredentials), 95);
        assert_eq!(g5.number(MsgKind::MntNsFds), 99);
        assert_eq!(g5.kind(84), Some(MsgKind::Transport));
        assert_eq!(g5.kind(4), None);
        assert_eq!(g4.kind(84), None);
        assert_eq!(g4.kind(100), None);
        assert_eq!(Generation::from_transport_number(4), Some(g4));
        assert_eq!(Generation::from_transport_number(84), Some(g5));
        assert_eq!(Generation::from_transport_number(5), None);
    }

    #[test]
    fn struct_sizes_match_the_c_layouts() {
        let g = Generation::V4;
        let len = |r: Request| r.encode(g).unwrap().len() - 4;
        assert_eq!(len(Request::Start { target: 1 }), 8);
        assert_eq!(
            len(Request::Relocation {
                module: "k".into(),
                reloc: "_stext".into(),
                address: 1
            }),
            264
        );
        assert_eq!(
            len(Request::TzInfo {
                gmtoff: 0,
                name: "UTC".into()
            }),
            72
        );
        assert_eq!(len(Request::PrivilegeCredentials { mask: 2 }), 4);
        assert_eq!(
            len(Request::RemoteId {
                id: 1,
                uri: "x".into()
            }),
            132
        );
        assert_eq!(len(Request::Bulk), 128);
        assert_eq!(len(Request::Ready), 0);
    }

    #[test]
    fn requests_round_trip() {
        for g in [Generation::V4, Generation::V5] {
            for r in [
                Request::Start { target: 42 },
                Request::Exit,
                Request::Ready,
                Request::Relocation {
                    module: "kernel".into(),
                    reloc: "_stext".into(),
                    address: 0xffff_ffff_8100_0000,
                },
                Request::TzInfo {
                    gmtoff: -3600,
                    name: "CET".into(),
                },
                Request::PrivilegeCredentials {
                    mask: privilege::STAPUSR,
                },
                Request::RemoteId {
                    id: 7,
                    uri: "ssh://x".into(),
                },
            ] {
                let bytes = r.encode(g).unwrap();
                assert_eq!(Request::decode(g, &bytes).unwrap(), r);
            }
        }
    }

    #[test]
    fn mnt_ns_fds_is_a_5x_message_of_two_native_ints() {
        // transport_msgs.h (5.1): STP_MNT_NS_FDS follows STP_NAMESPACES_PID,
        // struct _stp_msg_mnt_ns_fds { int target_fd; int orig_fd; }.
        let r = Request::MntNsFds {
            target_fd: 7,
            orig_fd: 8,
        };
        let bytes = r.encode(Generation::V5).unwrap();
        let mut want = 0x63u32.to_ne_bytes().to_vec();
        want.extend_from_slice(&7i32.to_ne_bytes());
        want.extend_from_slice(&8i32.to_ne_bytes());
        assert_eq!(bytes, want);
        assert_eq!(Request::decode(Generation::V5, &bytes).unwrap(), r);
        // A short message is not taken for one.
        assert!(matches!(
            Request::decode(Generation::V5, &bytes[..8]),
            Err(DecodeError::Short { need: 8, .. })
        ));
        // 4.x never had it: never encoded, and its number (19) is unknown
        // there, as the 4.8 module answers EINVAL to it.
        assert_eq!(
            r.encode(Generation::V4),
            Err(EncodeError::NotInGeneration {
                kind: MsgKind::MntNsFds,
                generation: Generation::V4
            })
        );
        assert_eq!(Generation::V4.kind(19), None);
        assert!(!Generation::V4.defines(MsgKind::MntNsFds));
        let mut v4 = 19u32.to_ne_bytes().to_vec();
        v4.extend_from_slice(&[0; 8]);
        assert_eq!(
            Request::decode(Generation::V4, &v4),
            Err(DecodeError::UnknownType(19))
        );
        // Every other request exists in both generations.
        for r in [
            Request::Start { target: 1 },
            Request::NamespacesPid { target: 1 },
        ] {
            assert!(r.encode(Generation::V4).is_ok());
            assert!(r.encode(Generation::V5).is_ok());
        }
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let long = "x".repeat(TZ_NAME_LEN);
        assert!(matches!(
            Request::TzInfo {
                gmtoff: 0,
                name: long
            }
            .encode(Generation::V4),
            Err(EncodeError::TooLong { .. })
        ));
        assert!(matches!(
            Request::RemoteId {
                id: 0,
                uri: "a\0b".into()
            }
            .encode(Generation::V4),
            Err(EncodeError::Nul { .. })
        ));
    }

    #[test]
    fn notices_decode_defensively() {
        let g = Generation::V5;
        for n in [
            Notice::Start { res: -22 },
            Notice::Exit,
            Notice::OobData("WARNING: x\n".into()),
            Notice::System("echo hi".into()),
            Notice::Transport,
            Notice::RequestExit,
        ] {
            assert_eq!(Notice::decode(g, &n.encode(g)).unwrap(), n);
        }
        assert_eq!(Notice::decode(g, &[1, 2]), Err(DecodeError::NoType(2)));
        assert_eq!(
            Notice::decode(g, &7u32.to_ne_bytes()),
            Err(DecodeError::UnknownType(7))
        );
        let mut big = 82u32.to_ne_bytes().to_vec();
        big.resize(4 + CTL_BUFFER_SIZE + 1, b'a');
        assert!(matches!(
            Notice::decode(g, &big),
            Err(DecodeError::Oversized { .. })
        ));
        let short = [80u32.to_ne_bytes().as_slice(), &[0, 0]].concat();
        assert!(matches!(
            Notice::decode(g, &short),
            Err(DecodeError::Short { .. })
        ));
        // No NUL, invalid UTF-8: still a bounded, lossy string.
        let odd = [82u32.to_ne_bytes().as_slice(), &[0xff, b'x']].concat();
        assert_eq!(
            Notice::decode(g, &odd).unwrap(),
            Notice::OobData("\u{fffd}x".into())
        );
        // A tools-to-module kind coming from the module is not trusted.
        let ready = 88u32.to_ne_bytes();
        assert_eq!(
            Notice::decode(g, &ready),
            Err(DecodeError::Unexpected(MsgKind::Ready))
        );
    }
}
