#!/bin/bash
# Switchover benchmark: the write pause of `pgha switchover` against the same switchover done by hand,
# in one run, under pgbench load.
#
# Two hosts in network namespaces (10.233.0.1 = A, 10.233.0.2 = B), PostgreSQL 15 clusters made for the
# run on one port (pgha's members share a port; each cluster has its own socket directory). A is the
# primary of a pgbench database of about 1 GB (scale 70), B its standby (`pgha standby`).
# Each round switches the primary to the other host while pgbench (TPC-B, 4 clients) runs against it,
# alternating between:
#   pgha: `pgha switchover` on the primary;
#   hand: on the primary `pg_ctlcluster stop -m fast`, read the shutdown checkpoint with pg_controldata,
#         wait until the standby's pg_last_wal_replay_lsn() is past it, `SELECT pg_promote(true, 60)` on
#         the standby; then `pgha rejoin` on the old primary (not timed) for the next round.
# A tick writer commits one row at a time (INSERT, autocommit, clock_timestamp() and the server's address)
# through a libpq multi-host connection with target_session_attrs=read-write, reconnecting at once when
# its connection breaks. The write pause of a round is the first tick committed on the new primary minus
# the last tick committed on the old one: what a client that follows the primary sees.
# Prints every round, the medians, their ratio (target <= 1.2) and whether pgha's median is under 3 s.
#
# Usage: sudo bench/switchover.sh [SCALE] [ROUNDS_PER_METHOD]   (default 70 and 3; PGHA=path/to/pgha
#        to use a given binary; default $CARGO_TARGET_DIR/release/pgha, or target/release/pgha)
# Everything it creates is removed on exit.
set -euo pipefail

SCALE=${1:-70}
ROUNDS=${2:-3}
NS_A=pgha-bsw-a NS_B=pgha-bsw-b
VETH_A=veth-bsw-a VETH_B=veth-bsw-b
IP_A=10.233.0.1 IP_B=10.233.0.2
CL_A=bench_sw_a CL_B=bench_sw_b
PORT=47201 PORT_A=47201 PORT_B=47201
source "$(dirname "$0")/lib.sh"

bench_extra_cleanup() {
    touch "$WORK/stop"
    jobs -p | xargs -r kill 2>/dev/null
    wait 2>/dev/null
    rm -rf "/var/run/postgresql/$CL_A" "/var/run/postgresql/$CL_B"
}

ip_of() { [ "$1" = "$CL_A" ] && echo "$IP_A" || echo "$IP_B"; }

echo "== setting up two hosts and a scale-$SCALE pgbench primary"
bench_setup_hosts
bench_refuse_existing_clusters
bench_create_one_port_clusters
for cl in "$CL_A" "$CL_B"; do
    # The tick writer logs in as postgres over TCP from either host.
    echo "host postgres postgres 10.233.0.0/24 trust" >> /etc/postgresql/$VERSION/"$cl"/pg_hba.conf
done
on "$NS_A" pg_ctlcluster $VERSION $CL_A start

bench_write_password
bench_config $CL_A $IP_A $PORT $IP_B 300s > "$(conf_of $CL_A)"
bench_config $CL_B $IP_A $PORT $IP_B 300s > "$(conf_of $CL_B)"
on "$NS_A" "$PGHA" --config "$(conf_of $CL_A)" primary >/dev/null
runuser -u postgres -- $BIN/pgbench -q -i -s "$SCALE" -h "$(sock $CL_A)" -p $PORT postgres 2>&1 | tail -1
psql_cl $CL_A -c "CREATE TABLE ticks (t timestamptz NOT NULL DEFAULT clock_timestamp(), server inet DEFAULT inet_server_addr())"
echo "database size: $(psql_cl $CL_A -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"
on "$NS_B" "$PGHA" --config "$(conf_of $CL_B)" standby 2>/dev/null | tail -1

echo "INSERT INTO ticks DEFAULT VALUES;" > "$WORK/tick.sql"
chmod 644 "$WORK/tick.sql"
tick_writer() {
    while [ ! -e "$WORK/stop" ]; do
        on "$NS_A" runuser -u postgres -- $BIN/pgbench -n -c 1 -T 3600 -f "$WORK/tick.sql" \
            "host=$IP_A,$IP_B port=$PORT user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2" \
            >/dev/null 2>&1 || true
    done
}
tick_writer &

# Waits until the standby has replayed everything the primary wrote, so each round starts caught up.
caught_up() {
    local primary=$1 i
    for i in $(seq 1 600); do
        [ "$(psql_cl "$primary" -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) < 1048576")" = 1 ] && return 0
        sleep 0.1
    done
    echo "the standby did not catch up" >&2; exit 1
}

by_pgha() {
    local old=$1 new=$2
    on "$(ns_of "$old")" "$PGHA" --config "$(conf_of "$old")" switchover --to "$(ip_of "$new")" > "$WORK/pgha.out" 2>&1 \
        || { cat "$WORK/pgha.out"; exit 1; }
    grep -m1 'accepted a write' "$WORK/pgha.out" | sed 's/.*accepted a write \([0-9]*\) ms after.*/  pgha: stop to first write on the new primary \1 ms/'
}

by_hand() {
    local old=$1 new=$2 final
    on "$(ns_of "$old")" pg_ctlcluster $VERSION "$old" stop -m fast
    final=$(LANG=C.UTF-8 runuser -u postgres -- $BIN/pg_controldata /var/lib/postgresql/$VERSION/"$old" | sed -n 's/^Latest checkpoint location: *//p')
    until [ "$(psql_cl "$new" -c "SELECT pg_last_wal_replay_lsn() > '$final'")" = t ]; do sleep 0.01; done
    psql_cl "$new" -c "SELECT pg_promote(true, 60)" >/dev/null
    # Not timed: the old primary follows, ready for the next round. pg_rewind reads the new timeline from
    # pg_control, which the end-of-recovery checkpoint updates only when it ends (pgha promote writes one too).
    psql_cl "$new" -c "CHECKPOINT" >/dev/null
    on "$(ns_of "$old")" "$PGHA" --config "$(conf_of "$old")" rejoin > "$WORK/rejoin.out" 2>&1 \
        || { cat "$WORK/rejoin.out"; exit 1; }
}

declare -a PGHA_S HAND_S
primary=$CL_A standby=$CL_B
for round in $(seq 1 $((2 * ROUNDS))); do
    method=pgha; [ $((round % 2)) = 0 ] && method=hand
    caught_up "$primary"
    runuser -u postgres -- $BIN/pgbench -n -c 4 -j 2 -T 3600 -h "$(sock "$primary")" -p $PORT postgres >/dev/null 2>&1 &
    load=$!
    sleep 5
    started=$(date -u +%FT%T.%NZ)
    echo "== round $round ($method): $(ip_of "$primary") -> $(ip_of "$standby")"
    "by_$method" "$primary" "$standby"
    wait "$load" 2>/dev/null || true
    sleep 2
    pause=$(psql_cl "$standby" -c "SELECT extract(epoch FROM
        (SELECT min(t) FROM ticks WHERE t > '$started' AND server = '$(ip_of "$standby")')
      - (SELECT max(t) FROM ticks WHERE t > '$started' AND server = '$(ip_of "$primary")'))")
    printf '  write pause (last commit on the old primary to first on the new): %.3f s\n' "$pause"
    if [ $method = pgha ]; then PGHA_S+=("$pause"); else HAND_S+=("$pause"); fi
    # The old primary must be a streaming standby before the next round.
    for i in $(seq 1 300); do
        [ "$(psql_cl "$primary" -c "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming'")" = 1 ] && break
        sleep 0.1
    done
    tmp=$primary; primary=$standby; standby=$tmp
done
touch "$WORK/stop"

pgha_median=$(median "${PGHA_S[@]}")
hand_median=$(median "${HAND_S[@]}")
ratio=$(echo "scale=3; $pgha_median / $hand_median" | bc)
echo
echo "== results (scale $SCALE, $ROUNDS rounds each, pgbench -c 4 running on the primary)"
printf 'pgha switchover write pause: %s s (median %.3f s)\n' "${PGHA_S[*]}" "$pgha_median"
printf 'by hand write pause        : %s s (median %.3f s)\n' "${HAND_S[*]}" "$hand_median"
printf 'ratio pgha/hand            : %6.3f   (target <= 1.2: %s)\n' "$ratio" "$( [ "$(echo "$ratio <= 1.2" | bc)" = 1 ] && echo met || echo MISSED)"
printf 'pgha under 3 s             : %s\n' "$( [ "$(echo "$pgha_median < 3" | bc)" = 1 ] && echo met || echo MISSED)"
