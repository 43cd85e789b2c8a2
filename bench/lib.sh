# Shared setup for the bench/ scripts: two network-namespace hosts joined by a veth pair, one PostgreSQL
# cluster per host, the replication password file, pgha.conf, psql helpers and timers.
# Sourced, not run. Before sourcing, the script sets:
#   NS_A NS_B  IP_A IP_B  VETH_A VETH_B  CL_A CL_B  PORT_A PORT_B
# and may define bench_extra_cleanup (runs first in the EXIT trap).
# Everything bench_setup_hosts and bench_create_clusters make is removed on exit, also when the run fails.

VERSION=15
BIN=/usr/lib/postgresql/$VERSION/bin
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGHA=${PGHA:-${CARGO_TARGET_DIR:-$BENCH_ROOT/target}/release/pgha}
BENCH_NAME=$(basename "$0")

[ "$(id -u)" = 0 ] || { echo "$BENCH_NAME: run as root" >&2; exit 2; }
[ -x "$PGHA" ] || { echo "$BENCH_NAME: no pgha binary at $PGHA (cargo build --release, or set PGHA)" >&2; exit 2; }
PGHA=$(realpath "$PGHA")

WORK=$(mktemp -d /tmp/pgha-bench.XXXXXX)
# The password and passfile live here; postgres (pg_basebackup, the clusters' restore tools) must reach them.
chmod 755 "$WORK"

# Only what this run created is removed: a namespace or cluster of the same name that already existed
# (another run of the same script) makes the run stop before touching it.
BENCH_NETNS_MADE=()
BENCH_CLUSTERS_MADE=()

bench_cleanup() {
    set +e
    declare -F bench_extra_cleanup >/dev/null && bench_extra_cleanup
    local cl
    for cl in "${BENCH_CLUSTERS_MADE[@]}"; do
        pg_ctlcluster $VERSION "$cl" stop -m immediate >/dev/null 2>&1
        pg_dropcluster $VERSION "$cl" >/dev/null 2>&1
        rm -rf /var/lib/postgresql/$VERSION/"$cl" /var/lib/postgresql/$VERSION/"$cl".pgha-*
        # pg_dropcluster leaves the config directory when it holds files it did not create (conf.d/pgha.conf).
        rm -rf /etc/postgresql/$VERSION/"$cl" /var/log/postgresql/postgresql-$VERSION-"$cl".log
    done
    local ns
    for ns in "${BENCH_NETNS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null; done
    # A veth that never reached its namespace (setup failed half way) is still in the root namespace.
    ip link del "$VETH_A" 2>/dev/null
    rm -rf "$WORK"
}
trap bench_cleanup EXIT
# So that Ctrl-C or a kill still runs the EXIT trap.
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
on_a() { ip netns exec "$NS_A" "$@"; }
on_b() { ip netns exec "$NS_B" "$@"; }
# psql_on PORT [psql options...]: unaligned, tuples only, as postgres over the local socket.
psql_on() { local port=$1; shift; runuser -u postgres -- psql -X -q -A -t -h /var/run/postgresql -p "$port" -d postgres "$@"; }
psql_a() { psql_on "$PORT_A" -c "$1"; }
psql_b() { psql_on "$PORT_B" -c "$1"; }

# For benches whose two clusters share one port, as pgha's members do (PORT), each with a socket
# directory of its own: helpers that take the cluster's name (CL_A or CL_B).
sock() { echo "/var/run/postgresql/$1"; }
psql_cl() { local cl=$1; shift; runuser -u postgres -- psql -X -q -A -t -h "$(sock "$cl")" -p "$PORT" -d postgres "$@"; }
on() { ip netns exec "$1" "${@:2}"; }
ns_of() { [ "$1" = "$CL_A" ] && echo "$NS_A" || echo "$NS_B"; }
conf_of() { echo "$WORK/$1.conf"; }

# CL_A and CL_B, both on PORT, each with its socket directory.
bench_create_one_port_clusters() {
    local cl
    for cl in "$CL_A" "$CL_B"; do
        install -d -o postgres -g postgres "$(sock "$cl")"
        BENCH_CLUSTERS_MADE+=("$cl")
        pg_createcluster "$VERSION" "$cl" -p "$PORT" --socketdir="$(sock "$cl")" >/dev/null
    done
}

bench_setup_hosts() {
    local ns
    for ns in "$NS_A" "$NS_B"; do
        if ip netns list | grep -qw "$ns"; then
            echo "$BENCH_NAME: network namespace $ns exists (another run, or a stale one: ip netns del $ns)" >&2
            exit 1
        fi
    done
    ip netns add "$NS_A"; BENCH_NETNS_MADE+=("$NS_A")
    ip netns add "$NS_B"; BENCH_NETNS_MADE+=("$NS_B")
    ip link add "$VETH_A" type veth peer name "$VETH_B"
    ip link set "$VETH_A" netns "$NS_A"; ip link set "$VETH_B" netns "$NS_B"
    ip -n "$NS_A" addr add "$IP_A/24" dev "$VETH_A"; ip -n "$NS_B" addr add "$IP_B/24" dev "$VETH_B"
    for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
    ip -n "$NS_A" link set "$VETH_A" up; ip -n "$NS_B" link set "$VETH_B" up
}

# Debian's default authentication (peer on the socket, scram over TCP); pgha adds its own hba lines.
# Refuses to run over a cluster of the bench's names that another run (or a stale one) left.
bench_refuse_existing_clusters() {
    local cl
    for cl in "$CL_A" "$CL_B"; do
        if [ -e /etc/postgresql/$VERSION/"$cl" ] || [ -e /var/lib/postgresql/$VERSION/"$cl" ]; then
            echo "$BENCH_NAME: cluster $VERSION/$cl exists (another run, or a stale one: pg_dropcluster --stop $VERSION $cl)" >&2
            exit 1
        fi
    done
}

bench_create_clusters() {
    local cl port
    bench_refuse_existing_clusters
    for cl in "$CL_A" "$CL_B"; do
        port=$PORT_A; [ "$cl" = "$CL_B" ] && port=$PORT_B
        BENCH_CLUSTERS_MADE+=("$cl")
        pg_createcluster $VERSION "$cl" -p "$port" >/dev/null
    done
}

bench_write_password() {
    printf 'bench-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$WORK/password"
    chmod 600 "$WORK/password"
}

# bench_config CLUSTER PRIMARY_IP PRIMARY_PORT STANDBY_IP STREAMING_TIMEOUT [EXTRA_PRIMARY_LINE]
bench_config() {
    cat <<EOF
[cluster]
version = $VERSION
name = "$1"
[primary]
address = "$2"
port = $3
${6:-}
[standby]
addresses = ["$4"]
streaming_timeout = "$5"
[replication]
password_file = "$WORK/password"
passfile = "$WORK/pgpass"
[archive]
enabled = false
EOF
}
