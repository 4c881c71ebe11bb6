//! What is registered, read for the side port: every service a caller may
//! read, with its live nodes, optionally of one group or one service.

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
/// service order, each with its live nodes.
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
        for service in services {
            let key = ServiceKey::new(group.clone(), service);
            if !may_read(caller, &key) {
                continue;
            }
            let nodes = registry.get_nodes(&key).await?;
            // A named service that does not exist is simply empty.
            if selection.service.is_some() && nodes.is_empty() {
                continue;
            }
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
