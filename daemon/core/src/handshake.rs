//! The replica's answer to a primary's Hello, without I/O: accept (and adopt
//! a newer epoch), or refuse and say who must fence.

use crate::mutation::{self, Mutation};
use crate::roles::{NodeState, Role};
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
pub fn admit(state: &NodeState, epoch: Epoch) -> Admit {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_senders_are_refused_and_newer_epochs_adopted() {
        let r = NodeState::new(Role::Replica, 5);
        assert_eq!(admit(&r, 4), Admit::Stale { current: 5 });
        assert_eq!(admit(&r, 5), Admit::Accept { adopt: None });
        assert_eq!(admit(&r, 7), Admit::Accept { adopt: Some(7) });
        let p = NodeState::new(Role::Primary, 5);
        assert_eq!(admit(&p, 6), Admit::FenceSelf { seen: 6 });
        assert_eq!(admit(&p, 5), Admit::RefusePrimary);
        let mut held = p.clone();
        held.shipping_held = true;
        assert_eq!(admit(&held, 6), Admit::Retry);
        assert_eq!(
            admit(&NodeState::new(Role::Fenced, 5), 9),
            Admit::RefuseFenced
        );
    }
}
