//! The `kind: http` probe's pure half: the request it writes, and the verdict on the bytes
//! read so far ([`judge`]: bytes in, verdict out; no socket, no clock).
//!
//! The response head is parsed by `httparse` (hyper's parser): status line and headers with
//! their many legal spellings (obs-fold, bare LF, odd reason phrases) are a known source of
//! bugs in hand-written parsers, and this one is fuzzed and used by most of the Rust HTTP
//! stack. Only `Content-Length` and chunked `Transfer-Encoding` are read from the headers,
//! to know when the body has ended.
#![deny(clippy::indexing_slicing)]

use crate::config::{ExpectStatus, HttpCheck, HttpMethod};

/// Most bytes of status line and headers a probe reads; a longer head fails the check.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most body bytes `expect_body` is looked for in.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most headers a response may have; more is an error from the parser.
const MAX_HEADERS: usize = 64;

/// Why an http probe failed; each message says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpFailure {
    #[error("status {got}, expected {expected}")]
    Status { got: u16, expected: ExpectStatus },
    #[error("body does not contain {needle:?}")]
    Body { needle: String },
    #[error("connection closed before the status line")]
    ClosedBeforeStatus,
    #[error("connection closed inside the response headers")]
    ClosedInHead,
    #[error("response head longer than {MAX_HEAD_BYTES} bytes")]
    HeadTooLong,
    #[error("malformed response: {0}")]
    Malformed(httparse::Error),
}

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(HttpFailure),
    /// Not decided yet: read more (unless the peer closed, which [`judge`] is told).
    NeedMore,
}

/// The request: HTTP/1.1, `Connection: close`, `Host` from the check or `default_host` (the
/// probed address).
pub fn request(check: &HttpCheck, default_host: &str) -> Vec<u8> {
    let host = check.host.as_deref().unwrap_or(default_host);
    format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ballast-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.method.as_str(),
        check.path
    )
    .into_bytes()
}

/// The verdict on `response`, the bytes read so far; `closed`: nothing more will come (the
/// peer closed, or the probe read all it will).
pub fn judge(response: &[u8], check: &HttpCheck, closed: bool) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(response) {
        Err(error) => return Verdict::Fail(HttpFailure::Malformed(error)),
        Ok(httparse::Status::Partial) => {
            return if response.len() >= MAX_HEAD_BYTES {
                Verdict::Fail(HttpFailure::HeadTooLong)
            } else if closed && !response.contains(&b'\n') {
                Verdict::Fail(HttpFailure::ClosedBeforeStatus)
            } else if closed {
                Verdict::Fail(HttpFailure::ClosedInHead)
            } else {
                Verdict::NeedMore
            };
        }
        Ok(httparse::Status::Complete(len)) => len,
    };
    if head_len > MAX_HEAD_BYTES {
        return Verdict::Fail(HttpFailure::HeadTooLong);
    }
    let Some(code) = parsed.code else {
        // A complete parse always has the code; treat the impossible as a bad status line.
        return Verdict::Fail(HttpFailure::Malformed(httparse::Error::Status));
    };
    if !check.expect_status.matches(code) {
        return Verdict::Fail(HttpFailure::Status {
            got: code,
            expected: check.expect_status.clone(),
        });
    }
    let needle = match (&check.expect_body, check.method) {
        (Some(needle), HttpMethod::Get) => needle,
        _ => return Verdict::Pass,
    };
    let framing = Framing::of(parsed.headers);
    let raw_body = response.get(head_len..).unwrap_or_default();
    let (body, ended) = framing.body(raw_body);
    let looked = body.get(..MAX_BODY_BYTES).unwrap_or(&body);
    if contains(looked, needle.as_bytes()) {
        Verdict::Pass
    } else if ended || closed || body.len() >= MAX_BODY_BYTES {
        Verdict::Fail(HttpFailure::Body {
            needle: needle.clone(),
        })
    } else {
        Verdict::NeedMore
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// How the body's end is known.
enum Framing {
    Length(usize),
    Chunked,
    /// Until the connection closes.
    Close,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Framing {
        let value = |name: &str| {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
        };
        if value("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
            return Framing::Chunked;
        }
        match value("content-length").and_then(|v| v.parse().ok()) {
            Some(len) => Framing::Length(len),
            None => Framing::Close,
        }
    }

    /// The body bytes received so far (de-chunked), and whether the body has ended.
    fn body(&self, raw: &[u8]) -> (Vec<u8>, bool) {
        match *self {
            Framing::Length(len) => {
                let got = raw.get(..len).unwrap_or(raw);
                (got.to_vec(), got.len() >= len)
            }
            Framing::Close => (raw.to_vec(), false),
            Framing::Chunked => dechunk(raw),
        }
    }
}

/// The data of the chunks in `raw` so far (a partial last chunk included), and whether the
/// last chunk (size 0) was seen. A malformed chunk size ends the body where it is.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    while body.len() < MAX_BODY_BYTES {
        let (used, size) = match httparse::parse_chunk_size(raw) {
            Ok(httparse::Status::Complete((used, size))) => (used, size),
            Ok(httparse::Status::Partial) => return (body, false),
            Err(_) => return (body, true),
        };
        if size == 0 {
            return (body, true);
        }
        let data = raw.get(used..).unwrap_or_default();
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let Some(chunk) = data.get(..size) else {
            body.extend_from_slice(data);
            return (body, false);
        };
        body.extend_from_slice(chunk);
        // The chunk's CRLF; until it arrives, the next size cannot be read.
        match data.get(size..).and_then(|rest| rest.strip_prefix(b"\r\n")) {
            Some(rest) => raw = rest,
            None => return (body, false),
        }
    }
    (body, false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::StatusRange;

    fn check(method: HttpMethod, expect_body: Option<&str>) -> HttpCheck {
        HttpCheck {
            method,
            path: "/health".into(),
            host: None,
            expect_status: ExpectStatus(vec![StatusRange {
                low: 200,
                high: 399,
            }]),
            expect_body: expect_body.map(str::to_owned),
            tls: None,
        }
    }

    fn fail(verdict: Verdict) -> String {
        match verdict {
            Verdict::Fail(failure) => failure.to_string(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn the_request_is_http_1_1_with_a_close_and_a_host() {
        let get = check(HttpMethod::Get, None);
        assert_eq!(
            request(&get, "10.0.0.1:8008"),
            b"GET /health HTTP/1.1\r\nHost: 10.0.0.1:8008\r\nUser-Agent: ballast-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let head = HttpCheck {
            host: Some("db.example".into()),
            ..check(HttpMethod::Head, None)
        };
        let text = String::from_utf8(request(&head, "10.0.0.1:8008")).unwrap();
        assert!(text.starts_with("HEAD /health HTTP/1.1\r\nHost: db.example\r\n"));
    }

    #[test]
    fn status_is_matched_against_the_ranges() {
        let c = check(HttpMethod::Get, None);
        assert_eq!(judge(b"HTTP/1.1 200 OK\r\n\r\n", &c, false), Verdict::Pass);
        assert_eq!(
            judge(b"HTTP/1.0 302 Found\r\n\r\n", &c, false),
            Verdict::Pass
        );
        assert_eq!(
            fail(judge(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                &c,
                false
            )),
            "status 503, expected 200-399"
        );
        let list = HttpCheck {
            expect_status: ExpectStatus(vec![
                StatusRange {
                    low: 200,
                    high: 200,
                },
                StatusRange {
                    low: 204,
                    high: 204,
                },
            ]),
            ..c
        };
        assert_eq!(
            judge(b"HTTP/1.1 204 No Content\r\n\r\n", &list, false),
            Verdict::Pass
        );
        assert_eq!(
            fail(judge(b"HTTP/1.1 201 Created\r\n\r\n", &list, false)),
            "status 201, expected 200, 204"
        );
    }

    #[test]
    fn an_incomplete_head_waits_or_says_where_it_stopped() {
        let c = check(HttpMethod::Get, None);
        assert_eq!(judge(b"", &c, false), Verdict::NeedMore);
        assert_eq!(judge(b"HTTP/1.1 20", &c, false), Verdict::NeedMore);
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nServer: x\r\n", &c, false),
            Verdict::NeedMore
        );
        assert_eq!(
            fail(judge(b"", &c, true)),
            "connection closed before the status line"
        );
        assert_eq!(
            fail(judge(b"HTTP/1.1 200", &c, true)),
            "connection closed before the status line"
        );
        assert_eq!(
            fail(judge(b"HTTP/1.1 200 OK\r\nServer: x\r\n", &c, true)),
            "connection closed inside the response headers"
        );
    }

    #[test]
    fn garbage_and_oversized_heads_fail() {
        let c = check(HttpMethod::Get, None);
        let error = fail(judge(b"+PONG\r\n", &c, false));
        assert!(error.starts_with("malformed response"), "{error}");
        let mut long = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(
            fail(judge(&long, &c, false)),
            format!("response head longer than {MAX_HEAD_BYTES} bytes")
        );
    }

    #[test]
    fn the_body_is_searched_until_it_ends() {
        let c = check(HttpMethod::Get, Some("ok"));
        let head = "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(
            judge(format!("{head}status: ok\n").as_bytes(), &c, false),
            Verdict::Pass
        );
        assert_eq!(
            judge(format!("{head}status").as_bytes(), &c, false),
            Verdict::NeedMore
        );
        assert_eq!(
            fail(judge(format!("{head}status: no!").as_bytes(), &c, false)),
            "body does not contain \"ok\""
        );
        // Without a length, the body ends when the connection closes.
        let open = b"HTTP/1.1 200 OK\r\n\r\nstatus: ";
        assert_eq!(judge(open, &c, false), Verdict::NeedMore);
        assert_eq!(fail(judge(open, &c, true)), "body does not contain \"ok\"");
        // The status is judged first.
        assert_eq!(
            fail(judge(b"HTTP/1.1 500 Oops\r\n\r\nok", &c, true)),
            "status 500, expected 200-399"
        );
    }

    #[test]
    fn a_chunked_body_is_searched_across_chunk_boundaries() {
        let c = check(HttpMethod::Get, Some("ready"));
        let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let split = format!("{head}3\r\nrea\r\n2\r\ndy\r\n0\r\n\r\n");
        assert_eq!(judge(split.as_bytes(), &c, false), Verdict::Pass);
        let partial = format!("{head}3\r\nrea\r\n");
        assert_eq!(judge(partial.as_bytes(), &c, false), Verdict::NeedMore);
        let ended = format!("{head}3\r\nbad\r\n0\r\n\r\n");
        assert_eq!(
            fail(judge(ended.as_bytes(), &c, false)),
            "body does not contain \"ready\""
        );
    }

    #[test]
    fn only_the_first_body_bytes_are_looked_at() {
        let c = check(HttpMethod::Get, Some("ok"));
        let mut response = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        response.resize(response.len() + MAX_BODY_BYTES, b'x');
        response.extend_from_slice(b"ok");
        assert_eq!(
            fail(judge(&response, &c, false)),
            "body does not contain \"ok\""
        );
    }

    #[test]
    fn head_ignores_the_body() {
        let c = check(HttpMethod::Head, None);
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", &c, false),
            Verdict::Pass
        );
    }
}
