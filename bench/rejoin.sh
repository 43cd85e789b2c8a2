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
#
# MODE=realistic (default MODE=worst-case, the run above) measures a failover as it happens in production,
# RUNS times (default 3), with its own hosts (10.237.0.1 = A, 10.237.0.2 = B, namespaces pghar-a/b, one
# port 47311 with a socket directory per cluster) and clusters (15/pgharealistic_a, _b):
#  1. pgbench -c 4 -j 2 writes on the primary for 30 s; at 27 s the link to the standby is cut, so that
#     the primary's last 3 s of commits never reach it (the fork), and at 30 s its postmaster is SIGKILLed
#     in the middle of the load;
#  2. `pgha promote --force` on the standby, the link comes back, pgbench writes 30 s on the new primary;
#  3. `pgha rejoin` on the old primary (pg_rewind), timed, with each phase seen in pgha's log: crash
#     recovery of the killed server, pg_rewind --dry-run, saving the fork and what pg_rewind will change,
#     pg_rewind itself, start and replay until streaming (see rejoin_phases);
#  4. `pgha rejoin --full-clone` on the same host, timed, for comparison.
# The next run fails over the other way. It prints each run, the median of every phase and the ratio
# rewind / full clone. It refuses to start without room for both clusters, the copies and the WAL.
#   sudo MODE=realistic RUNS=3 bench/rejoin.sh 300
# Everything it creates is removed on exit.
set -euo pipefail

SCALE=${1:-70}
MODE=${MODE:-worst-case}
case $MODE in
    worst-case | realistic) ;;
    *) echo "$(basename "$0"): MODE is worst-case (the default) or realistic, not $MODE" >&2; exit 2 ;;
esac
# [primary] wal_keep_size for the run: pg_rewind (before PostgreSQL 19) copies every WAL segment the new
# primary keeps, so this bounds its copy. Unset: pgha's default (1GB).
WAL_KEEP=${WAL_KEEP:-}
KEEP_LINE=${WAL_KEEP:+wal_keep_size = \"$WAL_KEEP\"}
KEEP_SHOWN=${WAL_KEEP:-pgha\'s default}
REJOIN_FLAGS=${REJOIN_FLAGS:-}

# Each line on stdin with the time it arrived, in seconds since the epoch (bash's own clock: no fork per
# line, so pg_basebackup's progress lines cannot delay the stamps).
stamp_epoch() { local line; while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done; }

# rejoin_phases LOG: the phases of a pg_rewind rejoin, from its log as stamp_epoch wrote it between a
# "START <epoch>" and an "END <epoch>" line. All that depends on pgha's wording is in the patterns
# below (pgha's rewind path is being changed: adjust them here). Each phase starts at the first line
# matching its pattern after the previous phase's start, and ends where the next phase found starts (or
# for pg_rewind at its "Done!", the last line it prints; the last phase at pgha's exit). Prints one
# "name seconds" line per phase, "n/a" for one it did not find, then "other", what the found phases do
# not cover (preflight, configuration), and pg_rewind's "need to copy" size.
rejoin_phases() {
    awk '
    BEGIN {
        n = split("recovery dryrun clone save rewind start", name, " ")
        # The killed server is started as a standby to replay its own WAL (crash recovery), then stopped.
        re["recovery"] = "not shut down cleanly|recovering it as a standby|crash recovery"
        # pg_rewind --dry-run, stopped once it has listed what it would copy and change.
        re["dryrun"] = "pg_rewind --dry-run"
        # Rejoin chose the full clone instead (before the recovery, or after the dry run); its
        # "start" is the cloned standby starting.
        re["clone"] = "cloning in full instead of pg_rewind|falling back to a full clone"
        # What is kept before the rewind: the fork, then what pg_rewind will change (or a whole copy).
        re["save"] = "saved [0-9]+ WAL files|(copying|saving|keeping|copy of).*(before pg_rewind|aside)"
        re["rewind"] = "running pg_rewind"
        re["start"] = "starting cluster .* as a standby"
        done_re = "Done!"
    }
    $1 == "START" { t0 = $2; next }
    $1 == "END" { t1 = $2; next }
    {
        t = $1; line = substr($0, index($0, " ") + 1)
        for (i = next_i + 1; i <= n; i++) {
            if (line ~ re[name[i]]) { begin[name[i]] = t; next_i = i; break }
        }
        if (("rewind" in begin) && !("rewind" in fin) && line ~ done_re) fin["rewind"] = t
        if (match(line, /need to copy [0-9]+ MB/)) copied = substr(line, RSTART + 13, RLENGTH - 16)
    }
    END {
        covered = 0
        for (i = 1; i <= n; i++) {
            p = name[i]
            if (!(p in begin)) { print p, "n/a"; continue }
            e = t1
            for (j = i + 1; j <= n; j++) if (name[j] in begin) { e = begin[name[j]]; break }
            if ((p in fin) && fin[p] < e) e = fin[p]
            printf "%s %.2f\n", p, e - begin[p]; covered += e - begin[p]
        }
        printf "other %.2f\n", t1 - t0 - covered
        print "rewind_mb", (copied == "" ? "n/a" : copied)
    }' "$1"
}

if [ "$MODE" = realistic ]; then
    RUNS=${RUNS:-3}
    NS_A=pghar-a NS_B=pghar-b
    VETH_A=pghar-va VETH_B=pghar-vb
    IP_A=10.237.0.1 IP_B=10.237.0.2
    CL_A=pgharealistic_a CL_B=pgharealistic_b
    # pgha's members all listen on [primary] port; a socket directory per cluster keeps them apart locally.
    PORT=47311 PORT_A=47311 PORT_B=47311
    PGBENCH_PID=
    # shellcheck source=bench/lib.sh
    source "$(dirname "$0")/lib.sh"
    DATA=/var/lib/postgresql/$VERSION
    # shellcheck disable=SC2317 # called by lib.sh's EXIT trap
    bench_extra_cleanup() {
        [ -n "$PGBENCH_PID" ] && kill "$PGBENCH_PID" 2>/dev/null && wait "$PGBENCH_PID" 2>/dev/null
        rm -rf "/var/run/postgresql/$CL_A" "/var/run/postgresql/$CL_B"
    }
    veth_of() { [ "$1" = "$CL_A" ] && echo "$VETH_A" || echo "$VETH_B"; }
    host_of() { [ "$1" = "$CL_A" ] && echo A || echo B; }
    pgbench_on() { runuser -u postgres -- $BIN/pgbench -n -c 4 -j 2 -T "$2" -h "$(sock "$1")" -p $PORT postgres; }

    # Peak use (during the copy aside or the clone's staging): three copies of the database (both
    # clusters and the copy) plus each one's WAL (max_wal_size 1GB + wal_keep_size, and the rewound
    # WAL): about 15 MB per scale unit, 4 copies to be safe, and 8 GB of WAL.
    need_mb=$((SCALE * 15 * 4 + 8192))
    avail_mb=$(df -Pm /var/lib/postgresql | awk 'NR == 2 {print $4}')
    if [ "$avail_mb" -lt "$need_mb" ]; then
        echo "$BENCH_NAME: scale $SCALE needs about $need_mb MB free in /var/lib/postgresql, only $avail_mb MB are" >&2
        exit 1
    fi
    echo "== setting up two hosts and a scale-$SCALE pgbench primary ($avail_mb MB free, about $need_mb MB needed)"
    bench_setup_hosts
    bench_refuse_existing_clusters
    bench_create_one_port_clusters
    on "$NS_A" pg_ctlcluster $VERSION $CL_A start
    bench_write_password
    # The same pgha.conf on both hosts (but the cluster name), as after any promote.
    for cl in "$CL_A" "$CL_B"; do
        bench_config "$cl" $IP_A $PORT $IP_B 300s "$KEEP_LINE" > "$(conf_of "$cl")"
    done
    on "$NS_A" "$PGHA" --config "$(conf_of $CL_A)" primary >/dev/null
    runuser -u postgres -- $BIN/pgbench -q -i -s "$SCALE" -h "$(sock $CL_A)" -p $PORT postgres 2>&1 | tail -1
    echo "database size: $(psql_cl $CL_A -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"
    on "$NS_B" "$PGHA" --config "$(conf_of $CL_B)" standby >/dev/null 2>&1

    P=$CL_A S=$CL_B
    phases=(recovery dryrun clone save rewind start other)
    declare -A med
    rl_promote_ms=() rl_rewind_s=() rl_clone_s=() rl_rewind_mb=() rl_ratio=()
    for run in $(seq 1 "$RUNS"); do
        echo "== run $run: $(host_of $P) is the primary under pgbench, fails; $(host_of $S) is promoted"
        pgbench_on $P 40 >/dev/null 2>&1 &
        PGBENCH_PID=$!
        sleep 27
        # Cut first: what the primary commits from here on never reaches the standby. On the failing
        # host's side, so that the standby sees its peer vanish (silence, not "unreachable") as when a
        # host dies: the same in every run, whichever way it fails over.
        ip -n "$(ns_of $P)" link set "$(veth_of $P)" down
        sleep 3
        kill -KILL "$(head -1 "$DATA/$P/postmaster.pid")"
        wait "$PGBENCH_PID" 2>/dev/null || true
        PGBENCH_PID=
        sleep 1
        rl_promote_out=$(on "$(ns_of $S)" "$PGHA" --config "$(conf_of $S)" promote --force 2>/dev/null)
        ip -n "$(ns_of $P)" link set "$(veth_of $P)" up
        rl_promote_ms+=("$(echo "$rl_promote_out" | sed -n 's/.*accepted a write \([0-9]*\) ms after.*/\1/p')")
        pgbench_on $S 30 | sed -n 's/^tps = \([0-9.]*\).*/  pgbench on the new primary: \1 tps for 30 s/p'

        { echo "START $(now)"
          # shellcheck disable=SC2086 # no flags must give no argument
          on "$(ns_of $P)" "$PGHA" --config "$(conf_of $P)" rejoin $REJOIN_FLAGS 2>&1 | stamp_epoch
          echo "END $(now)"; } > "$WORK/rewind.log"
        if grep -qE 'did not work|not using pg_rewind|cloning in full' "$WORK/rewind.log"; then
            echo "  pgha rejoin did not use pg_rewind: this run's rewind time is a clone's" >&2
        fi
        awk '$1 == "START" {s = $2; next} $1 != "END" {t = $1; $1 = ""; printf "  +%6.2fs%s\n", t - s, $0}' \
            "$WORK/rewind.log" | grep -v ' kB (' | cut -c1-160
        rejoin_phases "$WORK/rewind.log" > "$WORK/phases"
        rm -rf "${DATA:?}/$P".pgha-old-* "${DATA:?}/$P".pgha-fork-*

        t4=$(now)
        on "$(ns_of $P)" "$PGHA" --config "$(conf_of $P)" rejoin --full-clone >/dev/null 2>&1
        t5=$(now)
        rm -rf "${DATA:?}/$P".pgha-old-*

        r=$(awk '$1 == "START" {s = $2} $1 == "END" {print $2 - s}' "$WORK/rewind.log")
        rl_rewind_s+=("$r") rl_clone_s+=("$(elapsed "$t4" "$t5")")
        rl_rewind_mb+=("$(awk '$1 == "rewind_mb" {print $2}' "$WORK/phases")")
        line=""
        for p in "${phases[@]}"; do
            v=$(awk -v p="$p" '$1 == p {print $2}' "$WORK/phases")
            line+=" $p ${v:-n/a}"
            if [ "${v:-n/a}" != n/a ]; then med[$p]+=" $v"; fi
        done
        rl_ratio+=("$(echo "$r / ${rl_clone_s[-1]}" | bc -l)")
        printf 'run %d: promote %s ms; rejoin by pg_rewind %.2fs (%s; pg_rewind copied %s MB); full clone %.2fs; ratio %.3f\n' \
            "$run" "${rl_promote_ms[-1]:-n/a}" "$r" "${line# }" "${rl_rewind_mb[-1]}" "${rl_clone_s[-1]}" \
            "$(echo "$r / ${rl_clone_s[-1]}" | bc -l)"
        # The next run fails over the other way: the rejoined host is a streaming standby of the new primary.
        t=$P P=$S S=$t
    done

    R=$(median "${rl_rewind_s[@]}") C=$(median "${rl_clone_s[@]}")
    echo
    echo "== results, medians of $RUNS (MODE=realistic, scale $SCALE, wal_keep_size $KEEP_SHOWN, rejoin flags: ${REJOIN_FLAGS:-none})"
    printf 'promote to first write : %s ms\n' "$( [ -n "${rl_promote_ms[*]}" ] && median "${rl_promote_ms[@]}" || echo n/a)"
    printf 'rejoin with pg_rewind  : %6.2f s\n' "$R"
    for p in "${phases[@]}"; do
        # shellcheck disable=SC2086 # the list of values is split on purpose
        if [ -n "${med[$p]:-}" ]; then printf '  %-21s: %6.2f s\n' "$p" "$(median ${med[$p]})"; else printf '  %-21s:    n/a\n' "$p"; fi
    done
    printf 'rejoin by full clone   : %6.2f s\n' "$C"
    printf 'ratio rewind/clone     : %6.3f   (scale %s; of the medians)\n' "$(echo "$R / $C" | bc -l)" "$SCALE"
    printf 'median of the ratios   : %6.3f\n' "$(median "${rl_ratio[@]}")"
    exit 0
fi

NS_A=pgha-bench-a NS_B=pgha-bench-b
VETH_A=veth-bench-a VETH_B=veth-bench-b
IP_A=10.232.0.1 IP_B=10.232.0.2
CL_A=bench_rejoin_a CL_B=bench_rejoin_b
# pgha asks every member on [primary] port: both clusters listen on it, each with its socket directory.
PORT=47101 PORT_A=47101 PORT_B=47101
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"
A=$CL_A B=$CL_B

# shellcheck disable=SC2317 # called by lib.sh's EXIT trap
bench_extra_cleanup() {
    [ -n "${KEEP_LOGS:-}" ] && cp /var/log/postgresql/postgresql-$VERSION-$A.log "$KEEP_LOGS" 2>/dev/null
    rm -rf "/var/run/postgresql/$CL_A" "/var/run/postgresql/$CL_B"
}

echo "== setting up two hosts and a scale-$SCALE pgbench primary"
bench_setup_hosts
bench_refuse_existing_clusters
bench_create_one_port_clusters
on_a pg_ctlcluster $VERSION $A start

bench_write_password
bench_config $A $IP_A $PORT_A $IP_B 300s "$KEEP_LINE" > "$WORK/a.conf"
bench_config $B $IP_A $PORT_A $IP_B 300s "$KEEP_LINE" > "$WORK/b.conf"

on_a "$PGHA" --config "$WORK/a.conf" primary >/dev/null
runuser -u postgres -- $BIN/pgbench -q -i -s "$SCALE" -h "$(sock $A)" -p $PORT postgres 2>&1 | tail -1
echo "database size: $(psql_cl $A -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"
on_b "$PGHA" --config "$WORK/b.conf" standby 2>/dev/null

echo "== failover: A commits a fork B never receives, then dies; promote B"
ip -n $NS_B link set $VETH_B down
runuser -u postgres -- $BIN/pgbench -n -c 2 -t 200 -h "$(sock $A)" -p $PORT postgres >/dev/null
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
psql_cl $B -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0" >/dev/null
psql_cl $B -c "CHECKPOINT" >/dev/null
# The documented procedure: the same pgha.conf on every host after a promote.
sed "s/name = \"$B\"/name = \"$A\"/" "$WORK/b.conf" > "$WORK/a.conf"

echo "== rejoin A with pg_rewind"
t2=$(now)
stamp() { local start=$1; while IFS= read -r line; do printf '%6.2f %s\n' "$(echo "$(now) - $start" | bc)" "$line"; done; }
# shellcheck disable=SC2086 # no flags must give no argument
rejoin_rc=0
on_a "$PGHA" --config "$WORK/a.conf" rejoin $REJOIN_FLAGS 2>&1 | stamp "$t2" > "$WORK/rewind.log" || rejoin_rc=$?
grep -v ' kB (' "$WORK/rewind.log" | sed 's/^/  /'
[ "$rejoin_rc" = 0 ] || { echo "pgha rejoin failed (exit $rejoin_rc)" >&2; exit 1; }
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
echo "== results (scale $SCALE, wal_keep_size $KEEP_SHOWN, rejoin flags: ${REJOIN_FLAGS:-none})"
printf 'rejoin with pg_rewind : %6.2f s\n' "$rewind_s"
printf 'rejoin by full clone  : %6.2f s\n' "$clone_s"
printf 'ratio rewind/clone    : %6.3f   (target <= 0.1: %s)\n' "$ratio" "$( [ "$(echo "$ratio <= 0.1" | bc)" = 1 ] && echo met || echo MISSED)"
printf 'promote to first write: %6s ms (target <= 1000 ms: %s); whole promote command %.2f s\n' \
    "$promote_ms" "$( [ "${promote_ms:-99999}" -le 1000 ] && echo met || echo MISSED)" "$promote_cmd_s"
