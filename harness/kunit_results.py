#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Turns kunit.py's JSON report into the harness's result lines."""

import json
import sys

STATUS = {"PASS": "PASS", "SKIP": "SKIP"}


def walk(group, prefix, out):
    name = f"{prefix}/{group['name']}"
    for case in group["test_cases"]:
        out.append((STATUS.get(case["status"], "FAIL"), f"{name}.{case['name']}", case["status"]))
    for sub in group["sub_groups"]:
        walk(sub, prefix, out)


def main():
    prefix, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        report = json.load(f)
    out = []
    for group in report["sub_groups"]:
        walk(group, prefix, out)
    for case in report["test_cases"]:
        out.append((STATUS.get(case["status"], "FAIL"), f"{prefix}/{case['name']}", case["status"]))
    if not out:
        sys.exit("no test case in " + path)
    for status, name, detail in out:
        print(f"{status}\t{name}\t{detail}")


main()
