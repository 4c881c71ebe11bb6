//! `register-service`, `get-service`, `services` and `remove-service`.

use clap::Args;

use super::{Command, Conn, Group};
use crate::cli::output::{self, Printed};
use crate::cli::parse_meta;
use crate::client::{Client, ClientError};
use crate::proto::v1 as pb;

/// Flags of `discovered register-service`.
#[derive(Debug, Args)]
pub struct RegisterServiceArgs {
    /// The service's name.
    name: String,
    /// Where the service is offered, e.g. a URL or host:port.
    #[arg(long, default_value = "", hide_default_value = true)]
    endpoint: String,
    /// A descriptive type for the endpoint, e.g. "http" or "grpc".
    #[arg(long, default_value = "", hide_default_value = true)]
    endpoint_type: String,
    /// The kind of authentication the endpoint requires, e.g. "basic".
    #[arg(long, default_value = "", hide_default_value = true)]
    auth_type: String,
    /// Credentials for the endpoint (returned only to get-service
    /// --reveal-credentials).
    #[arg(long, default_value = "", hide_default_value = true)]
    auth_credentials: String,
    /// A descriptive label for the backend behind the service.
    #[arg(long, default_value = "", hide_default_value = true)]
    backend: String,
    /// A human-readable description.
    #[arg(long, default_value = "", hide_default_value = true)]
    description: String,
    /// A label, as key=value; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for RegisterServiceArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let service = client
            .register_service(pb::RegisterServiceRequest {
                service_group: self.group.group,
                service_name: self.name,
                endpoint: self.endpoint,
                endpoint_type: self.endpoint_type,
                auth_type: self.auth_type,
                auth_credentials: self.auth_credentials,
                backend: self.backend,
                description: self.description,
                metadata: self.meta.into_iter().collect(),
            })
            .await?;
        Ok(output::service(&service))
    }
}

/// Flags of `discovered get-service`.
#[derive(Debug, Args)]
pub struct GetServiceArgs {
    /// The service's name.
    name: String,
    /// Show the service's auth credentials (hidden otherwise).
    #[arg(long)]
    reveal_credentials: bool,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for GetServiceArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let service = client
            .get_service(&self.group.group, &self.name, self.reveal_credentials)
            .await?;
        Ok(output::service(&service))
    }
}

/// Flags of `discovered services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for ServicesArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let names = client.list_services(&self.group.group).await?;
        Ok(output::names("SERVICE", &names))
    }
}

/// Flags of `discovered remove-service`.
#[derive(Debug, Args)]
pub struct RemoveServiceArgs {
    /// The service's name.
    name: String,
    /// Succeed (exit code 0, removed=false) when the service does not exist.
    #[arg(long)]
    allow_missing: bool,
    #[command(flatten)]
    group: Group,
    #[command(flatten)]
    conn: Conn,
}

impl Command for RemoveServiceArgs {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    async fn run(self, client: &Client) -> Result<Printed, ClientError> {
        let removed = client
            .remove_service(pb::RemoveServiceRequest {
                service_group: self.group.group,
                service_name: self.name.clone(),
                allow_missing: self.allow_missing,
            })
            .await?;
        Ok(output::service_removed(&self.name, &removed))
    }
}
