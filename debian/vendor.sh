#!/bin/sh
# Source preparation before dpkg-buildpackage: copies the crates Cargo.lock names into vendor/
# (one directory per crate and version), so debian/rules can build offline. Needs cargo and
# network access to crates.io; run it in a copy of the tree (debian/build-in-chroot.sh does),
# vendor/ is not kept in git.
#
# Crates for other targets stay (cargo resolves the whole Cargo.lock even for a Linux build), but
# the prebuilt libraries some of them carry (Windows import libraries, wit-bindgen's wasm object)
# are removed: prebuilt binaries have no place in a Debian source, and a Linux build links none.
set -eu
cd "$(dirname "$0")/.."
rm -rf vendor
cargo vendor --locked --versioned-dirs --quiet vendor >/dev/null

for crate in vendor/windows_*_gnu-* vendor/windows_*_gnullvm-* vendor/windows_*_msvc-* \
    vendor/winapi-*-pc-windows-gnu-* vendor/wit-bindgen-[0-9]*; do
    [ -d "$crate" ] || continue
    find "$crate" -type f \( -name '*.a' -o -name '*.lib' -o -name '*.dll' \) -delete
    # Cargo checks every file .cargo-checksum.json lists: drop the removed ones from it.
    perl -MJSON::PP -e '
        my $path = shift;
        my $dir = $path =~ s{/[^/]+$}{}r;
        open my $in, "<", $path or die "$path: $!";
        my $sums = JSON::PP->new->decode(do { local $/; <$in> });
        close $in;
        delete $sums->{files}{$_} for grep { !-e "$dir/$_" } keys %{ $sums->{files} };
        open my $out, ">", $path or die "$path: $!";
        print $out JSON::PP->new->canonical->encode($sums);
        close $out;
    ' "$crate/.cargo-checksum.json"
done

# Whatever new crate brings a prebuilt library next must be looked at, not shipped unnoticed.
prebuilt=$(find vendor -type f \( -name '*.a' -o -name '*.lib' -o -name '*.dll' -o -name '*.so' \
    -o -name '*.so.*' -o -name '*.dylib' -o -name '*.exe' \) | sort)
if [ -n "$prebuilt" ]; then
    echo "vendor.sh: prebuilt libraries in vendored crates (filter them here):" >&2
    echo "$prebuilt" >&2
    exit 1
fi
echo "vendor.sh: $(ls vendor | wc -l) crates in vendor/"
