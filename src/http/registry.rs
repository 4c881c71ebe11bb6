//! What is registered, read for the side port: every service a caller may
//! read, with its live nodes, optionally of one group or one service.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{Action, Caller};
use crate::model::{NodeRecord, PageRequest, ServiceKey};
use crate::store::{Registry, StoreResult};

/// The largest page the store lists at once.
const PAGE: usize = 1000;

/// Which part of the registry to read.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// One group, or all.
    pub group: Option<String>,
    /// One service (of each group read), or all.
    pub service: Option<String>,
}

/// Whether `caller` (none: no auth file) may read the nodes of `key`.
pub fn may_read(caller: Option<&Caller>, key: &ServiceKey) -> bool {
    caller.is_none_or(|c| {
        c.authorize(Action::GetNodes, &key.group, Some(&key.service))
            .is_ok()
    })
}

/// Every service `selection` names that `caller` may read, in group then
/// service order, each with its live nodes. The nodes come from one
/// snapshot per group (the store reads its services side by side), the
/// names from the group's listing, so a listed service without nodes is
/// there too.
pub async fn read(
    registry: &Arc<dyn Registry>,
    selection: &Selection,
    caller: Option<&Caller>,
) -> StoreResult<Vec<(ServiceKey, Vec<NodeRecord>)>> {
    let groups = match &selection.group {
        Some(g) => vec![g.clone()],
        None => all(|page| registry.list_groups(page)).await?,
    };
    let mut out = Vec::new();
    for group in groups {
        let services = match &selection.service {
            Some(s) => vec![s.clone()],
            None => all(|page| registry.list_services(&group, page)).await?,
        };
        let readable: Vec<ServiceKey> = services
            .into_iter()
            .map(|service| ServiceKey::new(group.clone(), service))
            .filter(|key| may_read(caller, key))
            .collect();
        if readable.is_empty() {
            continue;
        }
        let snapshot = registry
            .snapshot(&group, selection.service.as_deref())
            .await?;
        let mut by_service: HashMap<String, Vec<NodeRecord>> = HashMap::new();
        for node in snapshot.nodes {
            by_service
                .entry(node.key.service.clone())
                .or_default()
                .push(node);
        }
        for key in readable {
            let mut nodes = by_service.remove(&key.service).unwrap_or_default();
            // A named service that does not exist is simply empty.
            if selection.service.is_some() && nodes.is_empty() {
                continue;
            }
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            out.push((key, nodes));
        }
    }
    Ok(out)
}

/// Every name of a paged listing.
async fn all<F, Fut>(mut list: F) -> StoreResult<Vec<String>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = StoreResult<crate::model::Page>>,
{
    let mut names = Vec::new();
    let mut after = None;
    loop {
        let page = list(PageRequest {
            size: PAGE,
            after: after.take(),
        })
        .await?;
        names.extend(page.names);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(names),
        }
    }
}
