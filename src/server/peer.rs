//! What a connection proves about its client, handed to every request on
//! it through the request's extensions.

/// The names a client certificate verified on this connection (mutual
/// TLS) gives its holder: its SAN URIs (such as a SPIFFE id) first, then
/// its SAN DNS names, in the certificate's order. Absent on connections
/// without a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subjects an `[[identity]]` of the auth file can name.
    pub subjects: Vec<String>,
}
