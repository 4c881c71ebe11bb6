//! Errors as gRPC statuses: one mapping for every handler.

use tonic::Status;

use crate::model::{InvalidField, ServiceKey};
use crate::store::StoreError;

impl From<InvalidField> for Status {
    fn from(e: InvalidField) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Status::unavailable(m),
            e @ StoreError::NotOwner { .. } => Status::permission_denied(e.to_string()),
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(m)
            }
        }
    }
}

/// NOT_FOUND for a service that is not there.
pub fn service_not_found(key: &ServiceKey) -> Status {
    Status::not_found(format!(
        "service {:?} not found in group {:?}",
        key.service, key.group
    ))
}

/// NOT_FOUND for a node that is not there (never registered, expired or
/// removed).
pub fn node_not_found(key: &ServiceKey, node: &str) -> Status {
    Status::not_found(format!(
        "node {node:?} of service {:?} not found in group {:?}",
        key.service, key.group
    ))
}

/// NOT_FOUND for a group that is not there.
pub fn group_not_found(group: &str) -> Status {
    Status::not_found(format!("service group {group:?} not found"))
}

/// FAILED_PRECONDITION for a call that names an instance other than the
/// one that owns the node.
pub fn other_instance(node: &str, owner: &str) -> Status {
    Status::failed_precondition(format!(
        "instance_id: node {node:?} is registered by instance {owner:?}, not this one"
    ))
}
