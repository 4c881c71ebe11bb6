//! The script that keeps the deadline hints in step with the sweeper.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use super::{Keys, ScriptCall, or_empty};
use crate::model::Millis;

plain_script!(SETTLE_DEADLINE, "settle_deadline.lua");

/// `lua/settle_deadline.lua`: once the sweeper has dealt with a due hint,
/// drops it (node gone or expired) or moves it to the node's real deadline
/// (a registration renewed it), only if it still has the score the sweeper
/// read, so a writer that moved it since wins. Replies whether it did.
#[derive(Debug)]
pub struct SettleDeadline<'a> {
    /// The entry, as `keys::deadline_member` writes it.
    pub member: &'a str,
    /// Its score when the sweeper read it, as Redis gave it.
    pub score: &'a str,
    /// The node's real deadline, or `None` to drop the hint.
    pub deadline: Option<Millis>,
}

impl ScriptCall for SettleDeadline<'_> {
    type Reply = bool;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = SETTLE_DEADLINE.key(keys.deadlines_of(self.member));
        call.arg(self.member)
            .arg(self.score)
            .arg(or_empty(self.deadline));
        call
    }
}
