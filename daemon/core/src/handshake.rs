//! The replica's answer to a primary's Hello, without I/O: may that node
//! ship that stream here at all ([`assigned`]), and then accept (and adopt
//! a newer epoch), or refuse and say who must fence ([`admit`]).

use crate::mutation::{self, Mutation};
use crate::roles::{Role, RoleState};
use drd_proto::Epoch;

/// What a node does with a Hello at `epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Accept the session; adopt the sender's epoch first when it is newer.
    Accept { adopt: Option<Epoch> },
    /// The sender is a stale primary: refuse with this node's epoch, so it
    /// fences itself (invariant 3).
    Stale { current: Epoch },
    /// This node is primary at a lower epoch: a newer primary exists, so
    /// this node fences itself, and refuses.
    FenceSelf { seen: Epoch },
    /// This node's own switchover just promoted the sender: retry shortly.
    Retry,
    /// This node is primary at the same or a higher epoch: it receives
    /// nothing.
    RefusePrimary,
    /// This node is fenced: it receives nothing until `drctl rejoin`.
    RefuseFenced,
}

/// Decides on a Hello at `epoch` given this node's state.
pub fn admit(state: &RoleState, epoch: Epoch) -> Admit {
    if epoch < state.epoch && !mutation::active(Mutation::AcceptLowerEpoch) {
        return Admit::Stale {
            current: state.epoch,
        };
    }
    match state.role {
        Role::Replica => Admit::Accept {
            adopt: (epoch > state.epoch).then_some(epoch),
        },
        Role::Primary if epoch > state.epoch && state.shipping_held => Admit::Retry,
        Role::Primary if epoch > state.epoch => Admit::FenceSelf { seen: epoch },
        Role::Primary => Admit::RefusePrimary,
        Role::Fenced => Admit::RefuseFenced,
    }
}

/// What this node's config says about a stream a peer wants to ship (or
/// fence, or promote) here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignment<'a> {
    /// A `[[stream]]` names the stream; its `peer_name` (None: the config
    /// names no peer certificate, plaintext on loopback) is the one node
    /// that may act on it.
    Listed { peer_name: Option<&'a str> },
    /// No `[[stream]]` names it; `accept` is `[replica]
    /// accept_unlisted_streams`.
    Unlisted { accept: bool },
}

/// Why a peer may not act on a stream here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unassigned {
    #[error(
        "stream {stream:?} is not assigned to {sender:?}: this node's [[stream]] {stream} names \
         peer_name {owner:?}; nothing was written"
    )]
    OtherPeer {
        stream: String,
        sender: String,
        owner: String,
    },
    #[error(
        "stream {stream:?} is not assigned to {sender:?}: no [[stream]] of this node names it; \
         nothing was written (add a [[stream]] with name = {stream:?} and peer_name = {sender:?}, \
         or set [replica] accept_unlisted_streams = true)"
    )]
    NotListed { stream: String, sender: String },
}

/// May node `sender` (its id already checked against its certificate)
/// ship `stream` to this node? A fleet's DR site receives each stream from
/// the one primary its config assigns, so one compromised host cannot write
/// into another's stream.
pub fn assigned(stream: &str, sender: &str, assignment: Assignment<'_>) -> Result<(), Unassigned> {
    match assignment {
        Assignment::Listed { peer_name: None } => Ok(()),
        Assignment::Listed {
            peer_name: Some(owner),
        } if owner == sender => Ok(()),
        Assignment::Listed {
            peer_name: Some(owner),
        } => Err(Unassigned::OtherPeer {
            stream: stream.into(),
            sender: sender.into(),
            owner: owner.into(),
        }),
        Assignment::Unlisted { accept: true } => Ok(()),
        Assignment::Unlisted { accept: false } => Err(Unassigned::NotListed {
            stream: stream.into(),
            sender: sender.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_assigned_primary_may_ship_a_stream() {
        let listed = |p| Assignment::Listed { peer_name: Some(p) };
        assert_eq!(assigned("ehr", "verona", listed("verona")), Ok(()));
        let e = assigned("ehr", "billing-host", listed("verona")).unwrap_err();
        assert!(matches!(e, Unassigned::OtherPeer { .. }));
        let text = e.to_string();
        assert!(
            text.contains("not assigned") && text.contains("ehr") && text.contains("verona"),
            "{text}"
        );
        let e = assigned("rogue", "verona", Assignment::Unlisted { accept: false }).unwrap_err();
        assert!(e.to_string().contains("accept_unlisted_streams"), "{e}");
        assert_eq!(
            assigned("rogue", "verona", Assignment::Unlisted { accept: true }),
            Ok(())
        );
        assert_eq!(
            assigned("ehr", "x", Assignment::Listed { peer_name: None }),
            Ok(())
        );
    }

    #[test]
    fn stale_senders_are_refused_and_newer_epochs_adopted() {
        let r = RoleState::new(Role::Replica, 5);
        assert_eq!(admit(&r, 4), Admit::Stale { current: 5 });
        assert_eq!(admit(&r, 5), Admit::Accept { adopt: None });
        assert_eq!(admit(&r, 7), Admit::Accept { adopt: Some(7) });
        let p = RoleState::new(Role::Primary, 5);
        assert_eq!(admit(&p, 6), Admit::FenceSelf { seen: 6 });
        assert_eq!(admit(&p, 5), Admit::RefusePrimary);
        let mut held = p.clone();
        held.shipping_held = true;
        assert_eq!(admit(&held, 6), Admit::Retry);
        assert_eq!(
            admit(&RoleState::new(Role::Fenced, 5), 9),
            Admit::RefuseFenced
        );
    }
}
