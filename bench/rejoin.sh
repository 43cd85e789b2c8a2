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
# Usage: sudo bench/rejoin.sh [SCALE]    (PGHA=path/to/pgha to use a given binary)
#        REJOIN_FLAGS=--no-keep-copy measures the rewind without pgha's default copy of the data directory.
# Everything it creates is removed on exit.
set -euo pipefail

SCALE=${1:-70}
# [primary] wal_keep_size for the run: pg_rewind (before PostgreSQL 19) copies every WAL segment the new
# primary keeps, so this bounds its copy. pgha's default is 1GB.
WAL_KEEP=${WAL_KEEP:-1GB}
REJOIN_FLAGS=${REJOIN_FLAGS:-}
VERSION=15
BIN=/usr/lib/postgresql/$VERSION/bin
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGHA=${PGHA:-$ROOT/target/release/pgha}
NS_A=pgha-bench-a NS_B=pgha-bench-b
IP_A=10.232.0.1 IP_B=10.232.0.2
A=bench_rejoin_a B=bench_rejoin_b
PORT_A=47101 PORT_B=47102
WORK=$(mktemp -d /tmp/pgha-bench-XXXXXX)

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
[ -x "$PGHA" ] || { echo "no pgha binary at $PGHA: cargo build --release, or set PGHA" >&2; exit 2; }

cleanup() {
    set +e
    [ -n "${KEEP_LOGS:-}" ] && cp /var/log/postgresql/postgresql-$VERSION-$A.log "$KEEP_LOGS" 2>/dev/null
    for c in $A $B; do
        pg_ctlcluster $VERSION $c stop -m immediate >/dev/null 2>&1
        pg_dropcluster $VERSION $c >/dev/null 2>&1
        rm -rf /var/lib/postgresql/$VERSION/$c.pgha-*
        # pg_dropcluster leaves the config directory when it holds files it did not create (conf.d/pgha.conf).
        rm -rf /etc/postgresql/$VERSION/$c /var/log/postgresql/postgresql-$VERSION-$c.log
    done
    ip netns del $NS_A 2>/dev/null
    ip netns del $NS_B 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }
psql_on() { local port=$1; shift; runuser -u postgres -- psql -X -At -h /var/run/postgresql -p "$port" -d postgres "$@"; }
on_a() { ip netns exec $NS_A "$@"; }
on_b() { ip netns exec $NS_B "$@"; }

echo "== setting up two hosts and a scale-$SCALE pgbench primary"
ip netns add $NS_A; ip netns add $NS_B
ip link add veth-bench-a type veth peer name veth-bench-b
ip link set veth-bench-a netns $NS_A; ip link set veth-bench-b netns $NS_B
ip -n $NS_A addr add $IP_A/24 dev veth-bench-a; ip -n $NS_B addr add $IP_B/24 dev veth-bench-b
for ns in $NS_A $NS_B; do ip -n $ns link set lo up; done
ip -n $NS_A link set veth-bench-a up; ip -n $NS_B link set veth-bench-b up

pg_createcluster $VERSION $A -p $PORT_A -- --auth-local=peer >/dev/null
pg_createcluster $VERSION $B -p $PORT_B -- --auth-local=peer >/dev/null
on_a pg_ctlcluster $VERSION $A start

chmod 755 "$WORK"
printf 'bench-secret\n' > "$WORK/password"; chmod 600 "$WORK/password"
config() { # cluster primary-ip primary-port standby-ip
    cat <<EOF
[cluster]
version = $VERSION
name = "$1"
[primary]
address = "$2"
port = $3
wal_keep_size = "$WAL_KEEP"
[standby]
addresses = ["$4"]
streaming_timeout = "300s"
[replication]
password_file = "$WORK/password"
passfile = "$WORK/pgpass"
[archive]
enabled = false
EOF
}
config $A $IP_A $PORT_A $IP_B > "$WORK/a.conf"
config $B $IP_A $PORT_A $IP_B > "$WORK/b.conf"

on_a "$PGHA" --config "$WORK/a.conf" primary >/dev/null
runuser -u postgres -- $BIN/pgbench -q -i -s "$SCALE" -h /var/run/postgresql -p $PORT_A postgres 2>&1 | tail -1
echo "database size: $(psql_on $PORT_A -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"
on_b "$PGHA" --config "$WORK/b.conf" standby 2>/dev/null

echo "== failover: A commits a fork B never receives, then dies; promote B"
ip -n $NS_B link set veth-bench-b down
runuser -u postgres -- $BIN/pgbench -n -c 2 -t 200 -h /var/run/postgresql -p $PORT_A postgres >/dev/null
kill -KILL "$(head -1 /var/lib/postgresql/$VERSION/$A/postmaster.pid)"
sleep 1
t0=$(now)
promote_out=$(on_b "$PGHA" --config "$WORK/b.conf" promote --force 2>/dev/null)
t1=$(now)
# Only now: A's kernel may still retransmit what its dead walsender had queued.
ip -n $NS_B link set veth-bench-b up
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
