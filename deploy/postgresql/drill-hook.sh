#!/bin/sh
# drd drill hooks for PostgreSQL: build a scratch database from the DR
# standby and drd's WAL, check it, and remove it (`drctl drill`, issue 21).
#
# One script, three subcommands (drd config, [hooks]):
#   drill_restore  = "/usr/share/drd/postgresql/drill-hook.sh restore"
#   drill_check    = "/usr/share/drd/postgresql/drill-hook.sh check"
#   drill_teardown = "/usr/share/drd/postgresql/drill-hook.sh teardown"
# Without an argument the subcommand comes from DRD_HOOK (drill_restore, ...).
#
# drd runs each as `sh -c` at the DR node with DRD_HOOK, DRD_NODE_ID,
# DRD_STREAM, DRD_EPOCH, DRD_ROLE, DRD_DRILL_ID, DRD_DRILL_DIR (an empty
# directory for this drill, mode 0700, removed by drd after teardown),
# DRD_DRILL_SEGMENT (the newest complete segment of drd's copy at the
# snapshot), DRD_DRILL_LSN (where the DR copy ends, may be empty) and
# DRD_SOCKET in the environment. Output goes into the drill report.
#
# restore   pg_basebackup of the DR standby into $DRD_DRILL_DIR/pgdata, with
#           -X none: the backup carries no WAL, so every WAL byte the scratch
#           server replays comes from drd through `drctl wal-fetch` — that is
#           what the drill proves. The scratch server gets a configuration of
#           its own (the standby's postgresql.conf, postgresql.auto.conf and
#           pg_hba.conf are set aside), does archive recovery to the end of
#           drd's WAL and promotes itself. The hook waits for that, fails if
#           replay ended before DRD_DRILL_SEGMENT, and prints
#           `drd-drill: restored_lsn=X/Y`.
# check     connects to the scratch server, prints `drd-drill: version=...`,
#           runs DRILL_CHECK_SQL; fails on an error or an empty result.
# teardown  stops the scratch server (`pg_ctl stop -m immediate`) and removes
#           its files. Idempotent: nothing to do is success.
#
# The scratch server cannot touch the live system: it listens on no TCP
# address (listen_addresses = ''), only on a socket inside the drill
# directory; archive_mode is off and primary_conninfo empty, so after its
# promotion nothing ships anywhere and nothing connects to it but this hook.
# drd's WAL is read only (wal-fetch copies verified segments out).
#
# Settings (environment):
#   DRILL_SOURCE_CONNINFO how pg_basebackup reaches the DR standby (required),
#                    e.g. "host=/var/run/postgresql port=5432 user=drd_drill";
#                    the role needs REPLICATION. Never printed.
#   PGBIN            directory holding pg_ctl and pg_basebackup (default: the
#                    directory of pg_ctl from PATH, symlinks resolved, else
#                    the newest /usr/lib/postgresql/*/bin)
#   PG_OS_USER       the cluster's owner (default: postgres); when the hook
#                    runs as root, PostgreSQL's commands run as this user and
#                    the drill directory is given to it
#   DRILL_PORT       the scratch server's port (default 5499); it names the
#                    socket file only — no TCP port is opened
#   DRILL_RESTORE_COMMAND the scratch server's restore_command (default:
#                    drctl --socket "$DRD_SOCKET" wal-fetch --drill --stream "$DRD_STREAM" %f %p;
#                    --drill: drd's retention does not count what the scratch
#                    server reads as read by the live DR standby — keep it
#                    in a command of your own)
#   DRILL_CHECK_SQL  the check query (default: SELECT 1)
#   DRILL_DBNAME     database the check connects to (default: postgres)
#   DRILL_DBUSER     database role the check connects as (default:
#                    $PG_OS_USER, the usual bootstrap superuser)
#   DRILL_TIMEOUT    seconds for the scratch server to finish recovery and
#                    accept connections (default 600)
#   DRILL_EXTRA_CONF extra postgresql.conf lines for the scratch server (e.g.
#                    "shared_preload_libraries = 'pg_stat_statements'"); they
#                    come before the safety settings, which therefore win
#
# Exit 0 on success, non-zero with a reason on stderr.
set -eu
umask 077

sub="${1:-}"
if [ -z "$sub" ]; then
    sub="${DRD_HOOK:-}"
    sub="${sub#drill_}"
fi

: "${DRD_DRILL_DIR:?DRD_DRILL_DIR is not set (drd sets it for drill hooks)}"
case "$DRD_DRILL_DIR" in
    /*) ;;
    *) echo "drill hook: DRD_DRILL_DIR must be an absolute path: $DRD_DRILL_DIR" >&2; exit 2 ;;
esac
if [ "$DRD_DRILL_DIR" = / ]; then
    echo "drill hook: DRD_DRILL_DIR must not be /" >&2
    exit 2
fi
if [ ! -d "$DRD_DRILL_DIR" ]; then
    if [ "$sub" = teardown ]; then
        echo "drill hook: $DRD_DRILL_DIR is gone: nothing to tear down"
        exit 0
    fi
    echo "drill hook: DRD_DRILL_DIR ($DRD_DRILL_DIR) is not a directory" >&2
    exit 2
fi

PG_OS_USER="${PG_OS_USER:-postgres}"
DRILL_PORT="${DRILL_PORT:-5499}"
DRILL_CHECK_SQL="${DRILL_CHECK_SQL:-SELECT 1}"
DRILL_DBNAME="${DRILL_DBNAME:-postgres}"
DRILL_DBUSER="${DRILL_DBUSER:-$PG_OS_USER}"
DRILL_TIMEOUT="${DRILL_TIMEOUT:-600}"

if [ -z "${PGBIN:-}" ]; then
    if command -v pg_ctl >/dev/null 2>&1; then
        PGBIN="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
    fi
    if [ -z "${PGBIN:-}" ] || [ ! -x "$PGBIN/pg_basebackup" ]; then
        PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    fi
fi

PGDATA="$DRD_DRILL_DIR/pgdata"
RUN_DIR="$DRD_DRILL_DIR/run"            # the scratch server's socket
TBLSPC_DIR="$DRD_DRILL_DIR/tablespaces" # tablespaces, relocated here
LOG="$DRD_DRILL_DIR/postgresql.log"
# Quotes a value for a libpq connection string.
ci_quote() { printf "'%s'" "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")"; }
CONNINFO="host=$(ci_quote "$RUN_DIR") port=$DRILL_PORT dbname=$(ci_quote "$DRILL_DBNAME") user=$(ci_quote "$DRILL_DBUSER")"

say() { echo "drill hook: $*"; }
die() { echo "drill hook: $*" >&2; exit 1; }

# Runs a command as the cluster owner (root switches users; anyone else runs
# it as themselves — e.g. drd's own user, which then owns the scratch server).
as_owner() {
    if [ "$(id -u)" = 0 ] && [ "$PG_OS_USER" != root ]; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

# psql against the scratch server: one value per line, no headers.
scratch_sql() {
    as_owner "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 "$CONNINFO" -c "$1"
}

# Quotes a value for sh ('...'), for a setting PostgreSQL runs with sh.
sh_quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
# Quotes a value for postgresql.conf ('...', quotes doubled, backslashes
# doubled: the file's strings know C-style escapes).
conf_quote() { printf "'%s'" "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e "s/'/''/g")"; }

# The server log's last lines, for a failure message.
log_tail() {
    if [ -r "$LOG" ]; then
        echo "--- last lines of the scratch server's log ($LOG) ---" >&2
        tail -n 25 "$LOG" >&2
        echo "---" >&2
    fi
}

# X/Y LSN -> byte position (64-bit shell arithmetic).
lsn_bytes() {
    hi="${1%/*}"
    lo="${1#*/}"
    echo $(( (0x$hi << 32) + 0x$lo ))
}

# Whether the scratch server runs.
running() {
    [ -f "$PGDATA/PG_VERSION" ] && as_owner "$PGBIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

do_restore() {
    : "${DRILL_SOURCE_CONNINFO:?set DRILL_SOURCE_CONNINFO: how pg_basebackup reaches the DR standby}"
    socket="$RUN_DIR/.s.PGSQL.$DRILL_PORT"
    if [ "${#socket}" -gt 107 ]; then
        die "the scratch server's socket path $socket is longer than a Unix socket allows (107 bytes): use a shorter drill directory"
    fi
    if [ -e "$PGDATA" ]; then
        die "$PGDATA exists already (an earlier drill not torn down?): run the teardown hook first"
    fi
    if [ "$(id -u)" = 0 ] && [ "$PG_OS_USER" != root ]; then
        # The scratch server runs as the cluster owner, who must own its
        # directory (drd removes it afterwards all the same).
        chown "$PG_OS_USER" "$DRD_DRILL_DIR"
    fi
    say "drill ${DRD_DRILL_ID:-?} of stream ${DRD_STREAM:-?} on ${DRD_NODE_ID:-?}: base backup of the DR standby into $PGDATA"

    # Tablespaces would be written to their original paths — the live
    # standby's. Map each to a directory inside the drill directory.
    # (DRILL_SOURCE_CONNINFO in key=value form: dbname=postgres is added.)
    set --
    if ! locations="$(as_owner "$PGBIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -d "$DRILL_SOURCE_CONNINFO dbname=postgres" \
        -c "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')" 2>/dev/null)"; then
        locations=""
        say "could not list the standby's tablespaces (no pg_hba.conf line for database postgres?): assuming none; pg_basebackup refuses if there are some"
    fi
    n=0
    old_ifs="$IFS"
    IFS='
'
    for loc in $locations; do
        n=$((n + 1))
        set -- "$@" -T "$loc=$TBLSPC_DIR/$n"
        say "tablespace $loc -> $TBLSPC_DIR/$n"
    done
    IFS="$old_ifs"
    if [ "$n" -gt 0 ]; then
        as_owner mkdir -m 0700 "$TBLSPC_DIR"
    fi

    # -X none: no WAL in the backup; recovery fetches all of it from drd.
    # --checkpoint=fast: on a standby this is a restartpoint at the last
    # checkpoint record replayed; nothing is written at the primary.
    # --no-sync: the copy is thrown away after the drill, and a crash during
    # it makes the drill fail, not lose data; skipping the fsync of a whole
    # database spares the disks the live standby shares.
    # client_min_messages: the standby's NOTICE "WAL archiving is not
    # enabled; you must ensure that all required WAL segments are copied
    # through other means" is expected here — drd is those other means.
    if ! as_owner env PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" \
        "$PGBIN/pg_basebackup" -d "$DRILL_SOURCE_CONNINFO" -D "$PGDATA" \
        -X none --checkpoint=fast --no-sync "$@" \
        -l "drd drill ${DRD_DRILL_ID:-}"; then
        die "pg_basebackup from the DR standby failed (see above; check DRILL_SOURCE_CONNINFO, the role's REPLICATION attribute, pg_hba.conf and max_wal_senders on the standby)"
    fi

    # Set the standby's own configuration aside: it may name the live
    # standby's paths, a primary_conninfo, an archive_command.
    for f in postgresql.conf postgresql.auto.conf pg_hba.conf pg_ident.conf; do
        if [ -e "$PGDATA/$f" ]; then
            as_owner mv "$PGDATA/$f" "$PGDATA/$f.from-standby"
        fi
    done

    # Hot standby needs these at least as high as the primary had them;
    # pg_control records the primary's values.
    controldata="$(LC_ALL=C as_owner "$PGBIN/pg_controldata" "$PGDATA")"
    ctl() { printf '%s\n' "$controldata" | sed -n "s/^$1: *//p"; }
    max_connections="$(ctl 'max_connections setting')"
    max_worker_processes="$(ctl 'max_worker_processes setting')"
    max_wal_senders="$(ctl 'max_wal_senders setting')"
    max_prepared="$(ctl 'max_prepared_xacts setting')"
    max_locks="$(ctl 'max_locks_per_xact setting')"
    seg_size="$(ctl 'Bytes per WAL segment')"

    if [ -n "${DRILL_RESTORE_COMMAND:-}" ]; then
        restore_command="$DRILL_RESTORE_COMMAND"
    else
        restore_command="drctl"
        if [ -n "${DRD_SOCKET:-}" ]; then
            restore_command="$restore_command --socket $(sh_quote "$(printf '%s' "$DRD_SOCKET" | sed 's/%/%%/g')")"
        fi
        restore_command="$restore_command wal-fetch --drill"
        if [ -n "${DRD_STREAM:-}" ]; then
            restore_command="$restore_command --stream $(sh_quote "$(printf '%s' "$DRD_STREAM" | sed 's/%/%%/g')")"
        fi
        restore_command="$restore_command %f %p"
    fi

    as_owner mkdir -m 0700 "$RUN_DIR"
    os_user="$(as_owner id -un)"
    # Written by the cluster owner, so the files are theirs.
    as_owner sh -c 'cat > "$1"' sh "$PGDATA/postgresql.conf" <<EOF
# drd drill ${DRD_DRILL_ID:-} — a scratch server, removed by the teardown hook.
# The DR standby's own files are beside this one as *.from-standby.
${DRILL_EXTRA_CONF:-}

# Safety: nothing of the live system is reachable from here.
port = $DRILL_PORT
listen_addresses = ''
unix_socket_directories = $(conf_quote "$RUN_DIR")
unix_socket_permissions = 0700
hba_file = $(conf_quote "$PGDATA/pg_hba.conf")
ident_file = $(conf_quote "$PGDATA/pg_ident.conf")
ssl = off
archive_mode = off
archive_command = ''
primary_conninfo = ''
primary_slot_name = ''
synchronous_standby_names = ''
cluster_name = 'drd-drill'

# Recovery: archive recovery to the end of drd's WAL, then promotion.
restore_command = $(conf_quote "$restore_command")
recovery_target_timeline = 'latest'
recovery_end_command = ''
archive_cleanup_command = ''
hot_standby = on
# At least the primary's values (from pg_control), or hot standby refuses.
max_connections = ${max_connections:-100}
max_worker_processes = ${max_worker_processes:-8}
max_wal_senders = ${max_wal_senders:-10}
max_prepared_transactions = ${max_prepared:-0}
max_locks_per_transaction = ${max_locks:-64}

# Small, and quiet: the DR host's resources belong to the live standby.
shared_buffers = 64MB
autovacuum = off
jit = off
shared_preload_libraries = ''

# Logging to a file in the drill directory (pg_ctl -l), in English, so that
# "redo done at" can be read back.
logging_collector = off
log_destination = 'stderr'
lc_messages = 'C'
log_line_prefix = '%m [%p] '
EOF
    as_owner sh -c 'cat > "$1"' sh "$PGDATA/pg_hba.conf" <<EOF
# drd drill: the socket (in a 0700 directory) only, as the server's OS user.
local all all peer map=drill
EOF
    as_owner sh -c 'cat > "$1"' sh "$PGDATA/pg_ident.conf" <<EOF
drill $os_user $DRILL_DBUSER
EOF

    # Archive recovery (recovery.signal), not standby mode: at the end of
    # drd's WAL the server promotes itself. A promoted scratch server proves
    # the copy would take over — and is harmless here: archive_mode is off,
    # it has its own socket and no TCP address, nothing ships anywhere.
    as_owner rm -f "$PGDATA/standby.signal"
    as_owner touch "$PGDATA/recovery.signal"

    say "starting the scratch server (socket $RUN_DIR, port $DRILL_PORT); restore_command = $restore_command"
    started=$(date +%s)
    if ! as_owner "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$LOG" -w -t "$DRILL_TIMEOUT" >/dev/null; then
        log_tail
        die "the scratch server did not start, or did not become consistent within ${DRILL_TIMEOUT}s (its log above: a segment drd could not serve?)"
    fi

    # Wait for the end of recovery: pg_is_in_recovery() false once promoted.
    last=""
    while :; do
        # One query a round (each is a process): the state, where replay
        # is, and — once promoted — the new timeline.
        state="$(scratch_sql "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), (SELECT timeline_id FROM pg_control_checkpoint())" 2>/dev/null || true)"
        case "$state" in
            f\|*) break ;;
            t\|*) last="${state#t|}"; last="${last%%|*}" ;;
        esac
        if ! running; then
            log_tail
            die "the scratch server stopped during recovery (replayed up to ${last:-?}; its log above)"
        fi
        if [ $(( $(date +%s) - started )) -ge "$DRILL_TIMEOUT" ]; then
            log_tail
            die "recovery did not finish within ${DRILL_TIMEOUT}s (replayed up to ${last:-?}); DRILL_TIMEOUT raises the limit"
        fi
        # Short: the drill's RTO ends when the check succeeds, so this
        # loop's delay counts in it (coreutils' sleep takes fractions).
        sleep 0.1
    done

    # Where replay ended. PostgreSQL 15 keeps pg_last_wal_replay_lsn() at the
    # end of the last record replayed after promotion; the log's "redo done
    # at" (the start of that record) is the fallback.
    state="${state#f|}"
    restored="${state%%|*}"
    timeline="${state#*|}"
    if [ -z "$restored" ]; then
        restored="$(sed -n 's/.*redo done at \([0-9A-Fa-f]*\/[0-9A-Fa-f]*\).*/\1/p' "$LOG" | tail -n 1)"
    fi
    say "recovery finished and the scratch server was promoted (timeline ${timeline:-?}) after $(( $(date +%s) - started ))s"
    if [ -z "$restored" ]; then
        die "cannot tell where replay ended (no pg_last_wal_replay_lsn(), no 'redo done at' in $LOG)"
    fi
    echo "drd-drill: restored_lsn=$restored"
    if [ -n "${DRD_DRILL_LSN:-}" ]; then
        say "the DR copy ended at $DRD_DRILL_LSN at the snapshot; replay ended at $restored"
    fi

    # Replay must have reached the newest complete segment of the snapshot:
    # drd served every segment up to it.
    seg="${DRD_DRILL_SEGMENT:-}"
    case "$seg" in
        [0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F][0-9A-F])
            if [ -n "$seg_size" ]; then
                log_id=$(( 0x$(printf '%s' "$seg" | cut -c9-16) ))
                seg_no=$(( 0x$(printf '%s' "$seg" | cut -c17-24) ))
                seg_start=$(( log_id * 4294967296 + seg_no * seg_size ))
                if [ "$(lsn_bytes "$restored")" -lt "$seg_start" ]; then
                    die "replay ended at $restored, before $seg, the newest complete segment of drd's copy at the snapshot: not all of drd's WAL restored (the scratch server's log: $LOG)"
                fi
                say "replay reached $seg, the newest complete segment at the snapshot"
            fi
            ;;
        "") ;;
        *) say "DRD_DRILL_SEGMENT=$seg is not a WAL segment name; not compared" ;;
    esac
}

do_check() {
    if ! running; then
        die "no scratch server runs in $PGDATA (did the restore hook succeed?)"
    fi
    version="$(scratch_sql "SELECT version()")" || die "cannot connect to the scratch server ($CONNINFO)"
    echo "drd-drill: version=$version"
    say "running DRILL_CHECK_SQL on database $DRILL_DBNAME"
    # Unaligned, with the row-count footer: "(N rows)" tells an empty result
    # from a row holding an empty value.
    if ! out="$(as_owner "$PGBIN/psql" -X -q -A -P footer=on -v ON_ERROR_STOP=1 "$CONNINFO" -c "$DRILL_CHECK_SQL" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "the check query failed"
    fi
    printf '%s\n' "$out"
    if ! printf '%s\n' "$out" | grep -Eq '^\([1-9][0-9]* rows?\)$'; then
        die "the check query returned no row"
    fi
    say "check passed"
}

do_teardown() {
    if [ -f "$PGDATA/postmaster.pid" ] || running; then
        say "stopping the scratch server in $PGDATA"
        if ! as_owner "$PGBIN/pg_ctl" stop -D "$PGDATA" -m immediate -w -t 60 >/dev/null 2>&1; then
            pid="$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true)"
            case "$pid" in
                ''|*[!0-9]*) ;;
                *) if kill -0 "$pid" 2>/dev/null; then
                       say "pg_ctl stop failed; killing postmaster $pid"
                       kill -KILL "$pid" 2>/dev/null || true
                       sleep 1
                   fi ;;
            esac
        fi
        if running; then
            die "the scratch server in $PGDATA is still running"
        fi
    fi
    removed=""
    for d in "$PGDATA" "$TBLSPC_DIR" "$RUN_DIR"; do
        if [ -e "$d" ]; then
            rm -rf -- "$d"
            removed="$removed $d"
        fi
    done
    if [ -n "$removed" ]; then
        say "removed$removed"
    else
        say "nothing to tear down in $DRD_DRILL_DIR"
    fi
}

case "$sub" in
    restore) do_restore ;;
    check) do_check ;;
    teardown) do_teardown ;;
    *) echo "usage: drill-hook.sh restore|check|teardown (or DRD_HOOK=drill_restore|drill_check|drill_teardown)" >&2; exit 2 ;;
esac
