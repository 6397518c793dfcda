//! The parameters of an etcd v2 keys request (`/v2/keys/...`), parsed as etcd's `v2http` does,
//! plus the limits flotilla puts on what a client controls.
//!
//! The HTTP layer percent-decodes the path and the query / form parameters and passes them here
//! in Go's `ParseForm` order (body parameters first, then the query); as in Go, the first value
//! of a repeated parameter counts. It answers 405 itself for a method other than GET, HEAD,
//! PUT, POST and DELETE, and enforces the request-body and watcher limits.

use super::{Error, ErrorCode, Preconditions, Write, WriteOp, normalize_key};

/// What a v2 keys request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Request {
    /// `GET` / `HEAD`: read a key or list a directory.
    Get {
        /// The normalized key.
        key: String,
        /// `recursive=true`.
        recursive: bool,
        /// `sorted=true`.
        sorted: bool,
        /// `quorum=true`: a linearizable read.
        quorum: bool,
    },
    /// `GET ?wait=true`: wait for the next change (or one since `waitIndex`).
    Watch {
        /// The normalized key.
        key: String,
        /// `recursive=true`.
        recursive: bool,
        /// `waitIndex=N`; `None` (or 0) means the next event after the current index.
        wait_index: Option<u64>,
        /// `stream=true`: keep sending events instead of answering once.
        stream: bool,
    },
    /// `PUT`, `POST`, `DELETE`: a write to propose. `no_value_on_success` rides in it.
    Write(Write),
}

/// Limits on what a client controls. Exceeding one is error 209 ("Invalid field") with a cause
/// that names the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The longest key, in bytes, after normalization.
    pub max_key_bytes: usize,
    /// The most path components a key may have (listings recurse this deep).
    pub max_key_depth: usize,
    /// The largest value, in bytes.
    pub max_value_bytes: usize,
    /// The longest TTL, in seconds.
    pub max_ttl_secs: u64,
}

impl Default for Limits {
    /// 4 KiB keys at most 64 levels deep, 64 KiB values, TTLs up to 10 years. The value limit
    /// bounds memory: the watch history keeps up to 1000 events with a value and a previous
    /// value each, on every replica and in every snapshot (128 MiB at most with this default).
    fn default() -> Self {
        Limits {
            max_key_bytes: 4096,
            max_key_depth: 64,
            max_value_bytes: 64 * 1024,
            max_ttl_secs: 10 * 365 * 24 * 3600,
        }
    }
}

/// Parses a v2 keys request: `method`, the decoded path after `/v2/keys`, the decoded query and
/// form parameters in order, and the receiving node's clock (for TTLs). Errors are etcd's
/// parameter errors (index 0, as etcd sends them) or a limit exceeded.
pub fn parse(
    method: &str,
    key_path: &str,
    params: &[(String, String)],
    now_ms: u64,
    limits: &Limits,
) -> Result<V2Request, Error> {
    let form = Form(params);
    let key = normalize_key(key_path);

    let prev_index = form
        .uint("prevIndex")
        .map_err(|()| request_error(ErrorCode::IndexNaN, r#"invalid value for "prevIndex""#))?;
    let wait_index = form
        .uint("waitIndex")
        .map_err(|()| request_error(ErrorCode::IndexNaN, r#"invalid value for "waitIndex""#))?;
    let recursive = form.flag("recursive")?;
    let sorted = form.flag("sorted")?;
    let wait = form.flag("wait")?;
    let dir = form.flag("dir")?;
    let quorum = form.flag("quorum")?;
    let stream = form.flag("stream")?;
    if wait && method != "GET" {
        return Err(request_error(
            ErrorCode::InvalidField,
            r#""wait" can only be used with GET requests"#,
        ));
    }
    let prev_value = form.first("prevValue");
    if prev_value == Some("") {
        return Err(request_error(
            ErrorCode::PrevValueRequired,
            r#""prevValue" cannot be empty"#,
        ));
    }
    let no_value_on_success = form.flag("noValueOnSuccess")?;
    let ttl = match form.first("ttl") {
        None | Some("") => None,
        Some(text) => Some(
            parse_uint(text)
                .ok_or_else(|| request_error(ErrorCode::TtlNaN, r#"invalid value for "ttl""#))?,
        ),
    };
    let prev_exist = match form.first("prevExist") {
        None => None,
        Some(text) => Some(parse_bool(text).ok_or_else(|| {
            request_error(ErrorCode::InvalidField, "invalid value for prevExist")
        })?),
    };
    let refresh = match form.first("refresh") {
        None => false,
        Some(text) => parse_bool(text)
            .ok_or_else(|| request_error(ErrorCode::InvalidField, "invalid value for refresh"))?,
    };
    let value = form.first("value").unwrap_or("");
    if refresh {
        if !value.is_empty() {
            return Err(request_error(
                ErrorCode::RefreshValue,
                "A value was provided on a refresh",
            ));
        }
        if ttl.is_none() {
            return Err(request_error(
                ErrorCode::RefreshTtlRequired,
                "No TTL value set",
            ));
        }
    }
    check_limits(&key, value, ttl, limits)?;

    let prev = Preconditions {
        prev_exist,
        prev_value: prev_value.map(str::to_owned),
        prev_index: prev_index.filter(|i| *i > 0),
    };
    let write = |op| {
        V2Request::Write(Write {
            key: key.clone(),
            op,
            now_ms,
            no_value_on_success,
        })
    };
    match method {
        "GET" | "HEAD" if wait => Ok(V2Request::Watch {
            key,
            recursive,
            wait_index: wait_index.filter(|i| *i > 0),
            stream,
        }),
        "GET" | "HEAD" => Ok(V2Request::Get {
            key,
            recursive,
            sorted,
            quorum,
        }),
        "PUT" => Ok(write(WriteOp::Set {
            value: value.to_owned(),
            dir,
            ttl,
            refresh,
            prev,
        })),
        "POST" => Ok(write(WriteOp::CreateInOrder {
            value: value.to_owned(),
            dir,
            ttl,
        })),
        "DELETE" => Ok(write(WriteOp::Delete {
            dir,
            recursive,
            prev,
        })),
        other => Err(request_error(
            ErrorCode::InvalidForm,
            format!("method {other} is not allowed on /v2/keys{key}"),
        )),
    }
}

fn check_limits(key: &str, value: &str, ttl: Option<u64>, limits: &Limits) -> Result<(), Error> {
    if key.len() > limits.max_key_bytes {
        return Err(request_error(
            ErrorCode::InvalidField,
            format!(
                "key is {} bytes long, more than the limit of {} bytes",
                key.len(),
                limits.max_key_bytes
            ),
        ));
    }
    let depth = key.matches('/').count();
    if key != "/" && depth > limits.max_key_depth {
        return Err(request_error(
            ErrorCode::InvalidField,
            format!(
                "key has {depth} path components, more than the limit of {}",
                limits.max_key_depth
            ),
        ));
    }
    if value.len() > limits.max_value_bytes {
        return Err(request_error(
            ErrorCode::InvalidField,
            format!(
                "value of {key} is {} bytes long, more than the limit of {} bytes",
                value.len(),
                limits.max_value_bytes
            ),
        ));
    }
    if let Some(ttl) = ttl.filter(|ttl| *ttl > limits.max_ttl_secs) {
        return Err(request_error(
            ErrorCode::InvalidField,
            format!(
                "ttl of {ttl} seconds is more than the limit of {} seconds",
                limits.max_ttl_secs
            ),
        ));
    }
    Ok(())
}

/// etcd's `NewRequestError`: index 0.
fn request_error(code: ErrorCode, cause: impl Into<String>) -> Error {
    Error::new(code, cause, 0)
}

/// The parameters, looked up as Go's `url.Values` (the first value counts).
struct Form<'a>(&'a [(String, String)]);

impl Form<'_> {
    fn first(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// etcd's `getUint64`: absent is `None`, present must parse.
    fn uint(&self, name: &str) -> Result<Option<u64>, ()> {
        self.first(name)
            .map(|text| parse_uint(text).ok_or(()))
            .transpose()
    }

    /// etcd's `getBool`: absent is false, present must parse (`invalid value for "NAME"`).
    fn flag(&self, name: &str) -> Result<bool, Error> {
        match self.first(name) {
            None => Ok(false),
            Some(text) => parse_bool(text).ok_or_else(|| {
                request_error(
                    ErrorCode::InvalidField,
                    format!(r#"invalid value for "{name}""#),
                )
            }),
        }
    }
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseUint(text, 10, 64)`: ASCII digits only (no sign), in range.
pub fn parse_uint(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse_ok(method: &str, path: &str, pairs: &[(&str, &str)]) -> V2Request {
        parse(method, path, &params(pairs), 1_000, &Limits::default()).unwrap()
    }

    fn parse_err(method: &str, path: &str, pairs: &[(&str, &str)]) -> (u16, String) {
        let e = parse(method, path, &params(pairs), 1_000, &Limits::default()).unwrap_err();
        assert_eq!(e.index, 0);
        (e.code.number(), e.cause)
    }

    fn set(value: &str, ttl: Option<u64>, prev: Preconditions) -> WriteOp {
        WriteOp::Set {
            value: value.into(),
            dir: false,
            ttl,
            refresh: false,
            prev,
        }
    }

    #[test]
    fn go_parse_bool_and_uint() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "yes", "tRUE", " true", "2"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
        assert_eq!(parse_uint("0"), Some(0));
        assert_eq!(parse_uint("007"), Some(7));
        assert_eq!(parse_uint("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+1", "-1", "1_000", "18446744073709551616", "1.5", " 1"] {
            assert_eq!(parse_uint(bad), None, "{bad}");
        }
    }

    #[test]
    fn get_and_watch() {
        assert_eq!(
            parse_ok("GET", "/message", &[]),
            V2Request::Get {
                key: "/message".into(),
                recursive: false,
                sorted: false,
                quorum: false
            }
        );
        assert_eq!(
            parse_ok(
                "HEAD",
                "/a//b/../c/",
                &[("recursive", "true"), ("sorted", "T"), ("quorum", "1")]
            ),
            V2Request::Get {
                key: "/a/c".into(),
                recursive: true,
                sorted: true,
                quorum: true
            }
        );
        assert_eq!(
            parse_ok("GET", "", &[]),
            V2Request::Get {
                key: "/".into(),
                recursive: false,
                sorted: false,
                quorum: false
            }
        );
        assert_eq!(
            parse_ok(
                "GET",
                "/dir",
                &[("wait", "true"), ("waitIndex", "7"), ("recursive", "true")]
            ),
            V2Request::Watch {
                key: "/dir".into(),
                recursive: true,
                wait_index: Some(7),
                stream: false
            }
        );
        assert_eq!(
            parse_ok(
                "GET",
                "/dir",
                &[("wait", "true"), ("waitIndex", "0"), ("stream", "true")]
            ),
            V2Request::Watch {
                key: "/dir".into(),
                recursive: false,
                wait_index: None,
                stream: true
            }
        );
    }

    #[test]
    fn writes() {
        assert_eq!(
            parse_ok("PUT", "/message", &[("value", "Hello world!")]),
            V2Request::Write(Write::new(
                "/message",
                set("Hello world!", None, Preconditions::default()),
                1_000
            ))
        );
        // The first value counts (the HTTP layer passes body parameters first, as Go does).
        assert_eq!(
            parse_ok(
                "PUT",
                "/k",
                &[("value", "body"), ("value", "query"), ("ttl", "")]
            ),
            V2Request::Write(Write::new(
                "/k",
                set("body", None, Preconditions::default()),
                1_000
            ))
        );
        let prev = Preconditions {
            prev_exist: Some(true),
            prev_value: Some("old".into()),
            prev_index: Some(4),
        };
        assert_eq!(
            parse_ok(
                "PUT",
                "/k",
                &[
                    ("value", "v"),
                    ("ttl", "5"),
                    ("prevExist", "true"),
                    ("prevValue", "old"),
                    ("prevIndex", "4")
                ]
            ),
            V2Request::Write(Write::new("/k", set("v", Some(5), prev), 1_000))
        );
        assert_eq!(
            parse_ok(
                "PUT",
                "/k",
                &[("ttl", "5"), ("refresh", "true"), ("value", "")]
            ),
            V2Request::Write(Write::new(
                "/k",
                WriteOp::Set {
                    value: String::new(),
                    dir: false,
                    ttl: Some(5),
                    refresh: true,
                    prev: Preconditions::default()
                },
                1_000
            ))
        );
        assert_eq!(
            parse_ok("POST", "/queue", &[("value", "job"), ("dir", "false")]),
            V2Request::Write(Write::new(
                "/queue",
                WriteOp::CreateInOrder {
                    value: "job".into(),
                    dir: false,
                    ttl: None
                },
                1_000
            ))
        );
        assert_eq!(
            parse_ok("DELETE", "/d", &[("recursive", "true"), ("prevIndex", "0")]),
            V2Request::Write(Write::new(
                "/d",
                WriteOp::Delete {
                    dir: false,
                    recursive: true,
                    prev: Preconditions::default()
                },
                1_000
            ))
        );
        let V2Request::Write(w) =
            parse_ok("PUT", "/k", &[("value", "v"), ("noValueOnSuccess", "true")])
        else {
            panic!("a PUT is a write")
        };
        assert!(w.no_value_on_success);
    }

    /// A method, its parameters, and the error code and cause etcd answers.
    type ErrorCase<'a> = (&'a str, &'a [(&'a str, &'a str)], (u16, &'a str));

    #[test]
    fn etcd_parameter_errors() {
        let cases: &[ErrorCase<'_>] = &[
            (
                "PUT",
                &[("prevIndex", "abc")],
                (203, r#"invalid value for "prevIndex""#),
            ),
            (
                "GET",
                &[("waitIndex", "-1")],
                (203, r#"invalid value for "waitIndex""#),
            ),
            (
                "GET",
                &[("recursive", "yes")],
                (209, r#"invalid value for "recursive""#),
            ),
            (
                "GET",
                &[("sorted", "")],
                (209, r#"invalid value for "sorted""#),
            ),
            (
                "GET",
                &[("wait", "x")],
                (209, r#"invalid value for "wait""#),
            ),
            (
                "PUT",
                &[("dir", "maybe")],
                (209, r#"invalid value for "dir""#),
            ),
            (
                "GET",
                &[("quorum", "2")],
                (209, r#"invalid value for "quorum""#),
            ),
            (
                "GET",
                &[("stream", "no")],
                (209, r#"invalid value for "stream""#),
            ),
            (
                "PUT",
                &[("wait", "true")],
                (209, r#""wait" can only be used with GET requests"#),
            ),
            (
                "HEAD",
                &[("wait", "true")],
                (209, r#""wait" can only be used with GET requests"#),
            ),
            (
                "PUT",
                &[("prevValue", "")],
                (201, r#""prevValue" cannot be empty"#),
            ),
            (
                "PUT",
                &[("noValueOnSuccess", "x")],
                (209, r#"invalid value for "noValueOnSuccess""#),
            ),
            (
                "PUT",
                &[("ttl", "abc")],
                (202, r#"invalid value for "ttl""#),
            ),
            ("PUT", &[("ttl", "-1")], (202, r#"invalid value for "ttl""#)),
            (
                "PUT",
                &[("prevExist", "maybe")],
                (209, "invalid value for prevExist"),
            ),
            (
                "PUT",
                &[("refresh", "maybe")],
                (209, "invalid value for refresh"),
            ),
            (
                "PUT",
                &[("refresh", "true"), ("ttl", "5"), ("value", "x")],
                (211, "A value was provided on a refresh"),
            ),
            ("PUT", &[("refresh", "true")], (212, "No TTL value set")),
            (
                "PUT",
                &[("refresh", "true"), ("ttl", "")],
                (212, "No TTL value set"),
            ),
        ];
        for (method, pairs, (code, cause)) in cases {
            assert_eq!(
                parse_err(method, "/k", pairs),
                (*code, (*cause).to_owned()),
                "{method} {pairs:?}"
            );
        }
        // The first failing check in etcd's order wins.
        assert_eq!(
            parse_err("PUT", "/k", &[("ttl", "x"), ("prevIndex", "y")]).0,
            203
        );
        assert_eq!(parse_err("PATCH", "/k", &[]).0, 210);
    }

    #[test]
    fn limits_are_errors_that_name_the_limit() {
        let limits = Limits {
            max_key_bytes: 8,
            max_key_depth: 2,
            max_value_bytes: 4,
            max_ttl_secs: 60,
        };
        let err = |path: &str, pairs: &[(&str, &str)]| {
            let e = parse("PUT", path, &params(pairs), 0, &limits).unwrap_err();
            assert_eq!((e.code, e.http_status()), (ErrorCode::InvalidField, 400));
            e.cause
        };
        assert_eq!(
            err("/123456789", &[]),
            "key is 10 bytes long, more than the limit of 8 bytes"
        );
        assert_eq!(
            err("/a/b/c", &[]),
            "key has 3 path components, more than the limit of 2"
        );
        assert_eq!(
            err("/k", &[("value", "12345")]),
            "value of /k is 5 bytes long, more than the limit of 4 bytes"
        );
        assert_eq!(
            err("/k", &[("ttl", "61")]),
            "ttl of 61 seconds is more than the limit of 60 seconds"
        );
        assert_eq!(
            err("/k", &[("ttl", "18446744073709551615")]),
            "ttl of 18446744073709551615 seconds is more than the limit of 60 seconds"
        );
        // At the limits is fine.
        assert!(
            parse(
                "PUT",
                "/a/b",
                &params(&[("value", "1234"), ("ttl", "60")]),
                0,
                &limits
            )
            .is_ok()
        );
        assert!(parse("GET", "/", &[], 0, &limits).is_ok());
    }
}
