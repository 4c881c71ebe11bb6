//! The flags that say how a client command or the agent reaches the
//! server: TLS (`--tls-ca`, and `--tls-cert`/`--tls-key` for mutual TLS)
//! and a bearer token (`--token`).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::client::{ClientError, ConnectOptions, TlsOptions, Token};

/// TLS and token flags, shared by the client commands and `agent`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Bearer token sent with every call (`authorization: Bearer ...`);
    /// prefer the environment variable, which does not show in the process
    /// list. Never logged.
    #[arg(long, env = "DISCOVERED_TOKEN", hide_env_values = true, value_parser = token)]
    token: Option<Token>,

    /// Speak TLS, trusting the server certificates these CAs issued (PEM).
    #[arg(long, env = "DISCOVERED_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for a server that requires mutual TLS;
    /// needs --tls-key and --tls-ca.
    #[arg(long, env = "DISCOVERED_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "DISCOVERED_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn token(s: &str) -> Result<Token, String> {
    if s.is_empty() {
        return Err("the token is empty".to_string());
    }
    Ok(Token::from(s))
}

impl ConnectArgs {
    /// The client's options, with the files read now.
    pub fn options(&self) -> Result<ConnectOptions, ClientError> {
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => Some(TlsOptions {
                ca_pem: Some(read("--tls-ca", ca)?),
                identity: match (&self.tls_cert, &self.tls_key) {
                    (Some(cert), Some(key)) => {
                        Some((read("--tls-cert", cert)?, read("--tls-key", key)?))
                    }
                    _ => None,
                },
                domain: None,
            }),
        };
        Ok(ConnectOptions {
            tls,
            token: self.token.clone(),
        })
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Options(format!("cannot read {flag} {}: {e}", path.display())))
}
