#!/usr/bin/env bash
# Writes seed corpora for the fuzz targets into corpus/<target>/ (git-ignored):
# NARs of a few small trees made by `nix-store --dump`, and narinfo files
# made by a real Nix binary cache (plus a hand-written one with references
# and a deriver, which `nix-store --add` cannot produce).
#
# Needs nix-store and nix (any 2.x); touches nothing outside a temporary
# directory and corpus/. Safe to re-run.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
nar_dir="$here/corpus/nar_reader"
info_dir="$here/corpus/narinfo_parse"
mkdir -p "$nar_dir" "$info_dir"

tmp="$(mktemp -d)"
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

# --- trees ------------------------------------------------------------------
t="$tmp/trees"
mkdir -p "$t"

printf 'hello\n' >"$t/file"                  # a lone regular file
printf '' >"$t/empty"                        # empty file (no padding)
printf '12345678' >"$t/eight"                # contents exactly 8 bytes
printf '#!/bin/sh\necho hi\n' >"$t/exe"      # executable
chmod +x "$t/exe"
ln -s /nix/store/some-target "$t/link"       # a lone symlink
mkdir "$t/emptydir"                          # empty directory

mkdir -p "$t/tree/bin" "$t/tree/share/doc/x"   # nested, mixed node kinds
printf 'a' >"$t/tree/a"
printf '#!/bin/sh\n' >"$t/tree/bin/run"
chmod +x "$t/tree/bin/run"
ln -s ../share "$t/tree/bin/share"
printf 'readme\n' >"$t/tree/share/doc/x/README"
printf 'B' >"$t/tree/B"                        # sorts before "a"
printf 'dot' >"$t/tree/.hidden"

mkdir -p "$t/deep"                             # deep nesting
d="$t/deep"
for i in $(seq 1 20); do d="$d/d$i"; mkdir "$d"; done
printf 'bottom' >"$d/f"

for name in file empty eight exe link emptydir tree deep; do
    nix-store --dump "$t/$name" >"$nar_dir/$name.nar"
done

# --- narinfo from a real binary cache -------------------------------------
store="$tmp/store"
cache="$tmp/cache"
keys="$tmp/keys"
mkdir -p "$keys"
nix-store --generate-binary-cache-key fuzz-seed-1 "$keys/sk" "$keys/pk"
for name in file tree; do
    path="$(nix-store --store "$store" --add "$t/$name")"
    nix --extra-experimental-features nix-command copy --store "$store" \
        --to "file://$cache?compression=none&secret-key=$keys/sk" "$path"
    nix --extra-experimental-features nix-command copy --store "$store" \
        --to "file://$cache-xz?compression=xz" "$path"
done
n=0
for f in "$cache"/*.narinfo "$cache-xz"/*.narinfo; do
    n=$((n + 1))
    cp "$f" "$info_dir/nix-$n.narinfo"
done

# --- narinfo with references, deriver and unknown keys --------------------
cat >"$info_dir/refs.narinfo" <<'INFO'
StorePath: /nix/store/8sfqrcf48xfcqw4gy961lab11cskjy38-t1
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 312
NarHash: sha256:05h58w8k09ywwqq14biql39lxwzyhsjbnyn0jkz06cyz7xsm9z0d
NarSize: 648
References: 8sfqrcf48xfcqw4gy961lab11cskjy38-t1 0sfqrcf48xfcqw4gy961lab11cskjy38-glibc-2.37
Deriver: 5gjcjs4f6wbsdn1bc8ihmf1dz5qdfhvd-t1.drv
System: x86_64-linux
Sig: cache.example.org-1:RqvUA+vvZIcLKrJGUPTYGWhRsL+iT99x5H0zADEQUPOczDlbbGGvJlOQ/wh1UYQxqKjXq4f3BmgPqciFlMBiDg==
CA: text:sha256:05h58w8k09ywwqq14biql39lxwzyhsjbnyn0jkz06cyz7xsm9z0d
INFO

echo "seeded $(ls "$nar_dir" | wc -l) NARs in $nar_dir"
echo "seeded $(ls "$info_dir" | wc -l) narinfos in $info_dir"
