"""Shared settings of the fuzzing campaign (issue 8): how many examples each target gets.

`make test` runs every fuzz target briefly (a few hundred examples each, derandomized, so CI is
reproducible and takes seconds). `make fuzz` sets ATOMPLUG_FUZZ_EXAMPLES to the size of the whole
campaign (100,000); each target then gets its SHARE of it and random seeds. Every target counts
the cases it really ran; the counts are printed at the end of the session (and written as JSON to
$ATOMPLUG_FUZZ_REPORT when set), so the campaign's size is measured, not assumed.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from typing import Callable, Dict

from hypothesis import HealthCheck, settings

CAMPAIGN_EXAMPLES = int(os.environ.get("ATOMPLUG_FUZZ_EXAMPLES", "0") or 0)

# Share of the campaign per target (sums to 1): cheap targets get more examples.
SHARES: Dict[str, float] = {
    "units": 0.40,
    "header": 0.17,
    "ipi_protocol": 0.30,
    "structures": 0.13,
}

COUNTS: Dict[str, int] = collections.Counter()
SECONDS: Dict[str, float] = collections.Counter()


def examples(target: str, fraction: float, short: int) -> int:
    """Examples for one test: `short` in the normal test run; in a campaign, `fraction` of the
    target's share of ATOMPLUG_FUZZ_EXAMPLES."""
    if CAMPAIGN_EXAMPLES <= 0:
        return short
    return max(short, int(round(CAMPAIGN_EXAMPLES * SHARES[target] * fraction)))


def fuzz_settings(target: str, fraction: float, short: int) -> settings:
    """Hypothesis settings for one fuzz test (no deadline: machine load must not fail a test;
    hangs are caught by each test's own time limits)."""
    return settings(
        max_examples=examples(target, fraction, short),
        deadline=None,
        derandomize=CAMPAIGN_EXAMPLES <= 0,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def counted(target: str) -> Callable:
    """Decorator for a test body: count each case it runs and the time spent, per target."""

    def wrap(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                COUNTS[target] += 1
                SECONDS[target] += time.perf_counter() - start

        return run

    return wrap
