#!/bin/bash
# debian/copyright names every crate of Cargo.lock (the package is built from them, vendored),
# and no crate that is gone; pgha itself is MIT as LICENSE says. After a dependency change,
# debian/update-copyright rewrites the crates' paragraphs.
set -euo pipefail
cd "$(dirname "$0")/.."
locked=$(awk '/^\[\[package\]\]/ { name = ""; source = 0 }
              /^name = / { name = $3 }
              /^version = / { version = $3 }
              /^source = / { source = 1 }
              /^source = / || /^checksum = / { if (name != "") { gsub(/"/, "", name); gsub(/"/, "", version); print name "-" version; name = "" } }' \
    Cargo.lock | sort -u)
listed=$(sed -n 's|^Files: vendor/\(.*\)/\*$|\1|p' debian/copyright | sort -u)
status=0
missing=$(comm -23 <(echo "$locked") <(echo "$listed"))
stale=$(comm -13 <(echo "$locked") <(echo "$listed"))
[ -z "$missing" ] || { printf 'debian/copyright lacks crates of Cargo.lock (run debian/update-copyright):\n%s\n' "$missing" >&2; status=1; }
[ -z "$stale" ] || { printf 'debian/copyright lists crates that are not in Cargo.lock (run debian/update-copyright):\n%s\n' "$stale" >&2; status=1; }
grep -q '^license = "MIT"$' Cargo.toml || { echo "Cargo.toml: license is not MIT" >&2; status=1; }
grep -q '^MIT License$' LICENSE || { echo "LICENSE: not the MIT licence" >&2; status=1; }
holder=$(sed -n 's/^Copyright (c) //p' LICENSE)
awk -v holder="$holder" '/^Files: \*$/ { getline; found = ($0 == "Copyright: " holder) } END { exit !found }' debian/copyright \
    || { echo "debian/copyright: Files: * does not say 'Copyright: $holder' as LICENSE does" >&2; status=1; }
[ "$status" -eq 0 ] && echo "debian/copyright: $(echo "$locked" | wc -l) crates of Cargo.lock, all listed; pgha: MIT, $holder"
exit "$status"
