#!/usr/bin/env python3
"""Summarize an Autobahn TestSuite fuzzingclient report (index.json) for scripts/autobahn.sh.

Prints one row per case category with the count of each `behavior` and `behaviorClose`, the
details of every failing case (from the per-case JSON next to index.json), and a closing line
`autobahn: N passed, M failed`. Exits 1 when any case fails, 2 when the report is unusable.

A case fails, following the colours of Autobahn's own HTML report, when:
  behavior      is FAILED, UNIMPLEMENTED, NO_CLOSE or anything unknown;
  behaviorClose is FAILED, UNCLEAN or anything unknown.
It is NON-STRICT (a failure only with --strict) when:
  behavior      is NON-STRICT;
  behaviorClose is WRONG CODE or FAILED BY CLIENT.
OK and INFORMATIONAL pass.
"""
import argparse
import json
import os
import re
import sys

BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
CLOSE_BEHAVIORS = ["OK", "INFORMATIONAL", "WRONG CODE", "FAILED BY CLIENT", "UNCLEAN", "FAILED"]
PASS = {"OK", "INFORMATIONAL"}
NON_STRICT = {"NON-STRICT"}
NON_STRICT_CLOSE = {"WRONG CODE", "FAILED BY CLIENT"}


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else p for p in case_id.split("."))


def classify(entry):
    """Returns 'pass', 'non-strict' or 'fail' for one index.json entry."""
    b, c = entry.get("behavior"), entry.get("behaviorClose")
    if b not in PASS | NON_STRICT or c not in PASS | NON_STRICT_CLOSE:
        return "fail"
    if b in NON_STRICT or c in NON_STRICT_CLOSE:
        return "non-strict"
    return "pass"


def clip(text, limit=400):
    text = " ".join(re.sub(r"<br\s*/?>", " ", str(text)).split())
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", help="path to the report's index.json")
    ap.add_argument("--agent", help="agent name in the report (default: the only one)")
    ap.add_argument("--strict", action="store_true", help="count NON-STRICT cases as failures")
    args = ap.parse_args()

    try:
        with open(args.index) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("summarize: cannot read %s: %s" % (args.index, e), file=sys.stderr)
        return 2
    if args.agent:
        if args.agent not in index:
            print("summarize: agent %r not in report (has %s)" % (args.agent, sorted(index)), file=sys.stderr)
            return 2
        cases = index[args.agent]
    elif len(index) == 1:
        cases = next(iter(index.values()))
    else:
        print("summarize: report has agents %s; pass --agent" % sorted(index), file=sys.stderr)
        return 2
    if not cases:
        print("summarize: the report holds no cases", file=sys.stderr)
        print("autobahn: 0 passed, 0 failed")
        return 2

    report_dir = os.path.dirname(os.path.abspath(args.index))
    ids = sorted(cases, key=case_key)

    # Columns: the fixed ones, then any value the suite produced that they do not name.
    seen_b = {cases[i].get("behavior") for i in ids}
    seen_c = {cases[i].get("behaviorClose") for i in ids}
    bcols = BEHAVIORS + sorted(str(v) for v in seen_b - set(BEHAVIORS))
    ccols = CLOSE_BEHAVIORS + sorted(str(v) for v in seen_c - set(CLOSE_BEHAVIORS))

    per_cat = {}
    for i in ids:
        per_cat.setdefault(case_key(i)[0], []).append(cases[i])
    rows = []
    totals = [0] * (1 + len(bcols) + len(ccols))
    for cat in sorted(per_cat, key=lambda k: (isinstance(k, str), k)):
        entries = per_cat[cat]
        row = [len(entries)]
        row += [sum(str(e.get("behavior")) == b for e in entries) for b in bcols]
        row += [sum(str(e.get("behaviorClose")) == c for e in entries) for c in ccols]
        totals = [t + v for t, v in zip(totals, row)]
        rows.append([cat] + row)
    rows.append(["all"] + totals)
    header = ["cat", "cases"] + bcols + ["close:" + c for c in ccols]
    print(table(rows, header))
    print()

    verdicts = {i: classify(cases[i]) for i in ids}
    non_strict = [i for i in ids if verdicts[i] == "non-strict"]
    failing = [i for i in ids if verdicts[i] == "fail" or (args.strict and verdicts[i] == "non-strict")]

    if non_strict:
        print("NON-STRICT%s (%d): %s" % (" (failures under --strict)" if args.strict else "",
                                         len(non_strict), " ".join(non_strict)))
        print()
    if failing:
        print("Failing cases (%d):" % len(failing))
        for i in failing:
            e = cases[i]
            print("- %s: behavior=%s behaviorClose=%s remoteCloseCode=%s" % (
                i, e.get("behavior"), e.get("behaviorClose"), e.get("remoteCloseCode")))
            detail = {}
            path = os.path.join(report_dir, e.get("reportfile") or "")
            try:
                with open(path) as f:
                    detail = json.load(f)
            except (OSError, ValueError):
                print("    (no case report at %s)" % path)
            for field in ("description", "expectation", "result", "resultClose"):
                if detail.get(field):
                    print("    %s: %s" % (field, clip(detail[field])))
            if detail:
                print("    report: %s" % os.path.splitext(path)[0] + ".html")
        print()

    print("autobahn: %d passed, %d failed" % (len(ids) - len(failing), len(failing)))
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
