//! Who may call what. With API keys configured, every `/v1` route (reads
//! included) and `/metrics` need one, unless a flag makes predictions or
//! metrics public. Without keys the server is for the local machine: it
//! answers only to loopback host names (a DNS-rebinding page cannot reach
//! it under its own name) and refuses state-changing requests that a
//! browser sends on behalf of a foreign web page (Origin check).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::SharedState;
use crate::config::ServeConfig;
use crate::error::ApiError;

/// The access rules, fixed at start.
pub struct Access {
    keys: Vec<Vec<u8>>,
    public_predict: bool,
    public_metrics: bool,
    /// None: any host name.
    hosts: Option<Vec<String>>,
    origins: Vec<String>,
}

/// Host names a keyless server always answers to.
const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "::1", "[::1]"];

impl Access {
    pub fn from_config(cfg: &ServeConfig, bound: std::net::SocketAddr) -> Result<Self, String> {
        let mut keys: Vec<String> =
            cfg.api_key.iter().flat_map(|k| k.split(',')).map(|k| k.trim().to_string()).collect();
        if let Some(path) = &cfg.api_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("API key file {}: {e}", path.display()))?;
            keys.extend(text.lines().map(str::trim).filter(|l| !l.starts_with('#')).map(str::to_string));
        }
        keys.retain(|k| !k.is_empty());
        let hosts = if cfg.allowed_hosts.iter().any(|h| h.trim() == "*") {
            None
        } else {
            let mut h: Vec<String> = LOOPBACK_HOSTS.iter().map(|s| s.to_string()).collect();
            h.extend(cfg.allowed_hosts.iter().map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()));
            if !bound.ip().is_unspecified() {
                h.push(bound.ip().to_string());
            }
            Some(h)
        };
        let origins = cfg.cors_origins.iter().map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).collect();
        Ok(Self { keys: keys.into_iter().map(String::into_bytes).collect(), public_predict: cfg.public_predict, public_metrics: cfg.public_metrics, hosts, origins })
    }

    pub fn keyed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Compares against every key without an early exit, so timing reveals
    /// neither a key's prefix nor which key matched.
    fn key_matches(&self, given: &[u8]) -> bool {
        self.keys.iter().fold(false, |ok, k| ok | constant_time_eq(given, k))
    }

    /// Whether `path` needs a key (when keys are set).
    fn protected(&self, path: &str) -> bool {
        if path == "/metrics" {
            return !self.public_metrics;
        }
        if let Some(rest) = path.strip_prefix("/v1/") {
            let predict = rest == "predict" || (rest.starts_with("models/") && rest.ends_with("/predict"));
            return !(predict && self.public_predict);
        }
        // The page's files, /health, /ready, /docs and /openapi.json hold no data.
        false
    }

    fn host_allowed(&self, headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
        let Some(hosts) = &self.hosts else { return true };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
        // HTTP/1.0 clients may send no Host; browsers always do.
        let Some(host) = host else { return true };
        let name = strip_port(host).to_ascii_lowercase();
        hosts.iter().any(|h| *h == name)
    }

    /// A cross-site browser request: an Origin that is neither the server's
    /// own (same scheme-less host and port as Host) nor configured.
    fn foreign_origin(&self, headers: &HeaderMap) -> Option<String> {
        let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null").to_ascii_lowercase();
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
        let own = origin.split_once("://").is_some_and(|(_, h)| h == host);
        (!own && !self.origins.contains(&origin)).then_some(origin)
    }

    pub fn cors_origins(&self) -> &[String] {
        &self.origins
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port -> v6
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key a request carries: `Authorization: Bearer <key>`, or (live job
/// events only, since a browser's EventSource cannot send headers) the
/// `access_token` query parameter.
fn given_key(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        return Some(v.strip_prefix("Bearer ").unwrap_or("").to_string());
    }
    let path = req.uri().path();
    if req.method() == Method::GET && path.starts_with("/v1/jobs/") && path.ends_with("/events") {
        let query = req.uri().query()?;
        return url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned());
    }
    None
}

/// The middleware in front of every route.
pub async fn guard(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let access = &st.access;
    if access.keyed() {
        // CORS preflights carry no credentials; the CORS layer answers them.
        if access.protected(req.uri().path()) && req.method() != Method::OPTIONS {
            match given_key(&req) {
                Some(k) if access.key_matches(k.as_bytes()) => {}
                Some(_) => return ApiError::unauthorized("wrong API key").into_response(),
                None => {
                    return ApiError::unauthorized("this route needs `Authorization: Bearer <API key>`").into_response()
                }
            }
        }
    } else {
        if !access.host_allowed(req.headers(), req.uri()) {
            return ApiError::forbidden(
                "host_not_allowed",
                "this server has no API key and answers only to the host names it is configured for \
                 (localhost by default; see --allowed-hosts)",
            )
            .into_response();
        }
        let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if !safe {
            if let Some(origin) = access.foreign_origin(req.headers()) {
                return ApiError::forbidden(
                    "origin_not_allowed",
                    format!("requests from the web origin {origin} are refused (see --cors-origins)"),
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("localhost:8080"), "localhost");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("example.com"), "example.com");
    }

    #[test]
    fn predict_is_public_only_by_flag() {
        let mut cfg = ServeConfig::for_data_dir("/tmp/x");
        cfg.api_key = Some("k1-secret-a, k2-secret-b".into());
        let bound = "127.0.0.1:0".parse().unwrap();
        let a = Access::from_config(&cfg, bound).unwrap();
        assert!(a.keyed());
        assert!(a.key_matches(b"k1-secret-a") && a.key_matches(b"k2-secret-b"));
        assert!(!a.key_matches(b"k1-secret") && !a.key_matches(b""));
        for p in ["/v1/datasets", "/v1/predict", "/v1/models/x/predict", "/metrics"] {
            assert!(a.protected(p), "{p}");
        }
        for p in ["/health", "/ready", "/openapi.json", "/docs", "/", "/app.js"] {
            assert!(!a.protected(p), "{p}");
        }
        cfg.public_predict = true;
        cfg.public_metrics = true;
        let a = Access::from_config(&cfg, bound).unwrap();
        assert!(!a.protected("/v1/predict") && !a.protected("/v1/models/x/predict") && !a.protected("/metrics"));
        assert!(a.protected("/v1/models/x") && a.protected("/v1/jobs"));
    }
}
