//! The wire format through hickory-proto: encoding a query, checking that a
//! response belongs to it, and boiling the response down to what the
//! resolver needs (RFC 1034 CNAME chains, RFC 2308 negative TTLs).

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// Longest CNAME chain followed, within a response and across re-queries.
pub(super) const MAX_CNAME_HOPS: u8 = 8;
/// TXT records kept of one answer: a name with more is misconfigured,
/// and only one (`v=STSv1`) is ever wanted.
pub const MAX_TXT_RECORDS: usize = 16;

/// The payload of a positive answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Data {
    /// MX records (preference, exchange) and the A/AAAA glue found for the
    /// exchanges in the additional section.
    Mx {
        hosts: Vec<(u16, Name)>,
        glue: Vec<(Name, IpAddr)>,
    },
    Addrs(Vec<IpAddr>),
    /// TXT records, each one's character-strings joined (lossy UTF-8).
    Txt(Vec<String>),
}

/// What a matching response says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Truncated,
    /// SERVFAIL, REFUSED and other rcodes: ask the next server.
    Failed(String),
    NxDomain {
        ttl: u32,
    },
    NoData {
        ttl: u32,
    },
    Found {
        data: Data,
        ttl: u32,
        hops: u8,
    },
    /// A CNAME chain ended at `target` without its records and without a
    /// negative answer for it: the target must be asked for.
    Alias {
        target: Name,
        ttl: u32,
        hops: u8,
    },
}

pub(super) fn encode_query(id: u16, name: &Name, qtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), qtype));
    // A query built from a valid `Name` always encodes.
    msg.to_vec().expect("DNS query encodes")
}

/// Decodes `bytes` if it is the response to query `id` for `qname`/`qtype`;
/// anything else (garbage, wrong ID, wrong question, not a response) is
/// `None`, to be ignored as a possible spoof.
pub(super) fn decode_reply(
    bytes: &[u8],
    id: u16,
    qname: &Name,
    qtype: RecordType,
) -> Option<Reply> {
    let msg = Message::from_vec(bytes).ok()?;
    let meta = &msg.metadata;
    if meta.id != id || meta.message_type != MessageType::Response || meta.op_code != OpCode::Query
    {
        return None;
    }
    match msg.queries.as_slice() {
        [q] if q.name.eq_ignore_root(qname)
            && q.query_type == qtype
            && q.query_class == DNSClass::IN => {}
        _ => return None,
    }
    Some(interpret(&msg, qname, qtype))
}

fn interpret(msg: &Message, qname: &Name, qtype: RecordType) -> Reply {
    if msg.metadata.truncation {
        return Reply::Truncated;
    }
    match msg.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Reply::NxDomain {
                ttl: negative_ttl(msg),
            }
        }
        other => return Reply::Failed(format!("server answered {other}")),
    }
    let mut name = qname.clone();
    let mut ttl = u32::MAX;
    let mut hops = 0u8;
    loop {
        let found: Vec<&Record> = msg
            .answers
            .iter()
            .filter(|r| {
                r.dns_class == DNSClass::IN
                    && r.record_type() == qtype
                    && r.name.eq_ignore_root(&name)
            })
            .collect();
        if !found.is_empty() {
            let ttl = found.iter().map(|r| r.ttl).fold(ttl, u32::min);
            return found_data(msg, &found, ttl, hops);
        }
        let cname = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name.eq_ignore_root(&name) => Some((target.0.clone(), r.ttl)),
            _ => None,
        });
        let Some((target, cname_ttl)) = cname else {
            break;
        };
        hops += 1;
        if hops > MAX_CNAME_HOPS {
            return Reply::Failed("CNAME chain too long".into());
        }
        ttl = ttl.min(cname_ttl);
        name = target;
    }
    if hops > 0 && soa(msg).is_none() {
        return Reply::Alias {
            target: name,
            ttl,
            hops,
        };
    }
    Reply::NoData {
        ttl: negative_ttl(msg),
    }
}

fn found_data(msg: &Message, found: &[&Record], mut ttl: u32, hops: u8) -> Reply {
    let data = if found[0].record_type() == RecordType::MX {
        let hosts: Vec<(u16, Name)> = found
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.clone())),
                _ => None,
            })
            .collect();
        let mut glue = Vec::new();
        for r in &msg.additionals {
            let Some(addr) = r.data.ip_addr() else {
                continue;
            };
            if r.dns_class == DNSClass::IN && hosts.iter().any(|(_, h)| h.eq_ignore_root(&r.name)) {
                ttl = ttl.min(r.ttl);
                glue.push((r.name.clone(), addr));
            }
        }
        Data::Mx { hosts, glue }
    } else if found[0].record_type() == RecordType::TXT {
        let texts = found
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(txt.txt_data.concat()),
                _ => None,
            })
            .take(MAX_TXT_RECORDS)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect();
        Data::Txt(texts)
    } else {
        let mut addrs = Vec::new();
        for r in found {
            let Some(addr) = r.data.ip_addr() else {
                continue;
            };
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        Data::Addrs(addrs)
    };
    Reply::Found { data, ttl, hops }
}

fn soa(msg: &Message) -> Option<(u32, u32)> {
    msg.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some((r.ttl, soa.minimum)),
        _ => None,
    })
}

/// RFC 2308 section 5: the lesser of the SOA's TTL and its MINIMUM field;
/// without an SOA, 0 (the cache applies its floor).
fn negative_ttl(msg: &Message) -> u32 {
    soa(msg).map_or(0, |(ttl, min)| ttl.min(min))
}
