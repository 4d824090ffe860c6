//! The `http` effect: requests made by the host with `reqwest`, only to hosts
//! on the route's allow-list. A URL outside the list is a permanent failure,
//! never a request. Redirects are not followed (a redirect could leave the
//! list); 2xx is success, 408, 429 and 5xx are transient, any other status
//! permanent. A handler's request may not set `Host`, the framing or the
//! hop-by-hop headers: such a request is refused (`invalid-request`), not
//! sent without them, so its author learns why.

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::EffectError;
use crate::config::HttpPolicy;
use crate::contract::{HttpMethod, HttpRequest};
use crate::wire::Reason;

/// A route's HTTP client and allow-list.
pub(crate) struct HttpClient {
    client: reqwest::Client,
    allow: Vec<(String, Option<u16>)>,
}

impl HttpClient {
    pub(crate) fn new(policy: &HttpPolicy) -> Result<HttpClient, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let allow = policy
            .allow
            .iter()
            .map(|entry| match entry.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), port.parse().ok()),
                None => (entry.to_ascii_lowercase(), None),
            })
            .collect();
        Ok(HttpClient { client, allow })
    }

    /// Checks a request against the allow-list; its URL and `host:port` if allowed.
    pub(crate) fn check(&self, request: &HttpRequest) -> Result<(Url, String), EffectError> {
        let invalid = |detail: String| EffectError::Permanent {
            reason: Reason::InvalidRequest,
            detail,
        };
        let url = Url::parse(&request.url)
            .map_err(|e| invalid(format!("bad URL {:?}: {e}", request.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("{:?} is not an http(s) URL", request.url)));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default();
        let allowed = self
            .allow
            .iter()
            .any(|(h, p)| *h == host && (p.is_none() || *p == port));
        if !allowed {
            return Err(EffectError::Permanent {
                reason: Reason::HostNotAllowed,
                detail: format!(
                    "{host}:{} is not on the route's http.allow list",
                    port.unwrap_or_default()
                ),
            });
        }
        for header in &request.headers {
            if is_hop_header(&header.name) {
                return Err(invalid(format!(
                    "header {:?} is the host's to set (the target and the framing of the request); a handler cannot",
                    header.name
                )));
            }
            if HeaderName::from_bytes(header.name.as_bytes()).is_err()
                || HeaderValue::from_bytes(&header.value).is_err()
            {
                return Err(invalid(format!(
                    "header {:?} is not a valid HTTP header (name a token, value without control characters)",
                    header.name
                )));
            }
        }
        let target = format!("{host}:{}", port.unwrap_or_default());
        Ok((url, target))
    }

    /// Makes the request; `Ok` with the status for a 2xx response.
    pub(crate) async fn send(
        &self,
        url: &Url,
        request: &HttpRequest,
        sluice_id: &str,
    ) -> Result<u16, EffectError> {
        let mut builder = self
            .client
            .request(method(request.method), url.clone())
            .header(crate::wire::ID, sluice_id)
            .body(request.body.clone());
        for h in &request.headers {
            builder = builder.header(h.name.as_str(), h.value.as_slice());
        }
        let response = builder.send().await.map_err(|e| {
            if e.is_builder() {
                EffectError::Permanent {
                    reason: Reason::InvalidRequest,
                    detail: e.to_string(),
                }
            } else {
                // Timeouts, refused or reset connections: the target's trouble.
                EffectError::Transient(crate::telemetry::with_causes(&e))
            }
        })?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(status.as_u16()),
            408 | 429 | 500..=599 => {
                Err(EffectError::Transient(format!("HTTP {status} from {url}")))
            }
            _ => Err(EffectError::Permanent {
                reason: Reason::HttpStatus,
                detail: format!("HTTP {status} from {url}"),
            }),
        }
    }
}

/// Headers the client sets, never a handler: `host` (behind an ingress
/// that routes by virtual host, a handler's own would reach a host that is
/// not on the allow-list) and the framing and hop-by-hop headers.
const HOP_HEADERS: [&str; 8] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
];

fn is_hop_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    HOP_HEADERS.contains(&name.as_str()) || name.starts_with("proxy-")
}

fn method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::HttpMethod;

    fn request(url: &str) -> HttpRequest {
        HttpRequest {
            method: HttpMethod::Post,
            url: url.into(),
            headers: vec![],
            body: vec![],
        }
    }

    fn client(allow: &[&str]) -> HttpClient {
        HttpClient::new(&HttpPolicy {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..HttpPolicy::default()
        })
        .unwrap()
    }

    fn reason(result: Result<(Url, String), EffectError>) -> &'static str {
        match result {
            Err(EffectError::Permanent { reason, .. }) => reason.as_str(),
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }

    #[test]
    fn the_allow_list_matches_host_and_port() {
        let c = client(&["api.example.com", "localhost:8080"]);
        let (_, target) = c.check(&request("https://API.example.com/x")).unwrap();
        assert_eq!(target, "api.example.com:443");
        assert!(c.check(&request("http://api.example.com:9000/x")).is_ok());
        assert!(c.check(&request("http://localhost:8080/")).is_ok());
        assert_eq!(
            reason(c.check(&request("http://localhost:8081/"))),
            "host-not-allowed"
        );
        assert_eq!(
            reason(c.check(&request("http://evil.example.com/"))),
            "host-not-allowed"
        );
        assert_eq!(
            reason(c.check(&request("ftp://api.example.com/"))),
            "invalid-request"
        );
        assert_eq!(reason(c.check(&request("not a url"))), "invalid-request");
        for header in [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "upgrade",
            "te",
            "trailer",
            "proxy-authorization",
            "Proxy-Connection",
        ] {
            let mut with = request("https://api.example.com/x");
            with.headers.push(crate::contract::Header::new(header, "x"));
            assert_eq!(reason(c.check(&with)), "invalid-request", "{header}");
        }
        let mut forged_line = request("https://api.example.com/x");
        forged_line
            .headers
            .push(crate::contract::Header::new("x-a", "1\r\nx-b: 2"));
        assert_eq!(reason(c.check(&forged_line)), "invalid-request");
        assert_eq!(
            reason(client(&[]).check(&request("http://localhost:8080/"))),
            "host-not-allowed"
        );
    }
}
