"""Turn pytest's JUnit XML from the GPU run into `gpu_tests.json`: every test, its outcome
and time, and the counts.

    python benchmarks/gpu/summarize_tests.py RESULTS_DIR/gpu_tests.xml RESULTS_DIR/gpu_tests.json
"""

import json
import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter


def outcome(case) -> tuple[str, str]:
    for tag in ("failure", "error", "skipped"):
        found = case.find(tag)
        if found is not None:
            return {"failure": "failed", "error": "error", "skipped": "skipped"}[tag], (
                found.get("message") or "")[:2000]
    return "passed", ""


def main(xml_path: str, json_path: str) -> None:
    root = ElementTree.parse(xml_path).getroot()
    tests = []
    for case in root.iter("testcase"):
        result, message = outcome(case)
        tests.append(dict(test=f"{case.get('classname')}::{case.get('name')}", outcome=result,
                          seconds=float(case.get("time", 0)), message=message))
    counts = Counter(test["outcome"] for test in tests)
    suite = next(root.iter("testsuite"))
    summary = dict(counts=dict(counts), seconds=float(suite.get("time", 0)),
                   timestamp=suite.get("timestamp"), hostname=suite.get("hostname"), tests=tests)
    with open(json_path, "w") as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    print(f"gpu tests: {dict(counts)} in {summary['seconds']:.0f} s")
    for test in tests:
        if test["outcome"] in ("failed", "error"):
            print(f"  {test['outcome'].upper()} {test['test']}: {test['message'][:300]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
