//! Redis messages: what a [`Stamped`] event becomes on the wire, and back.
//!
//! One event is one message on channel `[prefix]host:vm:/path`, except that
//! an event with more than `max_data_bytes` of data is split into pieces of
//! at most `max_data_bytes` each: piece `i` of `n` is the same event (same
//! `seq`) with `data` cut to its piece and `offset`/`len` describing that
//! piece, plus two fields, `"piece": i` (from 0) and `"pieces": n`. An
//! event that is not split has neither field. The pieces are published in
//! order, one after the other, in the same pipeline.
//!
//! A `move` is published on the channel of its new path and then, with the
//! same payload, on the channel of its `old_path`, so that a monitor of
//! `gs9671:*:/etc/shadow` sees the file leave. A subscriber whose patterns
//! match both channels receives it twice (same `seq`): `gammaray watch`
//! prints it once.
//!
//! Payloads are BSON ([`FileEvent::to_bson`](gammaray_core::FileEvent::to_bson):
//! the JSON's fields, data as BSON binary) or DESIGN.md's JSON line.
//! [`decode`] reads either (a BSON document starts with its own length and
//! ends with a NUL byte; a JSON line ends with `}`), so a monitor need not
//! know the sink's `encoding`.

use base64::Engine as _;
use bson::{RawBsonRef, RawDocument};
use gammaray_config::RedisEncoding;
use gammaray_core::EventKind;
use serde::{Deserialize, Serialize};

use crate::Stamped;

/// One `PUBLISH`: channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel, `[prefix]host:vm:/path`.
    pub channel: String,
    /// The encoded event (or piece of one).
    pub payload: Vec<u8>,
}

/// Why an event could not be encoded, or a payload not decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The BSON library refused the document.
    #[error("encoding BSON: {0}")]
    Encode(String),
    /// The payload is neither a BSON document nor a JSON object.
    #[error("payload of {len} bytes is neither BSON nor JSON: {why}")]
    Malformed {
        /// The payload's length.
        len: usize,
        /// What the decoder said.
        why: String,
    },
    /// A field is missing or has the wrong type.
    #[error("field {field:?}: {why}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Encodes `s` into one message, or several when its data is larger than
/// `max_data_bytes`, appending them to `out`.
pub fn encode(
    s: &Stamped,
    encoding: RedisEncoding,
    max_data_bytes: usize,
    prefix: &str,
    out: &mut Vec<Message>,
) -> Result<(), PayloadError> {
    let channel = format!("{prefix}{}", s.channel());
    let max = max_data_bytes.max(1);
    let data_len = s.event.data.as_ref().map_or(0, |d| d.len());
    if data_len <= max {
        let payload = encode_one(s, &s.event, encoding, None)?;
        if let Some(old) = s.old_channel().filter(|_| s.event.kind == EventKind::Move) {
            let old = format!("{prefix}{old}");
            if old != channel {
                out.push(Message {
                    channel,
                    payload: payload.clone(),
                });
                out.push(Message {
                    channel: old,
                    payload,
                });
                return Ok(());
            }
        }
        out.push(Message { channel, payload });
        return Ok(());
    }
    let (Some(data), base) = (s.event.data.as_ref(), s.event.offset.unwrap_or(0)) else {
        return Ok(());
    };
    let pieces = data_len.div_ceil(max);
    for i in 0..pieces {
        let from = i * max;
        let to = (from + max).min(data_len);
        let mut piece = s.event.clone();
        piece.data = Some(data.slice(from..to));
        piece.offset = Some(base.saturating_add(from as u64));
        piece.len = Some((to - from) as u64);
        out.push(Message {
            channel: channel.clone(),
            payload: encode_one(s, &piece, encoding, Some((i, pieces)))?,
        });
    }
    Ok(())
}

fn encode_one(
    s: &Stamped,
    e: &gammaray_core::FileEvent,
    encoding: RedisEncoding,
    piece: Option<(usize, usize)>,
) -> Result<Vec<u8>, PayloadError> {
    match encoding {
        RedisEncoding::Bson => Ok(match piece {
            Some((i, n)) => e.to_bson_bytes(
                s.seq,
                &s.host,
                &s.vm,
                &[("piece", i as i64), ("pieces", n as i64)],
            ),
            None => e.to_bson_bytes(s.seq, &s.host, &s.vm, &[]),
        }),
        RedisEncoding::Json => {
            let mut j = e.to_json(s.seq, &s.host, &s.vm);
            if let Some((i, n)) = piece {
                if j.ends_with('}') {
                    j.pop();
                    j.push_str(&format!(",\"piece\":{i},\"pieces\":{n}}}"));
                }
            }
            Ok(j.into_bytes())
        }
    }
}

/// An event as a subscriber reads it: the fields of DESIGN.md's event JSON
/// (unknown fields are ignored), with the data as bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedEvent {
    /// Sequence number (per VM).
    pub seq: u64,
    /// Host name.
    pub host: String,
    /// VM name.
    pub vm: String,
    /// Partition number.
    #[serde(default)]
    pub part: u32,
    /// The file's path (for `move`, the new one).
    pub path: String,
    /// For `move`: the path before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<String>,
    /// `create`, `delete`, `modify`, `attrib`, `move` or `lost`.
    pub event: String,
    /// File type.
    #[serde(rename = "type", default)]
    pub ftype: String,
    /// Inode number.
    #[serde(default)]
    pub inode: u64,
    /// File size after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// First byte of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length of the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub len: Option<u64>,
    /// For `attrib`: the fields that changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// For `lost`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For a split event: this piece's index, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece: Option<u64>,
    /// For a split event: the number of pieces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<u64>,
    /// The bytes of the range (`modify`).
    #[serde(skip)]
    pub data: Option<Vec<u8>>,
}

/// The JSON shape with base64 data, for decoding JSON payloads.
#[derive(Deserialize)]
struct JsonPayload {
    #[serde(flatten)]
    event: ReceivedEvent,
    #[serde(default)]
    data_b64: Option<String>,
}

impl ReceivedEvent {
    /// The channel the event belongs to, `host:vm:/path` (without a
    /// prefix).
    pub fn channel(&self) -> String {
        format!("{}:{}:{}", self.host, self.vm, self.path)
    }

    /// DESIGN.md's JSON line (no newline): for an event that was not
    /// split, the same text as `FileEvent::to_json` of the event sent.
    pub fn to_json(&self) -> String {
        // Serializing strings, numbers and string lists cannot fail.
        let mut out = serde_json::to_string(self).unwrap_or_default();
        if let Some(data) = &self.data {
            if out.ends_with('}') {
                out.pop();
                out.push_str(",\"data_b64\":\"");
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut out);
                out.push_str("\"}");
            }
        }
        out
    }
}

/// Decodes a payload, BSON or JSON.
pub fn decode(payload: &[u8]) -> Result<ReceivedEvent, PayloadError> {
    let looks_bson = payload.len() >= 5
        && payload.last() == Some(&0)
        && u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize
            == payload.len();
    if looks_bson {
        decode_bson(payload)
    } else {
        decode_json(payload)
    }
}

fn decode_json(payload: &[u8]) -> Result<ReceivedEvent, PayloadError> {
    let j: JsonPayload = serde_json::from_slice(payload).map_err(|e| PayloadError::Malformed {
        len: payload.len(),
        why: e.to_string(),
    })?;
    let mut ev = j.event;
    if let Some(b64) = j.data_b64 {
        ev.data = Some(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| PayloadError::Field {
                    field: "data_b64",
                    why: e.to_string(),
                })?,
        );
    }
    Ok(ev)
}

fn decode_bson(payload: &[u8]) -> Result<ReceivedEvent, PayloadError> {
    let d = RawDocument::from_bytes(payload).map_err(|e| PayloadError::Malformed {
        len: payload.len(),
        why: e.to_string(),
    })?;
    let get = |field: &'static str| -> Result<Option<RawBsonRef<'_>>, PayloadError> {
        d.get(field).map_err(|e| PayloadError::Field {
            field,
            why: e.to_string(),
        })
    };
    let text = |field: &'static str| -> Result<Option<String>, PayloadError> {
        match get(field)? {
            None => Ok(None),
            Some(RawBsonRef::String(s)) => Ok(Some(s.to_string())),
            Some(other) => Err(PayloadError::Field {
                field,
                why: format!("expected a string, found {:?}", other.element_type()),
            }),
        }
    };
    let int = |field: &'static str| -> Result<Option<u64>, PayloadError> {
        let bad = |why: String| PayloadError::Field { field, why };
        match get(field)? {
            None => Ok(None),
            Some(RawBsonRef::Int64(v)) => u64::try_from(v)
                .map(Some)
                .map_err(|_| bad(format!("{v} is negative"))),
            Some(RawBsonRef::Int32(v)) => u64::try_from(v)
                .map(Some)
                .map_err(|_| bad(format!("{v} is negative"))),
            Some(RawBsonRef::String(s)) => s
                .parse::<u64>()
                .map(Some)
                .map_err(|_| bad(format!("{s:?} is not an integer"))),
            Some(other) => Err(bad(format!(
                "expected an integer, found {:?}",
                other.element_type()
            ))),
        }
    };
    let required = |field: &'static str, v: Option<String>| {
        v.ok_or(PayloadError::Field {
            field,
            why: "missing".into(),
        })
    };
    let changed = match get("changed")? {
        None => Vec::new(),
        Some(RawBsonRef::Array(a)) => {
            let mut v = Vec::new();
            for item in a {
                match item {
                    Ok(RawBsonRef::String(s)) => v.push(s.to_string()),
                    _ => {
                        return Err(PayloadError::Field {
                            field: "changed",
                            why: "expected an array of strings".into(),
                        })
                    }
                }
            }
            v
        }
        Some(_) => {
            return Err(PayloadError::Field {
                field: "changed",
                why: "expected an array".into(),
            })
        }
    };
    let data = match get("data")? {
        None => None,
        Some(RawBsonRef::Binary(b)) => Some(b.bytes.to_vec()),
        Some(other) => {
            return Err(PayloadError::Field {
                field: "data",
                why: format!("expected binary, found {:?}", other.element_type()),
            })
        }
    };
    let part = int("part")?.unwrap_or(0);
    Ok(ReceivedEvent {
        seq: int("seq")?.ok_or(PayloadError::Field {
            field: "seq",
            why: "missing".into(),
        })?,
        host: required("host", text("host")?)?,
        vm: required("vm", text("vm")?)?,
        part: u32::try_from(part).map_err(|_| PayloadError::Field {
            field: "part",
            why: format!("{part} is too large"),
        })?,
        path: required("path", text("path")?)?,
        old_path: text("old_path")?,
        event: required("event", text("event")?)?,
        ftype: text("type")?.unwrap_or_default(),
        inode: int("inode")?.unwrap_or(0),
        size: int("size")?,
        offset: int("offset")?,
        len: int("len")?,
        changed,
        reason: text("reason")?,
        piece: int("piece")?,
        pieces: int("pieces")?,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_events::batch;
    use gammaray_core::{FileEvent, FileType};

    fn one(s: &Stamped, enc: RedisEncoding, max: usize) -> Vec<Message> {
        let mut out = Vec::new();
        encode(s, enc, max, "", &mut out).unwrap();
        out
    }

    #[test]
    fn bson_and_json_decode_to_the_events_json() {
        for s in batch() {
            for enc in [RedisEncoding::Bson, RedisEncoding::Json] {
                let m = one(&s, enc, 1 << 20);
                if s.event.kind == EventKind::Move {
                    // Also on the old path's channel, same payload.
                    assert_eq!(m.len(), 2);
                    assert_eq!(m[1].channel, s.old_channel().unwrap());
                    assert_eq!(m[1].payload, m[0].payload);
                } else {
                    assert_eq!(m.len(), 1);
                }
                assert_eq!(m[0].channel, s.channel());
                let got = decode(&m[0].payload).unwrap();
                assert_eq!(got.to_json(), s.to_json(), "{enc:?}");
                assert_eq!(got.channel(), s.channel());
            }
        }
        // BSON carries the data as binary, not base64.
        let b = batch();
        let m = one(&b[0], RedisEncoding::Bson, 1 << 20);
        let d = RawDocument::from_bytes(&m[0].payload).unwrap();
        assert_eq!(d.get_binary("data").unwrap().bytes, b"hello");
        assert!(d.get("data_b64").unwrap().is_none());
    }

    #[test]
    fn prefix_goes_before_the_channel() {
        let mut out = Vec::new();
        encode(&batch()[0], RedisEncoding::Bson, 10, "dc1:", &mut out).unwrap();
        assert_eq!(out[0].channel, "dc1:gs9671:test:/var/log/auth.log");
    }

    #[test]
    fn large_data_is_split_into_pieces_that_reassemble() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut e = FileEvent::new(1, EventKind::Modify, "/big".into(), FileType::File, 5);
        e.offset = Some(4096);
        e.len = Some(1000);
        e.size = Some(5096);
        e.data = Some(bytes::Bytes::from(data.clone()));
        let s = Stamped::new(3, "h".into(), "v".into(), e);
        for enc in [RedisEncoding::Bson, RedisEncoding::Json] {
            let m = one(&s, enc, 300);
            assert_eq!(m.len(), 4);
            let mut whole = Vec::new();
            for (i, msg) in m.iter().enumerate() {
                let p = decode(&msg.payload).unwrap();
                assert_eq!((p.seq, p.piece, p.pieces), (3, Some(i as u64), Some(4)));
                assert_eq!(p.offset, Some(4096 + 300 * i as u64));
                let d = p.data.unwrap();
                assert_eq!(p.len, Some(d.len() as u64));
                assert!(d.len() <= 300);
                whole.extend_from_slice(&d);
            }
            assert_eq!(whole, data);
        }
        // Exactly at the limit: one message, no piece fields.
        let m = one(&s, RedisEncoding::Bson, 1000);
        let p = decode(&m[0].payload).unwrap();
        assert_eq!((p.piece, p.pieces), (None, None));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"\x05\x00\x00\x00\x00",
            b"\x0c\x00\x00\x00\x10seq\x00\x01\x00\x00",
            b"\x08\x00\x00\x00\xff\x00\x00\x00",
            b"{\"seq\":-1}",
            b"{\"seq\":1,\"host\":\"h\",\"vm\":\"v\",\"path\":\"/\",\"event\":\"modify\",\"data_b64\":\"!!\"}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        // A BSON document with a wrong type names the field.
        let mut d = bson::Document::new();
        d.insert("seq", "x");
        let e = decode(&d.to_vec().unwrap()).unwrap_err();
        assert!(e.to_string().contains("seq"), "{e}");
    }
}
