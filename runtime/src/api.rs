//! The HTTP API (`/api/v1`), over the operations layer. Served by `duplex serve` on TCP (TLS
//! unless on loopback) and by both `serve` and `run` on a local socket that only their user can
//! open, which the CLI uses while an instance holds the state.
//!
//! Every request is authenticated and authorised before it does anything: no token is a 401, a
//! token whose role does not allow the route a 403 ([`ROUTES`] says which role each needs).
//! Every call that changes something is written to the audit log with its outcome.

pub mod client;
pub mod metrics;
mod server;

pub use server::{serve, Listeners, Peer, TcpSpec};

use crate::state::Role;

/// The OpenAPI 3.1 document of this API, served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("api/openapi.json");

/// A route: method, path (with `{name}` segments), and the least role that may call it
/// (`None`: anyone, without a token).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub role: Option<Role>,
}

const fn route(method: &'static str, path: &'static str, role: Option<Role>) -> Route {
    Route { method, path, role }
}

const VIEWER: Option<Role> = Some(Role::Viewer);
const OPERATOR: Option<Role> = Some(Role::Operator);
const ADMIN: Option<Role> = Some(Role::Admin);

/// Every route the server answers. A test checks that these are the OpenAPI document's.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", None),
    route("GET", "/readyz", None),
    route("GET", "/metrics", VIEWER),
    route("GET", "/api/v1/openapi.json", None),
    route("POST", "/hooks/{connection}", None),
    route("GET", "/api/v1/syncs", VIEWER),
    route("GET", "/api/v1/syncs/{sync}", VIEWER),
    route("GET", "/api/v1/syncs/{sync}/history", VIEWER),
    route("POST", "/api/v1/syncs/{sync}/pause", OPERATOR),
    route("POST", "/api/v1/syncs/{sync}/resume", OPERATOR),
    route("POST", "/api/v1/syncs/{sync}/run", OPERATOR),
    route("POST", "/api/v1/syncs/{sync}/dry-run", OPERATOR),
    route("GET", "/api/v1/activity", VIEWER),
    route("GET", "/api/v1/conflicts", VIEWER),
    route("GET", "/api/v1/conflicts/{id}", VIEWER),
    route("POST", "/api/v1/conflicts/{id}/resolve", OPERATOR),
    route("GET", "/api/v1/rejected", VIEWER),
    route("POST", "/api/v1/rejected/retry", OPERATOR),
    route("GET", "/api/v1/plugins", VIEWER),
    route("POST", "/api/v1/plugins/{slot}", ADMIN),
    route("GET", "/api/v1/plugins/{slot}/versions", VIEWER),
    route("POST", "/api/v1/plugins/{slot}/rollback", ADMIN),
    route("GET", "/api/v1/config", OPERATOR),
    route("POST", "/api/v1/config/validate", ADMIN),
    route("POST", "/api/v1/config/apply", ADMIN),
    route("GET", "/api/v1/audit", ADMIN),
    route("GET", "/api/v1/tokens", ADMIN),
    route("POST", "/api/v1/tokens", ADMIN),
    route("DELETE", "/api/v1/tokens/{id}", ADMIN),
];

/// The route a request is for, and its `{name}` segments' values.
pub fn find_route(method: &str, path: &str) -> Result<(&'static Route, Vec<String>), RouteMiss> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_known = false;
    for r in ROUTES {
        let pattern: Vec<&str> = r.path.split('/').collect();
        if pattern.len() != segments.len() {
            continue;
        }
        let mut params = Vec::new();
        let fits = pattern.iter().zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                params.push(percent_decode(s));
                !s.is_empty()
            } else {
                p == s
            }
        });
        if fits {
            if r.method == method {
                return Ok((r, params));
            }
            path_known = true;
        }
    }
    Err(if path_known {
        RouteMiss::Method
    } else {
        RouteMiss::Path
    })
}

/// Why no route fits.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMiss {
    Path,
    Method,
}

/// `%XX` escapes decoded (a query's `+` is the caller's: see `parse_query`); bad escapes are
/// kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%`-escapes what a path segment or query value may not hold as it is.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("the document is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let role = op.get("x-duplex-role").and_then(|r| r.as_str());
                documented.push((method.to_uppercase(), path.clone(), role.map(str::to_owned)));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String, Option<String>)> = ROUTES
            .iter()
            .map(|r| {
                (
                    r.method.to_owned(),
                    r.path.to_owned(),
                    r.role.map(|r| r.as_str().to_owned()),
                )
            })
            .collect();
        served.sort();
        assert_eq!(documented, served, "the document and the routes differ");
    }

    #[test]
    fn routes_are_found_with_their_parameters_and_misses_say_which_part_missed() {
        let (r, params) = find_route("POST", "/api/v1/syncs/people%20x/pause").expect("found");
        assert_eq!(r.path, "/api/v1/syncs/{sync}/pause");
        assert_eq!(params, ["people x"]);
        assert_eq!(
            find_route("DELETE", "/api/v1/syncs").err(),
            Some(RouteMiss::Method)
        );
        assert_eq!(
            find_route("GET", "/api/v2/syncs").err(),
            Some(RouteMiss::Path)
        );
        assert_eq!(
            find_route("GET", "/api/v1/syncs//pause").err(),
            Some(RouteMiss::Path)
        );
        assert_eq!(percent_decode(&percent_encode("a/b c%é")), "a/b c%é");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
