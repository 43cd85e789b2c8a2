#!/bin/bash
# Benchmark: `pgha standby --force-reclone` (wall time from start to streaming) against a bare
# `pg_basebackup -X stream --checkpoint=fast` into an empty directory, and against the same clone
# done by hand (pg_basebackup, standby.signal and primary_conninfo, `pg_ctl start` without
# waiting, pg_stat_wal_receiver polled until it streams), alternating, on two network-namespace
# hosts with a pgbench database of about 1 GB. Then one clone while pgbench writes on the
# primary, and a comparison of row count and checksum on both sides.
#
# Usage (root, PostgreSQL 15): cargo build --release && bench/clone.sh
#   PGHA=path/to/pgha  SCALE=70  RUNS=3  bench/clone.sh
# It creates and removes its own namespaces (pghab-a, pghab-b) and clusters (15/pghabench_a, _b).
set -euo pipefail

SCALE=${SCALE:-70}
RUNS=${RUNS:-3}
NS_A=pghab-a NS_B=pghab-b
VETH_A=pghab-va VETH_B=pghab-vb
IP_A=10.233.77.1 IP_B=10.233.77.2
PORT_A=46501 PORT_B=46502
# The by-hand standby runs beside pgha's on host B, on a port of its own.
PORT_HAND=46503
CL_A=pghabench_a CL_B=pghabench_b
PGBENCH_PID=
source "$(dirname "$0")/lib.sh"
BARE=/var/lib/postgresql/$VERSION/pghabench_bare
BY_HAND=/var/lib/postgresql/$VERSION/pghabench_by_hand

stop_by_hand() {
    [ -f "$BY_HAND/postmaster.pid" ] && runuser -u postgres -- "$BIN/pg_ctl" stop -D "$BY_HAND" -m immediate >/dev/null 2>&1
    rm -rf "$BY_HAND"
}

bench_extra_cleanup() {
    [ -n "$PGBENCH_PID" ] && kill "$PGBENCH_PID" 2>/dev/null
    stop_by_hand
    rm -rf "$BARE"
}

# The clone as an admin types it, timed from launch to streaming: what pgha's clone should cost.
# pg_basebackup copies no configuration from a Debian primary (it lives in /etc): the copy gets
# the least it needs to start (PostgreSQL's defaults match the primary's max_connections etc.).
clone_by_hand() {
    on_b runuser -u postgres -- "$BIN/pg_basebackup" -d "$BARE_CONNINFO" -D "$BY_HAND" -X stream --checkpoint=fast
    runuser -u postgres -- sh -c "cd '$BY_HAND' && touch standby.signal pg_ident.conf &&
        echo 'local all postgres peer' > pg_hba.conf &&
        printf '%s\n' \"port = $PORT_HAND\" \"unix_socket_directories = '/var/run/postgresql'\" \
            \"primary_conninfo = '$BARE_CONNINFO'\" > postgresql.conf"
    on_b runuser -u postgres -- "$BIN/pg_ctl" start -W -D "$BY_HAND" -l "$BY_HAND/startup.log" >/dev/null
    local polls=0
    until [ "$(psql_on "$PORT_HAND" -c "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null)" = streaming ]; do
        polls=$((polls + 1))
        [ "$polls" -lt 1200 ] || { echo "the standby made by hand does not stream" >&2; exit 1; }
        sleep 0.1
    done
}

echo "== setting up two hosts ($IP_A, $IP_B) and clusters"
bench_setup_hosts
bench_create_clusters
on_a pg_ctlcluster $VERSION $CL_A start
on_b pg_ctlcluster $VERSION $CL_B start

bench_write_password
bench_config $CL_A $IP_A $PORT_A $IP_B 120s > "$WORK/pgha-a.conf"
bench_config $CL_B $IP_A $PORT_A $IP_B 120s > "$WORK/pgha-b.conf"
on_a "$PGHA" --config "$WORK/pgha-a.conf" primary >/dev/null

echo "== pgbench -i -s $SCALE on the primary"
runuser -u postgres -- "$BIN/pgbench" -i -q -s "$SCALE" -h /var/run/postgresql -p $PORT_A postgres >/dev/null 2>&1
psql_a "CHECKPOINT" >/dev/null
SIZE_MB=$(psql_a "SELECT round(sum(pg_database_size(oid)) / 1048576) FROM pg_database")
echo "primary holds $SIZE_MB MB"

# The bare copy uses the same passfile pgha wrote, from host B's namespace.
on_b "$PGHA" --config "$WORK/pgha-b.conf" standby >/dev/null 2>&1
BARE_CONNINFO="host=$IP_A port=$PORT_A user=replicator passfile=$WORK/pgpass sslmode=require"

pgha_times=() bare_times=() hand_times=() start_times=() bare_ratios=() hand_ratios=()
for run in $(seq 1 "$RUNS"); do
    start=$(now)
    on_b "$PGHA" --config "$WORK/pgha-b.conf" standby --force-reclone 2>&1 >/dev/null \
        | while IFS= read -r line; do printf '%s %s\n' "$(now)" "$line"; done > "$WORK/trace"
    end=$(now)
    # TRACE=1 shows where pgha's time goes: each log line with its offset from the start.
    [ -n "${TRACE:-}" ] && awk -v s="$start" '{t=$1; $1=""; printf "  +%6.2fs%s\n", t - s, $0}' "$WORK/trace"
    # From the start of the new standby to the end: its start and the wait for streaming.
    start_times+=("$(awk -v e="$end" '/starting cluster/ {s=$1} END {print e - s}' "$WORK/trace")")
    pgha_times+=("$(echo "$end - $start" | bc)")
    rm -rf /var/lib/postgresql/$VERSION/$CL_B.pgha-old-*

    rm -rf "$BARE"
    start=$(now)
    on_b runuser -u postgres -- "$BIN/pg_basebackup" -d "$BARE_CONNINFO" -D "$BARE" \
        -X stream --checkpoint=fast
    end=$(now)
    bare_times+=("$(echo "$end - $start" | bc)")
    rm -rf "$BARE"

    start=$(now)
    clone_by_hand
    end=$(now)
    hand_times+=("$(echo "$end - $start" | bc)")
    stop_by_hand
    # Ratios within one run: neighbours in time share the machine's load, which drifts between runs.
    bare_ratios+=("$(echo "${pgha_times[-1]} / ${bare_times[-1]}" | bc -l)")
    hand_ratios+=("$(echo "${pgha_times[-1]} / ${hand_times[-1]}" | bc -l)")
    printf 'run %d: pgha %.2fs, bare pg_basebackup %.2fs, by hand to streaming %.2fs\n' "$run" \
        "${pgha_times[-1]}" "${bare_times[-1]}" "${hand_times[-1]}"
done

PGHA_MED=$(median "${pgha_times[@]}")
BARE_MED=$(median "${bare_times[@]}")
HAND_MED=$(median "${hand_times[@]}")
echo "== idle primary, median of $RUNS"
printf 'pgha standby --force-reclone: %.2fs (%.0f MB/s)\n' "$PGHA_MED" "$(echo "$SIZE_MB / $PGHA_MED" | bc -l)"
printf 'bare pg_basebackup:           %.2fs (%.0f MB/s)\n' "$BARE_MED" "$(echo "$SIZE_MB / $BARE_MED" | bc -l)"
printf 'by hand, to streaming:        %.2fs\n' "$HAND_MED"
printf 'ratio pgha / bare: %.2f (target <= 1.10); median of the per-run ratios %.2f\n' \
    "$(echo "$PGHA_MED / $BARE_MED" | bc -l)" "$(median "${bare_ratios[@]}")"
printf 'ratio pgha / by hand: %.2f (target <= 1.05); median of the per-run ratios %.2f\n' \
    "$(echo "$PGHA_MED / $HAND_MED" | bc -l)" "$(median "${hand_ratios[@]}")"
START_MED=$(median "${start_times[@]}")
printf 'of pgha'"'"'s time, starting the standby until it streams took %.2fs\n' "$START_MED"

echo "== clone while pgbench writes on the primary"
runuser -u postgres -- "$BIN/pgbench" -n -c 4 -j 2 -T 600 -h /var/run/postgresql -p $PORT_A postgres >/dev/null 2>&1 &
PGBENCH_PID=$!
sleep 3
start=$(now)
on_b "$PGHA" --config "$WORK/pgha-b.conf" standby --force-reclone >/dev/null 2>&1
end=$(now)
sleep 3
kill "$PGBENCH_PID"; wait "$PGBENCH_PID" 2>/dev/null || true
PGBENCH_PID=
printf 'pgha standby --force-reclone under load: %.2fs\n' "$(echo "$end - $start" | bc)"
target=$(psql_a "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 300); do
    [ "$(psql_b "SELECT pg_last_wal_replay_lsn() >= '$target'::pg_lsn")" = t ] && break
    sleep 0.2
done
CHECK="SELECT count(*) || ' rows, checksum ' || coalesce(sum(hashtext(tid || ':' || bid || ':' || aid || ':' || delta || ':' || mtime)::bigint), 0) FROM pgbench_history"
ON_A=$(psql_a "$CHECK")
ON_B=$(psql_b "$CHECK")
BAL_A=$(psql_a "SELECT sum(abalance::bigint) FROM pgbench_accounts")
BAL_B=$(psql_b "SELECT sum(abalance::bigint) FROM pgbench_accounts")
echo "pgbench_history on primary: $ON_A; balance sum $BAL_A"
echo "pgbench_history on standby: $ON_B; balance sum $BAL_B"
if [ "$ON_A" = "$ON_B" ] && [ "$BAL_A" = "$BAL_B" ]; then
    echo "standby holds exactly the primary's rows: OK"
else
    echo "MISMATCH between primary and standby" >&2
    exit 1
fi
