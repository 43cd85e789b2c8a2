#!/bin/bash
# Builds the .deb the way a Debian buildd does: `dpkg-buildpackage -us -uc -b` in a clean chroot
# of DIST that holds build-essential and the Build-Depends and nothing else, with no network.
# The host needs mmdebstrap and systemd-container, not Rust.
#
# Usage: debian/build-in-chroot.sh DIST OUTDIR
#   DIST    bookworm or trixie
#   OUTDIR  receives pgha_*.deb, pgha-dbgsym_*.deb, .buildinfo, .changes and build.log
#
# The chroot is built once per distribution and Build-Depends, and cached in
# /var/cache/pgha-test/ (PGHA_TEST_CACHE), like the e2e base images. Each build runs in it through
# systemd-nspawn --volatile=overlay, so a build never changes the cached chroot.
# DEB_BUILD_OPTIONS is passed through (default: parallel=2, the machine is shared).
# PGHA_CHROOT_DIR (default /build) is where the tree sits inside the chroot: another value makes
# a second build with other paths, to check that the result does not depend on them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
CACHE=${PGHA_TEST_CACHE:-/var/cache/pgha-test}
MIRROR=${PGHA_TEST_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${PGHA_TEST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

dist=${1:?usage: build-in-chroot.sh bookworm|trixie OUTDIR}
out=${2:?usage: build-in-chroot.sh bookworm|trixie OUTDIR}
chroot_dir=${PGHA_CHROOT_DIR:-/build}
case "$dist" in bookworm | trixie) ;; *) die "unknown distribution $dist" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, systemd-nspawn)"

# Build-Depends as one line, alternatives and versions kept: apt-get satisfy resolves them in the
# chroot the way the buildd would.
build_depends() {
    awk '/^Build-Depends:/ { on = 1; sub(/^Build-Depends:/, ""); print; next }
         on && /^[ \t]/ { print; next }
         { on = 0 }' "$top/debian/control" | tr '\n' ' ' | sed -e 's/[[:space:]]\+/ /g' -e 's/^ //' -e 's/ $//'
}

# A real machine of DIST has its -updates and -security suites: the Rust toolchain Debian 12
# ships for building packages like this one (rustc-web 1.96) comes from bookworm-security.
sources() {
    printf 'deb %s %s main\n' "$MIRROR" "$dist" "$MIRROR" "$dist-updates"
    printf 'deb %s %s-security main\n' "$SECURITY_MIRROR" "$dist"
}

# Prints the cached chroot for DIST, building it when missing. Its name carries a hash of what
# went into it, so a change of Build-Depends builds a new one.
build_chroot() {
    local deps hash root
    deps=$(build_depends)
    hash=$(printf '%s\n%s\n' "$deps" "$(sources)" | sha256sum | cut -c1-12)
    root=$CACHE/build-$dist-$hash
    mkdir -p "$CACHE"
    (
        flock 9
        if [ ! -f "$root/.complete" ]; then
            log "building the $dist build chroot $root (once; cached afterwards)"
            rm -rf "$root.tmp"
            local mirrors=()
            mapfile -t mirrors < <(sources)
            mmdebstrap --quiet --variant=buildd \
                --customize-hook="chroot \"\$1\" apt-get satisfy -y -q --no-install-recommends '$deps' >/dev/null" \
                --customize-hook='chroot "$1" apt-get clean' \
                "$dist" "$root.tmp" "${mirrors[@]}" >&2 || die "mmdebstrap $dist failed"
            touch "$root.tmp/.complete"
            mv "$root.tmp" "$root"
            for old in "$CACHE/build-$dist-"*; do
                [ "$old" = "$root" ] || rm -rf "$old"
            done
        fi
    ) 9>"$CACHE/.build-$dist.lock"
    echo "$root"
}

# Runs a command in a throw-away overlay of the chroot, OUTDIR mounted on /build.
in_chroot() {
    local root=$1
    shift
    # fds 8 and 9 may hold the callers' locks. Without systemd on the host, /run is no tmpfs and
    # nspawn says so at every exit: that line is noise.
    systemd-nspawn --quiet --console=pipe --register=no --keep-unit --as-pid2 --volatile=overlay -D "$root" \
        --bind="$out:$chroot_dir" --chdir="$chroot_dir/pgha" "$@" </dev/null 8>&- 9>&- \
        2> >(grep --line-buffered -v '^Attempted to remove disk file system under' >&2)
}

root=$(build_chroot)
started=$(date +%s)
rm -rf "$out"
mkdir -p "$out/pgha" "$CACHE/cargo-home"
out=$(cd "$out" && pwd)
# The tree as git would ship it plus uncommitted edits, without build products.
tar -C "$top" --exclude=./target --exclude=./build --exclude=./.git --exclude=./vendor --exclude=./.cargo \
    --exclude='./pgha*.deb' -cf - . | tar -C "$out/pgha" -xf -

# Source preparation, online: the crates of Cargo.lock into vendor/. The host's CA certificates
# and a cargo cache shared between builds are mounted for this step only.
log "vendoring the crates ($dist chroot)"
in_chroot "$root" --bind-ro=/etc/ssl/certs --bind="$CACHE/cargo-home:/var/cache/cargo-home" \
    --setenv=CARGO_HOME=/var/cache/cargo-home -- debian/vendor.sh >"$out/vendor.log" 2>&1 \
    || { tail -30 "$out/vendor.log"; die "vendoring failed (log: $out/vendor.log)"; }

# The build itself, offline: --private-network leaves it only a loopback interface.
log "dpkg-buildpackage in the $dist chroot"
in_chroot "$root" --private-network --setenv=DEB_BUILD_OPTIONS="${DEB_BUILD_OPTIONS:-parallel=2}" \
    -- dpkg-buildpackage -us -uc -b >"$out/build.log" 2>&1 \
    || { tail -40 "$out/build.log"; die "dpkg-buildpackage failed in the $dist chroot (log: $out/build.log)"; }
rustc=$(grep -m1 -o 'rustc [0-9][^ ]*' "$out/build.log" || true)
log "built $(cd "$out" && ls ./*.deb | tr '\n' ' ')in $(($(date +%s) - started)) s (${rustc:-rustc ?})"
