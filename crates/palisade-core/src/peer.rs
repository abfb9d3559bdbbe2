//! The peer of an RPC: remote address and TLS certificates, from the connection info that
//! tonic's server puts into the request extensions.

use std::net::SocketAddr;

use http::Extensions;

/// Who is on the other end of a server RPC.
///
/// Read from, in order: a `Peer` already in the extensions (for stacks other than tonic's, or
/// tests), tonic's `TcpConnectInfo`, and (feature `tls`) tonic's `TlsConnectInfo`.
///
/// # Example
///
/// ```
/// use palisade_core::Peer;
///
/// let mut request = http::Request::new(());
/// assert_eq!(Peer::from_request(&request).remote_addr, None);
/// request.extensions_mut().insert(Peer::from_addr("10.0.0.7:5000".parse().unwrap()));
/// assert_eq!(Peer::from_request(&request).remote_addr.unwrap().port(), 5000);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Peer {
    /// The remote socket address.
    pub remote_addr: Option<SocketAddr>,
    /// The local socket address the call arrived on.
    pub local_addr: Option<SocketAddr>,
    /// The peer's TLS certificate chain (DER), leaf first, when it presented one.
    #[cfg(feature = "tls")]
    pub certificates: Option<std::sync::Arc<Vec<tonic::transport::CertificateDer<'static>>>>,
}

impl Peer {
    /// A peer known only by its address.
    pub fn from_addr(remote_addr: SocketAddr) -> Self {
        Self {
            remote_addr: Some(remote_addr),
            ..Self::default()
        }
    }

    /// The peer of a request.
    pub fn from_request<B>(request: &http::Request<B>) -> Self {
        Self::from_extensions(request.extensions())
    }

    /// The peer recorded in request extensions.
    pub fn from_extensions(extensions: &Extensions) -> Self {
        if let Some(peer) = extensions.get::<Peer>() {
            return peer.clone();
        }
        #[cfg(feature = "peer")]
        if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
            return Self {
                remote_addr: info.remote_addr(),
                local_addr: info.local_addr(),
                ..Self::default()
            };
        }
        #[cfg(feature = "tls")]
        if let Some(info) = extensions
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
        {
            return Self {
                remote_addr: info.get_ref().remote_addr(),
                local_addr: info.get_ref().local_addr(),
                certificates: info.peer_certs(),
            };
        }
        Self::default()
    }

    /// Only the remote address, the cheap read for keys and logs.
    pub fn remote_addr_of(extensions: &Extensions) -> Option<SocketAddr> {
        if let Some(peer) = extensions.get::<Peer>() {
            return peer.remote_addr;
        }
        #[cfg(feature = "peer")]
        if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
            return info.remote_addr();
        }
        #[cfg(feature = "tls")]
        if let Some(info) = extensions
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
        {
            return info.get_ref().remote_addr();
        }
        None
    }
}
