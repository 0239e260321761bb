//! `source = "postgres"`: drd receives the database's WAL over PostgreSQL's
//! physical streaming replication protocol, through a replication slot (so
//! nothing is recycled before drd has it), and writes it into the stream's
//! `wal_dir` as segment files named and sized as PostgreSQL names them
//! ([`writer`]); the shipper ships them from there byte range by byte range
//! as they grow, as it ships a `tail` directory.
//!
//! One session is what `pg_receivewal` does (`ReceiveXlogStream`):
//! `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`, the slot (`READ_REPLICATION_SLOT`,
//! created if missing), the history of newer timelines (`TIMELINE_HISTORY`,
//! stored as side files, which travel to the replica), then
//! `START_REPLICATION SLOT … PHYSICAL` at the start of the segment drd's
//! log ends in. A session ends at the end of a timeline; the next one
//! follows the next timeline from its history.
//!
//! What drd reports to PostgreSQL as written/flushed is drd-core's rule
//! ([`drd_core::pg::feedback`]): in `async` mode what is durable here, in
//! `sync` mode only what the DR replica acked durable, so that with
//! `synchronous_standby_names = 'drd'` a COMMIT returns only once the DR
//! site has its WAL.

pub mod conn;
pub mod conninfo;
pub mod error;
pub mod monitor;
pub mod writer;

pub use error::PgStreamError;

use crate::config::{PostgresSource, StreamConfig, SyncMode, Tuning};
use crate::locks::LockExt;
use crate::node::{Shipper, StreamRole};
use crate::storage::catalog::{Catalog, Role};
use conn::{Connection, CopyEvent, Kind, PgError, Row, Started};
use drd_core::pg::feedback::{Feedback, Mode};
use drd_core::pg::lsn::{history_name, Lsn, SegSize};
use drd_core::pg::{history, msg};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything one stream's database session uses, built by the
/// composition root (`Node::pg_context`).
pub struct PgContext {
    pub cfg: StreamConfig,
    pub source: PostgresSource,
    /// The stream's live state: the replica's acks, and `pg` for status.
    pub status: Arc<Shipper>,
    pub role: Arc<StreamRole>,
    pub catalog: Arc<Catalog>,
    /// Where `.history` files are stored (and delivered from).
    pub side_dir: PathBuf,
    pub tuning: Tuning,
}

/// How a session ended without an error.
enum Ended {
    /// The timeline ended: the next session follows the next one.
    Timeline,
    Shutdown,
    /// This node is no longer the stream's primary.
    RoleChanged,
}

/// Slowest retry: after errors that only an operator can fix (another
/// cluster, a gap), and the longest backoff otherwise.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs the stream's database side until `shutdown`: while this node is the
/// stream's primary, one session after another.
pub async fn run(ctx: PgContext, shutdown: CancellationToken) {
    let span = tracing::info_span!("pg", stream = %ctx.cfg.name);
    run_stream(ctx, shutdown).instrument(span).await
}

async fn run_stream(ctx: PgContext, shutdown: CancellationToken) {
    ctx.status.pg.locked().slot = ctx.source.slot.clone();
    let ctx = Arc::new(ctx);
    let monitor = tokio::spawn(monitor::run(
        monitor::SlotWatch {
            source: ctx.source.clone(),
            status: ctx.status.clone(),
            role: ctx.role.clone(),
        },
        shutdown.clone(),
    ));
    sessions(&ctx, &shutdown).await;
    let _ = monitor.await;
}

async fn sessions(ctx: &PgContext, shutdown: &CancellationToken) {
    let mut role_rx = ctx.role.subscribe();
    let min = Duration::from_millis(ctx.tuning.reconnect_min_ms);
    let mut delay = min;
    loop {
        // Only a primary streams from its database.
        loop {
            if role_rx.borrow_and_update().role == Role::Primary {
                break;
            }
            ctx.status.pg.locked().connected = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = role_rx.changed() => if r.is_err() { return },
            }
        }
        let started = Instant::now();
        let r = session(ctx, shutdown).await;
        ctx.status.pg.locked().connected = false;
        match r {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::Timeline) | Ok(Ended::RoleChanged) => {
                delay = min;
                continue;
            }
            Err(e) => {
                let slow = matches!(e, PgStreamError::Cluster(_) | PgStreamError::Gap(_));
                if matches!(e, PgStreamError::Gap(_)) {
                    ctx.status.pg.locked().slot_lost = true;
                }
                if slow {
                    tracing::error!(error = %e, "cannot stream from PostgreSQL");
                } else {
                    tracing::warn!(error = %e, "PostgreSQL session ended; reconnecting");
                }
                ctx.status.pg.locked().last_error = e.to_string();
                if started.elapsed() > Duration::from_secs(10) {
                    delay = min;
                }
                let wait = if slow { RETRY_MAX } else { delay };
                delay = (delay * 2).min(RETRY_MAX);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// `IDENTIFY_SYSTEM`'s answer.
struct Identity {
    sysid: u64,
    timeline: u32,
    flush: Lsn,
}

fn col<'a>(row: &'a Row, name: &str) -> Result<&'a str, PgStreamError> {
    row.get(name)
        .ok_or_else(|| PgStreamError::Protocol(format!("no column {name:?} in the answer")))
}

fn one_row(rows: Vec<Row>, what: &str) -> Result<Row, PgStreamError> {
    rows.into_iter()
        .next()
        .ok_or_else(|| PgStreamError::Protocol(format!("{what} returned no row")))
}

fn parse<T: std::str::FromStr>(v: &str, what: &str) -> Result<T, PgStreamError> {
    v.parse()
        .map_err(|_| PgStreamError::Protocol(format!("{what}: {v:?} is not valid")))
}

async fn identify(conn: &mut Connection) -> Result<Identity, PgStreamError> {
    let row = one_row(conn.query("IDENTIFY_SYSTEM").await?, "IDENTIFY_SYSTEM")?;
    Ok(Identity {
        sysid: parse(col(&row, "systemid")?, "systemid")?,
        timeline: parse(col(&row, "timeline")?, "timeline")?,
        flush: parse(col(&row, "xlogpos")?, "xlogpos")?,
    })
}

async fn segment_size(conn: &mut Connection) -> Result<SegSize, PgStreamError> {
    let row = one_row(conn.query("SHOW wal_segment_size").await?, "SHOW")?;
    let v = row
        .get_idx(0)
        .ok_or_else(|| PgStreamError::Protocol("SHOW wal_segment_size: no value".into()))?;
    SegSize::parse_setting(v)
        .map_err(|e| PgStreamError::Protocol(format!("wal_segment_size {v:?}: {e}")))
}

/// The slot's restart point, creating the slot if it is missing — only for
/// a stream that holds no WAL yet: a new slot retains WAL from now on, so
/// for a stream with a log it would hide a gap (and, if the WAL drd needs
/// is gone, hold WAL forever for a drd that cannot use it).
async fn slot(
    conn: &mut Connection,
    name: &str,
    describe: &str,
    log_end: Option<&(u32, Lsn, String)>,
) -> Result<Option<(u32, Lsn)>, PgStreamError> {
    let read = format!("READ_REPLICATION_SLOT \"{name}\"");
    let row = one_row(conn.query(&read).await?, "READ_REPLICATION_SLOT")?;
    match row.get("slot_type") {
        Some("physical") => {}
        Some(other) => {
            return Err(PgStreamError::Cluster(format!(
                "replication slot \"{name}\" is a {other} slot; drd needs a physical one — \
                 pick another `slot` name"
            )))
        }
        None => {
            if let Some((tli, at, _)) = log_end {
                return Err(PgStreamError::Cluster(format!(
                    "replication slot \"{name}\" does not exist on {describe}, and drd's copy \
                     of the WAL already ends at {at} on timeline {tli}: drd does not create it \
                     now, since a new slot would keep only WAL from now on. If this server \
                     still has the WAL from {at} on (a promoted standby, say), create the slot \
                     (SELECT pg_create_physical_replication_slot('{name}', true)) and drd \
                     continues; otherwise give the stream a fresh wal_dir and the DR site a \
                     new base backup"
                )));
            }
            let create = format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL RESERVE_WAL");
            match conn.query(&create).await {
                Ok(_) => {}
                // Created meanwhile by another session: that is fine.
                Err(e) if e.sqlstate() == Some("42710") => {}
                Err(e) => return Err(e.into()),
            }
            let row = one_row(conn.query(&read).await?, "READ_REPLICATION_SLOT")?;
            let restart = restart_of(&row, name)?;
            tracing::warn!(slot = name, restart_lsn = %restart.map_or("?".into(), |r| r.1.to_string()),
                database = describe,
                "created physical replication slot \"{name}\"; it retains WAL in the \
                 database's pg_wal until drd confirms it — bound it with \
                 max_slot_wal_keep_size");
            return Ok(restart);
        }
    }
    restart_of(&row, name)
}

fn restart_of(row: &Row, name: &str) -> Result<Option<(u32, Lsn)>, PgStreamError> {
    match (row.get("restart_lsn"), row.get("restart_tli")) {
        (Some(lsn), Some(tli)) => Ok(Some((
            parse(tli, "restart_tli")?,
            parse(lsn, "restart_lsn")?,
        ))),
        _ => Err(PgStreamError::Gap(format!(
            "replication slot \"{name}\" has no restart point: PostgreSQL invalidated it \
             (max_slot_wal_keep_size) and the WAL it held is gone; the DR copy has a gap. \
             Start the stream over: see \"The slot\" in deploy/postgresql/README.md"
        ))),
    }
}

/// Fetches the history files of timelines 2..=`upto` this node does not
/// hold yet into the side-file directory; returns the history of `upto`.
async fn histories(
    conn: &mut Connection,
    ctx: &PgContext,
    upto: u32,
) -> Result<Vec<history::Switch>, PgStreamError> {
    let mut last = Vec::new();
    for tli in 2..=upto {
        let name = history_name(tli);
        let path = ctx.side_dir.join(&name);
        let content = match std::fs::read(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let row = one_row(
                    conn.query(&format!("TIMELINE_HISTORY {tli}")).await?,
                    "TIMELINE_HISTORY",
                )?;
                let got = col(&row, "filename")?;
                if got != name {
                    return Err(PgStreamError::Protocol(format!(
                        "TIMELINE_HISTORY {tli} returned {got:?}, not {name:?}"
                    )));
                }
                let content = col(&row, "content")?.as_bytes().to_vec();
                let (dir, n, c) = (ctx.side_dir.clone(), name.clone(), content.clone());
                tokio::task::spawn_blocking(move || {
                    crate::storage::fsutil::create_dir_durable(&dir).map_err(|e| e.to_string())?;
                    crate::storage::spool::write_once(&dir, &n, &c).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| PgStreamError::Local(e.to_string()))?
                .map_err(|e| PgStreamError::Local(format!("storing {name}: {e}")))?;
                tracing::info!(file = %name, "stored the history of timeline {tli}");
                content
            }
            Err(e) => {
                return Err(PgStreamError::Io {
                    path: path.display().to_string(),
                    source: e,
                })
            }
        };
        if tli == upto {
            let text = String::from_utf8_lossy(&content);
            last = history::parse(&text)
                .map_err(|e| PgStreamError::Protocol(format!("{name}: {e}")))?;
        }
    }
    Ok(last)
}

/// Where drd's log of the stream ends: its last segment in `wal_dir`, or
/// the catalog's last record (the files may be pruned, or the log may have
/// come from the DR side after a failover).
fn log_end(ctx: &PgContext, seg: SegSize) -> Result<Option<(u32, Lsn, String)>, PgStreamError> {
    if let Some(end) = writer::local_end(&ctx.cfg.wal_dir, seg)? {
        return Ok(Some(end));
    }
    let tail = ctx
        .catalog
        .tail(&ctx.cfg.name)
        .map_err(|e| PgStreamError::Local(format!("reading the catalog: {e}")))?;
    Ok(tail.and_then(|t| {
        seg.lsn_in(&t.name, t.size)
            .map(|(tli, lsn)| (tli, lsn, t.name.clone()))
    }))
}

fn mode_of(m: SyncMode) -> Mode {
    match m {
        SyncMode::Async => Mode::Async,
        SyncMode::Sync => Mode::Sync,
    }
}

async fn session(ctx: &PgContext, shutdown: &CancellationToken) -> Result<Ended, PgStreamError> {
    let src = &ctx.source;
    let describe = src.conninfo.describe();
    let mut conn = Connection::connect(&src.conninfo, Kind::Replication).await?;
    let id = identify(&mut conn).await?;
    let seg = segment_size(&mut conn).await?;
    let end = log_end(ctx, seg)?;
    if let Some((_, _, name)) = &end {
        // The segment's first page names its cluster (absent: pruned, or
        // too short to say).
        let theirs = crate::walpos::long_header(&ctx.cfg.wal_dir.join(name)).map(|h| h.sysid);
        if let Some(sysid) = theirs.filter(|s| *s != id.sysid) {
            return Err(PgStreamError::Cluster(format!(
                "{describe} is database system {}, but drd's copy of the WAL ({name}) is of \
                 system {sysid}: this is another database cluster. Point `postgres` at the \
                 right one, or give the stream a fresh wal_dir and DR copy",
                id.sysid
            )));
        }
    }
    let restart = slot(&mut conn, &src.slot, &describe, end.as_ref()).await?;
    let (tli, start) = match &end {
        None => {
            // A fresh stream: from the slot's restart point (what the slot
            // keeps), at the start of its segment.
            let (tli, at) = restart.unwrap_or((id.timeline, id.flush));
            (tli, seg.segment_start(at))
        }
        Some((t, at, _)) if *t == id.timeline => (*t, seg.segment_start(*at)),
        Some((t, at, name)) if *t < id.timeline => {
            let h = histories(&mut conn, ctx, id.timeline).await?;
            let Some((switch, next)) = history::successor(&h, id.timeline, *t) else {
                return Err(PgStreamError::Cluster(format!(
                    "{describe} is on timeline {}, whose history does not contain timeline \
                     {t} of drd's copy ({name}): it is not a descendant of the database drd \
                     streamed from",
                    id.timeline
                )));
            };
            if *at < switch {
                // The rest of the old timeline first.
                (*t, seg.segment_start(*at))
            } else {
                if *at > switch {
                    tracing::error!(timeline = t, switch = %switch, end = %at, beyond = at.saturating_sub(switch),
                        "timeline {t} continued only to {switch} on the new primary: drd holds \
                         bytes beyond it that the new primary does not have (a local failover \
                         lost them, not the DR link); following timeline {next}");
                } else {
                    tracing::info!(timeline = t, switch = %switch, next,
                        "end of timeline {t} at {switch}; following timeline {next}");
                }
                (next, seg.segment_start(switch))
            }
        }
        Some((t, _, name)) => {
            return Err(PgStreamError::Cluster(format!(
                "{describe} is on timeline {}, but drd's copy ({name}) is already on timeline \
                 {t}: was the database restored from an older backup?",
                id.timeline
            )))
        }
    };
    if tli > 1 {
        // The history of the timeline streamed must be at the DR site.
        histories(&mut conn, ctx, tli).await?;
    }
    {
        let mut pg = ctx.status.pg.locked();
        pg.connected = true;
        pg.system_id = id.sysid.to_string();
        pg.timeline = tli;
        pg.server_end = id.flush;
        pg.server_end_at_ms = crate::clock::unix_ms();
        pg.last_error.clear();
        // The slot has a restart point again (recreated by an operator).
        pg.slot_lost = false;
    }
    tracing::info!(database = %describe, timeline = tli, start = %start, server_flush = %id.flush,
        "streaming WAL from PostgreSQL");
    let sql = format!(
        "START_REPLICATION SLOT \"{}\" PHYSICAL {start} TIMELINE {tli}",
        src.slot
    );
    let (reader, copy_writer) = match conn.copy_both(&sql).await {
        Ok(Started::Copy(r, w)) => (r, w),
        Ok(Started::Rows(rows)) => {
            tracing::info!(
                ?rows,
                "timeline {tli} ends where drd starts; following the next"
            );
            return Ok(Ended::Timeline);
        }
        Err(e) => return Err(gap_or(e)),
    };
    let w = writer::start(
        ctx.cfg.wal_dir.clone(),
        seg,
        id.sysid,
        ctx.tuning.group_commit_bytes,
        start,
        ctx.status.clone(),
    );
    let writer::Handle { tx, progress, join } = w;
    let r = stream(
        ctx,
        shutdown,
        seg,
        tli,
        start,
        reader,
        copy_writer,
        tx,
        progress,
    )
    .await;
    // The writer syncs what it has and stops once its queue is closed; the
    // next session reads the files only after that.
    let w = join
        .await
        .map_err(|e| PgStreamError::Local(format!("the WAL writer failed: {e}")))?;
    match (r, w) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e),
        (Ok(ended), Ok(())) => Ok(ended),
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream(
    ctx: &PgContext,
    shutdown: &CancellationToken,
    seg: SegSize,
    tli: u32,
    start: Lsn,
    mut reader: conn::CopyReader,
    mut out: conn::CopyWriter,
    tx: tokio::sync::mpsc::Sender<writer::Cmd>,
    mut progress: tokio::sync::watch::Receiver<writer::Progress>,
) -> Result<Ended, PgStreamError> {
    let mode = mode_of(ctx.cfg.mode.in_effect(&ctx.role.state()));
    let mut fb = Feedback::new(mode, tli);
    let mut expected = start;
    let mut acks = ctx.status.durable_at.subscribe();
    let mut role_rx = ctx.role.subscribe();
    let t0 = Instant::now();
    let now_ms = || t0.elapsed().as_millis() as u64;
    let dr_of = |v: &Option<(String, u64)>| {
        v.as_ref()
            .and_then(|(name, size)| seg.lsn_in(name, (*size).min(seg.bytes())))
    };
    if let Some((t, l)) = dr_of(&acks.borrow_and_update()) {
        fb.dr_durable(t, l);
    }
    ctx.status.pg.locked().mode = mode_name(mode).into();
    loop {
        let mut reply = false;
        let due = fb.next_due();
        let sleep = Duration::from_millis(due.saturating_sub(now_ms()));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            r = role_rx.changed() => {
                let st = role_rx.borrow_and_update().clone();
                if r.is_err() || st.role != Role::Primary {
                    tracing::warn!("no longer the stream's primary; stopped streaming from PostgreSQL");
                    return Ok(Ended::RoleChanged);
                }
                // `drctl mode`: in force from the next status update on.
                let mode = mode_of(ctx.cfg.mode.in_effect(&st));
                if mode != fb.mode() {
                    fb.set_mode(mode);
                    ctx.status.pg.locked().mode = mode_name(mode).into();
                }
            }
            ev = reader.next() => match ev.map_err(gap_or)? {
                CopyEvent::Data(payload) => {
                    match msg::decode(&payload).map_err(|e| PgStreamError::Protocol(e.to_string()))? {
                        msg::ServerMsg::XLogData { start: at, end, data, .. } => {
                            if at != expected {
                                return Err(PgStreamError::Protocol(format!(
                                    "got WAL at {at}, expected it at {expected}"
                                )));
                            }
                            let n = data.len();
                            expected = at.checked_add(n as u64).ok_or_else(|| {
                                PgStreamError::Protocol(format!("WAL at {at} runs past the last LSN"))
                            })?;
                            let bytes = payload.slice(payload.len() - n..);
                            note_server(ctx, end);
                            tx.send(writer::Cmd::Data { tli, start: at, bytes }).await.map_err(|_| {
                                PgStreamError::Local("the WAL writer stopped".into())
                            })?;
                        }
                        msg::ServerMsg::Keepalive { end, reply_requested, .. } => {
                            note_server(ctx, end);
                            reply = reply_requested;
                        }
                    }
                }
                CopyEvent::ServerDone => {
                    out.done().await?;
                    let rows = reader.finish().await?;
                    let next = rows.first().map(|r| {
                        (r.get_idx(0).unwrap_or("?").to_string(), r.get_idx(1).unwrap_or("?").to_string())
                    });
                    match next {
                        Some((t, at)) => tracing::info!(
                            "end of timeline {tli} at {expected}; following timeline {t} from {at}"),
                        None => tracing::info!("PostgreSQL ended the stream (shutting down?)"),
                    }
                    return Ok(Ended::Timeline);
                }
            },
            r = progress.changed() => {
                if r.is_err() {
                    return Err(PgStreamError::Local("the WAL writer stopped".into()));
                }
            }
            r = acks.changed() => {
                if r.is_ok() {
                    if let Some((t, l)) = dr_of(&acks.borrow_and_update()) {
                        fb.dr_durable(t, l);
                    }
                }
            }
            _ = tokio::time::sleep(sleep) => {}
        }
        let p = *progress.borrow_and_update();
        fb.written(p.written);
        fb.local_durable(p.durable);
        if let Some((write, flush)) = fb.poll(now_ms(), reply) {
            let update = msg::StatusUpdate {
                write,
                flush,
                apply: Lsn::INVALID,
                time: msg::pg_time(crate::clock::unix_ms().saturating_mul(1000) as i64),
                reply_requested: false,
            };
            out.send(&update.encode()).await?;
            let mut pg = ctx.status.pg.locked();
            pg.reported_write = write;
            pg.reported_flush = flush;
        }
        let mut pg = ctx.status.pg.locked();
        pg.written = p.written;
        pg.local_durable = p.durable;
        pg.dr_durable = dr_of(&acks.borrow());
    }
}

/// "requested WAL segment … has already been removed" (58P01) is a gap in
/// what drd can get, not a broken connection.
fn gap_or(e: PgError) -> PgStreamError {
    if e.sqlstate() == Some("58P01") {
        PgStreamError::Gap(format!(
            "PostgreSQL no longer has the WAL drd needs ({e}); the DR copy has a gap: rebuild \
             the DR standby from a new base backup"
        ))
    } else {
        e.into()
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Async => "async",
        Mode::Sync => "sync",
    }
}

fn note_server(ctx: &PgContext, end: Lsn) {
    let mut pg = ctx.status.pg.locked();
    if end > pg.server_end {
        pg.server_end = end;
    }
    pg.server_end_at_ms = crate::clock::unix_ms();
}
