#!/bin/bash
# Runs lintian on the built .deb and fails on any error or warning. Overrides live in
# debian/pgha.lintian-overrides, each with the reason it is right.
set -euo pipefail
deb=${1:?usage: lint-deb.sh PACKAGE.deb}
output=$(lintian --display-info --fail-on error,warning "$deb" 2>&1) && status=0 || status=$?
[ -z "$output" ] || printf '%s\n' "$output"
errors=$(grep -c '^E: ' <<<"$output" || true)
warnings=$(grep -c '^W: ' <<<"$output" || true)
infos=$(grep -c '^I: ' <<<"$output" || true)
echo "lintian $(basename "$deb"): $errors errors, $warnings warnings, $infos info tags (exit $status)"
[ "$status" -eq 0 ] && [ "$errors" -eq 0 ] && [ "$warnings" -eq 0 ]
