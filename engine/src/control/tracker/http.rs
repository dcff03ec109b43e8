//! HTTP and HTTPS trackers: a GET through hyper-util's legacy client (its connection pool is
//! per host), redirects followed here (at most `max_redirects`, to http/https only, a loop
//! stops at once), the body read up to [`MAX_RESPONSE_BYTES`] and parsed by the codec.
//!
//! Bounds: `connect_timeout` per TCP connect; `request_timeout` for the whole request,
//! redirects and body included; [`MAX_RESPONSE_BYTES`] of body (a `Content-Length` above it is
//! refused before reading; a body that grows past it stops being read); at most
//! [`POOL_MAX_IDLE_PER_HOST`] idle connections per host, each kept [`POOL_IDLE_TIMEOUT`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use uring_bt_proto::tracker::http as codec;

use super::{error_chain, ClientConfig};
use crate::control::tracker::MAX_RESPONSE_BYTES;
use crate::control::tracker::{AnnounceRequest, AnnounceResponse, ScrapeStats, TrackerError};

/// Idle keep-alive connections kept per tracker host.
pub const POOL_MAX_IDLE_PER_HOST: usize = 4;
/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Connector = HttpsConnector<HttpConnector>;

/// The HTTP(S) tracker client.
pub(crate) struct HttpTracker {
    client: Client<Connector, Empty<Bytes>>,
    request_timeout: Duration,
    max_redirects: u32,
    user_agent: String,
    /// Hosts (`host:port`) seen closing a kept-alive connection before answering the next
    /// request on it: they get `Connection: close`, so no connection to them is pooled.
    /// At most [`MAX_NO_KEEPALIVE_HOSTS`].
    no_keepalive: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Most hosts remembered as closing kept-alive connections.
pub const MAX_NO_KEEPALIVE_HOSTS: usize = 1024;

impl HttpTracker {
    pub(crate) fn new(cfg: &ClientConfig) -> std::io::Result<HttpTracker> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_local_address(cfg.local_ip);
        // The TLS layer decides per URL; the inner connector must accept https URLs too.
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(HttpTracker {
            client,
            request_timeout: cfg.request_timeout,
            max_redirects: cfg.max_redirects,
            user_agent: cfg.user_agent.clone(),
            no_keepalive: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    fn host_key(uri: &hyper::Uri) -> String {
        uri.authority()
            .map_or_else(String::new, |a| a.as_str().to_ascii_lowercase())
    }

    fn keepalive(&self, uri: &hyper::Uri) -> bool {
        self.no_keepalive
            .lock()
            .map_or(true, |set| !set.contains(&Self::host_key(uri)))
    }

    fn forget_keepalive(&self, uri: &hyper::Uri) {
        if let Ok(mut set) = self.no_keepalive.lock() {
            if set.len() < MAX_NO_KEEPALIVE_HOSTS {
                set.insert(Self::host_key(uri));
            }
        }
    }

    pub(crate) async fn announce(
        &self,
        base: &str,
        req: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        let url = codec::announce_url(base, req)?;
        let body = self.get(url).await?;
        codec::parse_announce(&body)
    }

    pub(crate) async fn scrape(
        &self,
        announce: &str,
        info_hash: [u8; 20],
    ) -> Result<ScrapeStats, TrackerError> {
        let url = codec::scrape_url(announce, &[info_hash]).ok_or_else(|| {
            TrackerError::BadUrl(format!("{announce}: this tracker has no scrape URL"))
        })?;
        let body = self.get(url).await?;
        codec::parse_scrape(&body, &info_hash)
    }

    /// GETs `url` and returns its body, within `request_timeout` in all.
    async fn get(&self, url: String) -> Result<Vec<u8>, TrackerError> {
        match tokio::time::timeout(self.request_timeout, self.get_following(url)).await {
            Ok(r) => r,
            Err(_) => Err(TrackerError::Transport(format!(
                "no complete response within {:?}",
                self.request_timeout
            ))),
        }
    }

    async fn get_following(&self, url: String) -> Result<Vec<u8>, TrackerError> {
        let mut uri = parse_http_uri(&url)?;
        let mut visited: Vec<String> = vec![uri.to_string()];
        let mut redirects = 0u32;
        loop {
            let make = || {
                let mut b = Request::get(uri.clone()).header(USER_AGENT, self.user_agent.as_str());
                if !self.keepalive(&uri) {
                    b = b.header(hyper::header::CONNECTION, "close");
                }
                b.body(Empty::<Bytes>::new())
                    .map_err(|e| TrackerError::BadUrl(format!("{uri}: {e}")))
            };
            let mut res = self.client.request(make()?).await;
            // A tracker may close a kept-alive connection right after its answer without saying
            // so (opentracker does, after every response): a request sent on it in the meantime
            // fails with an incomplete message. A GET is idempotent: try once more, on a new
            // connection (the pool drops the closed one; each of its idle connections may be
            // stale, so at most that many more tries).
            for _ in 0..POOL_MAX_IDLE_PER_HOST {
                if !res.as_ref().err().is_some_and(closed_before_answer) {
                    break;
                }
                // This host closes kept-alive connections: stop pooling them.
                self.forget_keepalive(&uri);
                res = self.client.request(make()?).await;
            }
            let resp = res.map_err(|e| {
                let what = if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                let mut chain = String::new();
                if let Some(src) = std::error::Error::source(&e) {
                    chain = error_chain(src);
                }
                if chain.is_empty() {
                    chain = e.to_string();
                }
                TrackerError::Transport(format!("{what}: {chain}"))
            })?;
            let status = resp.status();
            if is_redirect(status) {
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        TrackerError::Transport(format!(
                            "HTTP {} redirect without a usable Location",
                            status.as_u16()
                        ))
                    })?;
                let next = resolve_location(&uri, loc)?;
                if redirects >= self.max_redirects {
                    return Err(TrackerError::Transport(format!(
                        "too many redirects (more than {})",
                        self.max_redirects
                    )));
                }
                let next_uri = parse_http_uri(&next)?;
                let key = next_uri.to_string();
                if visited.contains(&key) {
                    return Err(TrackerError::Transport(format!(
                        "redirect loop: {uri} redirects back to {key}"
                    )));
                }
                visited.push(key);
                redirects += 1;
                uri = next_uri;
                continue;
            }
            if !status.is_success() {
                return Err(TrackerError::Transport(
                    format!(
                        "HTTP {} {}",
                        status.as_u16(),
                        status.canonical_reason().unwrap_or("")
                    )
                    .trim_end()
                    .to_string(),
                ));
            }
            if let Some(len) = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                if len > MAX_RESPONSE_BYTES as u64 {
                    return Err(TrackerError::TooLarge(MAX_RESPONSE_BYTES));
                }
            }
            return read_capped(resp.into_body(), MAX_RESPONSE_BYTES).await;
        }
    }
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// `url` as a URI with an http or https scheme and a host.
fn parse_http_uri(url: &str) -> Result<Uri, TrackerError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| TrackerError::BadUrl(format!("{url}: {e}")))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(TrackerError::BadUrl(format!(
                "{url}: not an http or https URL"
            )))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(TrackerError::BadUrl(format!("{url}: no host")));
    }
    Ok(uri)
}

/// The absolute URL a `Location` names, relative to `base` (RFC 3986 references: absolute,
/// network-path `//host/..`, absolute-path `/..`, query-only `?..`, or relative path). Only
/// http and https targets are accepted.
fn resolve_location(base: &Uri, loc: &str) -> Result<String, TrackerError> {
    let loc = loc.trim();
    if loc.is_empty() {
        return Err(TrackerError::Transport(
            "redirect to an empty Location".into(),
        ));
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(target_scheme) = reference_scheme(loc) {
        let s = target_scheme.to_ascii_lowercase();
        if s != "http" && s != "https" {
            return Err(TrackerError::Transport(format!(
                "redirect to a non-HTTP URL: {loc}"
            )));
        }
        return Ok(loc.to_string());
    }
    if loc.starts_with("//") {
        return Ok(format!("{scheme}:{loc}"));
    }
    if loc.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{loc}"));
    }
    let path = base.path();
    if loc.starts_with('?') {
        return Ok(format!("{scheme}://{authority}{path}{loc}"));
    }
    let dir = match path.rfind('/') {
        Some(i) => &path[..=i],
        None => "/",
    };
    Ok(format!("{scheme}://{authority}{dir}{loc}"))
}

/// The scheme of an absolute reference (`scheme ":" ...`), if `r` has one.
fn reference_scheme(r: &str) -> Option<&str> {
    let colon = r.find(':')?;
    let s = &r[..colon];
    let mut chars = s.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.') {
        Some(s)
    } else {
        None
    }
}

/// Reads `body` to its end, keeping at most `cap` bytes: one byte more is
/// [`TrackerError::TooLarge`] and nothing more is read (the connection is dropped).
/// The connection the request went out on was closed by the server before it answered: an
/// incomplete message, a cancelled request, or a reset / broken pipe on writing or reading it.
/// Never a connect error (a tracker that refuses connections is not retried here).
fn closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return false;
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() {
                return true;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
            return matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted);
        }
        src = s.source();
    }
    false
}

async fn read_capped(mut body: Incoming, cap: usize) -> Result<Vec<u8>, TrackerError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            TrackerError::Transport(format!("reading the response: {}", error_chain(&e)))
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > cap {
                return Err(TrackerError::TooLarge(cap));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let base: Uri = "http://t.example:8080/a/announce?x=1".parse().unwrap();
        assert_eq!(
            resolve_location(&base, "https://o.example/announce").unwrap(),
            "https://o.example/announce"
        );
        assert_eq!(
            resolve_location(&base, "//o.example/ann").unwrap(),
            "http://o.example/ann"
        );
        assert_eq!(
            resolve_location(&base, "/b/announce?y=2").unwrap(),
            "http://t.example:8080/b/announce?y=2"
        );
        assert_eq!(
            resolve_location(&base, "other?z").unwrap(),
            "http://t.example:8080/a/other?z"
        );
        assert_eq!(
            resolve_location(&base, "?q=1").unwrap(),
            "http://t.example:8080/a/announce?q=1"
        );
        for bad in ["magnet:?xt=urn:btih:00", "ftp://x/y", "udp://x:1", ""] {
            assert!(
                matches!(
                    resolve_location(&base, bad),
                    Err(TrackerError::Transport(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn uris() {
        assert!(parse_http_uri("http://127.0.0.1:1/announce").is_ok());
        assert!(parse_http_uri("HTTPS://h/announce").is_ok());
        assert!(matches!(
            parse_http_uri("udp://h:1"),
            Err(TrackerError::BadUrl(_))
        ));
        assert!(matches!(
            parse_http_uri("http:///x"),
            Err(TrackerError::BadUrl(_))
        ));
    }
}
