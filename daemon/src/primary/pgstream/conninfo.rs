//! The libpq connection string subset drd understands: `key=value` pairs
//! separated by white space, values optionally single-quoted with backslash
//! escapes, exactly as libpq parses them (`conninfo_parse` in libpq's
//! `fe-connect.c`). Unknown keys are refused so that a typo never silently
//! falls back to a default. The password never appears in `Debug`,
//! `Display`, [`Conninfo::describe`] or an error message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Where PostgreSQL puts its Unix sockets on Debian (and libpq's default
/// there): the host when none is given.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// PostgreSQL's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// `application_name` when none is given: what `pg_stat_replication` and
/// `synchronous_standby_names` see.
pub const DEFAULT_APPLICATION_NAME: &str = "drd";

/// The keys drd understands, for the unknown-key error.
const KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "dbname",
    "password",
    "passfile",
    "application_name",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "channel_binding",
    "connect_timeout",
    "target_session_attrs",
];

/// A parsed connection string. `Debug` and `Display` redact the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Conninfo {
    /// The hosts to try, in order (libpq's multi-host `host=a,b`).
    hosts: Vec<Host>,
    /// One port per host, or one for all of them (libpq's rule).
    ports: Vec<u16>,
    /// The database role to log in as.
    user: String,
    /// The database, when given (`Kind::Database` defaults to `postgres`).
    dbname: Option<String>,
    /// `password=`: discouraged (the config file then holds a secret) but
    /// supported; wins over the passfile, as in libpq.
    password: Option<String>,
    /// The `~/.pgpass`-format file consulted when there is no `password=`:
    /// `passfile=`, else `$PGPASSFILE`, else `~/.pgpass` if it exists.
    passfile: Option<PathBuf>,
    /// Sent as the `application_name` startup parameter.
    application_name: String,
    /// Whether and how TCP connections use TLS (never Unix sockets).
    sslmode: SslMode,
    /// CA certificates (PEM) the server's certificate must chain to.
    sslrootcert: Option<PathBuf>,
    /// A client certificate (PEM) for `cert` authentication.
    sslcert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    sslkey: Option<PathBuf>,
    /// Whether SCRAM uses TLS channel binding (SCRAM-SHA-256-PLUS).
    channel_binding: ChannelBinding,
    /// Limit for each host's connection attempt (socket, TLS and
    /// authentication); `None` waits as long as the OS does.
    connect_timeout: Option<Duration>,
    /// Which kind of server is acceptable when several hosts are listed.
    target_session_attrs: TargetSessionAttrs,
}

/// One entry of `host=`: a TCP host name or address, or a directory that
/// holds the server's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory (the value starts with `/`); the socket is
    /// `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// One host with its port: what one connection attempt goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where.
    pub host: Host,
    /// The TCP port, or the number in the Unix socket's name.
    pub port: u16,
}

impl Target {
    /// The Unix socket's path, for a Unix-socket target.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// True for a TCP target (the only kind that can use TLS).
    pub fn is_tcp(&self) -> bool {
        matches!(self.host, Host::Tcp(_))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            Host::Tcp(h) => write!(f, "{h}:{}", self.port),
            Host::Unix(_) => match self.socket_path() {
                Some(p) => write!(f, "{}", p.display()),
                None => Ok(()),
            },
        }
    }
}

/// libpq's `sslmode` (without `allow`, which only makes sense for servers
/// that require TLS and refuse to say so). Ignored for Unix sockets, as in
/// libpq: they never use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, else plain (the default). Unlike
    /// libpq, a failed TLS handshake is an error, not a retry without TLS.
    Prefer,
    /// TLS or fail. The certificate is checked against `sslrootcert` when
    /// one is given (libpq then behaves as `verify-ca`), else not at all.
    Require,
    /// TLS, the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// True when a server without TLS must be refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use it when TLS is on and the server offers SCRAM-SHA-256-PLUS (the
    /// default).
    Prefer,
    /// Fail unless the server authenticates with SCRAM-SHA-256-PLUS.
    Require,
}

impl ChannelBinding {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            _ => return None,
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
        }
    }
}

/// libpq's `target_session_attrs`, the two values drd supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// Any server that accepts the connection.
    Any,
    /// Only a server where `SHOW transaction_read_only` is `off` (the
    /// primary, not a hot standby).
    ReadWrite,
}

impl TargetSessionAttrs {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::ReadWrite => "read-write",
        }
    }
}

/// What is wrong with a connection string. Names the key, never a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConninfoError {
    /// A key drd does not understand.
    #[error(
        "connection string: unknown key `{0}` (drd understands {keys})",
        keys = KEYS.join(", ")
    )]
    UnknownKey(String),
    /// A known key with a value drd cannot use.
    #[error("connection string: `{key}`: {problem}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong, and what would be right.
        problem: String,
    },
    /// Not `key=value` pairs.
    #[error("connection string: {0}")]
    Syntax(String),
}

fn invalid(key: &str, problem: impl Into<String>) -> ConninfoError {
    ConninfoError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// The parts of the process environment a connection string's defaults
/// come from; a value so tests need not touch the real environment.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// The OS user name (`$USER`, `$LOGNAME`, else the password database).
    pub user: Option<String>,
    /// `$HOME`, for `~/.pgpass`.
    pub home: Option<PathBuf>,
    /// `$PGPASSFILE`.
    pub pgpassfile: Option<PathBuf>,
}

impl Env {
    /// This process's environment.
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let user = var("USER").or_else(|| var("LOGNAME")).or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        });
        Self {
            user,
            home: var("HOME").map(PathBuf::from),
            pgpassfile: var("PGPASSFILE").map(PathBuf::from),
        }
    }
}

impl FromStr for Conninfo {
    type Err = ConninfoError;

    /// Parses with this process's environment for the defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_with_env(s, &Env::from_process())
    }
}

impl Conninfo {
    /// Parses `s`, taking the defaults (user, passfile) from `env`.
    pub fn parse_with_env(s: &str, env: &Env) -> Result<Self, ConninfoError> {
        let pairs = split_pairs(s)?;
        let mut ci = Raw::default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "host" => &mut ci.host,
                "port" => &mut ci.port,
                "user" => &mut ci.user,
                "dbname" => &mut ci.dbname,
                "password" => &mut ci.password,
                "passfile" => &mut ci.passfile,
                "application_name" => &mut ci.application_name,
                "sslmode" => &mut ci.sslmode,
                "sslrootcert" => &mut ci.sslrootcert,
                "sslcert" => &mut ci.sslcert,
                "sslkey" => &mut ci.sslkey,
                "channel_binding" => &mut ci.channel_binding,
                "connect_timeout" => &mut ci.connect_timeout,
                "target_session_attrs" => &mut ci.target_session_attrs,
                _ => return Err(ConninfoError::UnknownKey(key)),
            };
            // libpq: the last occurrence wins; an empty value means the
            // default.
            *slot = Some(value).filter(|v| !v.is_empty());
        }
        ci.finish(env)
    }

    /// The targets to try, in order: each host with its port.
    pub fn targets(&self) -> Vec<Target> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Target {
                host: host.clone(),
                port: self
                    .ports
                    .get(i)
                    .or(self.ports.first())
                    .copied()
                    .unwrap_or(DEFAULT_PORT),
            })
            .collect()
    }

    /// The role drd logs in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database given with `dbname=`, if any.
    pub fn dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }

    /// The `application_name` startup parameter.
    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// `sslmode`.
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// `sslrootcert`.
    pub fn sslrootcert(&self) -> Option<&Path> {
        self.sslrootcert.as_deref()
    }

    /// `sslcert` and `sslkey`: both or neither (checked when parsing).
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        Some((self.sslcert.as_deref()?, self.sslkey.as_deref()?))
    }

    /// `channel_binding`.
    pub fn channel_binding(&self) -> ChannelBinding {
        self.channel_binding
    }

    /// `connect_timeout`, per host.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// `target_session_attrs`.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// True when a password was given with `password=`.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// The passfile consulted when there is no `password=`.
    pub fn passfile(&self) -> Option<&Path> {
        self.passfile.as_deref()
    }

    /// Host(s), port(s), user and database, for logs and errors: no secrets.
    pub fn describe(&self) -> String {
        let targets: Vec<String> = self.targets().iter().map(Target::to_string).collect();
        let mut s = format!("{} as user {}", targets.join(","), self.user);
        if let Some(db) = &self.dbname {
            s.push_str(&format!(" (database {db})"));
        }
        s
    }

    /// The same connection string for another database: the ordinary
    /// (monitoring) connection beside the replication one.
    pub fn with_dbname(&self, db: &str) -> Conninfo {
        Conninfo {
            dbname: Some(db.to_string()),
            ..self.clone()
        }
    }

    /// The password for one connection attempt: `password=`, else the
    /// passfile's first matching line. `dbname` is the database name the
    /// passfile's third field matches (`replication` for a replication
    /// connection, as libpq does). Errors reading the passfile are logged
    /// and mean "no password": the server then says what it needs.
    pub fn password_for(&self, target: &Target, dbname: &str) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let path = self.passfile.as_deref()?;
        let text = match read_passfile(path) {
            Ok(Some(t)) => t,
            // A passfile that is not there is not an error (libpq's rule).
            Ok(None) => return None,
            Err(why) => {
                tracing::warn!("passfile {}: {why}; not using it", path.display());
                return None;
            }
        };
        let (host, default_dir) = match &target.host {
            Host::Tcp(h) => (h.clone(), false),
            Host::Unix(d) => (d.display().to_string(), d == Path::new(DEFAULT_SOCKET_DIR)),
        };
        pgpass_lookup(&text, &host, default_dir, target.port, dbname, &self.user)
    }
}

/// Reads a passfile (`None` if there is none), refusing one others can
/// read (as libpq does: a password file anyone can read is not a secret).
fn read_passfile(path: &Path) -> Result<Option<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err("group or others can read it; chmod 0600 it".into());
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The password of the first line of a `~/.pgpass`-format text that
/// matches: `host:port:database:user:password`, `*` matching anything in
/// the first four fields, `\:` and `\\` escaping. `localhost` also matches
/// a Unix socket in the default directory (`default_dir`), as in libpq.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    default_dir: bool,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        let [h, p, d, u, pw] = fields.as_slice() else {
            continue;
        };
        let host_ok = h == "*" || h == host || (default_dir && h == "localhost");
        let ok = |f: &str, v: &str| f == "*" || f == v;
        if host_ok && ok(p, &port) && ok(d, dbname) && ok(u, user) {
            return Some(pw.clone());
        }
    }
    None
}

/// A passfile line's fields, unescaped; the fifth is the rest of the line
/// (a password may contain an unescaped `:`; libpq allows that too).
fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        let last = fields.len() - 1;
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields[last].push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields[last].push(c),
        }
    }
    fields
}

/// The raw values before defaults and validation.
#[derive(Default)]
struct Raw {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    dbname: Option<String>,
    password: Option<String>,
    passfile: Option<String>,
    application_name: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    channel_binding: Option<String>,
    connect_timeout: Option<String>,
    target_session_attrs: Option<String>,
}

impl Raw {
    fn finish(self, env: &Env) -> Result<Conninfo, ConninfoError> {
        let hosts: Vec<Host> = match &self.host {
            None => vec![Host::Unix(PathBuf::from(DEFAULT_SOCKET_DIR))],
            Some(h) => h
                .split(',')
                .map(|h| {
                    let h = h.trim();
                    if h.is_empty() {
                        Err(invalid("host", "an empty entry in the host list"))
                    } else if h.starts_with('/') {
                        Ok(Host::Unix(PathBuf::from(h)))
                    } else {
                        Ok(Host::Tcp(h.to_string()))
                    }
                })
                .collect::<Result<_, _>>()?,
        };
        let ports: Vec<u16> = match &self.port {
            None => vec![DEFAULT_PORT],
            Some(p) => p
                .split(',')
                .map(|p| match p.trim().parse::<u16>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(invalid(
                        "port",
                        format!("`{}` is not a port number (1-65535)", p.trim()),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(invalid(
                "port",
                format!(
                    "{} ports for {} hosts: give one port for all hosts or one per host",
                    ports.len(),
                    hosts.len()
                ),
            ));
        }
        let user = match self.user.or_else(|| env.user.clone()) {
            Some(u) => u,
            None => {
                return Err(invalid(
                    "user",
                    "not given, and the OS user name is unknown ($USER and $LOGNAME are unset)",
                ))
            }
        };
        let sslmode = match self.sslmode.as_deref() {
            None => SslMode::Prefer,
            Some(s) => SslMode::parse(s).ok_or_else(|| {
                invalid(
                    "sslmode",
                    format!("`{s}` is not one of disable, prefer, require, verify-ca, verify-full"),
                )
            })?,
        };
        let channel_binding = match self.channel_binding.as_deref() {
            None => ChannelBinding::Prefer,
            Some(s) => ChannelBinding::parse(s).ok_or_else(|| {
                invalid(
                    "channel_binding",
                    format!("`{s}` is not one of disable, prefer, require"),
                )
            })?,
        };
        let target_session_attrs = match self.target_session_attrs.as_deref() {
            None | Some("any") => TargetSessionAttrs::Any,
            Some("read-write") => TargetSessionAttrs::ReadWrite,
            Some(s) => {
                return Err(invalid(
                    "target_session_attrs",
                    format!("`{s}` is not supported: drd supports `any` and `read-write`"),
                ))
            }
        };
        let connect_timeout = match self.connect_timeout.as_deref() {
            None => None,
            Some(s) => match s.trim().parse::<i64>() {
                // libpq: zero or less waits indefinitely; 1 means 2.
                Ok(n) if n <= 0 => None,
                Ok(n) => Some(Duration::from_secs(n.max(2).unsigned_abs())),
                Err(_) => {
                    return Err(invalid(
                        "connect_timeout",
                        format!("`{s}` is not a whole number of seconds"),
                    ))
                }
            },
        };
        if sslmode == SslMode::Disable && channel_binding == ChannelBinding::Require {
            return Err(invalid(
                "channel_binding",
                "`require` needs TLS, but sslmode is `disable`",
            ));
        }
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && self.sslrootcert.is_none()
        {
            return Err(invalid(
                "sslrootcert",
                format!(
                    "sslmode `{}` checks the server's certificate, so it needs the CA \
                     certificate(s): set sslrootcert to a PEM file",
                    sslmode.as_str()
                ),
            ));
        }
        match (&self.sslcert, &self.sslkey) {
            (Some(_), None) => {
                return Err(invalid(
                    "sslkey",
                    "sslcert is set but sslkey is not: give both",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "sslcert",
                    "sslkey is set but sslcert is not: give both",
                ))
            }
            _ => {}
        }
        let passfile = match self.passfile {
            Some(p) => Some(PathBuf::from(p)),
            None => env.pgpassfile.clone().or_else(|| {
                let p = env.home.as_ref()?.join(".pgpass");
                p.exists().then_some(p)
            }),
        };
        Ok(Conninfo {
            hosts,
            ports,
            user,
            dbname: self.dbname,
            password: self.password,
            passfile,
            application_name: self
                .application_name
                .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string()),
            sslmode,
            sslrootcert: self.sslrootcert.map(PathBuf::from),
            sslcert: self.sslcert.map(PathBuf::from),
            sslkey: self.sslkey.map(PathBuf::from),
            channel_binding,
            connect_timeout,
            target_session_attrs,
        })
    }
}

/// Splits `key=value key='quoted value'` into pairs, as libpq does.
/// Errors name the key, never the value (which may be a password).
fn split_pairs(s: &str) -> Result<Vec<(String, String)>, ConninfoError> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        return Err(ConninfoError::Syntax(
            "URIs are not supported: write key=value pairs, e.g. `host=/var/run/postgresql \
             user=drd`"
                .into(),
        ));
    }
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // Echo the word only when it is a key: after an unquoted
            // password with a space in it, it is part of the password.
            return Err(ConninfoError::Syntax(if KEYS.contains(&key.as_str()) {
                format!("missing `=` after `{key}` (write key=value)")
            } else {
                after_value(out.last())
            }));
        }
        if !KEYS.contains(&key.as_str())
            && out
                .last()
                .is_some_and(|(k, _): &(String, String)| k == "password")
        {
            return Err(ConninfoError::Syntax(after_value(out.last())));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(ConninfoError::Syntax(format!(
                            "unterminated quoted value for `{key}`"
                        )))
                    }
                    Some('\\') => {
                        if let Some(c) = chars.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// The error for text that is not `key=value` after a value: usually an
/// unquoted value with a space in it. Names the previous key only.
fn after_value(prev: Option<&(String, String)>) -> String {
    match prev {
        Some((k, _)) => format!(
            "expected key=value after the value of `{k}` (quote a value that contains \
             white space: key='a b')"
        ),
        None => "expected key=value".to_string(),
    }
}

/// Quotes a value for `Display` when it needs it.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    let mut s = String::from("'");
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

impl fmt::Display for Conninfo {
    /// A connection string that parses back to the same settings, except
    /// that the password reads `********`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| match h {
                Host::Tcp(h) => h.clone(),
                Host::Unix(d) => d.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        write!(
            f,
            "host={} port={} user={}",
            quote(&hosts.join(",")),
            ports.join(","),
            quote(&self.user)
        )?;
        if let Some(db) = &self.dbname {
            write!(f, " dbname={}", quote(db))?;
        }
        if self.password.is_some() {
            write!(f, " password=********")?;
        }
        if let Some(p) = &self.passfile {
            write!(f, " passfile={}", quote(&p.display().to_string()))?;
        }
        write!(
            f,
            " application_name={} sslmode={}",
            quote(&self.application_name),
            self.sslmode.as_str()
        )?;
        for (k, v) in [
            ("sslrootcert", &self.sslrootcert),
            ("sslcert", &self.sslcert),
            ("sslkey", &self.sslkey),
        ] {
            if let Some(v) = v {
                write!(f, " {k}={}", quote(&v.display().to_string()))?;
            }
        }
        write!(f, " channel_binding={}", self.channel_binding.as_str())?;
        if let Some(t) = self.connect_timeout {
            write!(f, " connect_timeout={}", t.as_secs())?;
        }
        write!(
            f,
            " target_session_attrs={}",
            self.target_session_attrs.as_str()
        )
    }
}

impl fmt::Debug for Conninfo {
    /// Like `Display`: the password is redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Conninfo({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            user: Some("osuser".into()),
            home: None,
            pgpassfile: None,
        }
    }

    fn parse(s: &str) -> Result<Conninfo, ConninfoError> {
        Conninfo::parse_with_env(s, &env())
    }

    #[test]
    fn defaults() {
        let ci = parse("").unwrap();
        assert_eq!(
            ci.targets(),
            vec![Target {
                host: Host::Unix(DEFAULT_SOCKET_DIR.into()),
                port: 5432
            }]
        );
        assert_eq!(
            ci.targets()[0].socket_path().unwrap(),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")
        );
        assert_eq!(ci.user(), "osuser");
        assert_eq!(ci.dbname(), None);
        assert_eq!(ci.application_name(), "drd");
        assert_eq!(ci.sslmode(), SslMode::Prefer);
        assert_eq!(ci.channel_binding(), ChannelBinding::Prefer);
        assert_eq!(ci.target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(ci.connect_timeout(), None);
        assert!(ci.passfile().is_none());
        let no_user = Conninfo::parse_with_env("host=x", &Env::default()).unwrap_err();
        assert!(no_user.to_string().contains("`user`"), "{no_user}");
    }

    #[test]
    fn quoting_and_escapes() {
        let ci =
            parse(r"  application_name = 'drd at \'verona\' \\ x'  user=a\ b dbname=''  host=db1 ")
                .unwrap();
        assert_eq!(ci.application_name(), r"drd at 'verona' \ x");
        assert_eq!(ci.user(), "a b");
        assert_eq!(ci.dbname(), None, "an empty value is the default");
        assert_eq!(ci.targets()[0].host, Host::Tcp("db1".into()));
        // Display quotes what needs it, and parses back.
        let again = parse(&ci.to_string()).unwrap();
        assert_eq!(again, ci);
        assert!(matches!(
            parse("user='x"),
            Err(ConninfoError::Syntax(m)) if m.contains("`user`")
        ));
        assert!(matches!(parse("user"), Err(ConninfoError::Syntax(_))));
        assert!(matches!(
            parse("postgresql://x/y"),
            Err(ConninfoError::Syntax(_))
        ));
        // The last occurrence wins, as in libpq.
        assert_eq!(parse("user=a user=b").unwrap().user(), "b");
    }

    #[test]
    fn multi_host() {
        let ci = parse("host=a,/tmp/s,::1 port=5433,5434,5435").unwrap();
        let t = ci.targets();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].to_string(), "a:5433");
        assert_eq!(t[1].to_string(), "/tmp/s/.s.PGSQL.5434");
        assert_eq!(t[2].to_string(), "[::1]:5435");
        assert!(t[0].is_tcp() && !t[1].is_tcp());
        let one_port = parse("host=a,b port=6000").unwrap();
        assert!(one_port.targets().iter().all(|t| t.port == 6000));
        let e = parse("host=a,b,c port=1,2").unwrap_err();
        assert!(e.to_string().contains("`port`"), "{e}");
        assert!(parse("host=a,,b").is_err());
        assert!(parse("port=0").is_err());
        assert!(parse("port=x").unwrap_err().to_string().contains("`x`"));
        let d = parse("host=a,b port=1,2 user=drd dbname=app")
            .unwrap()
            .describe();
        assert_eq!(d, "a:1,b:2 as user drd (database app)");
    }

    #[test]
    fn keys_validated() {
        let e = parse("host=a hostaddr=1.2.3.4").unwrap_err();
        assert_eq!(e, ConninfoError::UnknownKey("hostaddr".into()));
        assert!(e.to_string().contains("`hostaddr`"));
        let e = parse("sslmode=allow").unwrap_err();
        assert!(e.to_string().contains("`sslmode`"), "{e}");
        let e = parse("target_session_attrs=prefer-standby").unwrap_err();
        assert!(e.to_string().contains("prefer-standby"), "{e}");
        assert_eq!(
            parse("target_session_attrs=read-write")
                .unwrap()
                .target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        assert!(parse("channel_binding=maybe").is_err());
        assert!(parse("sslmode=disable channel_binding=require").is_err());
        let e = parse("sslmode=verify-full").unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        assert!(parse("sslcert=/c").is_err());
        assert!(parse("sslkey=/k").is_err());
        assert!(parse("sslcert=/c sslkey=/k")
            .unwrap()
            .client_cert()
            .is_some());
        assert_eq!(
            parse("connect_timeout=1").unwrap().connect_timeout(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse("connect_timeout=0").unwrap().connect_timeout(), None);
        assert!(parse("connect_timeout=5s").is_err());
        let db = parse("dbname=x").unwrap().with_dbname("postgres");
        assert_eq!(db.dbname(), Some("postgres"));
    }

    #[test]
    fn password_is_redacted() {
        let secret = "s3cr'et pw";
        let ci = parse(r"host=h user=u password='s3cr\'et pw'").unwrap();
        assert!(ci.has_password());
        for shown in [format!("{ci}"), format!("{ci:?}"), ci.describe()] {
            assert!(!shown.contains("s3cr"), "{shown}");
        }
        assert!(format!("{ci}").contains("password=********"));
        // Errors never carry a value, so not the password either.
        for bad in [
            "password='s3cret",
            "password=s3cret bogus=1",
            "password=s3cret sslmode=nope",
            "password=s3 cret",
            "password=s3 cret=x",
            "password=s3 cret dbname=x",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.to_string().contains("cret"), "{bad}: {e}");
        }
        let t = &ci.targets()[0];
        assert_eq!(ci.password_for(t, "x").as_deref(), Some(secret));
    }

    #[test]
    fn pgpass_matching() {
        let text = "# comment\n\
                    other:5432:*:u:wrong\n\
                    db1:5433:*:u:port5433\n\
                    db1:*:replication:u:repl\\:pw\n\
                    db1:*:*:u:any:with:colons\n\
                    localhost:5432:*:u:local\n\
                    /tmp/s:*:*:*:sock\n";
        let look =
            |h: &str, dd: bool, p: u16, d: &str, u: &str| pgpass_lookup(text, h, dd, p, d, u);
        assert_eq!(
            look("db1", false, 5433, "x", "u").as_deref(),
            Some("port5433")
        );
        assert_eq!(
            look("db1", false, 5432, "replication", "u").as_deref(),
            Some("repl:pw")
        );
        assert_eq!(
            look("db1", false, 5432, "postgres", "u").as_deref(),
            Some("any:with:colons")
        );
        assert_eq!(look("db1", false, 5432, "x", "v"), None);
        assert_eq!(
            look(DEFAULT_SOCKET_DIR, true, 5432, "x", "u").as_deref(),
            Some("local")
        );
        assert_eq!(
            look("/tmp/s", false, 5432, "x", "z").as_deref(),
            Some("sock")
        );
        assert_eq!(look("/elsewhere", false, 5432, "x", "u"), None);
    }

    #[test]
    fn passfile_defaults_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home_env = Env {
            user: Some("u".into()),
            home: Some(dir.path().to_path_buf()),
            pgpassfile: None,
        };
        // ~/.pgpass only when it exists.
        let ci = Conninfo::parse_with_env("host=h", &home_env).unwrap();
        assert!(ci.passfile().is_none());
        let pgpass = dir.path().join(".pgpass");
        std::fs::write(&pgpass, "h:*:*:u:frompass\n").unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ci = Conninfo::parse_with_env("host=h", &home_env).unwrap();
        assert_eq!(ci.passfile(), Some(pgpass.as_path()));
        let t = &ci.targets()[0];
        assert_eq!(ci.password_for(t, "db").as_deref(), Some("frompass"));
        // password= wins over the passfile.
        let ci2 = Conninfo::parse_with_env("host=h password=given", &home_env).unwrap();
        assert_eq!(ci2.password_for(t, "db").as_deref(), Some("given"));
        // A passfile others can read is not used.
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(ci.password_for(t, "db"), None);
        // $PGPASSFILE and passfile= win over ~/.pgpass.
        let env2 = Env {
            pgpassfile: Some("/nonexistent/pgpass".into()),
            ..home_env.clone()
        };
        let ci3 = Conninfo::parse_with_env("host=h", &env2).unwrap();
        assert_eq!(ci3.passfile(), Some(Path::new("/nonexistent/pgpass")));
        assert_eq!(ci3.password_for(&ci3.targets()[0], "db"), None);
        let ci4 = Conninfo::parse_with_env("host=h passfile=/p", &env2).unwrap();
        assert_eq!(ci4.passfile(), Some(Path::new("/p")));
    }
}
