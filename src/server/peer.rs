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

impl PeerCertificate {
    /// The subjects of a DER certificate: its SAN URIs, then its SAN DNS
    /// names. `None` if it does not parse (rustls verified it, so that
    /// does not happen for a client certificate) or has no SAN extension.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let names = &cert.subject_alternative_name().ok()??.value.general_names;
        let uris = names.iter().filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        });
        let dns = names.iter().filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        });
        Some(Self {
            subjects: uris.chain(dns).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(sans: &[rcgen::SanType]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn uris_come_first_then_dns_names_in_order() {
        use rcgen::SanType;
        let der = certificate(&[
            SanType::DnsName("b.example.org".try_into().unwrap()),
            SanType::URI("spiffe://example.org/agent".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::DnsName("a.example.org".try_into().unwrap()),
            SanType::URI("urn:x".try_into().unwrap()),
        ]);
        assert_eq!(
            PeerCertificate::from_der(&der).unwrap().subjects,
            [
                "spiffe://example.org/agent",
                "urn:x",
                "b.example.org",
                "a.example.org"
            ]
        );
    }

    #[test]
    fn no_san_or_garbage_is_none() {
        assert_eq!(PeerCertificate::from_der(&certificate(&[])), None);
        assert_eq!(PeerCertificate::from_der(b"not a certificate"), None);
    }
}
