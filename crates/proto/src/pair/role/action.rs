//! What the role machine says: its states, the actions the shell carries
//! out, and the changes it logs.

use std::fmt;

use crate::pair::lineage::{Generation, Lineage};

#[cfg(doc)]
use super::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleState {
    Follower,
    Promoting,
    Leader,
    Demoting,
    Stopped,
}

impl fmt::Display for RoleState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RoleState::Follower => "follower",
            RoleState::Promoting => "promoting",
            RoleState::Leader => "leader",
            RoleState::Demoting => "demoting",
            RoleState::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these durably (fsync) before carrying out any later action.
    Persist {
        lineage: Lineage,
        peer_seen: Option<Generation>,
    },
    /// Open or close the VRRP gate.
    Gate { open: bool, why: String },
    /// Become the replication source for `gen` (already persisted), run
    /// the promote hook; answer [`Role::handle_promoted`] or
    /// [`Role::handle_promote_failed`]. Only then may the address be held.
    Promote { gen: Generation },
    /// Ask the peer for consent to lead (it is heard, so two nodes that both
    /// lost VRRP adverts must not both promote); deliver it with
    /// [`Role::handle_peer_ask`] on the peer, answer with
    /// [`Role::handle_peer_answer`] here.
    Ask { priority: u8 },
    /// Send this answer to the peer's `Ask`.
    Answer { grant: bool },
    /// Run the demote hook, stop sending; answer [`Role::handle_demoted`].
    Demote { why: String },
    /// Follow the peer: accept its session and catch up. `preserve`: keep
    /// every local file the catch-up would overwrite or delete in the
    /// conflicts area (we may hold writes it never acknowledged).
    Follow { preserve: bool },
}

/// A role change, for the durable role log and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChange {
    pub from: RoleState,
    pub to: RoleState,
    pub gen: Generation,
    pub why: String,
}
