"""Prints the compatibility table of docs/compatibility.md from the tests marked `compat`.

Runs those tests and lists, per consumer they name, whether its tests passed; the table
it prints last replaces the one in docs/compatibility.md:

    python tools/compat_table.py
"""

import collections
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Collector:
    def __init__(self):
        self.consumers = collections.defaultdict(list)  # consumer -> [(test, passed)]
        self._names = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            for mark in item.iter_markers("compat"):
                self._names[item.nodeid] = mark.args

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            for consumer in self._names.get(report.nodeid, ()):
                self.consumers[consumer].append((report.nodeid, report.outcome == "passed"))


def main():
    collector = _Collector()
    status = pytest.main(["-q", "-m", "compat", "-p", "no:cacheprovider",
                          os.path.join(ROOT, "tests")], plugins=[collector])
    print("\n| consumer | works | tested by |\n|---|---|---|")
    for consumer, results in sorted(collector.consumers.items(), key=lambda kv: kv[0].lower()):
        works = "yes" if all(passed for _, passed in results) else "**no**"
        names = {nodeid.split("::")[1].split("[")[0] for nodeid, _ in results}
        tests = ", ".join(f"`{name}`" for name in sorted(names))
        print(f"| {consumer} | {works} | {tests} |")
    return status


if __name__ == "__main__":
    sys.exit(main())
