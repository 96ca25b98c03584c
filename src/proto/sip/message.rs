//! SIP message framing, header handling and the strict checks the gateway applies before it acts on a message
//! (RFC 3261 §7, §18.3, §25; torture cases of RFC 4475).
//!
//! The parser here is deliberately strict where RFC 3261's grammar is (request line with exactly one SP between
//! elements, Content-Length not beyond the received bytes over UDP, well-formed Via values, CSeq method equal to the
//! request method) and lenient where it is (folded lines, LWS around `:`, compact header names, leading zeros,
//! any bytes in a reason phrase). Unknown headers are kept verbatim, in order.

use std::fmt::Write as _;

/// Largest message accepted over a stream transport, in bytes (header section plus body).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// No empty line ends the header section.
    #[error("no end of the header section")]
    NoHeaderEnd,
    /// The start line is neither a Request-Line nor a Status-Line (RFC 3261 §7.1, §7.2).
    #[error("bad start line: {0}")]
    StartLine(String),
    /// A header line without a name or colon.
    #[error("bad header line: {0}")]
    HeaderLine(String),
    /// Content-Length is not a number.
    #[error("bad Content-Length: {0}")]
    ContentLength(String),
    /// Content-Length announces more bytes than were received (RFC 3261 §18.3; case C010).
    #[error("Content-Length {declared} but only {received} body bytes")]
    Truncated {
        /// Bytes announced.
        declared: usize,
        /// Bytes present.
        received: usize,
    },
    /// A header every request needs is missing (RFC 3261 §8.1.1).
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A Via value is empty or malformed (RFC 3261 §20.42; case C009).
    #[error("bad Via: {0}")]
    Via(String),
    /// CSeq is malformed (RFC 3261 §20.16).
    #[error("bad CSeq: {0}")]
    CSeq(String),
    /// CSeq's method differs from the Request-Line method (RFC 3261 §8.2; case C014).
    #[error("CSeq method {cseq} differs from request method {method}")]
    CSeqMethod {
        /// Method of the Request-Line.
        method: String,
        /// Method in CSeq.
        cseq: String,
    },
    /// A header field value that must not be empty is (Contact, From, To).
    #[error("bad {0} header")]
    Address(&'static str),
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP/2.0`.
    Request {
        /// Method token, case-sensitive (RFC 3261 §7.1).
        method: String,
        /// Request-URI as written.
        uri: String,
    },
    /// `SIP/2.0 SP Status-Code SP Reason-Phrase`.
    Response {
        /// Three-digit status code.
        code: u16,
        /// Reason phrase as received (lossy UTF-8), possibly empty (case C008).
        reason: String,
    },
}

/// One header field, unfolded (RFC 3261 §7.3.1): the name expanded from its compact form, the value with
/// surrounding whitespace removed and continuation lines joined by one space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Name with compact forms expanded (`v` -> `Via`); other names as written.
    pub name: String,
    /// Value, unfolded and trimmed.
    pub value: String,
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request-Line or Status-Line.
    pub start: StartLine,
    /// Header fields in the order received.
    pub headers: Vec<Header>,
    /// Body: exactly Content-Length bytes (or, on a datagram without Content-Length, the rest).
    pub body: Vec<u8>,
}

/// What a stream buffer holds (RFC 3261 §18.3: Content-Length frames messages on stream transports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// A whole message of this many bytes is at the start of the buffer.
    Complete(usize),
    /// More bytes are needed.
    Incomplete,
    /// The buffer cannot start a valid message; the stream should be closed.
    Invalid(MessageError),
}

/// Expands RFC 3261 §7.3.3 compact header names (and RFC 3515/4028 ones) to their long form.
pub fn long_name(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'e' => "Content-Encoding",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'f' => "From",
        b's' => "Subject",
        b'k' => "Supported",
        b't' => "To",
        b'v' => "Via",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'u' => "Allow-Events",
        b'x' => "Session-Expires",
        _ => name,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Finds where the header section ends: the index of the empty line's CRLFCRLF.
fn header_end(data: &[u8]) -> Option<usize> {
    find(data, b"\r\n\r\n")
}

/// Looks at the start of a stream buffer (TCP) and says whether a whole message is there. Leading CRLFs
/// (keep-alives, RFC 5626 §3.5.1) must be skipped by the caller before calling.
pub fn frame(buf: &[u8]) -> Framing {
    let Some(end) = header_end(buf) else {
        return if buf.len() > MAX_MESSAGE_BYTES {
            Framing::Invalid(MessageError::TooLarge)
        } else {
            Framing::Incomplete
        };
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut length = None;
    for (name, value) in raw_headers(&head) {
        if long_name(&name).eq_ignore_ascii_case("Content-Length") {
            match value.trim().parse::<usize>() {
                Ok(n) => length = Some(n),
                Err(_) => return Framing::Invalid(MessageError::ContentLength(value)),
            }
        }
    }
    // RFC 3261 §18.3: on a stream, Content-Length is mandatory; a missing one means no body.
    let total = end + 4 + length.unwrap_or(0);
    if total > MAX_MESSAGE_BYTES {
        Framing::Invalid(MessageError::TooLarge)
    } else if buf.len() >= total {
        Framing::Complete(total)
    } else {
        Framing::Incomplete
    }
}

/// Splits a header section (after the start line) into unfolded `(name, value)` pairs. Lines without a colon are
/// returned with an empty name so the caller can refuse them.
fn raw_headers(head: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n").skip(1) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                let more = line.trim();
                if !more.is_empty() {
                    if !last.1.is_empty() {
                        last.1.push(' ');
                    }
                    last.1.push_str(more);
                }
                continue;
            }
            out.push((String::new(), line.to_string()));
            continue;
        }
        match line.split_once(':') {
            Some((n, v)) => out.push((
                n.trim_end_matches([' ', '\t']).to_string(),
                v.trim().to_string(),
            )),
            None => out.push((String::new(), line.to_string())),
        }
    }
    out
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

fn parse_start(line: &str) -> Result<StartLine, MessageError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (the phrase may be empty: case C008).
        let code = rest.get(..3).unwrap_or("");
        let after = rest.get(3..).unwrap_or("");
        if code.len() != 3
            || !code.bytes().all(|b| b.is_ascii_digit())
            || !(after.is_empty() || after.starts_with(' '))
        {
            return Err(MessageError::StartLine(line.to_string()));
        }
        let code: u16 = code
            .parse()
            .map_err(|_| MessageError::StartLine(line.to_string()))?;
        if !(100..=699).contains(&code) {
            return Err(MessageError::StartLine(line.to_string()));
        }
        return Ok(StartLine::Response {
            code,
            reason: after.trim_start_matches(' ').to_string(),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version CRLF: exactly one SP each (case C012).
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        return Err(MessageError::StartLine(line.to_string()));
    };
    if !is_token(method)
        || uri.is_empty()
        || *version != "SIP/2.0"
        || uri.contains('\t')
        || !uri.contains(':')
    {
        return Err(MessageError::StartLine(line.to_string()));
    }
    Ok(StartLine::Request {
        method: (*method).to_string(),
        uri: (*uri).to_string(),
    })
}

/// Parses one whole message, as received in a UDP datagram or cut by [`frame`] from a stream.
///
/// # Errors
/// [`MessageError`] for a missing header end, a bad start line, a header line without a name, or a
/// Content-Length beyond the received bytes.
pub fn parse(data: &[u8]) -> Result<Message, MessageError> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge);
    }
    let end = header_end(data).ok_or(MessageError::NoHeaderEnd)?;
    let head = String::from_utf8_lossy(&data[..end]);
    let first = head.split("\r\n").next().unwrap_or("");
    let start = parse_start(first)?;
    let mut headers = Vec::new();
    let mut length = None;
    for (name, value) in raw_headers(&head) {
        if !is_token(&name) {
            return Err(MessageError::HeaderLine(if name.is_empty() {
                value
            } else {
                name
            }));
        }
        let name = long_name(&name).to_string();
        if name.eq_ignore_ascii_case("Content-Length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| MessageError::ContentLength(value.clone()))?,
            );
        }
        headers.push(Header { name, value });
    }
    let available = &data[end + 4..];
    let body = match length {
        Some(n) if n > available.len() => {
            return Err(MessageError::Truncated {
                declared: n,
                received: available.len(),
            });
        }
        Some(n) => available[..n].to_vec(),
        None => available.to_vec(),
    };
    Ok(Message {
        start,
        headers,
        body,
    })
}

/// Splits a header value at commas outside quotes and angle brackets (RFC 3261 §7.3.1).
pub fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    for ch in value.chars() {
        if escaped {
            escaped = false;
            cur.push(ch);
            continue;
        }
        match ch {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur.trim().to_string());
    out
}

/// One Via value (RFC 3261 §20.42), whitespace normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper case (`UDP`, `TCP`, ...).
    pub transport: String,
    /// sent-by: host with optional port.
    pub sent_by: String,
    /// Parameters in order; a value-less one has `None`.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    /// Parses one Via value.
    ///
    /// # Errors
    /// [`MessageError::Via`] for an empty value, a protocol other than SIP/2.0, an empty sent-by or an empty
    /// parameter (`;;`, case C009).
    pub fn parse(value: &str) -> Result<Via, MessageError> {
        let bad = || MessageError::Via(value.to_string());
        let (proto, rest) = {
            // `SIP / 2.0 / UDP host` with LWS around the slashes (case C001).
            let mut slashes = 0;
            let mut idx = None;
            let mut seen_transport = false;
            for (i, ch) in value.char_indices() {
                if ch == '/' {
                    slashes += 1;
                } else if slashes == 2 && !ch.is_whitespace() {
                    seen_transport = true;
                } else if slashes == 2 && seen_transport && ch.is_whitespace() {
                    idx = Some(i);
                    break;
                }
            }
            let i = idx.ok_or_else(bad)?;
            (&value[..i], value[i..].trim())
        };
        let proto: String = proto.chars().filter(|c| !c.is_whitespace()).collect();
        let mut p = proto.split('/');
        let (name, version, transport) = (p.next(), p.next(), p.next());
        if name.map(|n| n.eq_ignore_ascii_case("SIP")) != Some(true) || version != Some("2.0") {
            return Err(bad());
        }
        let transport = transport
            .filter(|t| is_token(t))
            .ok_or_else(bad)?
            .to_ascii_uppercase();
        let mut parts = rest.split(';');
        let sent_by = parts.next().unwrap_or("").trim().to_string();
        if sent_by.is_empty() || sent_by.contains(char::is_whitespace) {
            return Err(bad());
        }
        let mut params = Vec::new();
        for p in parts {
            let (k, v) = match p.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().to_string())),
                None => (p.trim(), None),
            };
            if !is_token(k) || v.as_deref().is_some_and(|v| v.is_empty()) {
                return Err(bad());
            }
            params.push((k.to_ascii_lowercase(), v));
        }
        Ok(Via {
            transport,
            sent_by,
            params,
        })
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == "branch")
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A parameter of a name-addr header (`;tag=x`), looked up outside the `<...>` part (RFC 3261 §20.20, §20.39).
pub fn header_param(value: &str, name: &str) -> Option<String> {
    let tail = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    tail.split(';')
        .skip(if value.contains('>') { 0 } else { 1 })
        .find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
}

impl Message {
    /// The first value of the header `name` (case-insensitive; compact forms are already expanded).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every header field named `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Method of a request (`None` for a response).
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Every Via value in order, across header fields and comma lists (RFC 3261 §7.3.1).
    pub fn via_values(&self) -> Vec<String> {
        self.headers_named("Via").flat_map(split_list).collect()
    }

    /// `Call-ID` value.
    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method (RFC 3261 §20.16; leading zeros allowed, case C001).
    ///
    /// # Errors
    /// [`MessageError::CSeq`] when it is missing or not `number SP method`.
    pub fn cseq(&self) -> Result<(u32, String), MessageError> {
        let v = self.header("CSeq").ok_or(MessageError::Missing("CSeq"))?;
        let mut it = v.split_whitespace();
        let (Some(n), Some(m), None) = (it.next(), it.next(), it.next()) else {
            return Err(MessageError::CSeq(v.to_string()));
        };
        let n: u32 = n.parse().map_err(|_| MessageError::CSeq(v.to_string()))?;
        if !is_token(m) {
            return Err(MessageError::CSeq(v.to_string()));
        }
        Ok((n, m.to_string()))
    }

    /// `Max-Forwards` as a number (leading zeros allowed).
    pub fn max_forwards(&self) -> Option<u32> {
        self.header("Max-Forwards")?.trim().parse().ok()
    }

    /// The `tag` of From.
    pub fn from_tag(&self) -> Option<String> {
        header_param(self.header("From")?, "tag")
    }

    /// The `tag` of To.
    pub fn to_tag(&self) -> Option<String> {
        header_param(self.header("To")?, "tag")
    }

    /// Checks what the gateway needs of a request before acting on it: Via, From, To, Call-ID and CSeq present
    /// and well formed, CSeq method equal to the Request-Line method (RFC 3261 §8.1.1, §8.2).
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate_request(&self) -> Result<(), MessageError> {
        let Some(method) = self.method() else {
            return Ok(());
        };
        let vias = self.via_values();
        if vias.is_empty() {
            return Err(MessageError::Missing("Via"));
        }
        for v in &vias {
            Via::parse(v)?;
        }
        for (name, label) in [("From", "From"), ("To", "To")] {
            let v = self.header(name).ok_or(MessageError::Missing(label))?;
            if v.is_empty() || v.contains(";;") {
                return Err(MessageError::Address(label));
            }
        }
        for c in self.headers_named("Contact") {
            if c.is_empty() || c.split(';').skip(1).any(|p| p.trim().is_empty()) {
                return Err(MessageError::Address("Contact"));
            }
        }
        if self.call_id().is_none_or(str::is_empty) {
            return Err(MessageError::Missing("Call-ID"));
        }
        let (_, cseq_method) = self.cseq()?;
        if cseq_method != method {
            return Err(MessageError::CSeqMethod {
                method: method.to_string(),
                cseq: cseq_method,
            });
        }
        Ok(())
    }
}

/// The pieces of a request a response copies (RFC 3261 §8.2.6.2): every Via value, From, To, Call-ID, CSeq,
/// taken from the raw header section so that even a request refused as malformed can be answered (case C009).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyBase {
    /// Via header field values, in order, as received.
    pub vias: Vec<String>,
    /// From value.
    pub from: String,
    /// To value.
    pub to: String,
    /// Call-ID value.
    pub call_id: String,
    /// CSeq value.
    pub cseq: String,
}

impl ReplyBase {
    /// From a parsed request.
    pub fn of(msg: &Message) -> ReplyBase {
        let get = |n: &str| msg.header(n).unwrap_or("").to_string();
        ReplyBase {
            vias: msg.headers_named("Via").map(str::to_string).collect(),
            from: get("From"),
            to: get("To"),
            call_id: get("Call-ID"),
            cseq: get("CSeq"),
        }
    }

    /// From raw bytes that failed [`parse`]: `None` unless they look like a request with the five headers.
    pub fn salvage(data: &[u8]) -> Option<ReplyBase> {
        let end = header_end(data)?;
        let head = String::from_utf8_lossy(&data[..end]);
        let first = head.split("\r\n").next()?;
        if first.starts_with("SIP/") || first.split_whitespace().count() < 3 {
            return None;
        }
        let mut base = ReplyBase::default();
        for (name, value) in raw_headers(&head) {
            match long_name(&name).to_ascii_lowercase().as_str() {
                "via" => base.vias.push(value),
                "from" => base.from = value,
                "to" => base.to = value,
                "call-id" => base.call_id = value,
                "cseq" => base.cseq = value,
                _ => {}
            }
        }
        let complete = !base.vias.is_empty()
            && !base.from.is_empty()
            && !base.to.is_empty()
            && !base.call_id.is_empty()
            && !base.cseq.is_empty();
        complete.then_some(base)
    }

    /// Serialises a response: status line, the copied headers (To gets `to_tag` when it has none and the code is
    /// above 100), then `extra` header lines, Content-Length and `body`.
    pub fn response(
        &self,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut s = String::with_capacity(512 + body.len());
        let _ = write!(s, "SIP/2.0 {code} {reason}\r\n");
        for v in &self.vias {
            let _ = write!(s, "Via: {v}\r\n");
        }
        let _ = write!(s, "From: {}\r\n", self.from);
        match to_tag {
            Some(tag) if code > 100 && header_param(&self.to, "tag").is_none() => {
                let _ = write!(s, "To: {};tag={tag}\r\n", self.to);
            }
            _ => {
                let _ = write!(s, "To: {}\r\n", self.to);
            }
        }
        let _ = write!(s, "Call-ID: {}\r\n", self.call_id);
        let _ = write!(s, "CSeq: {}\r\n", self.cseq);
        for (k, v) in extra {
            let _ = write!(s, "{k}: {v}\r\n");
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n", body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(body);
        out
    }
}

/// The user part of a SIP URI with %-escapes decoded (RFC 3261 §19.1.4: comparison after unescaping, case C003).
/// `sip:+15550100@host;user=phone` -> `+15550100`; a URI without user part gives `None`.
pub fn uri_user(uri: &str) -> Option<String> {
    let uri = uri.trim().trim_start_matches('<');
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| {
            uri.strip_prefix("tel:")
                .map(|t| t.split(';').next().unwrap_or(t))
        })?;
    if uri.starts_with("tel:") {
        return Some(unescape(rest));
    }
    let at = rest.rfind('@')?;
    let user = rest[..at].split(':').next().unwrap_or("");
    Some(unescape(user))
}

/// Decodes `%XX` escapes; an invalid escape is kept as written.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] = b"OPTIONS sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:user@example.com>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";

    #[test]
    fn parses_a_minimal_request() {
        let m = parse(OPTIONS).unwrap();
        assert_eq!(m.method(), Some("OPTIONS"));
        m.validate_request().unwrap();
        assert_eq!(m.header("content-length"), Some("0"));
        assert_eq!(m.cseq().unwrap(), (1, "OPTIONS".into()));
        assert_eq!(m.from_tag().as_deref(), Some("1"));
        assert_eq!(m.to_tag(), None);
    }

    #[test]
    fn frames_stream_messages() {
        let mut two = OPTIONS.to_vec();
        two.extend_from_slice(OPTIONS);
        assert_eq!(frame(&two), Framing::Complete(OPTIONS.len()));
        assert_eq!(frame(&OPTIONS[..20]), Framing::Incomplete);
        let big = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\n12345";
        assert_eq!(frame(big), Framing::Incomplete);
        let huge = b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 9999999\r\n\r\n";
        assert!(matches!(
            frame(huge),
            Framing::Invalid(MessageError::TooLarge)
        ));
    }

    #[test]
    fn response_copies_vias_and_adds_tag() {
        let m = parse(OPTIONS).unwrap();
        let r =
            ReplyBase::of(&m).response(200, "OK", Some("abc"), &[("Allow", "INVITE".into())], b"");
        let r = parse(&r).unwrap();
        assert_eq!(
            r.start,
            StartLine::Response {
                code: 200,
                reason: "OK".into()
            }
        );
        assert_eq!(r.to_tag().as_deref(), Some("abc"));
        assert_eq!(r.via_values(), m.via_values());
    }

    #[test]
    fn via_grammar() {
        let v = Via::parse("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(
            (v.transport.as_str(), v.sent_by.as_str(), v.branch()),
            ("UDP", "192.0.2.2", Some("390skdjuw"))
        );
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse("").is_err());
        assert!(Via::parse("SIP/2.0/UDP h;branch=").is_err());
    }

    #[test]
    fn uri_users() {
        assert_eq!(
            uri_user("sip:+15550100@gw.example;user=phone").as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            uri_user("sip:%75se%72@example.com").as_deref(),
            Some("user")
        );
        assert_eq!(
            uri_user("sip:sips%3Auser%40example.com@example.net").as_deref(),
            Some("sips:user@example.com")
        );
        assert_eq!(
            uri_user("tel:+15550100;phone-context=x").as_deref(),
            Some("+15550100")
        );
        assert_eq!(uri_user("sip:example.com"), None);
        assert_eq!(unescape("%4"), "%4");
        assert_eq!(unescape("a%"), "a%");
    }

    #[test]
    fn never_panics_on_junk() {
        for junk in [
            &b""[..],
            b"\r\n\r\n",
            b"SIP/2.0 \r\n\r\n",
            b"X\r\n:\r\n\r\n",
            b" a\r\n b\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            let _ = parse(junk);
            let _ = frame(junk);
            let _ = ReplyBase::salvage(junk);
        }
    }
}
