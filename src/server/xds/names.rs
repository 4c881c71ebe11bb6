//! Which service an xDS resource name stands for.
//!
//! A gRPC client asks for the Listener named after its target: `payments`
//! for `xds:///payments` (with `:port` when the target has one), whatever
//! its bootstrap's `client_default_listener_resource_name_template` makes
//! of that (`mygroup/%s` gives `mygroup/payments`), or
//! `xdstp://mygroup/envoy.config.listener.v3.Listener/payments` for a
//! target `xds://mygroup/payments` under federation. The route, cluster and
//! endpoints we point it to are all named `group/service`: one name per
//! service, in each type's own namespace.

use crate::model::{ServiceKey, validate_name};

/// The path segment of a Listener's `xdstp://` name.
const LISTENER_XDSTP_TYPE: &str = "envoy.config.listener.v3.Listener";

/// The service a Listener name stands for; services of `default_group`
/// when the name says no group. The error says what is wrong with it.
pub fn listener_service(name: &str, default_group: &str) -> Result<ServiceKey, String> {
    let (group, service) = if let Some(rest) = name.strip_prefix("xdstp://") {
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{name:?} has no resource path after its authority"))?;
        let service = path
            .strip_prefix(LISTENER_XDSTP_TYPE)
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| format!("{name:?} is not a Listener name ({LISTENER_XDSTP_TYPE})"))?;
        // Context parameters (`?k=v`) select nothing here.
        let service = service.split_once('?').map_or(service, |(s, _)| s);
        let group = if authority.is_empty() {
            default_group
        } else {
            authority
        };
        (group, service)
    } else {
        match name.split_once('/') {
            Some((group, service)) => (group, service),
            None => (default_group, name),
        }
    };
    key(group, without_port(service))
}

/// The service a route, cluster or endpoints name (`group/service`)
/// stands for.
pub fn service(name: &str) -> Result<ServiceKey, String> {
    let (group, service) = name
        .split_once('/')
        .ok_or_else(|| format!("{name:?} is not of the form group/service"))?;
    key(group, service)
}

/// The route, cluster and endpoints name of a service.
pub fn resource_name(key: &ServiceKey) -> String {
    format!("{}/{}", key.group, key.service)
}

/// A target's `host:port` names the service `host`.
fn without_port(service: &str) -> &str {
    match service.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => service,
    }
}

fn key(group: &str, service: &str) -> Result<ServiceKey, String> {
    validate_name("group", group).map_err(|e| e.to_string())?;
    validate_name("service", service).map_err(|e| e.to_string())?;
    Ok(ServiceKey::new(group, service))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lds(name: &str) -> Result<ServiceKey, String> {
        listener_service(name, "default")
    }

    #[test]
    fn listener_names_in_every_form_a_client_sends() {
        assert_eq!(lds("payments"), Ok(ServiceKey::new("default", "payments")));
        assert_eq!(
            lds("payments:50051"),
            Ok(ServiceKey::new("default", "payments"))
        );
        assert_eq!(
            lds("shop/payments"),
            Ok(ServiceKey::new("shop", "payments"))
        );
        assert_eq!(
            lds("shop/payments:443"),
            Ok(ServiceKey::new("shop", "payments"))
        );
        assert_eq!(
            lds("xdstp://shop/envoy.config.listener.v3.Listener/payments"),
            Ok(ServiceKey::new("shop", "payments"))
        );
        assert_eq!(
            lds("xdstp:///envoy.config.listener.v3.Listener/payments?a=b"),
            Ok(ServiceKey::new("default", "payments"))
        );
    }

    #[test]
    fn malformed_listener_names_say_why() {
        for (name, why) in [
            ("", "service"),
            ("a/b/c", "service"),
            ("pay ments", "service"),
            ("/payments", "group"),
            ("xdstp://shop", "no resource path"),
            (
                "xdstp://shop/envoy.config.cluster.v3.Cluster/payments",
                "not a Listener",
            ),
        ] {
            let err = lds(name).expect_err(name);
            assert!(err.contains(why), "{name:?}: {err}");
        }
    }

    #[test]
    fn resource_names_round_trip() {
        let key = ServiceKey::new("shop", "payments");
        assert_eq!(resource_name(&key), "shop/payments");
        assert_eq!(service("shop/payments"), Ok(key));
        assert!(service("payments").is_err());
        assert!(service("shop/pay/ments").is_err());
    }
}
