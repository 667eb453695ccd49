//! Where a target offers WebTransport: its `GET /wt/cert-hash` (the URL, and the
//! certificate's hash when it is short-lived and self-signed), asked once per target.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wtransport::tls::Sha256Digest;

#[derive(Clone)]
pub struct Offered {
    /// `https://HOST:PORT/wt`.
    pub url: String,
    pub sha256: Option<Sha256Digest>,
}

#[derive(serde::Deserialize)]
struct Reply {
    url: Option<String>,
    port: u16,
    sha256: Option<String>,
}

static ASKED: Mutex<Option<HashMap<url::Url, Offered>>> = Mutex::new(None);

pub async fn webtransport(target: &url::Url) -> anyhow::Result<Offered> {
    if let Some(offered) = ASKED.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_default().get(target) {
        return Ok(offered.clone());
    }
    let offered = ask(target).await.with_context(|| format!("asking {target} where its WebTransport is"))?;
    ASKED.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_default().insert(target.clone(), offered.clone());
    Ok(offered)
}

async fn ask(target: &url::Url) -> anyhow::Result<Offered> {
    if !matches!(target.scheme(), "http" | "ws") {
        bail!("--mode webtransport reads GET /wt/cert-hash over plain HTTP: give an http:// target");
    }
    let host = target.host_str().context("the target has no host")?;
    let port = target.port_or_known_default().unwrap_or(80);
    let mut tcp = tokio::net::TcpStream::connect((host, port)).await.context("connecting")?;
    let request = format!("GET /wt/cert-hash HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.context("sending GET /wt/cert-hash")?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.context("reading the answer to GET /wt/cert-hash")?;
    let (head, body) = response.split_once("\r\n\r\n").context("an HTTP answer without a body")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /wt/cert-hash answered {}", head.lines().next().unwrap_or_default());
    }
    let reply: Reply = serde_json::from_str(body).with_context(|| format!("GET /wt/cert-hash answered {body:?}"))?;
    let sha256 = match reply.sha256 {
        Some(hex) => Some(digest(&hex).with_context(|| format!("the offered sha256 {hex:?}"))?),
        None => None,
    };
    let url = reply.url.unwrap_or_else(|| format!("https://{host}:{}/wt", reply.port));
    Ok(Offered { url, sha256 })
}

fn digest(hex: &str) -> anyhow::Result<Sha256Digest> {
    anyhow::ensure!(hex.len() == 64 && hex.is_ascii(), "not 64 hex digits");
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(Sha256Digest::new(bytes))
}
