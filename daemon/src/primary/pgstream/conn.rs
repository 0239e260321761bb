//! A PostgreSQL client connection (replication or ordinary): socket, TLS,
//! startup, authentication, simple queries and CopyBoth. Every message is
//! framed and parsed by `postgres-protocol`; this module adds what that
//! crate leaves to its user: the socket and TLS, the order of the messages,
//! the CopyBothResponse (`'W'`, which its parser does not know) and limits
//! on what the server may send.

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{ChannelBinding, Conninfo, Host, SslMode, Target, TargetSessionAttrs};

/// The largest CopyData payload accepted: the walsender sends at most
/// 128 KiB of WAL a message (`MAX_SEND_SIZE`), so 1 MiB plus room for the
/// header is generous, and bounds what one message can make drd allocate.
pub const MAX_COPY_DATA: usize = (1 << 20) + 1024;
/// The largest other message accepted (a row of `TIMELINE_HISTORY` holds a
/// whole history file; an error message is short).
pub const MAX_MESSAGE: usize = 16 << 20;
/// How much free buffer space each socket read asks for.
const READ_CHUNK: usize = 64 * 1024;
/// The database an ordinary connection uses when the conninfo names none.
pub const DEFAULT_DBNAME: &str = "postgres";

/// Which kind of session to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A physical walsender (`replication=true`): replication commands
    /// (`IDENTIFY_SYSTEM`, `START_REPLICATION` …) and `SHOW` only.
    Replication,
    /// An ordinary backend in `dbname` (default `postgres`): any SQL.
    Database,
}

/// How the server authenticated drd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked (`trust`, `peer`, `cert`).
    None,
    /// A clear-text password, over TLS.
    Password,
    /// MD5 challenge–response.
    Md5,
    /// SCRAM-SHA-256 without channel binding.
    ScramSha256,
    /// SCRAM-SHA-256-PLUS: bound to the TLS channel (`tls-server-end-point`).
    ScramSha256Plus,
}

/// Everything that can go wrong talking to PostgreSQL. None of them carries
/// a password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The socket could not be opened (or the attempt timed out).
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        /// Host and port, or the socket path.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up (configuration, handshake, certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication could not proceed on drd's side (the server's own
    /// refusals are [`PgError::Server`]).
    #[error("authentication: {0}")]
    Auth(String),
    /// An ErrorResponse from the server.
    #[error("{}", server_display(.severity, .sqlstate, .message, .detail, .hint))]
    Server {
        /// `ERROR`, `FATAL` or `PANIC` (the non-localized field when sent).
        severity: String,
        /// The SQLSTATE code, e.g. `42710` (duplicate_object).
        sqlstate: String,
        /// The primary message.
        message: String,
        /// The DETAIL line, if any.
        detail: Option<String>,
        /// The HINT line, if any.
        hint: Option<String>,
    },
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The connection failed while in use.
    #[error("connection to PostgreSQL: {0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// `target_session_attrs=read-write` and the server is read-only (a
    /// standby).
    #[error("{target} is read-only (a standby?) and target_session_attrs is read-write")]
    ReadOnly {
        /// Host and port, or the socket path.
        target: String,
    },
}

fn server_display(
    severity: &str,
    sqlstate: &str,
    message: &str,
    detail: &Option<String>,
    hint: &Option<String>,
) -> String {
    let mut s = format!("{severity}:  {message} (SQLSTATE {sqlstate})");
    if let Some(d) = detail {
        s.push_str(&format!("\nDETAIL:  {d}"));
    }
    if let Some(h) = hint {
        s.push_str(&format!("\nHINT:  {h}"));
    }
    s
}

impl PgError {
    /// The SQLSTATE of a server error, e.g. `42710`.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Server { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }
}

fn proto(what: &str) -> impl FnOnce(std::io::Error) -> PgError + '_ {
    move |e| PgError::Protocol(format!("{what}: {e}"))
}

/// One row of a result set, in text format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The column names, shared by the rows of one result set.
    columns: Arc<[String]>,
    /// The values; `None` is SQL NULL.
    values: Vec<Option<String>>,
}

impl Row {
    /// The value of the column named `column` (the first one, if several
    /// share the name); `None` when it is NULL or there is no such column.
    pub fn get(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.get_idx(i)
    }

    /// The value of column `i`; `None` when it is NULL or out of range.
    pub fn get_idx(&self, i: usize) -> Option<&str> {
        self.values.get(i)?.as_deref()
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The values, `None` for NULL.
    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }
}

/// The byte stream under a connection: TCP, TLS over TCP, or a Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A frame from the server: a message `postgres-protocol` parses, or the
/// CopyBothResponse it does not know.
enum Frame {
    Msg(backend::Message),
    CopyBoth,
}

/// What a connection knows about its session, beyond the byte stream.
#[derive(Debug, Clone)]
struct Session {
    /// Where the connection goes, for errors and logs.
    target: Target,
    /// ParameterStatus values (`server_version`, `integer_datetimes` …).
    params: HashMap<String, String>,
    /// BackendKeyData's process id (0 until sent).
    backend_pid: i32,
    /// Whether the stream is TLS.
    tls: bool,
    /// How the server authenticated drd.
    auth: AuthMethod,
}

impl Session {
    /// Handles the messages the server may send at any time; false when
    /// `msg` is not one of them.
    fn asynchronous(&mut self, msg: &backend::Message) -> Result<bool, PgError> {
        match msg {
            backend::Message::NoticeResponse(n) => {
                let e = error_fields(&mut n.fields())?;
                tracing::debug!(target = %self.target, "PostgreSQL notice: {e}");
                Ok(true)
            }
            backend::Message::ParameterStatus(p) => {
                let name = p.name().map_err(proto("ParameterStatus"))?;
                let value = p.value().map_err(proto("ParameterStatus"))?;
                self.params.insert(name.to_string(), value.to_string());
                Ok(true)
            }
            // LISTEN is never used, but a notification is harmless.
            backend::Message::NotificationResponse(_) => Ok(true),
            _ => Ok(false),
        }
    }
}

/// A connection to PostgreSQL, authenticated and ready for a query.
pub struct Connection {
    /// The byte stream.
    io: Box<dyn Io>,
    /// Bytes read from the server and not parsed yet.
    rbuf: BytesMut,
    /// The message being written.
    wbuf: BytesMut,
    /// Session facts.
    session: Session,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.session.target)
            .field("backend_pid", &self.session.backend_pid)
            .field("tls", &self.session.tls)
            .field("auth", &self.session.auth)
            .finish()
    }
}

/// Reads one frame, cancel-safely: only complete frames are taken out of
/// `buf`, and the only await is a `read_buf` into it, which either reads
/// or (when cancelled) leaves everything as it was.
async fn read_frame<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    buf: &mut BytesMut,
) -> Result<Frame, PgError> {
    loop {
        if let Some(f) = parse_frame(buf)? {
            return Ok(f);
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        if r.read_buf(buf).await? == 0 {
            return Err(PgError::Closed);
        }
    }
}

/// Takes one complete frame out of `buf`, or `None` when it holds less.
/// Checks the length against the limits before waiting for the body.
fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, PgError> {
    let Some(header) = backend::Header::parse(buf).map_err(proto("message header"))? else {
        return Ok(None);
    };
    let tag = header.tag();
    // `Header::parse` refused lengths below 4, so this is not negative.
    let len = usize::try_from(header.len()).unwrap_or(0);
    let limit = if tag == backend::COPY_DATA_TAG {
        MAX_COPY_DATA + 4
    } else {
        MAX_MESSAGE
    };
    if len > limit {
        return Err(PgError::Protocol(format!(
            "the server sent a message (type '{}') of {len} bytes; drd accepts at most {limit}",
            char::from(tag).escape_default()
        )));
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    if tag == b'W' {
        // CopyBothResponse: Int8 format, Int16 column count, Int16 per
        // column. Physical replication uses the text (0) overall format
        // and no columns; only the layout is checked.
        let frame = buf.split_to(1 + len);
        let body = &frame[5..];
        let ncols = match body {
            [_, hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => return Err(PgError::Protocol("CopyBothResponse too short".into())),
        };
        if body.len() != 3 + 2 * ncols {
            return Err(PgError::Protocol(format!(
                "CopyBothResponse of {} bytes for {ncols} columns",
                body.len()
            )));
        }
        return Ok(Some(Frame::CopyBoth));
    }
    match backend::Message::parse(buf) {
        Ok(Some(m)) => Ok(Some(Frame::Msg(m))),
        Ok(None) => Err(PgError::Protocol("a complete message did not parse".into())),
        Err(e) => Err(PgError::Protocol(format!(
            "malformed message (type '{}') from the server: {e}",
            char::from(tag).escape_default()
        ))),
    }
}

/// The fields of an ErrorResponse or NoticeResponse.
fn error_fields(fields: &mut backend::ErrorFields<'_>) -> Result<PgError, PgError> {
    let (mut severity, mut localized, mut sqlstate, mut message) =
        (None, None, String::new(), String::new());
    let (mut detail, mut hint) = (None, None);
    while let Some(f) = fields.next().map_err(proto("ErrorResponse"))? {
        // Before the startup packet is processed the server may write in
        // its own encoding: lossy, never a panic.
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => severity = Some(v),
            b'S' => localized = Some(v),
            b'C' => sqlstate = v,
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'H' => hint = Some(v),
            _ => {}
        }
    }
    Ok(PgError::Server {
        severity: severity.or(localized).unwrap_or_else(|| "ERROR".into()),
        sqlstate,
        message,
        detail,
        hint,
    })
}

fn server_error(body: &backend::ErrorResponseBody) -> PgError {
    match error_fields(&mut body.fields()) {
        Ok(e) | Err(e) => e,
    }
}

/// What arrives after a simple query: result sets (RowDescription,
/// DataRows, CommandComplete) and commands without one (CommandComplete
/// only), then ReadyForQuery. Keeps the last result set's rows and the
/// first error.
#[derive(Default)]
struct Results {
    /// The current result set's columns, after RowDescription.
    columns: Option<Arc<[String]>>,
    /// The current result set's rows.
    rows: Vec<Row>,
    /// The last complete result set's rows.
    last: Vec<Row>,
    /// The first ErrorResponse; the query's answer once ReadyForQuery comes.
    error: Option<PgError>,
}

impl Results {
    /// Takes one message; true at ReadyForQuery.
    fn take(&mut self, msg: backend::Message, session: &mut Session) -> Result<bool, PgError> {
        use backend::Message as M;
        if session.asynchronous(&msg)? {
            return Ok(false);
        }
        match msg {
            M::RowDescription(body) => {
                let mut names = Vec::new();
                let mut fields = body.fields();
                while let Some(f) = fields.next().map_err(proto("RowDescription"))? {
                    names.push(f.name().to_string());
                }
                self.columns = Some(names.into());
                self.rows.clear();
            }
            M::DataRow(body) => {
                let Some(columns) = &self.columns else {
                    return Err(PgError::Protocol("DataRow before RowDescription".into()));
                };
                let mut values = Vec::with_capacity(columns.len());
                let mut ranges = body.ranges();
                while let Some(r) = ranges.next().map_err(proto("DataRow"))? {
                    values.push(match r {
                        None => None,
                        Some(r) => {
                            let raw = body.buffer().get(r).ok_or_else(|| {
                                PgError::Protocol("DataRow value out of bounds".into())
                            })?;
                            let s = std::str::from_utf8(raw).map_err(|_| {
                                PgError::Protocol("DataRow value is not UTF-8".into())
                            })?;
                            Some(s.to_string())
                        }
                    });
                }
                if values.len() != columns.len() {
                    return Err(PgError::Protocol(format!(
                        "DataRow with {} values for {} columns",
                        values.len(),
                        columns.len()
                    )));
                }
                self.rows.push(Row {
                    columns: columns.clone(),
                    values,
                });
            }
            // A command without a result set leaves the last one alone:
            // the walsender ends START_REPLICATION's result set with two
            // CommandCompletes (START_STREAMING, then START_REPLICATION).
            M::CommandComplete(_) => {
                if self.columns.take().is_some() {
                    self.last = std::mem::take(&mut self.rows);
                }
            }
            M::EmptyQueryResponse => {}
            M::ErrorResponse(body) => {
                if self.error.is_none() {
                    self.error = Some(server_error(&body));
                }
            }
            M::ReadyForQuery(_) => return Ok(true),
            M::CopyInResponse(_) | M::CopyOutResponse(_) => {
                return Err(PgError::Protocol(
                    "the server started a COPY IN/OUT, which drd never asks for".into(),
                ))
            }
            other => return Err(unexpected(&other, "a query's results")),
        }
        Ok(false)
    }

    fn finish(self) -> Result<Vec<Row>, PgError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.last),
        }
    }
}

fn unexpected(msg: &backend::Message, during: &str) -> PgError {
    use backend::Message as M;
    let name = match msg {
        M::AuthenticationOk
        | M::AuthenticationCleartextPassword
        | M::AuthenticationMd5Password(_)
        | M::AuthenticationSasl(_)
        | M::AuthenticationSaslContinue(_)
        | M::AuthenticationSaslFinal(_) => "an authentication request",
        M::BackendKeyData(_) => "BackendKeyData",
        M::CommandComplete(_) => "CommandComplete",
        M::CopyData(_) => "CopyData",
        M::CopyDone => "CopyDone",
        M::DataRow(_) => "DataRow",
        M::ReadyForQuery(_) => "ReadyForQuery",
        M::RowDescription(_) => "RowDescription",
        _ => "a message",
    };
    PgError::Protocol(format!("unexpected {name} during {during}"))
}

impl Connection {
    /// Connects to the first host of `ci` that accepts (and, with
    /// `target_session_attrs=read-write`, is writable), authenticates, and
    /// waits for ReadyForQuery. With several hosts, each failure is logged
    /// and the last one is returned when none is left.
    pub async fn connect(ci: &Conninfo, kind: Kind) -> Result<Connection, PgError> {
        let targets = ci.targets();
        let mut last = None;
        for (i, target) in targets.iter().enumerate() {
            let attempt = Self::connect_one(ci, kind, target);
            let result = match ci.connect_timeout() {
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(PgError::Connect {
                        target: target.to_string(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer within connect_timeout ({}s)", limit.as_secs()),
                        ),
                    }),
                },
                None => attempt.await,
            };
            let result = match result {
                Ok(conn) if ci.target_session_attrs() == TargetSessionAttrs::ReadWrite => {
                    conn.check_writable().await
                }
                r => r,
            };
            match result {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    if i + 1 < targets.len() {
                        tracing::info!("PostgreSQL at {target}: {e}; trying the next host");
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| PgError::Protocol("the connection string has no host".into())))
    }

    /// `SHOW transaction_read_only`: the connection back if it is `off`.
    async fn check_writable(mut self) -> Result<Connection, PgError> {
        let rows = self.query("SHOW transaction_read_only").await?;
        match rows.first().and_then(|r| r.get_idx(0)) {
            Some("off") => Ok(self),
            _ => {
                let target = self.session.target.to_string();
                self.close().await;
                Err(PgError::ReadOnly { target })
            }
        }
    }

    /// One host: socket, TLS, startup, authentication, ReadyForQuery.
    async fn connect_one(ci: &Conninfo, kind: Kind, target: &Target) -> Result<Self, PgError> {
        let connect_err = |source| PgError::Connect {
            target: target.to_string(),
            source,
        };
        // Unix sockets never use TLS (the kernel is the channel).
        let (io, tls, end_point): (Box<dyn Io>, bool, Option<Vec<u8>>) = match &target.host {
            Host::Unix(_) => {
                let path = target.socket_path().unwrap_or_default();
                let s = UnixStream::connect(&path).await.map_err(connect_err)?;
                (Box::new(s), false, None)
            }
            Host::Tcp(host) => {
                let mut s = TcpStream::connect((host.as_str(), target.port))
                    .await
                    .map_err(connect_err)?;
                // Every status update is one small write the commit at the
                // primary may wait for: never let Nagle hold it back.
                s.set_nodelay(true).map_err(connect_err)?;
                if ci.sslmode() == SslMode::Disable || !ssl_request(&mut s, ci, target).await? {
                    (Box::new(s), false, None)
                } else {
                    let (tls, end_point) = start_tls(ci, host, target, s).await?;
                    (Box::new(tls), true, end_point)
                }
            }
        };
        let mut conn = Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
            session: Session {
                target: target.clone(),
                params: HashMap::new(),
                backend_pid: 0,
                tls,
                auth: AuthMethod::None,
            },
        };
        conn.startup(ci, kind).await?;
        conn.authenticate(ci, kind, end_point).await?;
        conn.wait_ready().await?;
        tracing::debug!(
            target = %conn.session.target,
            tls = conn.session.tls,
            auth = ?conn.session.auth,
            "connected to PostgreSQL"
        );
        Ok(conn)
    }

    async fn startup(&mut self, ci: &Conninfo, kind: Kind) -> Result<(), PgError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", ci.user()),
            ("application_name", ci.application_name()),
            // Rows and messages are decoded as UTF-8.
            ("client_encoding", "UTF8"),
        ];
        match kind {
            Kind::Replication => {
                params.push(("replication", "true"));
                if let Some(db) = ci.dbname() {
                    params.push(("database", db));
                }
            }
            Kind::Database => params.push(("database", ci.dbname().unwrap_or(DEFAULT_DBNAME))),
        }
        self.wbuf.clear();
        frontend::startup_message(params, &mut self.wbuf)?;
        self.send().await
    }

    /// Writes and flushes `wbuf`, which is empty afterwards either way.
    async fn send(&mut self) -> Result<(), PgError> {
        let r = self.io.write_all(&self.wbuf).await;
        self.wbuf.clear();
        r?;
        self.io.flush().await?;
        Ok(())
    }

    async fn read(&mut self) -> Result<Frame, PgError> {
        read_frame(&mut self.io, &mut self.rbuf).await
    }

    /// Reads the next message that is not a notice or parameter status.
    async fn read_msg(&mut self, during: &str) -> Result<backend::Message, PgError> {
        loop {
            match self.read().await? {
                Frame::CopyBoth => {
                    return Err(PgError::Protocol(format!(
                        "unexpected CopyBothResponse during {during}"
                    )))
                }
                Frame::Msg(m) => {
                    if !self.session.asynchronous(&m)? {
                        return Ok(m);
                    }
                }
            }
        }
    }

    /// The authentication exchange, up to AuthenticationOk.
    async fn authenticate(
        &mut self,
        ci: &Conninfo,
        kind: Kind,
        end_point: Option<Vec<u8>>,
    ) -> Result<(), PgError> {
        use backend::Message as M;
        let target = self.session.target.clone();
        let dbname = match kind {
            Kind::Replication => "replication",
            Kind::Database => ci.dbname().unwrap_or(DEFAULT_DBNAME),
        };
        let password = || {
            ci.password_for(&target, dbname).ok_or_else(|| {
                PgError::Auth(format!(
                    "{target} asks for a password for user {}, and none is configured: set \
                     password= or passfile= in the connection string, or add a line to \
                     ~/.pgpass",
                    ci.user()
                ))
            })
        };
        loop {
            match self.read_msg("authentication").await? {
                M::AuthenticationOk => break,
                M::ErrorResponse(body) => return Err(server_error(&body)),
                M::AuthenticationCleartextPassword | M::AuthenticationMd5Password(_)
                    if ci.channel_binding() == ChannelBinding::Require =>
                {
                    return Err(PgError::Auth(format!(
                        "channel_binding=require, but {target} asks for a password \
                         (pg_hba.conf method md5 or password), which cannot bind the channel: \
                         use scram-sha-256 in pg_hba.conf"
                    )));
                }
                M::AuthenticationCleartextPassword => {
                    if !self.session.tls {
                        return Err(PgError::Auth(format!(
                            "{target} asks for the password in clear text (pg_hba.conf method \
                             `password`) over a connection without TLS; drd refuses to send \
                             it. Use scram-sha-256 in pg_hba.conf, or TLS (sslmode=require)"
                        )));
                    }
                    frontend::password_message(password()?.as_bytes(), &mut self.wbuf)?;
                    self.send().await?;
                    self.session.auth = AuthMethod::Password;
                }
                M::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        ci.user().as_bytes(),
                        password()?.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                    self.send().await?;
                    self.session.auth = AuthMethod::Md5;
                }
                M::AuthenticationSasl(body) => {
                    let mut mechanisms = Vec::new();
                    let mut it = body.mechanisms();
                    while let Some(m) = it.next().map_err(proto("AuthenticationSASL"))? {
                        mechanisms.push(m.to_string());
                    }
                    let pw = password()?;
                    self.scram(ci, &mechanisms, &pw, end_point.as_deref())
                        .await?;
                }
                M::AuthenticationSaslContinue(_) | M::AuthenticationSaslFinal(_) => {
                    return Err(PgError::Protocol("SASL message out of order".into()))
                }
                M::AuthenticationGss
                | M::AuthenticationSspi
                | M::AuthenticationKerberosV5
                | M::AuthenticationScmCredential
                | M::AuthenticationGssContinue(_) => {
                    return Err(PgError::Auth(format!(
                        "{target} asks for an authentication method drd does not support \
                         (GSSAPI, SSPI, Kerberos or SCM): use scram-sha-256, md5, cert, peer \
                         or trust in pg_hba.conf"
                    )))
                }
                other => return Err(unexpected(&other, "authentication")),
            }
        }
        if ci.channel_binding() == ChannelBinding::Require
            && self.session.auth != AuthMethod::ScramSha256Plus
        {
            return Err(PgError::Auth(format!(
                "channel_binding=require, but {target} authenticated drd without channel \
                 binding (method {:?}); it needs TLS and scram-sha-256 in pg_hba.conf",
                self.session.auth
            )));
        }
        Ok(())
    }

    /// SCRAM-SHA-256(-PLUS): SASLInitialResponse, SASLContinue, SASLFinal.
    async fn scram(
        &mut self,
        ci: &Conninfo,
        mechanisms: &[String],
        password: &str,
        end_point: Option<&[u8]>,
    ) -> Result<(), PgError> {
        use backend::Message as M;
        let offered = |m: &str| mechanisms.iter().any(|x| x == m);
        let want_binding = self.session.tls && ci.channel_binding() != ChannelBinding::Disable;
        let (mechanism, binding, method) = match end_point {
            Some(hash) if want_binding && offered(sasl::SCRAM_SHA_256_PLUS) => (
                sasl::SCRAM_SHA_256_PLUS,
                sasl::ChannelBinding::tls_server_end_point(hash.to_vec()),
                AuthMethod::ScramSha256Plus,
            ),
            _ if ci.channel_binding() == ChannelBinding::Require => {
                return Err(PgError::Auth(format!(
                    "channel_binding=require, but {} {}",
                    self.session.target,
                    if !self.session.tls {
                        "is not reached over TLS"
                    } else if end_point.is_none() {
                        "has a certificate whose signature algorithm gives no \
                         tls-server-end-point hash"
                    } else {
                        "does not offer SCRAM-SHA-256-PLUS"
                    }
                )))
            }
            _ if offered(sasl::SCRAM_SHA_256) => (
                sasl::SCRAM_SHA_256,
                // "y": drd could bind but the server did not offer it (a
                // server that did would see a downgrade). "n": no TLS or
                // binding disabled.
                if want_binding && end_point.is_some() {
                    sasl::ChannelBinding::unrequested()
                } else {
                    sasl::ChannelBinding::unsupported()
                },
                AuthMethod::ScramSha256,
            ),
            _ => {
                return Err(PgError::Auth(format!(
                    "{} offers SASL mechanisms drd does not support: {}",
                    self.session.target,
                    mechanisms.join(", ")
                )))
            }
        };
        let mut scram = ScramSha256::new(password.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), &mut self.wbuf)?;
        self.send().await?;
        match self.read_msg("SCRAM authentication").await? {
            M::AuthenticationSaslContinue(body) => {
                scram
                    .update(body.data())
                    .map_err(|e| PgError::Auth(format!("SCRAM: {e}")))?;
            }
            M::ErrorResponse(body) => return Err(server_error(&body)),
            other => return Err(unexpected(&other, "SCRAM authentication")),
        }
        frontend::sasl_response(scram.message(), &mut self.wbuf)?;
        self.send().await?;
        match self.read_msg("SCRAM authentication").await? {
            M::AuthenticationSaslFinal(body) => {
                // Checks the server's signature: the server knows the
                // password too, or (with -PLUS) sits at the other end of
                // this very TLS channel.
                scram
                    .finish(body.data())
                    .map_err(|e| PgError::Auth(format!("SCRAM: the server's proof: {e}")))?;
            }
            M::ErrorResponse(body) => return Err(server_error(&body)),
            other => return Err(unexpected(&other, "SCRAM authentication")),
        }
        self.session.auth = method;
        Ok(())
    }

    /// After AuthenticationOk: ParameterStatus and BackendKeyData until
    /// ReadyForQuery.
    async fn wait_ready(&mut self) -> Result<(), PgError> {
        use backend::Message as M;
        loop {
            match self.read_msg("startup").await? {
                M::BackendKeyData(k) => self.session.backend_pid = k.process_id(),
                M::ReadyForQuery(_) => return Ok(()),
                M::ErrorResponse(body) => return Err(server_error(&body)),
                other => return Err(unexpected(&other, "startup")),
            }
        }
    }

    /// Runs `sql` with the simple query protocol and returns the rows of
    /// the last result set (text format): of the last statement that
    /// returns rows, empty when none does. An ErrorResponse becomes [`PgError::Server`] once the server
    /// is ready again, so the connection stays usable. Not cancel-safe: a
    /// cancelled query leaves the connection in an unknown state; drop it.
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send().await?;
        let mut results = Results::default();
        loop {
            match self.read().await? {
                Frame::CopyBoth => {
                    return Err(PgError::Protocol(
                        "the query started a CopyBoth; use copy_both for START_REPLICATION".into(),
                    ))
                }
                Frame::Msg(m) => {
                    if results.take(m, &mut self.session)? {
                        return results.finish();
                    }
                }
            }
        }
    }

    /// Sends `sql` (e.g. `START_REPLICATION SLOT "s" PHYSICAL 0/3000000
    /// TIMELINE 1`) and returns the two halves of the COPY, or the result
    /// set the server sends instead (when the start is exactly the end of
    /// an old timeline). An error from the server is [`PgError::Server`].
    pub async fn copy_both(mut self, sql: &str) -> Result<Started, PgError> {
        frontend::query(sql, &mut self.wbuf)?;
        self.send().await?;
        let mut results = Results::default();
        loop {
            match self.read().await? {
                Frame::CopyBoth => {
                    let (rd, wr) = tokio::io::split(self.io);
                    let reader = CopyReader {
                        rd,
                        buf: self.rbuf,
                        session: self.session,
                        state: CopyState::Copying,
                        pending: None,
                    };
                    let writer = CopyWriter {
                        wr,
                        buf: self.wbuf,
                        done: false,
                    };
                    return Ok(Started::Copy(reader, writer));
                }
                Frame::Msg(m) => {
                    if results.take(m, &mut self.session)? {
                        return results.finish().map(Started::Rows);
                    }
                }
            }
        }
    }

    /// Where this connection goes.
    pub fn target(&self) -> &Target {
        &self.session.target
    }

    /// A ParameterStatus value the server reported, e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.session.params.get(name).map(String::as_str)
    }

    /// The backend's process id (BackendKeyData), for logs.
    pub fn backend_pid(&self) -> i32 {
        self.session.backend_pid
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.session.tls
    }

    /// How the server authenticated drd.
    pub fn auth_method(&self) -> AuthMethod {
        self.session.auth
    }

    /// Says goodbye (Terminate) and closes the socket; errors are ignored,
    /// the connection is gone either way.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.send().await;
        let _ = self.io.shutdown().await;
    }
}

/// What `START_REPLICATION` started.
// One value per replication session, taken apart at once: its size does
// not matter, and unboxed halves keep `Started::Copy(reader, writer)` plain.
#[allow(clippy::large_enum_variant)]
pub enum Started {
    /// CopyBothResponse: WAL flows from the reader; status updates go
    /// through the writer.
    Copy(CopyReader, CopyWriter),
    /// A result set instead of a COPY: the requested start is the end of
    /// an old timeline; the row holds the next timeline and its start.
    Rows(Vec<Row>),
}

/// What [`CopyReader::next`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// One CopyData payload (a replication message: `w`, `k` …).
    Data(Bytes),
    /// The server ended its side of the COPY (CopyDone): the end of a
    /// timeline, or the answer to drd's own CopyDone. The caller answers
    /// with [`CopyWriter::done`] (if it has not already), then calls
    /// [`CopyReader::finish`] for the result set that follows.
    ServerDone,
}

/// Where the reader is in the COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    /// CopyData flows.
    Copying,
    /// The server sent CopyDone (or left the COPY some other way).
    ServerDone,
    /// The trailing result set and ReadyForQuery were read.
    Finished,
}

/// The reading half of a CopyBoth: CopyData from the server.
pub struct CopyReader {
    /// The stream's read half.
    rd: ReadHalf<Box<dyn Io>>,
    /// Bytes read and not parsed yet: what makes `next` cancel-safe.
    buf: BytesMut,
    /// Session facts, carried back by `into_connection`.
    session: Session,
    /// Where the COPY is.
    state: CopyState,
    /// A message that ended the COPY without CopyDone, for `finish`.
    pending: Option<backend::Message>,
}

impl CopyReader {
    /// The next CopyData payload or the server's CopyDone. Cancel-safe: a
    /// cancelled call loses nothing (partial messages stay buffered).
    /// Notices and parameter changes in between are skipped; an
    /// ErrorResponse is [`PgError::Server`]; a CopyData larger than
    /// [`MAX_COPY_DATA`] is [`PgError::Protocol`].
    pub async fn next(&mut self) -> Result<CopyEvent, PgError> {
        use backend::Message as M;
        if self.state != CopyState::Copying {
            return Err(PgError::Protocol(
                "CopyReader::next after the end of the COPY; call finish".into(),
            ));
        }
        loop {
            let msg = match read_frame(&mut self.rd, &mut self.buf).await? {
                Frame::Msg(m) => m,
                Frame::CopyBoth => {
                    return Err(PgError::Protocol("a second CopyBothResponse".into()))
                }
            };
            if self.session.asynchronous(&msg)? {
                continue;
            }
            match msg {
                M::CopyData(body) => return Ok(CopyEvent::Data(body.into_bytes())),
                M::CopyDone => {
                    self.state = CopyState::ServerDone;
                    return Ok(CopyEvent::ServerDone);
                }
                M::ErrorResponse(body) => {
                    self.state = CopyState::ServerDone;
                    return Err(server_error(&body));
                }
                // The server left the COPY without CopyDone: hand what it
                // sent to `finish`.
                m @ (M::CommandComplete(_) | M::RowDescription(_) | M::ReadyForQuery(_)) => {
                    self.state = CopyState::ServerDone;
                    self.pending = Some(m);
                    return Ok(CopyEvent::ServerDone);
                }
                other => return Err(unexpected(&other, "COPY")),
            }
        }
    }

    /// Reads the end of the COPY: the result set the server sends after
    /// both sides' CopyDone (the next timeline, at the end of an old one;
    /// usually nothing) up to ReadyForQuery. Call it after
    /// [`CopyEvent::ServerDone`] and [`CopyWriter::done`] — without drd's
    /// CopyDone the server sends nothing and this waits forever. Called
    /// before `ServerDone`, it discards the CopyData still in flight. Not
    /// cancel-safe.
    pub async fn finish(&mut self) -> Result<Vec<Row>, PgError> {
        use backend::Message as M;
        if self.state == CopyState::Finished {
            return Err(PgError::Protocol("CopyReader::finish called twice".into()));
        }
        let mut results = Results::default();
        let mut copying = self.state == CopyState::Copying;
        if let Some(m) = self.pending.take() {
            if results.take(m, &mut self.session)? {
                self.state = CopyState::Finished;
                return results.finish();
            }
        }
        loop {
            let msg = match read_frame(&mut self.rd, &mut self.buf).await? {
                Frame::Msg(m) => m,
                Frame::CopyBoth => {
                    return Err(PgError::Protocol("a second CopyBothResponse".into()))
                }
            };
            match msg {
                M::CopyData(_) if copying => continue,
                M::CopyDone if copying => copying = false,
                m => {
                    if results.take(m, &mut self.session)? {
                        self.state = CopyState::Finished;
                        return results.finish();
                    }
                }
            }
        }
    }

    /// The connection again, after [`CopyReader::finish`] and
    /// [`CopyWriter::done`], for the next command on the same session
    /// (`TIMELINE_HISTORY`, another `START_REPLICATION`). `writer` must be
    /// this reader's other half.
    pub fn into_connection(self, writer: CopyWriter) -> Result<Connection, PgError> {
        if self.state != CopyState::Finished || !writer.done {
            return Err(PgError::Protocol(
                "into_connection before the COPY ended on both sides".into(),
            ));
        }
        if !self.rd.is_pair_of(&writer.wr) {
            return Err(PgError::Protocol(
                "into_connection with another connection's writer".into(),
            ));
        }
        Ok(Connection {
            io: self.rd.unsplit(writer.wr),
            rbuf: self.buf,
            wbuf: writer.buf,
            session: self.session,
        })
    }

    /// Where this connection goes.
    pub fn target(&self) -> &Target {
        &self.session.target
    }
}

/// The writing half of a CopyBoth: CopyData to the server (status
/// updates), and CopyDone.
pub struct CopyWriter {
    /// The stream's write half.
    wr: WriteHalf<Box<dyn Io>>,
    /// The message being written.
    buf: BytesMut,
    /// Whether CopyDone was sent.
    done: bool,
}

impl CopyWriter {
    /// Sends one CopyData message with `payload`, written and flushed. Not
    /// cancel-safe: a cancelled send may leave half a message; drop the
    /// connection then.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), PgError> {
        if self.done {
            return Err(PgError::Protocol("CopyData after CopyDone".into()));
        }
        self.buf.clear();
        frontend::CopyData::new(payload)?.write(&mut self.buf);
        self.write().await
    }

    /// Sends CopyDone: drd's side of the COPY ends. Sending it twice sends
    /// it once.
    pub async fn done(&mut self) -> Result<(), PgError> {
        if self.done {
            return Ok(());
        }
        self.buf.clear();
        frontend::copy_done(&mut self.buf);
        self.write().await?;
        self.done = true;
        Ok(())
    }

    async fn write(&mut self) -> Result<(), PgError> {
        self.wr.write_all(&self.buf).await?;
        self.wr.flush().await?;
        self.buf.clear();
        Ok(())
    }
}

/// Sends SSLRequest; true when the server agrees to TLS. Reads exactly one
/// byte, so nothing the server sends before the handshake can be taken for
/// TLS-protected data (CVE-2021-23222).
async fn ssl_request(s: &mut TcpStream, ci: &Conninfo, target: &Target) -> Result<bool, PgError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    s.write_all(&buf).await?;
    match s.read_u8().await? {
        b'S' => Ok(true),
        b'N' if ci.sslmode().requires_tls() => Err(PgError::Tls(format!(
            "{target} does not accept TLS (ssl = off?), and sslmode is {}",
            ci.sslmode().as_str()
        ))),
        b'N' => Ok(false),
        b => Err(PgError::Protocol(format!(
            "answer {:?} to SSLRequest (expected 'S' or 'N')",
            char::from(b)
        ))),
    }
}

/// The TLS handshake, and the server certificate's `tls-server-end-point`
/// hash for SCRAM-SHA-256-PLUS.
async fn start_tls(
    ci: &Conninfo,
    host: &str,
    target: &Target,
    s: TcpStream,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>), PgError> {
    let config = tls_config(ci)?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| PgError::Tls(format!("`{host}` is neither a DNS name nor an IP address")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, s)
        .await
        .map_err(|e| PgError::Tls(format!("handshake with {target}: {e}")))?;
    let end_point = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| end_point_hash(c.as_ref()));
    Ok((tls, end_point))
}

/// The rustls client configuration `ci` asks for (ring provider only).
fn tls_config(ci: &Conninfo) -> Result<rustls::ClientConfig, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match ci.sslrootcert() {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| {
                PgError::Tls(format!("cannot read sslrootcert {}: {e}", path.display()))
            })?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| PgError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| PgError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(PgError::Tls(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                )));
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| PgError::Tls(format!("sslrootcert {}: {e}", path.display())))?;
            if ci.sslmode() == SslMode::VerifyFull {
                webpki
            } else {
                // libpq: with a root certificate, require and verify-ca
                // (and prefer) check the chain but not the name.
                Arc::new(ChainOnly(webpki))
            }
        }
        None => Arc::new(AnyServerCert(provider.signature_verification_algorithms)),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match ci.client_cert() {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| PgError::Tls(format!("sslcert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| PgError::Tls(format!("sslkey {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| PgError::Tls(format!("sslcert/sslkey: {e}")))?
        }
    };
    // PostgreSQL 17 checks the ALPN protocol when one is offered; older
    // servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// The verifier for `sslmode=require` (or `prefer`) without
/// `sslrootcert`: any certificate is accepted, as libpq does — the
/// connection is encrypted but the server unauthenticated, so a man in the
/// middle could read it. The handshake signatures are still checked, so
/// the server holds the certificate's key; with SCRAM-SHA-256-PLUS the
/// password exchange then proves the server is the real one.
#[derive(Debug)]
struct AnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`, whatever name the
/// certificate carries. webpki checks the chain before the name, so a
/// name error means the chain is good.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// RFC 5929 `tls-server-end-point`: the hash of the server's certificate
/// with the certificate's signature hash, SHA-256 for MD5 and SHA-1. `None`
/// for algorithms without a single hash (Ed25519, RSA-PSS): PostgreSQL
/// cannot bind those either.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    enum H {
        S256,
        S384,
        S512,
    }
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, … }
    let (0x30, cert, _) = der_next(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_next(cert)? else {
        return None;
    };
    let (0x30, alg, _) = der_next(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_next(alg)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let h = match oid {
        // md5, sha1, sha256 WithRSAEncryption
        [r @ .., 0x04 | 0x05 | 0x0b] if r == RSA => H::S256,
        [r @ .., 0x0c] if r == RSA => H::S384,
        [r @ .., 0x0d] if r == RSA => H::S512,
        // ecdsa-with-SHA1 (1.2.840.10045.4.1), -SHA256/384/512 (4.3.2–4)
        [e @ .., 0x01] if e == ECDSA => H::S256,
        [e @ .., 0x03, 0x02] if e == ECDSA => H::S256,
        [e @ .., 0x03, 0x03] if e == ECDSA => H::S384,
        [e @ .., 0x03, 0x04] if e == ECDSA => H::S512,
        _ => return None,
    };
    Some(match h {
        H::S256 => sha2::Sha256::digest(der).to_vec(),
        H::S384 => sha2::Sha384::digest(der).to_vec(),
        H::S512 => sha2::Sha512::digest(der).to_vec(),
    })
}

/// One DER element: (tag, contents, the rest). Definite lengths only.
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_parsed_whole_and_bounded() {
        let mut buf = BytesMut::new();
        // CopyBothResponse, text format, no columns; then half a CopyData.
        buf.extend_from_slice(&[b'W', 0, 0, 0, 7, 0, 0, 0]);
        buf.extend_from_slice(&[b'd', 0, 0, 0, 8, b'w', 1]);
        assert!(matches!(parse_frame(&mut buf), Ok(Some(Frame::CopyBoth))));
        assert!(matches!(parse_frame(&mut buf), Ok(None)));
        buf.extend_from_slice(&[2, 3]);
        match parse_frame(&mut buf) {
            Ok(Some(Frame::Msg(backend::Message::CopyData(d)))) => {
                assert_eq!(d.data(), &[b'w', 1, 2, 3])
            }
            _ => panic!("expected CopyData"),
        }
        assert!(buf.is_empty());
        // Too large: refused from the header alone.
        let big = u32::try_from(MAX_COPY_DATA + 5).unwrap().to_be_bytes();
        let mut buf = BytesMut::from(&[b'd', big[0], big[1], big[2], big[3]][..]);
        assert!(matches!(parse_frame(&mut buf), Err(PgError::Protocol(_))));
        let ok = u32::try_from(MAX_COPY_DATA + 4).unwrap().to_be_bytes();
        let mut buf = BytesMut::from(&[b'd', ok[0], ok[1], ok[2], ok[3]][..]);
        assert!(matches!(parse_frame(&mut buf), Ok(None)));
        // A bad CopyBothResponse layout.
        let mut buf = BytesMut::from(&[b'W', 0, 0, 0, 7, 0, 0, 1][..]);
        assert!(matches!(parse_frame(&mut buf), Err(PgError::Protocol(_))));
    }

    #[test]
    fn server_error_display() {
        let e = PgError::Server {
            severity: "ERROR".into(),
            sqlstate: "42710".into(),
            message: "replication slot \"t\" already exists".into(),
            detail: Some("d".into()),
            hint: None,
        };
        assert_eq!(
            e.to_string(),
            "ERROR:  replication slot \"t\" already exists (SQLSTATE 42710)\nDETAIL:  d"
        );
        assert_eq!(e.sqlstate(), Some("42710"));
        assert_eq!(PgError::Closed.sqlstate(), None);
    }

    /// The driver runs these inside spawned tasks.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let ci: Conninfo = "host=/nonexistent".parse().unwrap();
        let connect = Connection::connect(&ci, Kind::Replication);
        send(&connect);
        fn halves(r: &mut CopyReader, w: &mut CopyWriter) {
            send(&r.next());
            send(&r.finish());
            send(&w.send(b"r"));
        }
        let _ = halves;
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        // Certificate { tbs: SEQUENCE {}, AlgorithmIdentifier { OID } }.
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, u8::try_from(oid.len()).unwrap()];
            alg.extend_from_slice(oid);
            let mut body = vec![0x30, 0x00, 0x30, u8::try_from(alg.len()).unwrap()];
            body.extend_from_slice(&alg);
            let mut c = vec![0x30, u8::try_from(body.len()).unwrap()];
            c.extend_from_slice(&body);
            c
        };
        let rsa = |last: u8| cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, last]);
        let ecdsa = |tail: &[u8]| {
            let mut o = vec![0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
            o.extend_from_slice(tail);
            cert(&o)
        };
        let len = |der: Vec<u8>| end_point_hash(&der).map(|h| h.len());
        assert_eq!(len(rsa(0x05)), Some(32), "sha1WithRSA hashes with SHA-256");
        assert_eq!(len(rsa(0x0b)), Some(32));
        assert_eq!(len(rsa(0x0c)), Some(48));
        assert_eq!(len(rsa(0x0d)), Some(64));
        assert_eq!(len(rsa(0x0a)), None, "RSA-PSS: no single hash");
        assert_eq!(len(ecdsa(&[0x03, 0x02])), Some(32));
        assert_eq!(len(ecdsa(&[0x03, 0x03])), Some(48));
        assert_eq!(len(cert(&[0x2b, 0x65, 0x70])), None, "Ed25519");
        use sha2::Digest;
        let der = ecdsa(&[0x03, 0x02]);
        assert_eq!(
            end_point_hash(&der).unwrap(),
            sha2::Sha256::digest(&der).to_vec()
        );
    }

    #[test]
    fn der_walk() {
        assert_eq!(
            der_next(&[0x30, 0x02, 1, 2, 9]),
            Some((0x30, &[1u8, 2][..], &[9u8][..]))
        );
        assert_eq!(
            der_next(&[0x30, 0x81, 0x01, 7]),
            Some((0x30, &[7u8][..], &[][..]))
        );
        assert_eq!(der_next(&[0x30, 0x03, 1]), None);
        assert_eq!(end_point_hash(&[0x30, 0x00]), None);
    }
}
