#!/bin/bash
# End-to-end test through the user's path, on two real Debian hosts (systemd-nspawn, systemd as
# PID 1) on a private bridge: preseed, `apt install ./pgha.deb`, `systemctl start pgha-primary`
# and `pgha-standby`, replication proven as the seed procedure verifies it, host restarts,
# dpkg-reconfigure, purge. Usage: nspawn.sh [bookworm|trixie] [PATH/TO/pgha.deb]
# Prints "N passed, M failed" last; exits 1 when anything failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (containers, overlays, bridges)"
dist=${1:-bookworm}
deb=$(realpath "${2:-$here/../../pgha.deb}")
[ -f "$deb" ] || die "$deb missing: run make deb"
pg=$(pg_version_of "$dist")
case "$dist" in bookworm) net=10.231.11 ;; trixie) net=10.231.12 ;; esac
primary=pghae-${dist:0:4}-p
standby=pghae-${dist:0:4}-s
testbed=pghae-${dist:0:4}-a
bridge=pghae-${dist:0:4}
primary_ip=$net.1
standby_ip=$net.2
testbed_ip=$net.3
datadir=/var/lib/postgresql/$pg/main
started=$(date +%s)
# Two runs for one distribution would share host names and the bridge: the second one waits.
mkdir -p "$STATE"
exec 8>"$STATE/e2e-$dist.lock"
flock 8

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
# check DESCRIPTION COMMAND...: passes when COMMAND succeeds; shows its output when it fails.
check() {
    local description=$1 output
    shift
    if output=$("$@" 2>&1); then pass "$description"; else fail "$description"; printf '%s\n' "$output" | tail -20 | sed 's/^/    /'; fi
}
# Polls COMMAND until it succeeds (at most SECONDS): replication is asynchronous.
eventually() {
    local seconds=$1 i
    shift
    for i in $(seq "$((seconds * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    "$@"
}

# "ActiveState/SubState/Result" of UNIT in HOST (systemctl show prints properties in its own order).
unit_state() {
    local host=$1 unit=$2 property
    for property in ActiveState SubState Result; do
        in_host "$host" systemctl show -P "$property" "$unit"
    done | paste -sd/
}

# Whether HOST's postgresql@PG-main unit is active and its main process is the cluster's postmaster:
# pgha starts a new standby (clone, rewind) without waiting for postgresql-common's start check,
# as a --no-block job of that unit, so systemd must still be the one running the server.
cluster_runs_under_systemd() {
    local host=$1
    test "$(in_host "$host" systemctl is-active "postgresql@$pg-main")" = active &&
        test "$(in_host "$host" systemctl show -P MainPID "postgresql@$pg-main")" = \
            "$(in_host "$host" head -1 "$datadir/postmaster.pid")"
}

cleanup() {
    if [ -n "${PGHA_E2E_KEEP:-}" ] && [ "${1:-}" = exit ]; then
        log "PGHA_E2E_KEEP is set: hosts $primary, $standby and $testbed keep running (make demo-clean does not remove them; run this test again)"
        return
    fi
    host_destroy "$primary"
    host_destroy "$standby"
    host_destroy "$testbed"
    bridge_down "$bridge"
}
trap 'cleanup exit' EXIT
trap 'exit 130' INT TERM
cleanup

echo "== e2e $dist (PostgreSQL $pg): $deb"
base=$(base_image "$dist" "$deb") || exit 1
bridge_up "$bridge"
host_create "$primary" "$primary_ip" "$base"
host_create "$standby" "$standby_ip" "$base"
host_create "$testbed" "$testbed_ip" "$base"
host_boot "$primary" "$bridge" & boot_p=$!
host_boot "$standby" "$bridge" & boot_s=$!
host_boot "$testbed" "$bridge" & boot_t=$!
wait $boot_p || die "primary did not boot"
wait $boot_s || die "standby did not boot"
wait $boot_t || die "the autopkgtest testbed did not boot"
# host_boot ran in subshells: the pid files are what the rest reads.
host_prepare "$primary" "$pg" "$deb"
host_prepare "$standby" "$pg" "$deb"

password="e2e-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
answers() { # ROLE [STANDBYS]
    cat <<ANSWERS
pgha pgha/role select $1
pgha pgha/primary_address string $primary_ip
pgha pgha/standby_addresses string ${2:-$standby_ip}
pgha pgha/replication_user string replicator
pgha pgha/replication_password password $password
pgha pgha/archive_directory string /var/backups/pgsql/archive
ANSWERS
}

echo "-- install with preseeded answers"
answers primary | preseed "$primary"
answers standby | preseed "$standby"
check "apt install ./pgha.deb on the primary" apt_install_pgha "$primary"
check "apt install ./pgha.deb on the standby" apt_install_pgha "$standby"
for host in "$primary" "$standby"; do
    check "$host: pgha.conf names both addresses" in_host "$host" grep -q "addresses = \[\"$standby_ip\"\]" /etc/pgha/pgha.conf
    check "$host: password file is mode 0600 root" test "$(in_host "$host" stat -c %a:%U /etc/pgha/replication.password)" = 600:root
    check "$host: password cleared from the debconf database" \
        bash -c "! grep -rqF -- '$password' '$(host_dir "$host")/root/var/cache/debconf/'"
    check "$host: installing started nothing" \
        test "$(in_host "$host" systemctl is-active pgha-primary pgha-standby | sort -u)" = inactive
    check "$host: installing enabled no pgha service" \
        test "$(in_host "$host" systemctl is-enabled pgha-primary pgha-standby | sort -u)" = disabled
    check "$host: the prune timer is enabled" in_host "$host" systemctl is-enabled -q pgha-prune-archive.timer
    check "$host: the metrics timer is enabled" in_host "$host" systemctl is-enabled -q pgha-metrics.timer
    check "$host: systemd-analyze verify is clean" \
        bash -c "out=\$(nsenter -t $(cat "$(host_dir "$host")/leader.pid") -a -- systemd-analyze verify \
            /lib/systemd/system/pgha-primary.service /lib/systemd/system/pgha-standby.service \
            /lib/systemd/system/pgha-prune-archive.service /lib/systemd/system/pgha-prune-archive.timer \
            /lib/systemd/system/pgha-metrics.service /lib/systemd/system/pgha-metrics.timer 2>&1); \
            echo \"\$out\"; [ -z \"\$out\" ]"
    check "$host: man pages pgha(8) and pgha.conf(5) installed" \
        in_host "$host" test -f /usr/share/man/man8/pgha.8.gz -a -f /usr/share/man/man5/pgha.conf.5.gz
    check "$host: bash completion installed" in_host "$host" test -f /usr/share/bash-completion/completions/pgha
    check "$host: postgresql@.service runs the fence (the drop-in is loaded)" \
        bash -c "nsenter -t $(cat "$(host_dir "$host")/leader.pid") -a -- systemctl show -P DropInPaths postgresql@$pg-main | grep -q pgha-fence.conf"
done
for unit in pgha-primary pgha-standby; do
    in_host "$primary" systemd-analyze security --no-pager "$unit.service" 2>/dev/null | tail -1 | sed "s/^/$unit: /"
done

echo "-- the package's autopkgtests, run by autopkgtest (null backend) on a host of their own"
# A host of their own because the tests make clusters, addresses and an /etc/pgha there, and the
# runner installs the .deb itself. The null backend runs the tests where autopkgtest runs, and
# this host is disposable, as the isolation-container restriction of the tests asks.
source_tree=$(host_dir "$testbed")/root/root/pgha-source
mkdir -p "$source_tree/debian"
cp -r "$here/../../debian/tests" "$here/../../debian/control" "$here/../../debian/changelog" "$source_tree/debian/"
# debian/files marks the tree as built, so the runner tests pgha.deb instead of building the
# source first (the testbed has neither a toolchain nor the archive).
: >"$source_tree/debian/files"
cp "$deb" "$(host_dir "$testbed")/root/root/pgha.deb"
# The runner ends with `apt-get update` to undo its apt changes; the host has no archive, so it
# gets no sources that update could fail to reach.
rm -f "$(host_dir "$testbed")/root/etc/apt/sources.list" "$(host_dir "$testbed")/root/etc/apt/sources.list.d/"*
# autopkgtest 5.28 (Debian 12) gives the null backend isolation-machine; later versions give it no
# isolation unless told, and would skip the tests that ask for a container. This host is one:
# autopkgtest-virt-container tells it so (and works around 5.49 failing when told).
backend=null
if in_host "$testbed" autopkgtest-virt-null --help 2>/dev/null | grep -q -- --fake-capability; then
    cp "$here/autopkgtest-virt-container" "$(host_dir "$testbed")/root/root/"
    backend=/root/autopkgtest-virt-container
fi
autopkgtest_started=$(date +%s)
autopkgtest_output=$(in_host "$testbed" autopkgtest --summary-file /root/autopkgtest.summary --timeout-test=600 \
    /root/pgha.deb /root/pgha-source/ -- "$backend" 2>&1)
autopkgtest_status=$?
summary=$(cat "$(host_dir "$testbed")/root/root/autopkgtest.summary" 2>/dev/null)
printf '%s\n' "$summary" | sed 's/^/    /'
echo "    (autopkgtest took $(($(date +%s) - autopkgtest_started)) s)"
for script in $(sed -n 's/^Tests: //p' "$here/../../debian/tests/control"); do
    check "autopkgtest $script: PASS" grep -q "^$script  *PASS" <<<"$summary"
done
# 0 is "every test passed"; a skipped test (2) would mean a restriction the testbed cannot meet.
check "autopkgtest exits 0 (exit $autopkgtest_status)" test "$autopkgtest_status" -eq 0
[ "$autopkgtest_status" -eq 0 ] ||
    printf '%s\n' "$autopkgtest_output" | grep -v '^Ign:\|^Get:\|(Reading database' | tail -60 | sed 's/^/    /'
[ -n "${PGHA_E2E_KEEP:-}" ] || host_destroy "$testbed"

echo "-- systemctl start pgha-primary / pgha-standby"
check "systemctl start pgha-primary" in_host "$primary" systemctl start pgha-primary
check "pgha-primary is active (exited)" test "$(unit_state "$primary" pgha-primary)" = active/exited/success
check "systemctl start pgha-standby" in_host "$standby" systemctl start pgha-standby
check "pgha-standby is active (exited)" test "$(unit_state "$standby" pgha-standby)" = active/exited/success
in_host "$standby" systemctl status --no-pager -n 0 pgha-standby | sed 's/^/    /'
check "systemctl status pgha-standby shows the final state (STATUS=)" \
    grep -q "streams from $primary_ip" <<<"$(in_host "$standby" systemctl show -P StatusText pgha-standby)"
# The unit may finish its start check a moment after pgha-standby is ready: it streams already.
check "after the clone postgresql@$pg-main is active and runs the standby" \
    eventually 15 cluster_runs_under_systemd "$standby"
check "pgha-standby is still active (exited) once postgresql@$pg-main is" \
    test "$(unit_state "$standby" pgha-standby)" = active/exited/success

echo "-- replication, verified the way the seed procedure does it"
psql_in "$primary" -c "CREATE DATABASE pghatest" >/dev/null
psql_in "$primary" -d pghatest >/dev/null <<'SQL'
CREATE TABLE fruit (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO fruit VALUES (1, 'apple'), (2, 'pear'), (3, 'plum');
UPDATE fruit SET name = 'quince' WHERE id = 2;
SQL
renamed_on_standby() { [ "$(psql_in "$standby" -d pghatest -c "SELECT name FROM fruit WHERE id = 2")" = quince ]; }
check "the renamed row is visible on the standby" eventually 60 renamed_on_standby
check "all rows arrived on the standby" test "$(psql_in "$standby" -d pghatest -c "SELECT count(*) FROM fruit")" = 3
check "the standby is in recovery" test "$(psql_in "$standby" -c "SELECT pg_is_in_recovery()")" = t
check "the standby refuses writes" bash -c "! nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- \
    runuser -u postgres -- psql -X -d pghatest -c \"INSERT INTO fruit VALUES (9, 'x')\" 2>/dev/null"
streaming_to_standby() {
    [ "$(psql_in "$primary" -c "SELECT state FROM pg_stat_replication WHERE client_addr = '$standby_ip'")" = streaming ]
}
check "the primary streams to the standby (pg_stat_replication)" eventually 30 streaming_to_standby
# archive_command is pgha itself, run by postgresql@.service as postgres: a switched segment lands in the archive.
psql_in "$primary" -c "SELECT pg_switch_wal()" >/dev/null
archived_on() {
    [ "$(psql_in "$1" -c "SELECT archived_count > 0 AND failed_count = 0 FROM pg_stat_archiver")" = t ]
}
check "the primary archives through pgha archive-wal (pg_stat_archiver)" eventually 30 archived_on "$primary"
check "... into the archive directory" in_host "$primary" sh -c 'ls /var/backups/pgsql/archive | grep -qE "^[0-9A-F]{24}$"'
check "the standby has its archive directory too, for the day it is promoted" \
    test "$(in_host "$standby" stat -c %U:%a /var/backups/pgsql/archive)" = postgres:700

if in_host "$standby" pgha status --help >/dev/null 2>&1; then
    for host in "$primary" "$standby"; do
        status_output=$(in_host "$host" pgha status 2>&1)
        check "$host: pgha status says OK (exit 0)" test $? -eq 0
        printf '%s\n' "$status_output" | head -8 | sed 's/^/    /'
    done
else
    echo "(this pgha has no status command yet: skipped pgha status)"
fi

echo "-- systemctl stop pgha-standby in the middle of a clone"
# The unit never clones a standby it made: for this clone it runs `pgha standby --force-reclone`
# (a runtime drop-in, removed below); a slow link keeps it copying long enough to stop it.
clone_inode=$(in_host "$standby" stat -c %i "$datadir")
in_host "$standby" pg_ctlcluster "$pg" main stop
in_host "$standby" sh -c 'mkdir -p /run/systemd/system/pgha-standby.service.d &&
    printf "[Service]\nExecStart=\nExecStart=/usr/sbin/pgha standby --force-reclone\n" \
        > /run/systemd/system/pgha-standby.service.d/reclone.conf && systemctl daemon-reload'
# The data flows from the primary: its side of the link is the one to slow down.
in_host "$primary" tc qdisc add dev host0 root tbf rate 16mbit burst 64kbit latency 400ms
in_host "$standby" systemctl restart --no-block pgha-standby
copying() { in_host "$standby" systemctl show -P StatusText pgha-standby | grep -q '^cloning [0-9]'; }
check "pgha-standby is copying from the primary" eventually 60 copying
check "systemctl stop pgha-standby returns" in_host "$standby" systemctl stop pgha-standby
in_host "$primary" tc qdisc del dev host0 root
in_host "$standby" journalctl -u pgha-standby -o cat --no-pager -n 6 | sed 's/^/    /'
check "the stopped clone logged the signal" \
    bash -c "nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- journalctl -u pgha-standby -o cat --no-pager | grep -q 'interrupted by SIGTERM'"
check "the stopped clone left the original data directory in place" \
    test "$(in_host "$standby" stat -c %i "$datadir")" = "$clone_inode"
check "the stopped clone left no staging directory" bash -c "! test -e '$(host_dir "$standby")/root$datadir.pgha-staging'"
check "the stopped clone left no pg_basebackup running" bash -c "! nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- pgrep -x pg_basebackup"
in_host "$standby" sh -c 'rm -r /run/systemd/system/pgha-standby.service.d && systemctl daemon-reload'
check "the stopped clone left the standby down, as it found it" \
    bash -c "! nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- pg_ctlcluster $pg main status >/dev/null"
check "after the stopped clone pgha-standby starts the standby it made, no new clone" \
    in_host "$standby" systemctl start pgha-standby
check "pgha-standby said it started the standby" \
    grep -q "started it" <<<"$(in_host "$standby" systemctl show -P StatusText pgha-standby)"
check "the standby is the one cloned before (same data directory)" \
    test "$(in_host "$standby" stat -c %i "$datadir")" = "$clone_inode"
check "and the standby streams" eventually 60 streaming_to_standby

echo "-- journal"
for pair in "$primary:pgha-primary" "$standby:pgha-standby"; do
    host=${pair%%:*}
    unit=${pair#*:}
    # The unit's last run only: the standby's earlier run was stopped on purpose above.
    run=_SYSTEMD_INVOCATION_ID=$(in_host "$host" systemctl show -P InvocationID "$unit")
    journal=$(in_host "$host" journalctl -u "$unit" "$run" -o cat --no-pager)
    steps=$(in_host "$host" journalctl -u "$unit" "$run" SYSLOG_IDENTIFIER=pgha -p info -o cat --no-pager | wc -l)
    check "journalctl -u $unit shows pgha's steps ($steps lines at info or above)" test "$steps" -ge 2
    errors=$(in_host "$host" journalctl -u "$unit" "$run" SYSLOG_IDENTIFIER=pgha -p err -o cat --no-pager)
    check "journalctl -u $unit: a successful run logs nothing at err or above" test -z "$errors"
    printf '%s\n' "$journal" | tail -8 | sed 's/^/    /'
done
check "pgha-prune-archive.service runs under its hardening" in_host "$primary" systemctl start pgha-prune-archive.service
in_host "$primary" journalctl -u pgha-prune-archive -o cat --no-pager | grep -v '^Start\|^Finish' | sed 's/^/    /'
# node-exporter is not installed on the hosts: its textfile directory is all the unit's condition looks for.
# A critical problem here would mean the hardening keeps status from asking the members.
in_host "$primary" mkdir -p /var/lib/prometheus/node-exporter
check "pgha-metrics.service runs under its hardening" in_host "$primary" systemctl start pgha-metrics.service
check "pgha-metrics wrote the primary's metrics" \
    in_host "$primary" grep -qxF -e 'pgha_role{role="primary"} 1' /var/lib/prometheus/node-exporter/pgha.prom
check "pgha-metrics: no critical problem under the hardening" \
    in_host "$primary" grep -qxF -e 'pgha_problems{severity="critical"} 0' /var/lib/prometheus/node-exporter/pgha.prom

for host in "$primary" "$standby"; do
    check "$host: the password is in no journal entry" \
        bash -c "! nsenter -t $(cat "$(host_dir "$host")/leader.pid") -a -- journalctl -o export --no-pager | grep -aqF -- '$password'"
    check "$host: the password is in no PostgreSQL config or log" \
        bash -c "! grep -rqF -- '$password' '$(host_dir "$host")/root/etc/postgresql' '$(host_dir "$host")/root/var/log/postgresql' \
            '$(host_dir "$host")/root$datadir/postgresql.auto.conf'"
done
check "the password reaches the standby's PostgreSQL only through its passfile" \
    bash -c "in_conninfo=\$(nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- runuser -u postgres -- psql -X -A -t -c 'SHOW primary_conninfo'); \
        echo \"\$in_conninfo\"; [[ \$in_conninfo == *passfile=* && \$in_conninfo != *password=* ]]"

echo "-- restart the standby host: it streams again, without a re-clone"
in_host "$standby" systemctl enable -q pgha-standby
marker=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
in_host "$standby" sh -c "echo $marker > $datadir/pgha-e2e-marker"
inode_before=$(in_host "$standby" stat -c %i "$datadir")
listing_before=$(in_host "$standby" ls -a "/var/lib/postgresql/$pg")
host_stop "$standby"
host_boot "$standby" "$bridge"
receiver_streaming() { [ "$(psql_in "$standby" -c "SELECT status FROM pg_stat_wal_receiver")" = streaming ]; }
check "after the restart the standby streams (pg_stat_wal_receiver)" eventually 60 receiver_streaming
check "pgha-standby ran at boot and succeeded (active (exited))" \
    test "$(unit_state "$standby" pgha-standby)" = active/exited/success
check "systemctl status pgha-standby after boot says it already streams" \
    grep -q "already streams from $primary_ip" <<<"$(in_host "$standby" systemctl show -P StatusText pgha-standby)"
check "no re-clone: same data directory (inode), marker file still there" \
    test "$(in_host "$standby" stat -c %i "$datadir"):$(in_host "$standby" cat "$datadir/pgha-e2e-marker")" = "$inode_before:$marker"
check "no re-clone: nothing new moved aside in /var/lib/postgresql/$pg" \
    test "$(in_host "$standby" ls -a "/var/lib/postgresql/$pg")" = "$listing_before"
in_host "$standby" journalctl -b -u pgha-standby -o cat --no-pager | tail -4 | sed 's/^/    boot: /'

echo "-- restart the primary host: the standby reconnects and catches up"
in_host "$primary" systemctl enable -q pgha-primary
host_stop "$primary"
host_boot "$primary" "$bridge"
check "pgha-primary ran at boot and succeeded" \
    test "$(unit_state "$primary" pgha-primary)" = active/exited/success
psql_in "$primary" -d pghatest -c "INSERT INTO fruit VALUES (4, 'fig'); UPDATE fruit SET name = 'damson' WHERE id = 3" >/dev/null
caught_up() { [ "$(psql_in "$standby" -d pghatest -c "SELECT string_agg(name, ',' ORDER BY id) FROM fruit")" = apple,quince,damson,fig ]; }
check "the standby caught up with writes made after the primary's restart" eventually 90 caught_up
check "the standby streams from the restarted primary" eventually 30 streaming_to_standby

# Seconds from systemd's "Starting" of postgresql@PG-main to pgha fence's last line, in its last
# start on HOST (the time the fence adds to that start), and to the unit's "Started".
fence_seconds() {
    in_host "$1" journalctl -u "postgresql@$pg-main" -o short-unix --no-pager | awk '
        / systemd\[1\]: Starting / { start = $1; fence = ""; up = "" }
        / pgha\[[0-9]+\]: / { fence = $1 }
        / systemd\[1\]: Started / { up = $1 }
        END { printf "fence %s s, unit start %s s\n", fence ? sprintf("%.2f", fence - start) : "(silent)", up ? sprintf("%.2f", up - start) : "?" }'
}
echo "    boot of the primary, the standby answering: $(fence_seconds "$primary")"

echo "-- failover while the primary is off; it boots fenced and takes no write; rejoin"
host_stop "$primary"
check "pgha promote --force on the standby" in_host "$standby" pgha promote --force
psql_in "$standby" -c "CREATE TABLE after_failover (n int); INSERT INTO after_failover VALUES (1)" >/dev/null
psql_in "$standby" -c "SELECT pg_switch_wal()" >/dev/null
check "the new primary archives at once" eventually 30 archived_on "$standby"
# A client on the old primary tries to write from the moment its container exists until told to stop.
writes=$(mktemp -d)
(
    n=0
    while [ ! -e "$writes/stop" ]; do
        n=$((n + 1))
        if leader=$(cat "$(host_dir "$primary")/leader.pid" 2>/dev/null) && [ -n "$leader" ]; then
            if nsenter -t "$leader" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PGCONNECT_TIMEOUT=2 \
                runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 \
                -c "CREATE TABLE IF NOT EXISTS fence_probe (n int); INSERT INTO fence_probe VALUES ($n)" >>"$writes/log" 2>&1; then
                echo "$n" >>"$writes/accepted"
            fi
        fi
        sleep 0.05
    done
) &
writer=$!
host_boot "$primary" "$bridge"
sleep 5
touch "$writes/stop"
wait "$writer"
check "no write was accepted by the old primary while it booted ($(grep -c . "$writes/log" 2>/dev/null || echo 0) refusals)" \
    test ! -s "$writes/accepted"
check "... whose server ran and refused clients (hot standby off)" grep -q "Hot standby mode is disabled" "$writes/log"
grep -m1 "Hot standby mode is disabled" "$writes/log" | sed 's/^/    /'
rm -rf "$writes"
check "the journal of postgresql@$pg-main says it is fenced" \
    bash -c "nsenter -t $(cat "$(host_dir "$primary")/leader.pid") -a -- journalctl -b -u postgresql@$pg-main -o cat --no-pager | grep -F 'fenced: $standby_ip is the primary; run \`pgha rejoin\`'"
echo "    fenced boot of the old primary, the new primary answering: $(fence_seconds "$primary")"
check "pgha-primary at boot refused the fenced cluster, saying so" \
    bash -c "nsenter -t $(cat "$(host_dir "$primary")/leader.pid") -a -- journalctl -b -u pgha-primary -o cat --no-pager | grep -q 'is fenced: $standby_ip is the primary'"
status_output=$(in_host "$primary" pgha status 2>&1)
status_code=$?
check "pgha status on the fenced host is CRITICAL (exit 2)" test "$status_code" -eq 2
check "... and says it is fenced" grep -q "fenced: $standby_ip is the primary" <<<"$status_output"
printf '%s\n' "$status_output" | head -3 | sed 's/^/    /'
check "pgha rejoin on the old primary, with no config edit" in_host "$primary" pgha rejoin
check "... removed the fence" in_host "$primary" test ! -e /etc/postgresql/$pg/main/conf.d/zz-pgha-fence.conf
old_primary_streaming() { [ "$(psql_in "$primary" -c "SELECT status FROM pg_stat_wal_receiver")" = streaming ]; }
check "the old primary streams from the new one" eventually 60 old_primary_streaming
check "after the rejoin postgresql@$pg-main is active and runs the standby" \
    eventually 15 cluster_runs_under_systemd "$primary"
has_new_rows() { [ "$(psql_in "$primary" -c "SELECT count(*) FROM after_failover")" = 1 ]; }
check "... with the new primary's rows" eventually 30 has_new_rows
check "no write of the fenced host reached the new primary" \
    test "$(psql_in "$standby" -c "SELECT count(*) FROM pg_class WHERE relname = 'fence_probe'")" = 0
roles=""
for host in "$primary" "$standby"; do
    json=$(in_host "$host" pgha status --json)
    check "$host: pgha status after the rejoin is OK (exit 0)" test $? -eq 0
    roles="$roles $(printf '%s' "$json" | sed -n 's/^  "role": "\(.*\)",$/\1/p')"
done
check "status on both hosts shows one primary:$roles" test "$(echo $roles)" = "standby primary"
check "pgha.conf is the same on both hosts (no edit)" \
    test "$(in_host "$primary" sha256sum /etc/pgha/pgha.conf | cut -d' ' -f1)" = "$(in_host "$standby" sha256sum /etc/pgha/pgha.conf | cut -d' ' -f1)"

echo "-- switchover to the first primary and back, from the primary alone"
roles_now() {
    local roles="" host json
    for host in "$primary" "$standby"; do
        json=$(in_host "$host" pgha status --json) || return 1
        roles="$roles $(printf '%s' "$json" | sed -n 's/^  "role": "\(.*\)",$/\1/p')"
    done
    echo $roles
}
for round in "$standby $primary $primary_ip" "$primary $standby $standby_ip"; do
    read -r from to to_ip <<<"$round"
    check "pgha switchover on $from hands the primary role to $to" in_host "$from" pgha switchover --to "$to_ip"
    to_writable() { [ "$(psql_in "$to" -c "SELECT pg_is_in_recovery()")" = f ]; }
    check "... $to is writable" to_writable
    from_streams() { [ "$(psql_in "$from" -c "SELECT status FROM pg_stat_wal_receiver")" = streaming ]; }
    check "... and $from streams from it" eventually 60 from_streams
    expected=$([ "$to" = "$primary" ] && echo "primary standby" || echo "standby primary")
    check "... status on both hosts agrees: $expected" test "$(roles_now)" = "$expected"
done
check "no row was lost across both switchovers" \
    test "$(psql_in "$standby" -c "SELECT count(*) FROM after_failover")" = 1

echo "-- the fence's cost and fallbacks on the new primary"
in_host "$standby" systemctl restart "postgresql@$pg-main"
echo "    restart of the new primary, the other member answering: $(fence_seconds "$standby")"
host_stop "$primary"
check "with no member answering, the new primary still starts (fence.no_answer = start)" \
    in_host "$standby" systemctl restart "postgresql@$pg-main"
check "... writable" test "$(psql_in "$standby" -c "SELECT pg_is_in_recovery()")" = f
echo "    restart of the new primary, no member answering: $(fence_seconds "$standby")"
in_host "$standby" mv /usr/sbin/pgha /usr/sbin/pgha.away
check "without pgha's binary, postgresql@$pg-main still starts (ExecStartPre=-)" \
    in_host "$standby" systemctl restart "postgresql@$pg-main"
in_host "$standby" mv /usr/sbin/pgha.away /usr/sbin/pgha

echo "-- upgrade keeps a hand-edited pgha.conf; dpkg-reconfigure rewrites it"
in_host "$standby" sed -i 's/^keep = .*/keep = "14d"  # edited by hand/' /etc/pgha/pgha.conf
check "reinstalling the package (an upgrade's path) succeeds" \
    in_host "$standby" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall /root/pgha.deb
check "the hand edit survived the reinstall" in_host "$standby" grep -q 'edited by hand' /etc/pgha/pgha.conf
in_host "$standby" sed -i 's/^keep = .*/keep = "7d"/' /etc/pgha/pgha.conf
password_file_before=$(in_host "$standby" sha256sum /etc/pgha/replication.password)
printf 'pgha pgha/primary_address string not-an-address\n' | preseed "$standby"
config_before=$(in_host "$standby" sha256sum /etc/pgha/pgha.conf)
reconfigure_output=$(in_host "$standby" env DEBIAN_FRONTEND=noninteractive dpkg-reconfigure pgha 2>&1)
reconfigure_status=$?
check "dpkg-reconfigure with a bad preseeded address fails" test "$reconfigure_status" -ne 0
check "... naming the question and the bad value" grep -q 'pgha/primary_address.*not-an-address' <<<"$reconfigure_output"
check "... and leaves pgha.conf as it was" test "$(in_host "$standby" sha256sum /etc/pgha/pgha.conf)" = "$config_before"
printf '%s\n' "$reconfigure_output" | grep pgha: | head -3 | sed 's/^/    /'
printf 'pgha pgha/primary_address string %s\npgha pgha/standby_addresses string %s, %s.9\npgha pgha/archive_directory string /var/backups/pgsql/wal\n' \
    "$primary_ip" "$standby_ip" "$net" | preseed "$standby"
check "dpkg-reconfigure with new answers succeeds" in_host "$standby" env DEBIAN_FRONTEND=noninteractive dpkg-reconfigure pgha
check "it rewrote pgha.conf with the new answers" \
    bash -c "grep -q 'addresses = \[\"$standby_ip\", \"$net.9\"\]' '$(host_dir "$standby")/root/etc/pgha/pgha.conf' && \
        grep -q '^directory = \"/var/backups/pgsql/wal\"' '$(host_dir "$standby")/root/etc/pgha/pgha.conf'"
check "an empty password kept the stored one" \
    test "$(in_host "$standby" sha256sum /etc/pgha/replication.password)" = "$password_file_before"

# Interactive, through debconf's readline frontend with typed answers: a bad address gets an
# error screen and the question again. Answers: role (2 = standby), primary, standbys, user,
# password (empty: keep), archive, then the primary's address once more.
typed=$(printf '2\nnot-an-ip\n%s, %s.9\nreplicator\n\n/var/backups/pgsql/wal\n%s\n' "$standby_ip" "$net" "$primary_ip")
# script(1) gives dpkg-reconfigure the controlling terminal debconf's readline frontend insists on.
# ($(...) dropped the final newline: the last answer needs one, or readline waits for Enter.)
interactive_output=$(in_host "$standby" sh -c "printf '%s\\n' '$typed' | TERM=dumb timeout 60 script -qec 'dpkg-reconfigure -freadline pgha' /dev/null" 2>&1)
interactive_status=$?
check "interactive dpkg-reconfigure: a bad address is answered with an error screen" \
    grep -q 'Invalid answer' <<<"$interactive_output"
check "... then asked again, and the corrected answer is accepted" test "$interactive_status" -eq 0
[ "$interactive_status" -eq 0 ] || printf '%s\n' "$interactive_output" | tail -15 | sed 's/^/    /'
check "... and pgha.conf holds the corrected address" \
    in_host "$standby" grep -q "^address = \"$primary_ip\"" /etc/pgha/pgha.conf

echo "-- apt purge pgha leaves PostgreSQL data intact"
identifier_before=$(in_host "$standby" runuser -u postgres -- /usr/lib/postgresql/$pg/bin/pg_controldata "$datadir" | grep 'system identifier')
check "apt purge pgha" in_host "$standby" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q pgha
check "purge removed /etc/pgha" in_host "$standby" test ! -e /etc/pgha
check "purge removed the fence's drop-in" bash -c "! nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- systemctl show -P DropInPaths postgresql@$pg-main | grep -q pgha-fence"
check "purge removed pgha's passfile" in_host "$standby" test ! -e /var/lib/postgresql/.pgha.pgpass
check "purge removed pgha's debconf answers" bash -c "[ -z \"\$(nsenter -t $(cat "$(host_dir "$standby")/leader.pid") -a -- debconf-show pgha 2>/dev/null)\" ]"
check "the cluster, its data and config are intact after purge" \
    test "$(in_host "$standby" runuser -u postgres -- /usr/lib/postgresql/$pg/bin/pg_controldata "$datadir" | grep 'system identifier'):$(in_host "$standby" cat "$datadir/pgha-e2e-marker"):$(in_host "$standby" test -f /etc/postgresql/$pg/main/postgresql.conf && echo conf)" \
    = "$identifier_before:$marker:conf"
check "the standby still serves the replicated rows after purge" \
    test "$(psql_in "$standby" -d pghatest -c "SELECT count(*) FROM fruit")" = 4

echo "e2e $dist took $(($(date +%s) - started)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
