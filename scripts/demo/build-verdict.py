#!/usr/bin/env python3
"""The verdict on a `kiln build --json` summary, for scripts/demo.sh.

Prints one line per tag (what happened to it), then exits 0 when every tag
was built, left unchanged or adopted, or has no builder here (Windows: no
engine on this machine, which the demo shows as such); and 1 when any tag
or arch failed, for whatever reason, naming each with its failure kind
(infra, recipe, ...) and error.

    usage: build-verdict.py SUMMARY.json
"""
import json
import sys


def main(path):
    with open(path) as f:
        summary = json.load(f)
    failed = []
    for t in summary.get("tags", []):
        name = "%s:%s" % (t["repository"], t["tag"])
        o = t.get("outcome", {})
        what = o.get("outcome", "?")
        detail = o.get("reason") or o.get("digest") or ""
        if what == "failed":
            detail = "(%s) %s" % (o.get("kind"), o.get("error"))
        print("%-60s %-11s %s" % (name, what, detail))
        for arch, a in sorted(t.get("arches", {}).items()):
            if a.get("outcome") == "failed":
                failed.append("%s %s (%s): %s" % (name, arch, a.get("kind"), a.get("error")))
        if what == "failed" and not any(
            a.get("outcome") == "failed" for a in t.get("arches", {}).values()
        ):
            failed.append("%s (%s): %s" % (name, o.get("kind"), o.get("error")))
    print(
        "built %d, unchanged %d, adopted %d, no builder %d, failed %d"
        % tuple(summary.get(k, 0) for k in ("built", "unchanged", "adopted", "no_builder", "failed"))
    )
    if failed or summary.get("failed", 0):
        print("demo: the build FAILED (not a target without a builder):", file=sys.stderr)
        for line in failed:
            print("  " + line, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
