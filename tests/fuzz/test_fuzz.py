"""The fuzz suite: seeded mutations of every preset, study config and sweep file, CLI arguments and
overrides, corrupted run files and corpora, each run through `hybrid.cli.main` (what the `hybrid`
command runs) in two worker processes under an address-space limit and a per-case time limit.

A case passes when it is accepted, or ends with exit code 2 and an `error: <file>: <key>: ...` line
(a corrupted file: an error naming that file, and no other file of the run lost). A traceback, a
hang, a crash or running out of memory fails it; the failure prints the mutation, the mutated file
and `python tests/fuzz/fuzz_run.py --ids N`, which reruns it alone. HYBRID_FUZZ_SEED=<n> draws
another set of cases (default 0, what CI runs). Three control cases (a deliberate out-of-memory,
hang and traceback) check that the harness catches what it is meant to catch.
"""
from __future__ import annotations

import collections
import os
from pathlib import Path

import pytest

import fuzz_cases
import fuzz_run

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("HYBRID_FUZZ_SEED", 0))
KINDS = ["wrong_type", "misspelt_key", "missing_key", "out_of_range", "broken_layout", "huge_count", "override",
         "cli_args", "corrupted_file", "control"]
PEAK_MB = 1536  # resident memory any one case may reach (the worker's address space is capped as well)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    cases = fuzz_cases.all_cases(SEED)
    results = fuzz_run.run_cases(cases, ROOT, tmp_path_factory.mktemp("fuzz"))
    return cases, results


def test_every_file_and_kind_is_mutated(fuzz):
    cases, _ = fuzz
    mutations = [c for c in cases if c["kind"] != "control"]
    assert len(mutations) >= 1000
    by_kind = collections.Counter(c["kind"] for c in mutations)
    assert set(by_kind) == set(KINDS) - {"control"} and min(by_kind.values()) >= 50, by_kind
    targets = {c["target"] for c in mutations}
    files = fuzz_cases.files_of(fuzz_cases.COMPLETE + ["configs/*/*.yaml", fuzz_cases.SWEEPS])
    assert set(files) <= targets, set(files) - targets
    assert sum(c["command"] == "train" for c in cases) >= 40


@pytest.mark.parametrize("kind", KINDS)
def test_mutations_end_accepted_or_with_a_located_error(fuzz, kind):
    cases, results = fuzz
    mine = [c for c in cases if c["kind"] == kind]
    failures = []
    for case in mine:
        problem = fuzz_run.verdict(case, results[case["id"]])
        if problem:
            failures.append(fuzz_run.describe(case, results[case["id"]], problem))
    assert not failures, f"{len(failures)} of {len(mine)} {kind} cases failed:\n\n" + "\n\n".join(failures[:8])


def test_memory_of_every_case_is_bounded(fuzz):
    cases, results = fuzz
    peaks = {c["id"]: results[c["id"]].get("peak_mb") or 0 for c in cases if c["kind"] != "control"}
    worst = max(peaks, key=peaks.get)
    assert peaks[worst] <= PEAK_MB, f"case {worst} reached {peaks[worst]} MB: {cases[worst]}"
