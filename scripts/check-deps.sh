#!/usr/bin/env bash
# Checks the licences and sources of every crate in the build (all features, dev-dependencies
# and the benchmark included), offline, from `cargo metadata --locked`:
#
#   scripts/check-deps.sh
#
# - licences: each crate's SPDX expression must be satisfiable with the licences allowed
#   below (permissive ones, compatible with this crate's MIT OR Apache-2.0); a crate with no
#   SPDX expression fails;
# - sources: every crate comes from crates.io or from this repository (no git dependencies).
#
# Known vulnerabilities are NOT checked: the RustSec advisory database is a git repository on
# GitHub, which this project's CI cannot reach (docs/security.md). Exits non-zero and names
# each crate that fails. Needs python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

cargo metadata --all-features --format-version 1 --locked | python3 -c '
import json, re, sys

ALLOWED = {
    "MIT", "Apache-2.0", "Apache-2.0 WITH LLVM-exception", "BSD-2-Clause", "BSD-3-Clause",
    "ISC", "Zlib", "Unicode-3.0", "Unicode-DFS-2016", "Unlicense", "BSL-1.0", "CC0-1.0", "0BSD",
}
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"

def tokens(expr):
    # Old crates write "MIT/Apache-2.0" for "MIT OR Apache-2.0".
    expr = expr.replace("/", " OR ")
    expr = re.sub(r"(\S+) WITH (\S+)", lambda m: m.group(1) + "+WITH+" + m.group(2), expr)
    return re.findall(r"\(|\)|[^\s()]+", expr)

def satisfiable(toks):
    # SPDX: AND binds tighter than OR; a licence id is satisfied when allowed.
    def parse_or(i):
        value, i = parse_and(i)
        while i < len(toks) and toks[i] == "OR":
            right, i = parse_and(i + 1)
            value = value or right
        return value, i
    def parse_and(i):
        value, i = parse_atom(i)
        while i < len(toks) and toks[i] == "AND":
            right, i = parse_atom(i + 1)
            value = value and right
        return value, i
    def parse_atom(i):
        if toks[i] == "(":
            value, i = parse_or(i + 1)
            return value, i + 1
        return toks[i].replace("+WITH+", " WITH ") in ALLOWED, i + 1
    value, end = parse_or(0)
    return value and end == len(toks)

meta = json.load(sys.stdin)
members = set(meta["workspace_members"])
bad = []
for p in meta["packages"]:
    if p["id"] in members:
        continue
    name = p["name"] + " " + p["version"]
    if p["source"] != CRATES_IO:
        bad.append(name + ": from " + str(p["source"]) + ", not crates.io")
    licence = p["license"]
    if not licence:
        bad.append(name + ": no SPDX licence expression")
    elif not satisfiable(tokens(licence)):
        bad.append(name + ": licence " + licence + " is not allowed")
for line in bad:
    print("check-deps: " + line, file=sys.stderr)
checked = len(meta["packages"]) - len(members)
print("check-deps: %d crates, %d failed (licences, sources; advisories are not checked)" % (checked, len(bad)))
sys.exit(1 if bad else 0)
'
