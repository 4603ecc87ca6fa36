"""Print how many cases each fuzz target ran (and write them to $ATOMPLUG_FUZZ_REPORT)."""

from __future__ import annotations

import json
import os

import fuzzing


def pytest_sessionfinish(session, exitstatus):
    """A campaign that ran fewer cases than it promised fails (hypothesis stops early when a
    strategy runs out of distinct inputs): the count in the report is the count that ran."""
    total = sum(fuzzing.COUNTS.values())
    if fuzzing.CAMPAIGN_EXAMPLES > 0 and total < fuzzing.CAMPAIGN_EXAMPLES and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not fuzzing.COUNTS:
        return
    total = sum(fuzzing.COUNTS.values())
    mode = f"campaign of {fuzzing.CAMPAIGN_EXAMPLES}" if fuzzing.CAMPAIGN_EXAMPLES > 0 else "short run"
    terminalreporter.section(f"fuzzing ({mode})")
    for target in sorted(fuzzing.COUNTS):
        terminalreporter.write_line(
            f"{target:>14}: {fuzzing.COUNTS[target]:>7} cases in {fuzzing.SECONDS[target]:7.1f} s"
        )
    terminalreporter.write_line(f"{'total':>14}: {total:>7} cases in {sum(fuzzing.SECONDS.values()):7.1f} s")
    if 0 < fuzzing.CAMPAIGN_EXAMPLES > total:
        terminalreporter.write_line(f"FAILED: the campaign promised {fuzzing.CAMPAIGN_EXAMPLES} cases, {total} ran")
    report = os.environ.get("ATOMPLUG_FUZZ_REPORT")
    if report:
        with open(report, "w") as handle:
            json.dump(
                {
                    "campaign": fuzzing.CAMPAIGN_EXAMPLES,
                    "cases": dict(fuzzing.COUNTS),
                    "seconds": dict(fuzzing.SECONDS),
                    "exit_status": int(exitstatus),
                },
                handle,
                indent=1,
            )
