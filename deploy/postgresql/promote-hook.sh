#!/bin/sh
# drd promote hook for PostgreSQL: promotes the DR site's standby — built
# with pg_basebackup and restoring through `drctl wal-fetch` — to primary.
#
# drd runs it (`sh -c`) right after this node became primary (`drctl
# failover`, or the replica side of `drctl switchover`), at most once per
# epoch, with DRD_HOOK, DRD_NODE_ID, DRD_EPOCH, DRD_ROLE and DRD_FORK_POSITION
# in the environment. Its output goes to drd's log and the audit log.
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
#
# Exit 0 once the server runs as a primary (also when it already did), non-zero
# otherwise: drd reports the failure in `drctl failover`'s output.
set -eu

: "${PGDATA:?set PGDATA to the standby data directory}"
PG_OS_USER="${PG_OS_USER:-postgres}"
PROMOTE_TIMEOUT="${PROMOTE_TIMEOUT:-60}"

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

if [ -n "${PROMOTE_CONNINFO:-}" ]; then
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

# -w: wait until the server has finished recovery — it first replays every
# segment drctl wal-fetch can still serve — and runs as a primary.
as_owner "$PGBIN/pg_ctl" promote -D "$PGDATA" -w -t "$PROMOTE_TIMEOUT"
echo "promote hook: the server is primary"
