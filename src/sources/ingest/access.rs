//! Who may do what on the socket (SPEC §7): `emit` and `ping` are open to whoever can connect;
//! every other op is for root, the daemon's own user and the members of `ingest.admin_group`.
//! The group is resolved at start and at each reload, so a request costs no lookup: a peer is
//! judged by its credentials (`SO_PEERCRED`) when it connects.

use std::sync::{Arc, RwLock};

use tokio::net::UnixStream;

use crate::protocol::Control;

/// The rules, resolved.
#[derive(Debug, Clone)]
pub struct Access {
    /// The daemon's own uid.
    daemon_uid: u32,
    /// `ingest.admin_group`, when set and found.
    admin: Option<AdminGroup>,
    /// `ingest.admin_group` as configured (for the refusal's message).
    configured: Option<String>,
}

#[derive(Debug, Clone)]
struct AdminGroup {
    gid: u32,
    /// The uids of the users the group database lists as members.
    members: Vec<u32>,
}

/// The rules in force: the daemon replaces them at a reload, connections read them when they
/// start (the lock is never held across anything but a clone).
#[derive(Debug)]
pub struct Rules(RwLock<Arc<Access>>);

impl Rules {
    /// Rules starting as `access`.
    pub fn new(access: Access) -> Rules {
        Rules(RwLock::new(Arc::new(access)))
    }

    /// The rules now.
    pub fn get(&self) -> Arc<Access> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the rules (connections made from now on are judged by them).
    pub fn set(&self, access: Access) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(access);
    }
}

/// A connected client, as its credentials say.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The peer's uid (`u32::MAX` when the credentials could not be read).
    pub uid: u32,
    /// Whether it may ask every op.
    pub admin: bool,
}

impl Access {
    /// The rules for `admin_group` (a group name, or none). A group that does not exist is
    /// warned about and admits nobody.
    pub fn resolve(admin_group: Option<&str>) -> Access {
        let daemon_uid = nix::unistd::geteuid().as_raw();
        let admin = admin_group.and_then(|name| match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(AdminGroup {
                gid: g.gid.as_raw(),
                members: g
                    .mem
                    .iter()
                    .filter_map(|m| nix::unistd::User::from_name(m).ok().flatten())
                    .map(|u| u.uid.as_raw())
                    .collect(),
            }),
            Ok(None) => {
                log::warn!(
                    "ingest.admin_group `{name}` does not exist; only root and the daemon's user may use the admin ops"
                );
                None
            }
            Err(e) => {
                log::warn!(
                    "Cannot look up ingest.admin_group `{name}` ({e}); only root and the daemon's user may use the admin ops"
                );
                None
            }
        });
        Access {
            daemon_uid,
            admin,
            configured: admin_group.map(str::to_string),
        }
    }

    /// Whether a peer with `uid` and primary `gid` may ask every op.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == self.daemon_uid
            || self
                .admin
                .as_ref()
                .is_some_and(|g| g.gid == gid || g.members.contains(&uid))
    }

    /// The message of the `forbidden` answer to `control` from `peer`.
    pub fn refusal(&self, control: &Control, peer: &Peer) -> String {
        let group = match &self.configured {
            Some(g) => format!("a member of ingest.admin_group `{g}`"),
            None => "a member of ingest.admin_group (none is set)".to_string(),
        };
        format!(
            "`{}` is for administrators: uid {} is not root, the daemon's user or {group}",
            control.name(),
            peer.uid
        )
    }
}

impl Peer {
    /// The peer at the other end of `stream`. Credentials that cannot be read make a peer
    /// that may only emit and ping.
    pub fn of(stream: &UnixStream, access: &Access) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                admin: access.allows(cred.uid(), cred.gid()),
            },
            Err(e) => {
                log::warn!("Cannot read an ingest client's credentials: {e}");
                Peer {
                    uid: u32::MAX,
                    admin: false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_daemons_uid_are_administrators_and_others_only_through_the_group() {
        let me = nix::unistd::geteuid().as_raw();
        let none = Access::resolve(None);
        assert!(none.allows(0, 0));
        assert!(none.allows(me, 12345));
        assert!(!none.allows(54321, 54321));
        let group = Access {
            daemon_uid: me,
            admin: Some(AdminGroup {
                gid: 700,
                members: vec![1001],
            }),
            configured: Some("ops".into()),
        };
        assert!(group.allows(1001, 100), "a listed member");
        assert!(group.allows(1002, 700), "the group as primary group");
        assert!(!group.allows(1003, 100));
        let missing = Access::resolve(Some("edgehook-no-such-group-x"));
        assert!(!missing.allows(54321, 54321));
    }
}
