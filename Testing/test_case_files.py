"""The one case-cache loop: missing files built (here or in worker processes), progress told, ranks share."""

from __future__ import annotations

import threading
from functools import partial

from resmtnet.data.case_files import CaseFile, ensure_case_files
from resmtnet.io.luna16_csv import ANNOTATION_COLUMNS, ReferenceNodule, read_annotations, write_annotations


def _cases(folder, n):
    """n small real files to make: an annotations CSV each, naming its own case."""
    return [CaseFile(folder / f"case-{i}.csv", partial(write_annotations, columns=ANNOTATION_COLUMNS,
                                                       nodules=[ReferenceNodule(f"case-{i}", (i, 0.0, 0.0), 5.0)]))
            for i in range(n)]


def test_only_missing_cases_are_built_and_progress_counts_every_case(tmp_path):
    cases = _cases(tmp_path, 4)
    cases[1].path.write_text("kept\n", encoding="utf-8")
    told = []
    ensure_case_files(cases, progress=lambda done, total: told.append((done, total)))
    assert told == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert cases[1].path.read_text(encoding="utf-8") == "kept\n"
    assert [read_annotations(c.path)[0].seriesuid for c in cases if c is not cases[1]] == ["case-0", "case-2",
                                                                                          "case-3"]


def test_several_cases_are_built_in_worker_processes(tmp_path):
    cases = _cases(tmp_path, 3)
    ensure_case_files(cases, workers=2)
    assert [read_annotations(c.path)[0].center_lps[0] for c in cases] == [0.0, 1.0, 2.0]


def test_under_torchrun_a_rank_builds_its_share_and_waits_for_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    cases = _cases(tmp_path, 4)
    built_here = []

    def other_rank():  # rank 0, building cases 0 and 2 once rank 1 has built its own
        while not (cases[1].path.exists() and cases[3].path.exists()):
            threading.Event().wait(0.01)
        built_here.extend(c.path.exists() for c in (cases[0], cases[2]))
        for c in (cases[0], cases[2]):
            c.build(c.path)

    rank0 = threading.Thread(target=other_rank)
    rank0.start()
    ensure_case_files(cases, poll_s=0.01)
    rank0.join()
    assert built_here == [False, False]  # rank 1 left rank 0's share alone
    assert all(c.path.exists() for c in cases)
