# Shared by nspawn.sh (the end-to-end test) and demo.sh: real Debian hosts with systemd as
# PID 1, as systemd-nspawn containers on a private bridge (recipe: REFERENCE §5).
# Each host is an overlayfs over a cached base image, so a host costs seconds, not a debootstrap.

CACHE=${PGHA_TEST_CACHE:-/var/cache/pgha-test}
STATE=${PGHA_TEST_STATE:-/var/lib/pgha-test}
MIRROR=${PGHA_TEST_MIRROR:-http://deb.debian.org/debian}
TESTS_CONTROL=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../debian/tests" && pwd)/control

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

pg_version_of() {
    case "$1" in
        bookworm) echo 15 ;;
        trixie) echo 17 ;;
        *) die "unknown distribution $1 (expected bookworm or trixie)" ;;
    esac
}

# The packages every host needs: systemd, PostgreSQL, man-db (systemd-analyze verify opens the
# Documentation=man: pages), and every Depends of the .deb, because the
# containers have no network to the archive when `apt install ./pgha.deb` runs. The autopkgtest
# runner, apt-utils (it indexes the .deb with apt-ftparchive) and the Depends of every test in
# debian/tests/control are there for the same reason.
base_packages() {
    local dist=$1 deb=$2 pg
    pg=$(pg_version_of "$dist")
    local depends test_depends
    depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' | grep . | sort -u)
    test_depends=$(sed -n 's/^Depends://p' "$TESTS_CONTROL" | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' |
        grep -v '^@' | grep . | sort -u)
    printf '%s\n' systemd systemd-sysv dbus iproute2 procps libnss-myhostname util-linux apt man-db \
        "postgresql-$pg" "postgresql-client-$pg" autopkgtest apt-utils $depends $test_depends | sort -u | paste -sd, -
}

# Prints the base image directory for DIST, building it when the cache lacks it. The directory
# name carries a hash of the package list, so a new Depends builds a new image.
base_image() {
    local dist=$1 deb=$2 packages hash image pg
    pg=$(pg_version_of "$dist")
    packages=$(base_packages "$dist" "$deb")
    hash=$(printf '%s %s' "$dist" "$packages" | sha256sum | cut -c1-12)
    image=$CACHE/base-$dist-$hash
    mkdir -p "$CACHE"
    (
        flock 9
        if [ ! -f "$image/.complete" ]; then
            log "building base image $image (once; cached afterwards)"
            rm -rf "$image.tmp"
            # The main cluster is dropped: every host creates its own at first boot, so the two
            # hosts do not share a database system identifier the way real machines never do.
            mmdebstrap --quiet --variant=minbase --include="$packages" \
                --customize-hook="chroot \"\$1\" pg_dropcluster $pg main" \
                --customize-hook='chroot "$1" systemctl enable systemd-networkd' \
                --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer' \
                --customize-hook='echo "root:pgha" | chroot "$1" chpasswd' \
                "$dist" "$image.tmp" "$MIRROR" >&2 || die "mmdebstrap $dist failed"
            touch "$image.tmp/.complete"
            mv "$image.tmp" "$image"
            # Older images of this distribution (another package list) are not used any more.
            for old in "$CACHE/base-$dist-"*; do
                [ "$old" = "$image" ] || ! mountpoint -q "$old" || continue
                [ "$old" = "$image" ] || rm -rf "$old"
            done
        fi
    ) 9>"$CACHE/.lock"
    echo "$image"
}

bridge_up() {
    local bridge=$1
    ip link show "$bridge" >/dev/null 2>&1 || ip link add "$bridge" type bridge
    ip link set "$bridge" up
}

bridge_down() {
    ip link del "$1" 2>/dev/null || true
}

host_dir() { echo "$STATE/$1"; }

# Creates host NAME with address IP (a /24 on the bridge) from BASE; keeps an existing one.
host_create() {
    local name=$1 ip=$2 base=$3 dir
    dir=$(host_dir "$name")
    mkdir -p "$dir/upper" "$dir/work" "$dir/root"
    echo "$base" >"$dir/base"
    mountpoint -q "$dir/root" || mount -t overlay overlay \
        -o "lowerdir=$base,upperdir=$dir/upper,workdir=$dir/work,redirect_dir=on" "$dir/root"
    echo "$name" >"$dir/root/etc/hostname"
    mkdir -p "$dir/root/etc/systemd/network"
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\n' "$ip" >"$dir/root/etc/systemd/network/10-host0.network"
}

# The container's PID 1 (systemd), found among the descendants of the nspawn process.
leader_of() {
    local pid=$1 child queue
    queue=$pid
    while [ -n "$queue" ]; do
        set -- $queue
        pid=$1; shift; queue="$*"
        if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = systemd ]; then
            echo "$pid"
            return 0
        fi
        for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
            queue="$queue $child"
        done
    done
    return 1
}

host_boot() {
    local name=$1 bridge=$2 dir nspawn leader i state
    dir=$(host_dir "$name")
    # fds 8 and 9 hold the callers' locks: a container that outlives its test must not keep them.
    setsid systemd-nspawn -D "$dir/root" --boot --register=no --keep-unit --network-bridge="$bridge" \
        --machine="$name" --console=passive >>"$dir/console.log" 2>&1 </dev/null 8>&- 9>&- &
    nspawn=$!
    echo "$nspawn" >"$dir/nspawn.pid"
    for i in $(seq 100); do
        leader=$(leader_of "$nspawn") && break
        kill -0 "$nspawn" 2>/dev/null || die "systemd-nspawn for $name exited: $(tail -5 "$dir/console.log")"
        sleep 0.1
    done
    [ -n "$leader" ] || die "no systemd in container $name"
    echo "$leader" >"$dir/leader.pid"
    # Until systemd listens on its private socket, systemctl fails at once, and before it has
    # made /run/systemd/system it says "offline": retry both. Under load, with three hosts
    # booting at once, a first look can come that early.
    for i in $(seq 120); do
        state=$(timeout 120 nsenter -t "$leader" -a -- systemctl is-system-running --wait 2>/dev/null || true)
        [ -z "$state" ] || [ "$state" = offline ] || break
        sleep 0.5
    done
    case "$state" in
        running) ;;
        degraded) log "$name is degraded: $(in_host "$name" systemctl --failed --no-legend --plain | tr '\n' ' ')" ;;
        *) die "$name did not boot (state: ${state:-none}): $(tail -5 "$dir/console.log")" ;;
    esac
    log "$name booted"
}

# Runs a command inside host NAME as root, with a clean environment.
in_host() {
    local name=$1
    shift
    nsenter -t "$(cat "$(host_dir "$name")/leader.pid")" -a -- \
        env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root "$@"
}

# Runs SQL (stdin) as postgres in host NAME, unaligned and quiet.
psql_in() {
    local name=$1
    shift
    in_host "$name" runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 "$@"
}

# A clean shutdown, the way `poweroff` would do it; the overlay stays for the next boot.
host_stop() {
    local name=$1 dir nspawn i
    dir=$(host_dir "$name")
    [ -f "$dir/nspawn.pid" ] || return 0
    nspawn=$(cat "$dir/nspawn.pid")
    if kill -0 "$nspawn" 2>/dev/null; then
        kill -s SIGRTMIN+4 "$(cat "$dir/leader.pid")" 2>/dev/null || true
        for i in $(seq 600); do
            kill -0 "$nspawn" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn" 2>/dev/null; then
            log "$name did not power off within 60 s: killing it"
            kill -9 "$nspawn" 2>/dev/null || true
            sleep 1
        fi
    fi
    rm -f "$dir/nspawn.pid" "$dir/leader.pid"
}

host_destroy() {
    local name=$1 dir
    dir=$(host_dir "$name")
    [ -d "$dir" ] || return 0
    host_stop "$name"
    umount "$dir/root" 2>/dev/null || umount -l "$dir/root" 2>/dev/null || true
    rm -rf "$dir"
}

# First boot of a host: its own PostgreSQL cluster, and the .deb copied in.
host_prepare() {
    local name=$1 pg=$2 deb=$3
    in_host "$name" pg_createcluster "$pg" main --start >/dev/null
    cp "$deb" "$(host_dir "$name")/root/root/pgha.deb"
}

# Feeds preseed answers (stdin of this function) to debconf in host NAME.
preseed() {
    local name=$1
    in_host "$name" debconf-set-selections
}

apt_install_pgha() {
    in_host "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/pgha.deb
}
