//! HTTP plumbing shared by every API service: error bodies per API family ([`error`]), the request-id and
//! metrics middleware ([`observe`]), the token auth layer every service puts in front of its routes
//! ([`auth`]), JSON body extraction with OpenStack-shaped errors ([`body`]) and serving with graceful
//! shutdown ([`serve`]).

pub mod auth;
pub mod body;
pub mod error;
pub mod observe;

pub use error::{ApiError, Family};

use std::net::SocketAddr;

/// Bind `addr` (port 0 picks a free port) and return the listener and the bound address.
pub async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Serve `router` on `listener` until `shutdown` resolves, then finish in-flight requests. Connections
/// run with TCP_NODELAY: a response sent in several frames must not wait for the client's delayed ACK
/// (Nagle's algorithm held back the last frame of large streamed answers by 40 ms).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
