#!/bin/bash
# Benchmark: how long it takes to (re)build a streaming standby of a primary under write load, with
# pgha against its two peers:
#   pgha   `pgha standby --force-reclone`;
#   repmgr repmgr 5 `standby clone --fast-checkpoint` (stop, data directory moved aside, clone, start);
#   seed   the manual procedure pgha replaces: stop, move aside, `pg_basebackup -X stream -R` with its
#          default spread checkpoint, start.
# Each is timed from launch until pg_stat_wal_receiver.status = 'streaming' on the standby (polled
# every 100 ms), while `pgbench -c 4 -j 2` writes on the primary throughout the measurement.
# The three alternate, RUNS rounds; it prints every run, the medians and the ratios pgha/repmgr
# (target <= 1.0) and pgha/seed (target <= 0.25).
#
# Each method has its own standby cluster on host B, so that none inherits another's configuration
# (pgha's conf.d, repmgr's postgresql.auto.conf). A standby is stopped once it has been measured, so
# that only one standby replays the primary's WAL at a time on this 2-core machine and every method
# starts from a stopped standby (its "stop" step costs nothing in any of the three).
#
# Usage (root, PostgreSQL 15, repmgr 5 for 15): cargo build --release --locked && bench/peers.sh
#   PGHA=path/to/pgha  SCALE=70  RUNS=3  TRACE=1  bench/peers.sh   (TRACE=1: pgha's log lines with offsets)
# It creates and removes its own namespaces (pghap-a, pghap-b, 10.236.0.0/24) and clusters
# (15/pghapeers_a, _pgha, _repmgr, _seed on ports 47301-47304).
set -euo pipefail

SCALE=${SCALE:-70}
RUNS=${RUNS:-3}
NS_A=pghap-a NS_B=pghap-b
VETH_A=pghap-va VETH_B=pghap-vb
IP_A=10.236.0.1 IP_B=10.236.0.2
PORT_A=47301 PORT_B=47302
CL_A=pghapeers_a CL_B=pghapeers_pgha
CL_R=pghapeers_repmgr CL_S=pghapeers_seed
PORT_R=47303 PORT_S=47304
PGBENCH_PID=
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
DATA=/var/lib/postgresql/$VERSION

bench_extra_cleanup() {
    [ -n "$PGBENCH_PID" ] && kill "$PGBENCH_PID" 2>/dev/null && wait "$PGBENCH_PID" 2>/dev/null
    # The directories a run moved aside; lib.sh drops the clusters themselves.
    rm -rf "$DATA/$CL_R.bench-aside" "$DATA/$CL_S.bench-aside"
}

# The two extra standby clusters; lib.sh makes CL_A and CL_B and drops everything in BENCH_CLUSTERS_MADE.
create_extra_cluster() {
    local cl=$1 port=$2
    if [ -e /etc/postgresql/"$VERSION"/"$cl" ] || [ -e "$DATA/$cl" ]; then
        echo "$BENCH_NAME: cluster $VERSION/$cl exists (another run, or a stale one: pg_dropcluster --stop $VERSION $cl)" >&2
        exit 1
    fi
    BENCH_CLUSTERS_MADE+=("$cl")
    pg_createcluster "$VERSION" "$cl" -p "$port" >/dev/null
}

load_start() {
    runuser -u postgres -- "$BIN/pgbench" -n -c 4 -j 2 -T 3600 -h /var/run/postgresql -p $PORT_A postgres \
        >/dev/null 2>&1 &
    PGBENCH_PID=$!
    # Let the clients connect and the load settle before the clock starts.
    sleep 2
}

load_stop() {
    kill "$PGBENCH_PID" 2>/dev/null || true
    wait "$PGBENCH_PID" 2>/dev/null || true
    PGBENCH_PID=
}

# wait_streaming PORT: returns once the standby on PORT streams; its psql fails while the server starts.
wait_streaming() {
    local port=$1
    for _ in $(seq 1 6000); do
        [ "$(psql_on "$port" -c "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null || true)" = streaming ] && return 0
        sleep 0.1
    done
    echo "$BENCH_NAME: the standby on port $port does not stream after 10 minutes" >&2
    exit 1
}

# stop_and_move_aside CLUSTER: the first steps of the repmgr and seed procedures.
stop_and_move_aside() {
    local cl=$1
    on_b pg_ctlcluster "$VERSION" "$cl" stop -m fast >/dev/null 2>&1 || true
    rm -rf "${DATA:?}/$cl.bench-aside"
    mv "$DATA/$cl" "$DATA/$cl.bench-aside"
}

echo "== setting up two hosts ($IP_A, $IP_B), a primary and three standby clusters"
bench_setup_hosts
bench_create_clusters
create_extra_cluster $CL_R $PORT_R
create_extra_cluster $CL_S $PORT_S
on_a pg_ctlcluster "$VERSION" $CL_A start

bench_write_password
bench_config $CL_A $IP_A $PORT_A $IP_B 300s > "$WORK/pgha-a.conf"
bench_config $CL_B $IP_A $PORT_A $IP_B 300s > "$WORK/pgha-b.conf"
on_a "$PGHA" --config "$WORK/pgha-a.conf" primary >/dev/null

echo "== pgbench -i -s $SCALE on the primary"
runuser -u postgres -- "$BIN/pgbench" -i -q -s "$SCALE" -h /var/run/postgresql -p $PORT_A postgres >/dev/null 2>&1
psql_a "CHECKPOINT" >/dev/null
SIZE_MB=$(psql_a "SELECT round(sum(pg_database_size(oid)) / 1048576) FROM pg_database")

# repmgr, as its quickstart sets it up: a superuser "repmgr" owning a "repmgr" database, trusted from
# both hosts. trust is safe here (only the two private namespaces reach the primary) and costs no
# password round trip, so it does not slow repmgr down against pgha's scram + TLS.
psql_a "CREATE USER repmgr SUPERUSER" >/dev/null
psql_a "CREATE DATABASE repmgr OWNER repmgr" >/dev/null
psql_a "ALTER USER repmgr SET search_path TO repmgr, \"\$user\", public" >/dev/null
for ip in $IP_A $IP_B; do
    printf 'host repmgr repmgr %s/32 trust\nhost replication repmgr %s/32 trust\n' "$ip" "$ip"
done >> /etc/postgresql/"$VERSION"/$CL_A/pg_hba.conf
psql_a "SELECT pg_reload_conf()" >/dev/null
repmgr_conf() {
    cat <<EOF
node_id=$1
node_name='$2'
conninfo='host=$3 port=$4 user=repmgr dbname=repmgr connect_timeout=5'
data_directory='$5'
pg_bindir='$BIN'
EOF
}
repmgr_conf 1 primary $IP_A $PORT_A "$DATA/$CL_A" > "$WORK/repmgr-primary.conf"
repmgr_conf 2 standby $IP_B $PORT_R "$DATA/$CL_R" > "$WORK/repmgr-standby.conf"
chmod 644 "$WORK"/repmgr-*.conf
on_a runuser -u postgres -- repmgr -f "$WORK/repmgr-primary.conf" primary register >/dev/null

# The first pgha standby (not timed), then each method's standby once (not timed) so that every round
# rebuilds an existing standby.
on_b "$PGHA" --config "$WORK/pgha-b.conf" standby >/dev/null 2>&1
on_b pg_ctlcluster "$VERSION" $CL_B stop
SEED_CONNINFO="host=$IP_A port=$PORT_A user=replicator passfile=$WORK/pgpass sslmode=require"

# Each line of pgha's log with the time it arrived (bash's clock: no fork per line), for TRACE=1.
stamp_lines() { local line; while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

clone_pgha() {
    local rc=0
    on_b "$PGHA" --config "$WORK/pgha-b.conf" standby --force-reclone 2>&1 | stamp_lines >"$WORK/pgha.out" \
        || rc=$?
    [ "$rc" = 0 ] || { cat "$WORK/pgha.out" >&2; return 1; }
    wait_streaming $PORT_B
}

clone_repmgr() {
    stop_and_move_aside $CL_R
    # No --copy-external-config-files: on Debian postgresql.conf and pg_hba.conf live in
    # /etc/postgresql/15/<cluster>, and the standby cluster already has its own (its port among them);
    # "samepath" would copy the primary's files over paths of the same name, "pgdata" into a data
    # directory Debian's server never reads them from. repmgr warns that it did not copy them.
    on_b runuser -u postgres -- repmgr -f "$WORK/repmgr-standby.conf" standby clone \
        -h $IP_A -p $PORT_A -U repmgr -d repmgr --fast-checkpoint -F >"$WORK/repmgr.out" 2>&1 \
        || { cat "$WORK/repmgr.out" >&2; return 1; }
    on_b pg_ctlcluster "$VERSION" $CL_R start
    wait_streaming $PORT_R
}

clone_seed() {
    stop_and_move_aside $CL_S
    # The guide's command: default (spread) checkpoint, WAL streamed during the copy, -R writes
    # standby.signal and primary_conninfo (with this passfile) into postgresql.auto.conf.
    on_b runuser -u postgres -- "$BIN/pg_basebackup" -d "$SEED_CONNINFO" -D "$DATA/$CL_S" -X stream -R
    on_b pg_ctlcluster "$VERSION" $CL_S start
    wait_streaming $PORT_S
}

# measure METHOD: one timed run under load, its seconds in MEASURED (not printed: a $(...) subshell would
# lose PGBENCH_PID for the cleanup). The standby is stopped and what was moved aside removed afterwards,
# outside the measurement.
measure() {
    local method=$1 cl start end
    load_start
    start=$(now)
    "clone_$method"
    end=$(now)
    load_stop
    case $method in pgha) cl=$CL_B ;; repmgr) cl=$CL_R ;; seed) cl=$CL_S ;; esac
    on_b pg_ctlcluster "$VERSION" "$cl" stop -m fast
    rm -rf "${DATA:?}/$cl".bench-aside "${DATA:?}/$cl".pgha-old-*
    MEASURED=$(elapsed "$start" "$end")
    # TRACE=1 shows where pgha's time goes: each of its log lines with its offset from the launch.
    if [ "$method" = pgha ] && [ -n "${TRACE:-}" ]; then
        awk -v s="$start" '{t=$1; $1=""; printf "  +%6.2fs%s\n", t - s, $0}' "$WORK/pgha.out" | grep -v ' kB ('
    fi
}

echo "== versions and settings"
echo "PostgreSQL: $(psql_a "SELECT version()")"
echo "repmgr: $(repmgr --version)"
echo "pgha: $("$PGHA" --version 2>/dev/null || echo "$PGHA")"
printf 'primary: %s MB (pgbench scale %s); checkpoint_timeout %s, checkpoint_completion_target %s, max_wal_size %s\n' \
    "$SIZE_MB" "$SCALE" "$(psql_a "SHOW checkpoint_timeout")" "$(psql_a "SHOW checkpoint_completion_target")" \
    "$(psql_a "SHOW max_wal_size")"
echo "load during every measurement: pgbench -c 4 -j 2 on the primary"

echo "== first standby of each method (not timed)"
for method in repmgr seed; do measure $method; done
# What repmgr says about this setup (the configuration files Debian keeps outside the data directory).
grep -E 'WARNING|HINT|DETAIL' "$WORK/repmgr.out" | sed 's/^/  repmgr: /' || true

echo "== $RUNS rounds"
pgha_times=() repmgr_times=() seed_times=()
for run in $(seq 1 "$RUNS"); do
    measure pgha; pgha_times+=("$MEASURED")
    measure repmgr; repmgr_times+=("$MEASURED")
    measure seed; seed_times+=("$MEASURED")
    printf 'run %d: pgha %7.2fs  repmgr %7.2fs  seed %7.2fs\n' "$run" \
        "${pgha_times[-1]}" "${repmgr_times[-1]}" "${seed_times[-1]}"
done

P=$(median "${pgha_times[@]}") R=$(median "${repmgr_times[@]}") S=$(median "${seed_times[@]}")
met() { [ "$(echo "$1 <= $2" | bc -l)" = 1 ] && echo met || echo MISSED; }
PR=$(echo "$P / $R" | bc -l) PS=$(echo "$P / $S" | bc -l)
echo "== medians of $RUNS (scale $SCALE, $SIZE_MB MB, under pgbench -c 4 -j 2)"
printf 'pgha standby --force-reclone:        %7.2fs\n' "$P"
printf 'repmgr standby clone --fast-checkpoint: %7.2fs\n' "$R"
printf 'seed (pg_basebackup, spread checkpoint): %7.2fs\n' "$S"
printf 'ratio pgha / repmgr: %.2f (target <= 1.0: %s)\n' "$PR" "$(met "$PR" 1.0)"
printf 'ratio pgha / seed:   %.2f (target <= 0.25: %s)\n' "$PS" "$(met "$PS" 0.25)"
