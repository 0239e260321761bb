//! The system's user and group database (NSS), for the control socket's
//! group and the config check that names it.

/// The id of group `name` through the system's group database (NSS, as
/// `getent group` sees it: /etc/group, LDAP, SSSD…); None if there is no
/// such group, an error if the lookup itself failed.
pub fn group_id(name: &str) -> std::io::Result<Option<u32>> {
    use nix::errno::Errno;
    match nix::unistd::Group::from_name(name) {
        Ok(g) => Ok(g.map(|g| g.gid.as_raw())),
        // getgrnam_r(3): "0 or ENOENT or ESRCH or EBADF or EPERM or ..."
        // all mean the name was not found, depending on the NSS module
        // (nss_wrapper and some LDAP modules answer ENOENT).
        Err(Errno::ENOENT | Errno::ESRCH | Errno::EBADF | Errno::EPERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
