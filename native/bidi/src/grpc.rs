//! gRPC-over-HTTP/2 details, worded as grpc-go words them (grpc-go is what etcd serves with).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};

pub const UNKNOWN: u32 = 2;
pub const INVALID_ARGUMENT: u32 = 3;
pub const RESOURCE_EXHAUSTED: u32 = 8;
pub const UNIMPLEMENTED: u32 = 12;
pub const INTERNAL: u32 = 13;

/// A status that ends a call; `metadata` is already encoded for the wire.
pub struct Status {
    pub code: u32,
    pub message: String,
    pub metadata: Vec<(HeaderName, HeaderValue)>,
}

impl Status {
    pub fn new(code: u32, message: String) -> Self {
        Status {
            code,
            message,
            metadata: Vec::new(),
        }
    }
}

/// Headers that are the transport's, not the call's metadata (h2 already split off the
/// pseudo-headers).
fn is_transport_header(name: &str) -> bool {
    matches!(
        name,
        "te" | "content-type"
            | "grpc-timeout"
            | "grpc-encoding"
            | "grpc-accept-encoding"
            | "connection"
    )
}

/// A metadata value as Python gets it: bytes exactly for keys ending in -bin.
pub enum MetaValue<'a> {
    Str(&'a [u8]),
    Bin(Vec<u8>),
}

/// A call's metadata from its request headers (checked by check_metadata).
pub fn metadata(headers: &HeaderMap) -> impl Iterator<Item = (&str, MetaValue<'_>)> {
    headers
        .iter()
        .filter(|(k, _)| !is_transport_header(k.as_str()))
        .map(|(k, v)| {
            let key = k.as_str();
            if key.ends_with("-bin") {
                (
                    key,
                    MetaValue::Bin(decode_bin(v.as_bytes()).unwrap_or_default()),
                )
            } else {
                (key, MetaValue::Str(v.as_bytes()))
            }
        })
}

/// grpc-go's answer to -bin metadata that is not base64.
pub fn check_metadata(headers: &HeaderMap) -> Result<(), Status> {
    for (name, value) in headers {
        let key = name.as_str();
        if key.ends_with("-bin") {
            if let Err(e) = decode_bin(value.as_bytes()) {
                let message = format!(
                    "malformed binary metadata {} in header {}: {}",
                    go_quote(&String::from_utf8_lossy(value.as_bytes())),
                    go_quote(key),
                    e
                );
                return Err(Status::new(INTERNAL, message));
            }
        }
    }
    Ok(())
}

/// grpc-go's decodeBinHeader: padded base64 when the length allows it, else unpadded.
fn decode_bin(v: &[u8]) -> Result<Vec<u8>, String> {
    let r = if v.len().is_multiple_of(4) {
        STANDARD.decode(v)
    } else {
        STANDARD_NO_PAD.decode(v)
    };
    r.map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("illegal base64 data at input byte {at}")
        }
        _ => format!("illegal base64 data at input byte {}", v.len()),
    })
}

/// Binary metadata for the wire, unpadded as grpc-go sends it.
pub fn encode_bin(v: &[u8]) -> String {
    STANDARD_NO_PAD.encode(v)
}

/// grpc-timeout ("1S", "250m": at most 8 digits and a unit) in seconds.
pub fn decode_timeout(v: &[u8]) -> Result<f64, String> {
    let s = String::from_utf8_lossy(v);
    if v.len() < 2 {
        return Err(format!(
            "transport: timeout string is too short: {}",
            go_quote(&s)
        ));
    }
    if v.len() > 9 {
        return Err(format!(
            "transport: timeout string is too long: {}",
            go_quote(&s)
        ));
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let scale = match unit[0] {
        b'H' => 3600.0,
        b'M' => 60.0,
        b'S' => 1.0,
        b'm' => 1e-3,
        b'u' => 1e-6,
        b'n' => 1e-9,
        _ => {
            return Err(format!(
                "transport: timeout unit is not recognized: {}",
                go_quote(&s)
            ))
        }
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "strconv.ParseUint: parsing {}: invalid syntax",
            go_quote(&String::from_utf8_lossy(digits))
        ));
    }
    let n: u64 = std::str::from_utf8(digits)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    Ok(n as f64 * scale)
}

/// grpc-message as the gRPC HTTP/2 spec (and grpc-go's encodeGrpcMessage) percent-encodes it:
/// printable ASCII but '%' stays, every other byte is %XX.
pub fn encode_message(msg: &str) -> String {
    if msg.bytes().all(|c| (b' '..=b'~').contains(&c) && c != b'%') {
        return msg.to_owned();
    }
    let mut out = String::with_capacity(msg.len() * 3);
    for c in msg.bytes() {
        if (b' '..=b'~').contains(&c) && c != b'%' {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Go's %q for the strings it quotes in status messages.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// grpc-go's answer to a path it does not serve.
pub fn unknown_path(path: &str, services: &[String]) -> Status {
    let sm = path.strip_prefix('/').unwrap_or(path);
    let Some(pos) = sm.rfind('/') else {
        return Status::new(
            UNIMPLEMENTED,
            format!("malformed method name: {}", go_quote(path)),
        );
    };
    let (service, method) = (&sm[..pos], &sm[pos + 1..]);
    if services.iter().any(|s| s == service) {
        Status::new(
            UNIMPLEMENTED,
            format!("unknown method {method} for service {service}"),
        )
    } else {
        Status::new(UNIMPLEMENTED, format!("unknown service {service}"))
    }
}

pub fn content_type() -> HeaderValue {
    HeaderValue::from_static("application/grpc")
}

/// Appends grpc-status, grpc-message and the status's metadata to a header block.
pub fn put_status(headers: &mut HeaderMap, status: Status) {
    headers.insert("grpc-status", HeaderValue::from(status.code));
    if !status.message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&encode_message(&status.message)) {
            headers.insert("grpc-message", v);
        }
    }
    for (k, v) in status.metadata {
        headers.append(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_encoding() {
        assert_eq!(encode_message("plain text"), "plain text");
        assert_eq!(encode_message("50%"), "50%25");
        assert_eq!(encode_message("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn timeouts() {
        assert_eq!(decode_timeout(b"2S").unwrap(), 2.0);
        assert_eq!(decode_timeout(b"1500m").unwrap(), 1.5);
        assert!(decode_timeout(b"S").is_err());
        assert!(decode_timeout(b"12x").is_err());
    }

    #[test]
    fn unknown() {
        let svcs = vec!["etcdserverpb.Watch".to_owned()];
        assert_eq!(
            unknown_path("/etcdserverpb.Watch/Nope", &svcs).message,
            "unknown method Nope for service etcdserverpb.Watch"
        );
        assert_eq!(unknown_path("/a.B/C", &svcs).message, "unknown service a.B");
        assert_eq!(
            unknown_path("nope", &svcs).message,
            "malformed method name: \"nope\""
        );
    }
}
