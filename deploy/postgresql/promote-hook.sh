#!/bin/sh
# drd promote hook for PostgreSQL: promotes the DR site's standby — built
# with pg_basebackup and restoring through `drctl wal-fetch` — to primary.
#
# drd runs it (`sh -c`) right after this node became primary (`drctl
# failover`, or the replica side of `drctl switchover`), at most once per
# epoch, with DRD_HOOK, DRD_NODE_ID, DRD_EPOCH, DRD_ROLE and DRD_FORK_POSITION
# in the environment — and, for a WAL stream, DRD_FORK_LSN / DRD_FORK_TIMELINE:
# where the DR copy ends. Its output goes to drd's log and the audit log.
#
# The DR copy usually ends inside a segment (the last one the old primary was
# writing). `drctl wal-fetch` serves that segment zero-filled to full size,
# and the standby must replay it BEFORE it is promoted: once promoted,
# PostgreSQL never goes back for a segment it found short earlier. So the
# hook first waits until the standby has replayed up to DRD_FORK_LSN (polling
# pg_last_wal_replay_lsn(); the standby re-runs restore_command every
# wal_retrieve_retry_interval), and fails rather than promote short.
#
# Settings (environment):
#   PGDATA           the standby's data directory (required)
#   PGBIN            directory holding pg_ctl (default: pg_ctl from PATH,
#                    else the newest /usr/lib/postgresql/*/bin)
#   PG_OS_USER       the cluster's owner (default: postgres); when the hook
#                    runs as root, pg_ctl runs as this user
#   PROMOTE_CONNINFO if set, promote with SQL instead of pg_ctl:
#                    psql "$PROMOTE_CONNINFO" -c 'SELECT pg_promote(true, T)'
#                    (for a drd that is neither root nor the cluster owner:
#                    GRANT EXECUTE ON FUNCTION pg_promote TO that role)
#   PROMOTE_TIMEOUT  seconds to wait for the promotion (default 60)
#   PROMOTE_REPLAY_TIMEOUT seconds to wait for replay to reach DRD_FORK_LSN
#                    (default 120)
#   REPLAY_CONNINFO  how to ask the standby for its replay position (default:
#                    PROMOTE_CONNINFO, else its socket and port from
#                    $PGDATA/postmaster.pid, as the cluster owner; needs
#                    hot_standby = on, PostgreSQL's default)
#
# Exit 0 once the server runs as a primary (also when it already did), non-zero
# otherwise: drd reports the failure in `drctl failover`'s output.
set -eu

: "${PGDATA:?set PGDATA to the standby data directory}"
PG_OS_USER="${PG_OS_USER:-postgres}"
PROMOTE_TIMEOUT="${PROMOTE_TIMEOUT:-60}"
PROMOTE_REPLAY_TIMEOUT="${PROMOTE_REPLAY_TIMEOUT:-120}"

if [ -z "${PGBIN:-}" ]; then
    if command -v pg_ctl >/dev/null 2>&1; then
        PGBIN="$(dirname "$(command -v pg_ctl)")"
    else
        PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    fi
fi

# Runs a command as the cluster owner (root may switch users; anyone else
# runs it as themselves).
as_owner() {
    if [ "$(id -u)" = 0 ] && [ "$PG_OS_USER" != root ]; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

echo "promote hook: node ${DRD_NODE_ID:-?} epoch ${DRD_EPOCH:-?}: promoting the standby in $PGDATA"

# Waits until the standby has replayed the DR copy's last byte (see above).
wait_for_replay() {
    [ -n "${DRD_FORK_LSN:-}" ] || return 0
    conninfo="${REPLAY_CONNINFO:-${PROMOTE_CONNINFO:-}}"
    if [ -z "$conninfo" ]; then
        pid_file="$PGDATA/postmaster.pid"
        if ! as_owner test -r "$pid_file"; then
            echo "promote hook: the standby in $PGDATA is not running" >&2
            exit 1
        fi
        port="$(as_owner sed -n 4p "$pid_file")"
        sockdir="$(as_owner sed -n 5p "$pid_file")"
        conninfo="host=$sockdir port=$port dbname=postgres"
    fi
    echo "promote hook: waiting for the standby to replay up to $DRD_FORK_LSN (timeline ${DRD_FORK_TIMELINE:-?}), the end of the DR copy"
    waited=0
    while :; do
        replayed="$(as_owner "$PGBIN/psql" -X -A -t "$conninfo" \
            -c "SELECT pg_last_wal_replay_lsn() >= '$DRD_FORK_LSN'::pg_lsn, pg_last_wal_replay_lsn()" 2>/dev/null || true)"
        case "$replayed" in
            t\|*) echo "promote hook: replayed up to ${replayed#t|}"; return 0 ;;
        esac
        if [ "$waited" -ge "$PROMOTE_REPLAY_TIMEOUT" ]; then
            echo "promote hook: after ${PROMOTE_REPLAY_TIMEOUT}s the standby has replayed only up to ${replayed#f|} of $DRD_FORK_LSN; NOT promoting it short. Check its log and restore_command (drctl wal-fetch), then run the hook again" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

if [ -n "${PROMOTE_CONNINFO:-}" ]; then
    wait_for_replay
    result="$(as_owner "$PGBIN/psql" -X -A -t -v ON_ERROR_STOP=1 "$PROMOTE_CONNINFO" \
        -c "SELECT CASE WHEN pg_is_in_recovery() THEN pg_promote(true, $PROMOTE_TIMEOUT) ELSE true END")"
    if [ "$result" != t ]; then
        echo "promote hook: pg_promote() did not complete within ${PROMOTE_TIMEOUT}s" >&2
        exit 1
    fi
    echo "promote hook: the server is primary"
    exit 0
fi

# Already promoted (e.g. the hook ran before a crash of drd)? Then done.
if ! as_owner test -e "$PGDATA/standby.signal"; then
    if as_owner "$PGBIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
        echo "promote hook: no standby.signal and the server runs: already primary"
        exit 0
    fi
    echo "promote hook: $PGDATA has no standby.signal and no running server; nothing to promote" >&2
    exit 1
fi

wait_for_replay

# -w: wait until the server has finished recovery — it first replays every
# segment drctl wal-fetch can still serve — and runs as a primary.
as_owner "$PGBIN/pg_ctl" promote -D "$PGDATA" -w -t "$PROMOTE_TIMEOUT"
echo "promote hook: the server is primary"
