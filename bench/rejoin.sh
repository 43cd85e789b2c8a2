#!/bin/bash
# Rejoin benchmark: pg_rewind against a full re-clone, and promote time, in one run.
#
# Two hosts in network namespaces (10.232.0.1 = A, 10.232.0.2 = B), PostgreSQL 15 clusters made
# for the run. A is the primary of a pgbench database of about 1 GB (scale 70), B its standby.
#  1. Failover: A's link to B is cut, A commits a few pgbench transactions B never receives (the
#     fork), A's postmaster is killed; `pgha promote --force` on B. The promote figure is pgha's
#     own: command start to the first accepted write (txid_current()).
#  2. About 1% of pgbench_accounts changes on B (UPDATE of every 100th row).
#  3. `pgha rejoin` on A (pg_rewind), timed from launch to exit (it ends once A streams).
#  4. `pgha rejoin --full-clone` on A: the same job by re-cloning the whole database.
# Prints both times, their ratio (target <= 0.1) and the promote time (target <= 1 s).
#
# Usage: sudo bench/rejoin.sh [SCALE]    (PGHA=path/to/pgha to use a given binary; default
#        $CARGO_TARGET_DIR/release/pgha, or target/release/pgha)
#        REJOIN_FLAGS=--no-keep-copy measures the rewind without pgha's default copy of the data directory.
# Everything it creates is removed on exit.
set -euo pipefail

SCALE=${1:-70}
# [primary] wal_keep_size for the run: pg_rewind (before PostgreSQL 19) copies every WAL segment the new
# primary keeps, so this bounds its copy. pgha's default is 1GB.
WAL_KEEP=${WAL_KEEP:-1GB}
REJOIN_FLAGS=${REJOIN_FLAGS:-}
NS_A=pgha-bench-a NS_B=pgha-bench-b
VETH_A=veth-bench-a VETH_B=veth-bench-b
IP_A=10.232.0.1 IP_B=10.232.0.2
CL_A=bench_rejoin_a CL_B=bench_rejoin_b
PORT_A=47101 PORT_B=47102
source "$(dirname "$0")/lib.sh"
A=$CL_A B=$CL_B

bench_extra_cleanup() {
    [ -n "${KEEP_LOGS:-}" ] && cp /var/log/postgresql/postgresql-$VERSION-$A.log "$KEEP_LOGS" 2>/dev/null
}

echo "== setting up two hosts and a scale-$SCALE pgbench primary"
bench_setup_hosts
bench_create_clusters
on_a pg_ctlcluster $VERSION $A start

bench_write_password
bench_config $A $IP_A $PORT_A $IP_B 300s "wal_keep_size = \"$WAL_KEEP\"" > "$WORK/a.conf"
bench_config $B $IP_A $PORT_A $IP_B 300s "wal_keep_size = \"$WAL_KEEP\"" > "$WORK/b.conf"

on_a "$PGHA" --config "$WORK/a.conf" primary >/dev/null
runuser -u postgres -- $BIN/pgbench -q -i -s "$SCALE" -h /var/run/postgresql -p $PORT_A postgres 2>&1 | tail -1
echo "database size: $(psql_on $PORT_A -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"
on_b "$PGHA" --config "$WORK/b.conf" standby 2>/dev/null

echo "== failover: A commits a fork B never receives, then dies; promote B"
ip -n $NS_B link set $VETH_B down
runuser -u postgres -- $BIN/pgbench -n -c 2 -t 200 -h /var/run/postgresql -p $PORT_A postgres >/dev/null
kill -KILL "$(head -1 /var/lib/postgresql/$VERSION/$A/postmaster.pid)"
sleep 1
t0=$(now)
promote_out=$(on_b "$PGHA" --config "$WORK/b.conf" promote --force 2>/dev/null)
t1=$(now)
# Only now: A's kernel may still retransmit what its dead walsender had queued.
ip -n $NS_B link set $VETH_B up
promote_ms=$(echo "$promote_out" | sed -n 's/.*accepted a write \([0-9]*\) ms after.*/\1/p')
echo "$promote_out" | head -1

echo "== about 1% of pgbench_accounts changes on the new primary"
psql_on $PORT_B -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0" >/dev/null
psql_on $PORT_B -c "CHECKPOINT" >/dev/null
# The documented procedure: the same pgha.conf on every host after a promote.
sed "s/name = \"$B\"/name = \"$A\"/" "$WORK/b.conf" > "$WORK/a.conf"

echo "== rejoin A with pg_rewind"
t2=$(now)
stamp() { local start=$1; while IFS= read -r line; do printf '%6.2f %s\n' "$(echo "$(now) - $start" | bc)" "$line"; done; }
on_a "$PGHA" --config "$WORK/a.conf" rejoin $REJOIN_FLAGS 2>&1 | stamp "$t2" > "$WORK/rewind.log"
grep -v ' kB (' "$WORK/rewind.log" | sed 's/^/  /'
t3=$(now)

echo "== rejoin A with a full re-clone"
t4=$(now)
on_a "$PGHA" --config "$WORK/a.conf" rejoin --full-clone 2>&1 | stamp "$t4" > "$WORK/clone.log"
grep -E 'rejoined|cloning 100|moved|starting' "$WORK/clone.log" | sed 's/^/  /'
t5=$(now)

rewind_s=$(elapsed "$t2" "$t3")
clone_s=$(elapsed "$t4" "$t5")
ratio=$(echo "scale=3; $rewind_s / $clone_s" | bc)
promote_cmd_s=$(elapsed "$t0" "$t1")
echo
echo "== results (scale $SCALE, wal_keep_size $WAL_KEEP, rejoin flags: ${REJOIN_FLAGS:-none})"
printf 'rejoin with pg_rewind : %6.2f s\n' "$rewind_s"
printf 'rejoin by full clone  : %6.2f s\n' "$clone_s"
printf 'ratio rewind/clone    : %6.3f   (target <= 0.1: %s)\n' "$ratio" "$( [ "$(echo "$ratio <= 0.1" | bc)" = 1 ] && echo met || echo MISSED)"
printf 'promote to first write: %6s ms (target <= 1000 ms: %s); whole promote command %.2f s\n' \
    "$promote_ms" "$( [ "${promote_ms:-99999}" -le 1000 ] && echo met || echo MISSED)" "$promote_cmd_s"
