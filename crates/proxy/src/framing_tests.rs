use super::*;
use syncd_testkit::rng::Rng;

const LIMITS: HeadLimits = HeadLimits {
    max_size: 1024,
    max_headers: 8,
};

fn parse(raw: &[u8]) -> Result<Option<(RequestHead, Vec<HeaderSpan>)>, FramingError> {
    let mut spans = Vec::new();
    Ok(parse_request(raw, LIMITS, &mut spans)?.map(|h| (h, spans)))
}

/// The framing of a complete request, as the server decides it.
fn frame(raw: &[u8]) -> Result<Framing, FramingError> {
    let (head, spans) = parse(raw)?.expect("a complete head");
    let fields = spans
        .iter()
        .map(|s| (&raw[s.name.clone()], &raw[s.value.clone()]));
    request_framing(head.minor, fields)
}

#[test]
fn request_heads_parse_into_offsets() {
    let raw = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-Y:  z \r\n\r\nBODY";
    let (head, spans) = parse(raw).unwrap().unwrap();
    assert_eq!(&raw[head.method.clone()], b"GET");
    assert_eq!(&raw[head.target.clone()], b"/a?b=c");
    assert_eq!(head.minor, 1);
    assert_eq!(&raw[head.len..], b"BODY");
    let fields: Vec<_> = spans
        .iter()
        .map(|s| (&raw[s.name.clone()], &raw[s.value.clone()]))
        .collect();
    assert_eq!(
        fields,
        [(&b"Host"[..], &b"x"[..]), (&b"X-Y"[..], &b"z"[..])]
    );
    // every prefix is incomplete, never an error
    for n in 0..head.len {
        assert_eq!(parse(&raw[..n]), Ok(None), "prefix of {n} bytes");
    }
}

#[test]
fn request_framing_table() {
    use Framing::*;
    use FramingError::*;
    let cases: &[(&str, Result<Framing, FramingError>)] = &[
        ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(None)),
        ("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", Ok(None)),
        (
            "POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
            Ok(Length(12)),
        ),
        (
            "POST / HTTP/1.1\r\ncontent-length:  7 \r\n\r\n",
            Ok(Length(7)),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok(Chunked),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            Ok(Chunked),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            Ok(Chunked),
        ),
        // smuggling shapes
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            Err(LengthAndEncoding),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
            Err(LengthAndEncoding),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            Err(DuplicateLength),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Err(DuplicateLength),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n",
            Err(BadLength),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            Err(BadLength),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            Err(BadLength),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
            Err(BadLength),
        ),
        (
            "POST / HTTP/1.1\r\nContent-Length: 1 0\r\n\r\n",
            Err(BadLength),
        ),
        ("POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", Err(BadLength)),
        (
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            Err(BadLength),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Err(BadTransferEncoding),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            Err(BadTransferEncoding),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n",
            Err(BadTransferEncoding),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
            Err(BadTransferEncoding),
        ),
        (
            "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n",
            Err(BadTransferEncoding),
        ),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Err(EncodingInHttp10),
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(frame(raw.as_bytes()), *want, "{raw:?}");
    }
}

#[test]
fn malformed_heads_are_refused() {
    use FramingError::*;
    let cases: &[(&[u8], FramingError)] = &[
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", ObsFold),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", ObsFold),
        (b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", BadHeaderName),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BadHeaderName),
        (b"GET / HTTP/1.1\r\nX(y): a\r\n\r\n", BadHeaderName),
        (b"GET / HTTP/1.1\r\n: a\r\n\r\n", BadHeaderName),
        (
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",
            Malformed("header value"),
        ),
        (b"GET / HTTP/2.0\r\n\r\n", Malformed("HTTP version")),
        (b"GET  / HTTP/1.1\r\n\r\n", Malformed("request line")),
        (b"G(T / HTTP/1.1\r\n\r\n", Malformed("request line")),
    ];
    for (raw, want) in cases {
        assert_eq!(
            parse(raw).map(|_| ()),
            Err(*want),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn head_limits_are_431_material() {
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 2000));
    let e = parse(&big).unwrap_err();
    assert_eq!(e, FramingError::HeadTooLarge(1024), "even while incomplete");
    assert!(e.is_too_large());
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse(&big).unwrap_err(), FramingError::HeadTooLarge(1024));

    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..8 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    let at_limit = [&many[..], b"\r\n"].concat();
    assert!(parse(&at_limit).unwrap().is_some());
    many.extend_from_slice(b"X-8: v\r\n\r\n");
    assert_eq!(parse(&many).unwrap_err(), FramingError::TooManyHeaders(8));
    many.extend_from_slice(b"X-9: v\r\n\r\n");
    let e = parse(&many).unwrap_err();
    assert_eq!(e, FramingError::TooManyHeaders(8));
    assert!(e.is_too_large());
}

#[test]
fn many_headers_beyond_the_stack_array_when_allowed() {
    let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let mut spans = Vec::new();
    let limits = |max_headers| HeadLimits {
        max_size: 64 * 1024,
        max_headers,
    };
    assert!(parse_request(&raw, limits(200), &mut spans)
        .unwrap()
        .is_some());
    assert_eq!(spans.len(), 200);
    assert_eq!(
        parse_request(&raw, limits(199), &mut spans),
        Err(FramingError::TooManyHeaders(199))
    );
    assert_eq!(
        parse_request(&raw, limits(64), &mut spans),
        Err(FramingError::TooManyHeaders(64))
    );
}

#[test]
fn response_framing_table() {
    use Framing::*;
    let h = |pairs: &'static [(&'static str, &'static str)]| {
        pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    };
    assert_eq!(response_framing(200, false, h(&[])), Ok(UntilClose));
    assert_eq!(
        response_framing(200, true, h(&[("content-length", "5")])),
        Ok(None)
    );
    for status in [101, 204, 304] {
        assert_eq!(
            response_framing(status, false, h(&[("content-length", "5")])),
            Ok(None)
        );
    }
    assert_eq!(
        response_framing(200, false, h(&[("content-length", "0")])),
        Ok(None)
    );
    assert_eq!(
        response_framing(
            200,
            false,
            h(&[("content-length", "5"), ("Content-Length", "5")])
        ),
        Ok(Length(5))
    );
    assert_eq!(
        response_framing(
            200,
            false,
            h(&[("content-length", "5"), ("content-length", "6")])
        ),
        Err(FramingError::ConflictingLength)
    );
    assert_eq!(
        response_framing(200, false, h(&[("content-length", "+5")])),
        Err(FramingError::BadLength)
    );
    // Transfer-Encoding wins; a final coding other than chunked reads to close
    assert_eq!(
        response_framing(
            200,
            false,
            h(&[("content-length", "5"), ("transfer-encoding", "chunked")])
        ),
        Ok(Chunked)
    );
    assert_eq!(
        response_framing(200, false, h(&[("transfer-encoding", "chunked, gzip")])),
        Ok(UntilClose)
    );
}

#[test]
fn chunk_lines_drive_the_decoder() {
    let mut d = Decode::new(Framing::Chunked);
    assert!(d.wants_line());
    d = d.on_line(b"1aF;name=value").unwrap();
    assert_eq!(d, Decode::ChunkData(0x1af));
    d = d.on_data(0x100);
    assert_eq!(d, Decode::ChunkData(0xaf));
    d = d.on_data(0xaf);
    assert_eq!(d, Decode::ChunkCrlf);
    assert_eq!(d.on_line(b"x"), Err(FramingError::BadChunkEnd));
    d = d.on_line(b"").unwrap().on_line(b"0").unwrap();
    assert_eq!(d, Decode::Trailers);
    d = d.on_line(b"X-Trailer: t").unwrap().on_line(b"").unwrap();
    assert_eq!(d, Decode::Done);
    for bad in [
        &b""[..],
        b"+5",
        b"-5",
        b"0x5",
        b"5 5",
        b"g",
        b"11111111111111111",
    ] {
        assert_eq!(
            Decode::ChunkSize.on_line(bad),
            Err(FramingError::BadChunkSize),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        Decode::new(Framing::Length(3)).on_data(3),
        Decode::Done,
        "a length body ends exactly"
    );
}

#[test]
fn numbers_are_plain_digits() {
    assert_eq!(digits(b"5"), Some(5));
    assert_eq!(digits(b"+5"), None);
    assert_eq!(digits(b""), None);
    assert_eq!(digits(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(digits(b"18446744073709551616"), None);
    assert_eq!(chunk_size_line(b" a ; x"), Some(10));
    assert_eq!(chunk_size_line(b"ffffffffffffffff"), Some(u64::MAX));
}

/// Seeded random bytes and mutated valid requests through the parser and
/// the framing rules: no panic, and offsets always inside the input.
#[test]
fn seeded_fuzz_never_panics_and_stays_in_bounds() {
    let seeds: [&[u8]; 3] = [
        b"POST /u?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ];
    let alphabet =
        b"\r\n :;,\t0123456789abcdefABCDEF+-chunkedContent-LengthTransfer-Encoding\0\x7f\xff";
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let mut spans = Vec::new();
    for i in 0..20_000 {
        let input = if i % 4 == 0 {
            let n = rng.below(300);
            rng.bytes(n)
        } else {
            let mut v = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(v.len() + 1);
                match rng.below(3) {
                    0 if at < v.len() => v[at] = alphabet[rng.below(alphabet.len())],
                    1 => v.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ => v.truncate(at.max(1)),
                }
            }
            v
        };
        let limits = HeadLimits {
            max_size: 16 + rng.below(400),
            max_headers: 1 + rng.below(80),
        };
        match parse_request(&input, limits, &mut spans) {
            Ok(Some(head)) => {
                assert!(head.len <= input.len() && head.len <= limits.max_size);
                assert!(spans.len() <= limits.max_headers);
                for s in &spans {
                    assert!(s.name.end <= head.len && s.value.end <= head.len);
                }
                let fields = spans
                    .iter()
                    .map(|s| (&input[s.name.clone()], &input[s.value.clone()]));
                if let Ok(Framing::Length(n)) = request_framing(head.minor, fields) {
                    assert!(n > 0);
                }
            }
            Ok(None) => assert!(input.len() <= limits.max_size),
            Err(_) => {}
        }
        let mut d = Decode::ChunkSize;
        for line in input.split(|&b| b == b'\n') {
            d = d.on_line(line).unwrap_or(Decode::ChunkSize);
            if !d.wants_line() {
                d = d.on_data(rng.next_u64() % 64);
            }
        }
    }
}
