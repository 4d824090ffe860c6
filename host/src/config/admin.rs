//! `[admin]`: the admin HTTP server's address and token.

use super::problem::{Checked, broken};

/// The admin HTTP server.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Admin {
    /// A port to serve on 127.0.0.1, or `host:port` (port 0 picks one and
    /// logs it); none: no server.
    pub listen: Option<String>,
    /// The bearer token that state-changing calls (pause, resume, un-park)
    /// must carry; `SLUICE_ADMIN_TOKEN` in the environment takes precedence.
    /// None: those calls are refused.
    pub token: Option<String>,
}

/// Environment variable holding the admin token (kept out of config files).
pub const ADMIN_TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";
/// The shortest admin token accepted.
const MIN_TOKEN_LEN: usize = 16;

impl Admin {
    /// Where to listen: a bare port (or `:port`) on the loopback interface,
    /// so exposing the server beyond the machine is a deliberate choice.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        let listen = self.listen.as_deref()?;
        match listen.trim_start_matches(':').parse::<u16>() {
            Ok(port) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
            Err(_) => listen.parse().ok(),
        }
    }

    /// The token state-changing calls need: the environment's, else the
    /// config's.
    pub fn token(&self) -> Option<String> {
        std::env::var(ADMIN_TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| self.token.clone())
    }

    pub(super) fn validate(&self) -> Checked {
        if let Some(listen) = &self.listen
            && self.address().is_none()
        {
            return broken(
                "admin.listen",
                format!(
                    "{listen:?} is not a port (\"9464\", on 127.0.0.1) nor an address like \"0.0.0.0:9464\""
                ),
            );
        }
        if let Some(token) = self.token()
            && (token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace()))
        {
            return broken(
                "admin.token",
                format!(
                    "a token (here or in {ADMIN_TOKEN_ENV}) needs at least {MIN_TOKEN_LEN} characters and no spaces"
                ),
            );
        }
        Ok(())
    }
}
