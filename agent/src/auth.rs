//! Who may use the client API, and for what: a bearer token per user (`Authorization: Bearer T`,
//! or Basic with the token as the password, which is what `etcdctl --username user:T` sends), or
//! a client certificate from the API's CA (its common name is the user). Two roles: `read`
//! (GET and HEAD) and `write` (everything).
//!
//! Authentication is on when `[api]` has users or TLS; then a request without credentials gets
//! 401 and a read user's write gets 403, both with etcd v2's JSON error body. `/version` and
//! `/health` stay open to GET, as in etcd, for load balancers and probes. A certificate user
//! listed in `[api] users` has that user's role; one that is not listed has `write` when no users
//! are configured (the CA is then the access list, like etcd's `--client-cert-auth`) and is
//! refused otherwise. Tokens are stored as SHA-256 digests only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tls::Remote;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Role {
    /// GET and HEAD.
    Read,
    /// Every method.
    Write,
}

/// A user of `[[api.users]]` or the tokens file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct User {
    /// The name (also a client certificate's common name).
    pub(crate) name: String,
    /// SHA-256 of the token, 64 hex digits (`printf %s TOKEN | sha256sum`).
    pub(crate) token_sha256: String,
    /// `read` or `write`.
    pub(crate) role: Role,
}

/// Decodes 64 hex digits.
pub(crate) fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The authenticated identity of a request (in its extensions once the check passed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user's name.
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: Role,
}

/// The client API's access rules.
#[derive(Debug)]
pub(crate) struct Auth {
    users: Vec<(User, [u8; 32])>,
    required: bool,
}

/// A refused request: the status and why.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    status: StatusCode,
    cause: String,
}

impl Auth {
    /// Rules over `users` (validated by the config); `tls` says the API serves TLS (so client
    /// certificates may authenticate, and anonymous requests are refused).
    pub(crate) fn new(users: &[User], tls: bool) -> Arc<Auth> {
        let users: Vec<_> = users
            .iter()
            .filter_map(|u| digest_from_hex(&u.token_sha256).map(|d| (u.clone(), d)))
            .collect();
        Arc::new(Auth {
            required: tls || !users.is_empty(),
            users,
        })
    }

    /// Whether requests need credentials.
    #[cfg(test)]
    fn required(&self) -> bool {
        self.required
    }

    fn by_token(&self, token: &str) -> Option<&User> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every user is compared, in constant time per digest.
        let mut found = None;
        for (user, d) in &self.users {
            let diff = d.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(user);
            }
        }
        found
    }

    /// Who sent a request with `headers` over a connection from `remote`; `None` when it came
    /// without credentials.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        remote: &Remote,
    ) -> Result<Option<Identity>, Refusal> {
        let unauthorized = |cause: &str| Refusal {
            status: StatusCode::UNAUTHORIZED,
            cause: cause.to_string(),
        };
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let value = value
                .to_str()
                .map_err(|_| unauthorized("the Authorization header is not text"))?;
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            let (claimed, token) = if scheme.eq_ignore_ascii_case("bearer") {
                (None, rest.trim().to_string())
            } else if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()
                    .and_then(|d| String::from_utf8(d).ok())
                    .ok_or_else(|| {
                        unauthorized("the Basic credentials are not base64 of user:token")
                    })?;
                let (user, token) = decoded
                    .split_once(':')
                    .ok_or_else(|| unauthorized("the Basic credentials are not user:token"))?;
                (Some(user.to_string()), token.to_string())
            } else {
                return Err(unauthorized(&format!(
                    "the Authorization scheme {scheme:?} is not Bearer or Basic"
                )));
            };
            let user = self
                .by_token(&token)
                .ok_or_else(|| unauthorized("the token is not known"))?;
            if let Some(claimed) = claimed.filter(|c| !c.is_empty())
                && claimed != user.name
            {
                return Err(unauthorized(&format!(
                    "the token is not user {claimed:?}'s"
                )));
            }
            return Ok(Some(Identity {
                name: user.name.clone(),
                role: user.role,
            }));
        }
        if let Some(cn) = &remote.user {
            return match self.users.iter().find(|(u, _)| &u.name == cn) {
                Some((u, _)) => Ok(Some(Identity {
                    name: cn.clone(),
                    role: u.role,
                })),
                None if self.users.is_empty() => Ok(Some(Identity {
                    name: cn.clone(),
                    role: Role::Write,
                })),
                None => Err(Refusal {
                    status: StatusCode::FORBIDDEN,
                    cause: format!(
                        "client certificate user {cn:?} is not in [api] users: add it with a role"
                    ),
                }),
            };
        }
        Ok(None)
    }

    /// The check for one request: `Ok(None)` lets an anonymous request through (auth off, or
    /// an open path).
    fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        remote: &Remote,
    ) -> Result<Option<Identity>, Refusal> {
        if !self.required {
            return Ok(None);
        }
        let reads = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let identity = match self.authenticate(headers, remote)? {
            Some(i) => i,
            None if reads && OPEN.contains(&path) => return Ok(None),
            None => {
                return Err(Refusal {
                    status: StatusCode::UNAUTHORIZED,
                    cause: "no credentials: send Authorization: Bearer TOKEN, Basic user:TOKEN, or a client certificate".into(),
                });
            }
        };
        if !reads && identity.role == Role::Read {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                cause: format!(
                    "user {:?} has the read role: {method} needs write",
                    identity.name
                ),
            });
        }
        Ok(Some(identity))
    }
}

/// How much of a refused request's body is read before answering.
const DRAIN_LIMIT: usize = 64 * 1024;
/// How long reading it may take.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);

/// Paths anyone may GET, as in etcd.
const OPEN: &[&str] = &["/version", "/health"];

/// The middleware on every client API route: puts the remote address where handlers look for
/// it (`ConnectInfo<SocketAddr>`), then authenticates and authorizes.
pub(crate) async fn layer(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let remote = req
        .extensions()
        .get::<ConnectInfo<Remote>>()
        .map(|c| c.0.clone());
    let Some(remote) = remote else {
        return refuse(&Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            cause: "the connection's address is unknown".into(),
        });
    };
    req.extensions_mut()
        .insert(ConnectInfo::<SocketAddr>(remote.addr));
    match auth.check(req.method(), req.uri().path(), req.headers(), &remote) {
        Ok(identity) => {
            if let Some(identity) = identity {
                req.extensions_mut().insert(identity);
            }
            next.run(req).await
        }
        Err(r) => {
            // Read what the client is still sending (bounded): closing a connection with
            // unread data resets it, and the client may never see the refusal.
            tracing::debug!(
                remote = %remote.addr,
                "client API: {} {}: {}",
                req.method(),
                req.uri().path(),
                r.cause
            );
            let drain = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT);
            let _ = tokio::time::timeout(DRAIN_DEADLINE, drain).await;
            refuse(&r)
        }
    }
}

/// etcd v2's error body (errorCode 110, "The request requires user authentication").
fn refuse(r: &Refusal) -> Response {
    let body = serde_json::json!({
        "errorCode": 110,
        "message": "The request requires user authentication",
        "cause": r.cause,
        "index": 0,
    });
    let mut resp = (
        r.status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        format!("{body}\n"),
    )
        .into_response();
    if r.status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"flotilla\", Bearer realm=\"flotilla\""),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(token: &str) -> String {
        Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn users() -> Vec<User> {
        vec![
            User {
                name: "reader".into(),
                token_sha256: sha("r-token"),
                role: Role::Read,
            },
            User {
                name: "writer".into(),
                token_sha256: sha("w-token"),
                role: Role::Write,
            },
        ]
    }

    fn remote(user: Option<&str>) -> Remote {
        Remote {
            addr: "127.0.0.1:5000".parse().unwrap(),
            user: user.map(str::to_string),
        }
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    fn basic(user: &str, token: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{token}"))
        )
    }

    fn status(r: Result<Option<Identity>, Refusal>) -> u16 {
        match r {
            Ok(_) => 200,
            Err(r) => r.status.as_u16(),
        }
    }

    #[test]
    fn without_users_or_tls_everything_is_open() {
        let auth = Auth::new(&[], false);
        assert!(!auth.required());
        let r = auth.check(&Method::PUT, "/v2/keys/a", &HeaderMap::new(), &remote(None));
        assert_eq!(r, Ok(None));
    }

    #[test]
    fn tokens_and_roles() {
        let auth = Auth::new(&users(), false);
        let put = |h: &HeaderMap| status(auth.check(&Method::PUT, "/v2/keys/a", h, &remote(None)));
        let get = |h: &HeaderMap| status(auth.check(&Method::GET, "/v2/keys/a", h, &remote(None)));
        assert_eq!(get(&HeaderMap::new()), 401);
        assert_eq!(put(&HeaderMap::new()), 401);
        assert_eq!(get(&headers("Bearer r-token")), 200);
        assert_eq!(put(&headers("Bearer r-token")), 403);
        assert_eq!(put(&headers("Bearer w-token")), 200);
        assert_eq!(put(&headers("Bearer nope")), 401);
        assert_eq!(get(&headers(&basic("reader", "r-token"))), 200);
        assert_eq!(put(&headers(&basic("writer", "w-token"))), 200);
        assert_eq!(put(&headers(&basic("reader", "w-token"))), 401);
        assert_eq!(put(&headers("Digest x")), 401);
        let open = auth.check(&Method::GET, "/health", &HeaderMap::new(), &remote(None));
        assert_eq!(open, Ok(None));
        assert_eq!(
            status(auth.check(&Method::PUT, "/health", &HeaderMap::new(), &remote(None))),
            401
        );
    }

    #[test]
    fn client_certificates_name_the_user() {
        // TLS without users: any certificate from the CA writes; no certificate is anonymous.
        let auth = Auth::new(&[], true);
        assert!(auth.required());
        let id = auth.check(
            &Method::PUT,
            "/v2/keys/a",
            &HeaderMap::new(),
            &remote(Some("ops")),
        );
        assert_eq!(
            id,
            Ok(Some(Identity {
                name: "ops".into(),
                role: Role::Write
            }))
        );
        assert_eq!(
            status(auth.check(&Method::GET, "/v2/keys/a", &HeaderMap::new(), &remote(None))),
            401
        );
        // With users: a listed certificate user has its role, an unlisted one is refused.
        let auth = Auth::new(&users(), true);
        let cert = |u| {
            status(auth.check(
                &Method::PUT,
                "/v2/keys/a",
                &HeaderMap::new(),
                &remote(Some(u)),
            ))
        };
        assert_eq!(cert("writer"), 200);
        assert_eq!(cert("reader"), 403);
        assert_eq!(cert("stranger"), 403);
    }

    #[test]
    fn digests_are_64_hex_digits() {
        assert!(digest_from_hex(&sha("x")).is_some());
        assert!(digest_from_hex("abc").is_none());
        assert!(digest_from_hex(&"g".repeat(64)).is_none());
    }
}
