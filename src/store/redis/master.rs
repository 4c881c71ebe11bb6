//! The Redis that commands go to, and the moment it changes.
//!
//! [`Master`] finds the node to connect to (a fixed address, or the master
//! the sentinels name) and counts *generations*: each time the master may
//! have moved (a `+switch-master` from any sentinel, a node that answers as
//! a replica, READONLY from a connection), the generation goes up. Every
//! connection is stamped with the generation it was made in; the pool
//! retires older ones and the change subscription moves over, so all of a
//! server's traffic follows a failover at once (redis-rs itself never moves
//! an open connection).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, ErrorKind, RedisError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::config::Target;
use super::sentinel::{self, ResolveError};

/// How often the master in use is asked its ROLE, in case every sentinel
/// is out of reach when it is demoted.
const ROLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often errors from the node in use may start a new generation: a
/// master refusing every write (NOREPLICAS) must not cost a master lookup
/// per call.
const SUSPECT_INTERVAL: Duration = Duration::from_millis(250);

/// The Redis that commands go to; shared by the pool, the subscriber and
/// the sweeper of one registry.
#[derive(Debug)]
pub struct Master {
    target: Target,
    generation: watch::Sender<u64>,
    /// The node the last connection went to, for the ROLE check.
    current: Mutex<Option<ConnectionInfo>>,
    /// The new master of the last `+switch-master` (every sentinel
    /// announces each switch; one is enough).
    last_switch: Mutex<Option<String>>,
    /// When the last generation started.
    last_move: Mutex<Option<Instant>>,
}

impl Master {
    /// The master of `target`, in generation 0.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            generation: watch::Sender::new(0),
            current: Mutex::new(None),
            last_switch: Mutex::new(None),
            last_move: Mutex::new(None),
        }
    }

    /// Where commands go, for messages.
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// The database our keys live in.
    pub fn db(&self) -> i64 {
        self.target.db()
    }

    /// The current generation: connections made in an older one must go.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Receives each new generation (for the change subscription).
    pub fn moves(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The node in use answered as no master would (READONLY, NOREPLICAS,
    /// MASTERDOWN): a move, unless one started moments ago.
    pub fn suspect(&self, why: &str) {
        let recent = self
            .last_move
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|at| at.elapsed() < SUSPECT_INTERVAL);
        if !recent {
            self.moved(why);
        }
    }

    /// The master may have moved: every connection made so far is retired.
    pub fn moved(&self, why: &str) {
        if let Ok(mut last) = self.last_move.lock() {
            *last = Some(Instant::now());
        }
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        tracing::warn!(%why, generation, "Redis master may have moved; reconnecting everything to the current master");
        crate::metrics::metrics().store_failovers.inc();
    }

    /// The node to connect to now.
    pub async fn resolve(&self) -> Result<ConnectionInfo, ResolveError> {
        match &self.target {
            Target::Direct(info) => Ok(info.clone()),
            Target::Sentinel { sentinels, data } => sentinels.resolve(data).await,
            // A cluster is reached through `cluster.rs`, never a Master;
            // its first seed is the one node there is to name.
            Target::Cluster { seeds } => Ok(seeds[0].clone()),
        }
    }

    /// A new connection to the current master and the generation it
    /// belongs to.
    pub async fn connect(&self) -> Result<(MultiplexedConnection, u64), RedisError> {
        // Read first: a move while resolving makes the connection stale at
        // once rather than unnoticed.
        let generation = self.generation();
        let info = self.resolve().await.map_err(no_master)?;
        let conn = sentinel::connect(&info).await?;
        if let Ok(mut current) = self.current.lock() {
            *current = Some(info);
        }
        Ok((conn, generation))
    }

    /// For Sentinel: follows `+switch-master` on every sentinel, and checks
    /// the ROLE of the node in use every second, until `stop`.
    pub fn follow(self: &std::sync::Arc<Self>, stop: &CancellationToken) {
        let Target::Sentinel { sentinels, .. } = &self.target else {
            return;
        };
        let master = self.clone();
        let switched = move |payload: &str| master.switched(payload);
        tokio::spawn(sentinel::watch_switches(
            sentinels.clone(),
            switched,
            stop.clone(),
        ));
        tokio::spawn(self.clone().check_roles(stop.clone()));
    }

    /// A sentinel announced `+switch-master` with `payload`
    /// (`<name> <old-ip> <old-port> <new-ip> <new-port>`): a move, unless
    /// another sentinel already announced the same new master.
    fn switched(&self, payload: &str) {
        let new_master: Vec<&str> = payload.split_whitespace().skip(3).collect();
        let new_master = new_master.join(":");
        if let Ok(mut last) = self.last_switch.lock() {
            if last.as_deref() == Some(new_master.as_str()) {
                return;
            }
            *last = Some(new_master);
        }
        self.moved(&format!("+switch-master {payload}"));
    }

    /// The fallback when no sentinel can tell us: the node we use says it
    /// is no master any more.
    async fn check_roles(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(ROLE_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let current = self.current.lock().ok().and_then(|c| c.clone());
            let Some(info) = current else { continue };
            if let Some(role) = sentinel::role(&info).await
                && role != "master"
            {
                self.moved(&format!(
                    "{} answers ROLE {role}",
                    super::pool::display_addr(&info)
                ));
                if let Ok(mut current) = self.current.lock() {
                    *current = None;
                }
            }
        }
    }
}

/// A failed master lookup as the connection error the pool reports.
fn no_master(e: ResolveError) -> RedisError {
    RedisError::from((ErrorKind::Io, "no Redis master", e.to_string()))
}
