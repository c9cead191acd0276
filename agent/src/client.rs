//! The CLI's side of the control socket: HTTP/1.1 over a Unix stream.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

use crate::api::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent: no control socket at {0}. Start the agent (`systemctl start rampart`, or `rampart agent`), or pass --socket PATH"
    )]
    NoSocket(PathBuf),
    #[error("cannot reach the agent: {0} exists but nothing is listening (is the agent running?)")]
    NotListening(PathBuf),
    #[error("permission denied on {path}: run as root or as a member of group '{group}'")]
    Denied { path: PathBuf, group: String },
    #[error("{0}")]
    Api(String),
    #[error("talking to the agent at {path}: {error}")]
    Io { path: PathBuf, error: String },
}

pub struct Client {
    socket: PathBuf,
}

fn group_name(path: &Path) -> String {
    let gid = std::fs::metadata(path).map(|m| m.gid()).unwrap_or(0);
    // SAFETY: getgrgid returns null or a valid entry, read at once.
    let g = unsafe { libc::getgrgid(gid) };
    if g.is_null() {
        return gid.to_string();
    }
    // SAFETY: gr_name of a valid entry is a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr((*g).gr_name) }
        .to_string_lossy()
        .into_owned()
}

impl Client {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ClientError> {
        let io_err = |e: &dyn std::fmt::Display| ClientError::Io {
            path: self.socket.clone(),
            error: e.to_string(),
        };
        let stream = match tokio::net::UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e) => {
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => ClientError::NoSocket(self.socket.clone()),
                    std::io::ErrorKind::PermissionDenied => ClientError::Denied {
                        path: self.socket.clone(),
                        group: group_name(&self.socket),
                    },
                    std::io::ErrorKind::ConnectionRefused => {
                        ClientError::NotListening(self.socket.clone())
                    }
                    _ => io_err(&e),
                });
            }
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io_err(&e))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "rampart")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| io_err(&e))?;
        let resp = send.send_request(req).await.map_err(|e| io_err(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| io_err(&e))?
            .to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Api(msg));
        }
        Ok(bytes.to_vec())
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let b = self.request(Method::GET, path, None).await?;
        serde_json::from_slice(&b)
            .map_err(|e| ClientError::Api(format!("unexpected answer from the agent: {e}")))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Api(e.to_string()))?;
        let b = self.request(Method::POST, path, Some(body)).await?;
        serde_json::from_slice(&b)
            .map_err(|e| ClientError::Api(format!("unexpected answer from the agent: {e}")))
    }
}
