//! Just enough protobuf for the load generator: writing the few fields of an event, a tonic
//! codec that sends pre-encoded bytes, and a scan of an answer's top-level fields (event id,
//! action or error). The client stays cheap and identical for the sidecar and the echo server,
//! so that the figures measure the servers rather than the harness.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A field's tag byte (field numbers below 16).
pub const fn tag(field: u32, wire_type: u32) -> u8 {
    ((field << 3) | wire_type) as u8
}

/// Bytes a varint takes.
pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// Bytes a length-delimited field with a one-byte tag and `len` bytes of payload takes.
pub fn str_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn put_varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Writes a varint into a `BytesMut`.
pub fn put_varint_buf(out: &mut BytesMut, v: u64) {
    put_varint(out, v);
}

/// Writes a length-delimited field (field numbers up to 2047).
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Writes a string field.
pub fn put_str(out: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(out, field, s.as_bytes());
}

/// Writes a varint field.
pub fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field << 3));
    put_varint(out, v);
}

/// `n` in decimal, in `buf`.
pub fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Parses a decimal event id.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(n)
}

/// A tonic codec that sends pre-encoded messages and hands answers back undecoded.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What one answer said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A verdict with this `Action` value (1 CONTINUE, 2 REDIRECT, 3 END).
    Verdict(i32),
    /// An `EventError` for the event.
    EventError,
}

/// The top-level content of one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    pub event_id: &'a [u8],
    pub outcome: Outcome,
}

fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Calls `f(field, wire_type, varint value or 0, length-delimited payload or empty)` for each
/// top-level field; `None` if the message is malformed.
fn fields<'a>(mut buf: &'a [u8], mut f: impl FnMut(u32, u32, u64, &'a [u8])) -> Option<()> {
    while !buf.is_empty() {
        let key = read_varint(&mut buf)?;
        let (field, wt) = ((key >> 3) as u32, (key & 7) as u32);
        match wt {
            0 => {
                let v = read_varint(&mut buf)?;
                f(field, wt, v, &[]);
            }
            1 | 5 => {
                let n = if wt == 1 { 8 } else { 4 };
                buf = buf.get(n..)?;
            }
            2 => {
                let len = read_varint(&mut buf)? as usize;
                let payload = buf.get(..len)?;
                buf = &buf[len..];
                f(field, wt, 0, payload);
            }
            _ => return None,
        }
    }
    Some(())
}

fn verdict_action(verdict: &[u8]) -> Option<i32> {
    let mut action = 0;
    fields(verdict, |field, wt, v, _| {
        if field == 2 && wt == 0 {
            action = v as i32;
        }
    })?;
    Some(action)
}

/// Scans a `ModerateResponse`.
pub fn scan_moderate(buf: &[u8]) -> Option<Answer<'_>> {
    let mut event_id: &[u8] = &[];
    let mut outcome = None;
    let mut verdict: Option<&[u8]> = None;
    fields(buf, |field, wt, _, payload| match (field, wt) {
        (1, 2) => event_id = payload,
        (2, 2) => verdict = Some(payload),
        (3, 2) => outcome = Some(Outcome::EventError),
        _ => {}
    })?;
    let outcome = match (outcome, verdict) {
        (Some(o), _) => o,
        (None, Some(v)) => Outcome::Verdict(verdict_action(v)?),
        (None, None) => return None,
    };
    Some(Answer { event_id, outcome })
}

/// Scans an `EvaluateResponse` (it carries no event id: `event_id` is empty).
pub fn scan_evaluate(buf: &[u8]) -> Option<Answer<'_>> {
    let mut verdict = None;
    fields(buf, |field, wt, _, payload| {
        if (field, wt) == (1, 2) {
            verdict = Some(payload);
        }
    })?;
    Some(Answer {
        event_id: &[],
        outcome: Outcome::Verdict(verdict_action(verdict?)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use threadwarden::api::pb;

    #[test]
    fn decimals_round_trip() {
        let mut b = [0u8; 20];
        for n in [0u64, 7, 10, 99, 12345, u64::MAX] {
            assert_eq!(decimal(n, &mut b), n.to_string().as_bytes());
            assert_eq!(parse_decimal(n.to_string().as_bytes()), Some(n));
        }
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        assert_eq!(parse_decimal(b"18446744073709551616"), None);
    }

    #[test]
    fn answers_scan_as_prost_encodes_them() {
        let verdict = pb::Verdict {
            thread_id: "t1".into(),
            action: pb::Action::Redirect as i32,
            reason: pb::Reason::HarmfulRequest as i32,
            categories: vec![pb::CategoryScore {
                category: 2,
                score: 0.9,
            }],
            redirect: Some(pb::Redirect {
                guidance: "decline".into(),
                warning: true,
                ..Default::default()
            }),
            thread: Some(pb::ThreadSummary {
                turn: 300,
                ..Default::default()
            }),
            enforced: true,
            shadow_action: pb::Action::End as i32,
            policy_version: "v1".into(),
            ..Default::default()
        };
        let ok = pb::ModerateResponse {
            event_id: "42".into(),
            result: Some(pb::moderate_response::Result::Verdict(verdict.clone())),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            scan_moderate(&ok),
            Some(Answer {
                event_id: b"42",
                outcome: Outcome::Verdict(2)
            })
        );
        let err = pb::ModerateResponse {
            event_id: "43".into(),
            result: Some(pb::moderate_response::Result::Error(pb::EventError {
                code: "INVALID_ARGUMENT".into(),
                message: "no".into(),
            })),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(scan_moderate(&err).unwrap().outcome, Outcome::EventError);
        let eval = pb::EvaluateResponse {
            verdict: Some(verdict),
        }
        .encode_to_vec();
        assert_eq!(scan_evaluate(&eval).unwrap().outcome, Outcome::Verdict(2));
        // Malformed and empty answers are rejected, not miscounted.
        assert_eq!(scan_moderate(&ok[..ok.len() - 3]), None);
        assert_eq!(scan_moderate(&[]), None);
        assert_eq!(scan_evaluate(&[]), None);
    }
}
