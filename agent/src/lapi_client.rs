//! HTTP clients for the CrowdSec local API. They follow no redirect (keys
//! and tokens travel in headers) and ignore the proxy environment; they
//! trust `ca_file` besides the system's roots, and present a client
//! certificate where one is configured. Built once per set of files.
use std::{path::PathBuf, sync::Mutex};

/// What a client is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientSpec {
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM).
    pub identity: Option<(PathBuf, PathBuf)>,
}

fn read(what: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

pub fn build(spec: &ClientSpec, user_agent: &str) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .user_agent(user_agent)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        // A client identity needs the TLS backend named.
        .use_rustls_tls();
    if let Some(ca) = &spec.ca_file {
        let cert = reqwest::Certificate::from_pem(&read("ca_file", ca)?)
            .map_err(|e| format!("ca_file {} is not a PEM certificate: {e}", ca.display()))?;
        b = b.add_root_certificate(cert);
    }
    if let Some((cert, key)) = &spec.identity {
        let mut pem = read("tls_cert_file", cert)?;
        pem.push(b'\n');
        pem.extend(read("tls_key_file", key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            format!(
                "tls_cert_file {} and tls_key_file {} are not a PEM certificate and key: {e}",
                cert.display(),
                key.display()
            )
        })?;
        b = b.identity(id);
    }
    b.build().map_err(|e| {
        format!(
            "cannot build the HTTP client: {}",
            crate::feed::error_chain(&e)
        )
    })
}

/// The client for the current spec; a changed spec builds a new one.
pub struct ClientCache {
    user_agent: &'static str,
    cached: Mutex<Option<(ClientSpec, reqwest::Client)>>,
}

impl ClientCache {
    pub fn new(user_agent: &'static str) -> Self {
        Self {
            user_agent,
            cached: Mutex::new(None),
        }
    }

    pub fn get(&self, spec: &ClientSpec) -> Result<reqwest::Client, String> {
        let mut c = crate::sync::lock(&self.cached);
        if let Some((s, client)) = c.as_ref()
            && s == spec
        {
            return Ok(client.clone());
        }
        let client = build(spec, self.user_agent)?;
        *c = Some((spec.clone(), client.clone()));
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_bad_files_are_named() {
        let missing = ClientSpec {
            ca_file: Some("/nonexistent/ca.pem".into()),
            identity: None,
        };
        let e = build(&missing, "t").unwrap_err();
        assert!(e.contains("cannot read ca_file /nonexistent/ca.pem"), "{e}");
        let junk = std::env::temp_dir().join(format!("rampart-junk-{}.pem", std::process::id()));
        std::fs::write(&junk, "not a certificate").unwrap();
        let bad = ClientSpec {
            ca_file: None,
            identity: Some((junk.clone(), junk.clone())),
        };
        let e = build(&bad, "t").unwrap_err();
        assert!(e.contains("are not a PEM certificate and key"), "{e}");
        let _ = std::fs::remove_file(junk);
    }
}
