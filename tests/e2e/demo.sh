#!/bin/bash
# `make demo`: two Debian 12 hosts (systemd-nspawn, PostgreSQL 15) on a private bridge, pgha.deb
# installed on both with preseeded answers, pgha-primary then pgha-standby started, a row
# written on the primary and read on the standby. The hosts keep running for you to explore;
# `make demo-clean` (demo.sh down) removes them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

dist=bookworm
pg=$(pg_version_of "$dist")
bridge=pgha-demo
primary=pgha-demo-p
standby=pgha-demo-s
primary_ip=10.231.20.1
standby_ip=10.231.20.2

down() {
    host_destroy "$primary"
    host_destroy "$standby"
    bridge_down "$bridge"
}

show() { printf '\n\033[1m%s\033[0m\n' "$*"; }
run_in() { # HOST COMMAND...: shows the command, then runs it in HOST
    local host=$1
    shift
    printf '%s# %s\n' "$host" "$*" >&2
    in_host "$host" "$@"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root"
    local deb started password
    deb=$(realpath "$here/../../pgha.deb")
    [ -f "$deb" ] || die "$deb missing: run make deb"
    started=$(date +%s)
    down
    trap 'log "the demo failed; removing its hosts"; down' ERR
    local base
    base=$(base_image "$dist" "$deb")
    bridge_up "$bridge"
    host_create "$primary" "$primary_ip" "$base"
    host_create "$standby" "$standby_ip" "$base"
    host_boot "$primary" "$bridge"
    host_boot "$standby" "$bridge"
    host_prepare "$primary" "$pg" "$deb"
    host_prepare "$standby" "$pg" "$deb"
    password=$(head -c 18 /dev/urandom | base64)

    show "1. apt install ./pgha.deb, with preseeded answers (the password goes to debconf on stdin)"
    for pair in "$primary:primary" "$standby:standby"; do
        printf 'pgha pgha/role select %s\npgha pgha/primary_address string %s\npgha pgha/standby_addresses string %s\npgha pgha/replication_password password %s\n' \
            "${pair#*:}" "$primary_ip" "$standby_ip" "$password" | preseed "${pair%%:*}"
        run_in "${pair%%:*}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/pgha.deb 2>&1 | grep -E 'pgha|Setting up pgha' || true
    done
    run_in "$primary" cat /etc/pgha/pgha.conf | grep -v '^#' | grep .

    show "2. systemctl start pgha-primary, then pgha-standby"
    run_in "$primary" systemctl start pgha-primary
    run_in "$primary" journalctl -u pgha-primary -o cat --no-pager | sed 's/^/    /'
    run_in "$standby" systemctl start pgha-standby
    run_in "$standby" journalctl -u pgha-standby -o cat --no-pager | sed 's/^/    /'
    run_in "$standby" systemctl status --no-pager -n 0 pgha-standby || true

    show "3. a row written on the primary, read on the standby"
    printf '%s# psql -c "CREATE TABLE demo ...; INSERT INTO demo VALUES (1, now())"\n' "$primary"
    psql_in "$primary" -c "CREATE TABLE demo (id int PRIMARY KEY, written timestamptz); INSERT INTO demo VALUES (1, now())" >/dev/null
    local row="" i
    for i in $(seq 60); do
        row=$(psql_in "$standby" -c "SELECT id, written FROM demo" 2>/dev/null || true)
        [ -z "$row" ] || break
        sleep 0.5
    done
    printf '%s# psql -c "SELECT id, written FROM demo"\n%s\n' "$standby" "${row:-(not replicated!)}"
    [ -n "$row" ] || die "the row did not reach the standby"

    show "4. replication status"
    if in_host "$standby" pgha --help 2>/dev/null | grep -q '^ *status'; then
        run_in "$primary" pgha status || true
        run_in "$standby" pgha status || true
    else
        printf '%s# psql -x -c "SELECT ... FROM pg_stat_replication"\n' "$primary"
        psql_in "$primary" -x -c "SELECT application_name, client_addr, state, sync_state, sent_lsn, replay_lsn, replay_lag FROM pg_stat_replication" | sed 's/^/    /'
        printf '%s# psql -x -c "SELECT ... FROM pg_stat_wal_receiver"\n' "$standby"
        psql_in "$standby" -x -c "SELECT status, sender_host, slot_name, latest_end_lsn, latest_end_time FROM pg_stat_wal_receiver" | sed 's/^/    /'
    fi
    trap - ERR

    show "The demo is up ($(($(date +%s) - started)) s). The hosts keep running:"
    for host in "$primary" "$standby"; do
        echo "    shell on $host:  nsenter -t $(cat "$(host_dir "$host")/leader.pid") -a bash"
    done
    echo "    remove them:      make demo-clean"
}

case "${1:-up}" in
    up) up ;;
    down) down; log "demo removed" ;;
    *) die "usage: demo.sh up|down" ;;
esac
