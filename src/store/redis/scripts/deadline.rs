//! The script that keeps the deadlines set in step with the sweeper.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use super::{Keys, ScriptCall};

plain_script!(FORGET_DEADLINE, "forget_deadline.lua");

/// `lua/forget_deadline.lua`: drops a deadline entry only if it still has
/// the score the sweeper read, so a renewal that raced the sweep keeps its
/// new deadline. Replies whether the entry went.
#[derive(Debug)]
pub struct ForgetDeadline<'a> {
    /// The entry, as `keys::deadline_member` writes it.
    pub member: &'a str,
    /// Its score when the sweeper read it, as Redis gave it.
    pub score: &'a str,
}

impl ScriptCall for ForgetDeadline<'_> {
    type Reply = bool;

    fn invocation(&self, keys: &Keys) -> ScriptInvocation<'static> {
        let mut call = FORGET_DEADLINE.key(keys.deadlines());
        call.arg(self.member).arg(self.score);
        call
    }
}
