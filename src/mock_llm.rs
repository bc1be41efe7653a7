//! `fleet mock-llm`: a scripted OpenAI-compatible chat-completions server
//! (DESIGN.md "Scripted LLM") for tests, benchmarks and the offline quickstart.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A running scripted server.
pub struct MockLlm {
    pub addr: SocketAddr,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl MockLlm {
    /// Starts serving scripts from `dir` on `addr` (port 0 picks a free one).
    pub async fn start(dir: PathBuf, addr: SocketAddr) -> std::io::Result<MockLlm> {
        let _ = (dir, addr);
        todo!("mock llm")
    }

    /// The base URL to give clients (`http://ADDR/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}
