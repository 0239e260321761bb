//! Role transitions of one stream at one node, as named functions over
//! [`RoleState`], without I/O: which role may become which, and what
//! happens to the epoch. Roles and epochs belong to a stream at a node (a
//! DR site that holds fifty databases fails over the one that broke), so
//! every function here is about one stream. The node commits the result
//! (with the log changes and an audit record) in one catalog transaction.
//!
//! ```text
//!            promote (failover, switchover)
//!   replica ───────────────────────────────▶ primary
//!      ▲  ◀─────────────────────────────────  │  │
//!      │        demote (switchover)            │  │ fence (saw a higher epoch)
//!      │                                       │  ▼
//!      └──────────────── rejoin ◀──────────── fenced
//! ```

use drd_proto::Epoch;
use serde::{Deserialize, Serialize};

/// A stream's role at a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Fenced,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Fenced => "fenced",
        }
    }
}

/// One stream's role and epoch at a node, stored durably (per stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    pub role: Role,
    pub epoch: Epoch,
    /// Shipping of this stream paused by an operator (survives restarts).
    #[serde(default)]
    pub paused: bool,
    /// Why the stream is fenced here, for `drctl status`.
    #[serde(default)]
    pub fenced_reason: Option<String>,
    /// A switchover holds shipping while the roles change hands, so that
    /// neither side mistakes the other's new epoch for a reason to fence.
    /// Never stored: a crash mid-switchover ends the hold.
    #[serde(skip, default)]
    pub shipping_held: bool,
    /// An operator's `drctl mode` of this stream here, in place of its
    /// configured `mode` (survives restarts; a role change clears it, with
    /// the role change's own audit record).
    #[serde(default)]
    pub mode_override: Option<ModeOverride>,
}

/// `drctl mode STREAM sync|async --reason …`: who set which mode, when, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeOverride {
    /// true: sync; false: async.
    pub sync: bool,
    pub at_ms: u64,
    pub user: String,
    pub reason: String,
}

impl RoleState {
    pub fn new(role: Role, epoch: Epoch) -> Self {
        Self {
            role,
            epoch,
            paused: false,
            fenced_reason: None,
            shipping_held: false,
            mode_override: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("this node is {actual}, but the operation needs a {needed}")]
    WrongRole {
        needed: &'static str,
        actual: &'static str,
    },
    #[error(
        "epoch mismatch: the request is for epoch {requested}, this node is at epoch {current}"
    )]
    EpochMismatch { requested: Epoch, current: Epoch },
    #[error("the current primary's epoch {primary} is not newer than this node's epoch {current}")]
    NotNewer { primary: Epoch, current: Epoch },
    /// The epoch is at its largest value (only a peer could have put it
    /// there): a promotion cannot make a newer one.
    #[error(
        "this node's epoch {current} cannot grow (it is the largest epoch); it was adopted \
         from a peer and cannot be true — restore the catalog or rebuild this node"
    )]
    EpochExhausted { current: Epoch },
}

fn need(s: &RoleState, role: Role) -> Result<(), RoleError> {
    if s.role != role {
        return Err(RoleError::WrongRole {
            needed: role.as_str(),
            actual: s.role.as_str(),
        });
    }
    Ok(())
}

/// Failover at the DR node: replica → primary at epoch + 1.
pub fn promote(s: &RoleState) -> Result<RoleState, RoleError> {
    need(s, Role::Replica)?;
    let epoch = s
        .epoch
        .checked_add(1)
        .ok_or(RoleError::EpochExhausted { current: s.epoch })?;
    Ok(RoleState {
        role: Role::Primary,
        epoch,
        paused: false,
        fenced_reason: None,
        shipping_held: false,
        mode_override: None,
    })
}

/// Switchover at the replica, asked by the primary at `sender_epoch`: both
/// must be at the same epoch (a stale or foreign primary cannot promote us).
pub fn promote_for(s: &RoleState, sender_epoch: Epoch) -> Result<RoleState, RoleError> {
    if sender_epoch != s.epoch {
        return Err(RoleError::EpochMismatch {
            requested: sender_epoch,
            current: s.epoch,
        });
    }
    promote(s)
}

/// Switchover at the old primary, after the replica was promoted to
/// `new_epoch`: primary → replica of the new primary.
pub fn demote(s: &RoleState, new_epoch: Epoch) -> Result<RoleState, RoleError> {
    need(s, Role::Primary)?;
    if new_epoch <= s.epoch {
        return Err(RoleError::NotNewer {
            primary: new_epoch,
            current: s.epoch,
        });
    }
    Ok(RoleState {
        role: Role::Replica,
        epoch: new_epoch,
        paused: s.paused,
        fenced_reason: None,
        shipping_held: false,
        mode_override: None,
    })
}

/// A node learned that another node is primary at `seen_epoch`. A primary
/// with a lower epoch fences itself; a replica just adopts the epoch.
/// Returns None when nothing changes.
pub fn fence(s: &RoleState, seen_epoch: Epoch, reason: &str) -> Option<RoleState> {
    if seen_epoch <= s.epoch && s.role != Role::Primary {
        return None;
    }
    match s.role {
        Role::Primary if seen_epoch > s.epoch => Some(RoleState {
            role: Role::Fenced,
            epoch: s.epoch,
            paused: s.paused,
            fenced_reason: Some(reason.to_string()),
            shipping_held: false,
            mode_override: None,
        }),
        Role::Replica if seen_epoch > s.epoch => Some(RoleState {
            epoch: seen_epoch,
            ..s.clone()
        }),
        _ => None,
    }
}

/// `drctl rejoin`: a fenced node becomes a replica of the primary at
/// `primary_epoch`.
pub fn rejoin(s: &RoleState, primary_epoch: Epoch) -> Result<RoleState, RoleError> {
    need(s, Role::Fenced)?;
    if primary_epoch <= s.epoch {
        return Err(RoleError::NotNewer {
            primary: primary_epoch,
            current: s.epoch,
        });
    }
    Ok(RoleState {
        role: Role::Replica,
        epoch: primary_epoch,
        paused: s.paused,
        fenced_reason: None,
        shipping_held: false,
        mode_override: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(role: Role, epoch: Epoch) -> RoleState {
        RoleState::new(role, epoch)
    }

    /// Issue 15: a replica adopts epochs it sees from peers; one at
    /// u64::MAX made the next promotion overflow.
    #[test]
    fn an_epoch_at_its_largest_cannot_be_promoted() {
        let replica = fence(&st(Role::Replica, 3), u64::MAX, "hostile peer").unwrap();
        assert_eq!(replica.epoch, u64::MAX);
        let e = promote(&replica).unwrap_err();
        assert_eq!(e, RoleError::EpochExhausted { current: u64::MAX });
        assert!(e.to_string().contains(&u64::MAX.to_string()));
        assert!(promote_for(&replica, u64::MAX).is_err());
    }

    #[test]
    fn failover_then_fence_then_rejoin() {
        let replica = st(Role::Replica, 1);
        let old_primary = st(Role::Primary, 1);
        let new_primary = promote(&replica).unwrap();
        assert_eq!((new_primary.role, new_primary.epoch), (Role::Primary, 2));
        let fenced = fence(&old_primary, 2, "saw epoch 2").unwrap();
        assert_eq!((fenced.role, fenced.epoch), (Role::Fenced, 1));
        assert!(
            fence(&fenced, 2, "again").is_none(),
            "fencing is idempotent"
        );
        let rejoined = rejoin(&fenced, 2).unwrap();
        assert_eq!((rejoined.role, rejoined.epoch), (Role::Replica, 2));
    }

    #[test]
    fn switchover_reverses_roles_with_one_epoch_step() {
        let a = st(Role::Primary, 4);
        let b = st(Role::Replica, 4);
        let b2 = promote_for(&b, a.epoch).unwrap();
        let a2 = demote(&a, b2.epoch).unwrap();
        assert_eq!(
            (a2.role, a2.epoch, b2.role, b2.epoch),
            (Role::Replica, 5, Role::Primary, 5)
        );
    }

    #[test]
    fn illegal_transitions_are_refused() {
        assert!(promote(&st(Role::Primary, 1)).is_err());
        assert!(promote(&st(Role::Fenced, 1)).is_err());
        assert!(
            promote_for(&st(Role::Replica, 3), 2).is_err(),
            "stale sender"
        );
        assert!(demote(&st(Role::Primary, 3), 3).is_err(), "epoch must grow");
        assert!(rejoin(&st(Role::Primary, 1), 2).is_err());
        assert!(rejoin(&st(Role::Fenced, 2), 2).is_err());
        assert!(
            fence(&st(Role::Primary, 3), 2, "older").is_none(),
            "lower epoch never fences"
        );
        let r = fence(&st(Role::Replica, 1), 3, "").unwrap();
        assert_eq!((r.role, r.epoch), (Role::Replica, 3));
    }
}
