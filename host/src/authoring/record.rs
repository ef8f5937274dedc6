//! `barnabas record`: the client of the admin endpoint's `GET /record`, writing what it streams
//! to a file (see [`crate::recorder`]).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::AuthoringError;

/// What `barnabas record` asks for.
pub struct Record {
    /// The proxy's admin endpoint.
    pub admin: SocketAddr,
    /// The route to record.
    pub route: String,
    /// How many messages.
    pub count: u64,
    /// At most this many bytes of lines.
    pub max_bytes: u64,
    /// Also record what the route's plugins made of each message.
    pub outputs: bool,
    /// Stop after this long even if fewer messages came.
    pub timeout: Duration,
    /// Where to write.
    pub out: PathBuf,
}

/// Records, returning how many messages were written.
pub async fn record(record: &Record) -> Result<u64, AuthoringError> {
    let url = format!(
        "http://{}/record?route={}&count={}&max_bytes={}&outputs={}&timeout_s={}",
        record.admin,
        url::form_urlencoded::byte_serialize(record.route.as_bytes()).collect::<String>(),
        record.count,
        record.max_bytes,
        record.outputs,
        record.timeout.as_secs().max(1),
    );
    let mut response = reqwest::get(&url).await.map_err(|e| {
        AuthoringError::Other(format!(
            "cannot reach the admin endpoint at {}: {e}",
            record.admin
        ))
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(AuthoringError::Other(format!(
            "the proxy refused: {status}: {}",
            body.trim()
        )));
    }
    let io = |source| AuthoringError::Io {
        path: record.out.clone(),
        source,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(&record.out).map_err(io)?);
    let mut messages = 0;
    let mut partial = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| AuthoringError::Other(format!("the recording broke off: {e}")))?
    {
        partial.extend_from_slice(&chunk);
        // Whole lines only, so an interrupted recording leaves a file that parses.
        if let Some(end) = partial.iter().rposition(|b| *b == b'\n') {
            let lines: Vec<u8> = partial.drain(..=end).collect();
            messages += lines
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
                .count() as u64;
            file.write_all(&lines).map_err(io)?;
            file.flush().map_err(io)?;
        }
    }
    Ok(messages)
}

/// The admin address of the proxy running `config` (`admin.bind`).
pub fn admin_of(config: &Path) -> Result<SocketAddr, AuthoringError> {
    let config = crate::Config::load(config).map_err(|e| AuthoringError::Other(e.to_string()))?;
    config.listeners.admin.ok_or_else(|| {
        AuthoringError::Other(format!(
            "{} has no `admin.bind`; recording needs the admin endpoint (or pass --admin ADDR)",
            config.path.display()
        ))
    })
}
