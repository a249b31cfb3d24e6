"""Follow-up on the project's own phantom re-made with known changes (``generate_phantom(..., rescan=Rescan(...))``).

Phantom 28 (small) has four solid nodules. The prior hides nodule 3; the current grows nodule 0 by 3.5 mm and
nodule 1 by 2 mm, hides nodule 2 (resolved) and shows nodule 3 (new), with the patient rotated 4° about z and
3° about x and shifted (10, -6, 12) mm, at 1.25 mm slices instead of 2 mm, with other noise; 180 days pass.
The findings are the true centres, sized on each scan by the detector's own mask (``measurement.grow_mask``):
the truth they are held to is the rendered volumes. test_followup.py holds the same checks on a hand-drawn chest
with detector-like centre errors; this one runs them through the generator's anatomy (vessels, pleura, ribs).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from resmtnet.data.phantom import Phantom, Rescan, generate_phantom
from resmtnet.detect.measurement import equivalent_diameter, grow_mask
from resmtnet.detect.nodules import Nodule
from resmtnet.report.followup import compare, register_scans

SEED = 28
INTERVAL_DAYS = 180
PRIOR = Rescan(hidden=(3,))
CURRENT = Rescan(hidden=(2,), grow_mm=((0, 3.5), (1, 2.0)), rotation_deg=(4.0, 0.0, 3.0), shift_mm=(10.0, -6.0, 12.0),
                 thickness_mm=1.25, noise_seed=1)


def measured_findings(ph: Phantom) -> list[Nodule]:
    """Each drawn nodule as a detector reports it: its centre, its size measured on the scan."""
    found = []
    for n in ph.nodules:
        _box, mask, measured = grow_mask(ph.ct, np.asarray(n.center_lps), n.diameter_mm)
        assert measured
        volume = float(mask.sum() * np.prod(ph.ct.spacing))
        found.append(Nodule(number=len(found) + 1, center_lps=tuple(n.center_lps), probability=0.9,
                            diameter_mm=equivalent_diameter(volume), malignancy=0.5, volume_mm3=volume,
                            extra={"index": n.index}))
    return found


@pytest.fixture(scope="module")
def prior_and_current() -> tuple[Phantom, Phantom]:
    return (generate_phantom(SEED, small=True, max_nodules=6, rescan=PRIOR),
            generate_phantom(SEED, small=True, max_nodules=6, rescan=CURRENT))


def test_the_rescan_draws_the_changes_it_was_given(prior_and_current):
    prior, current = prior_and_current
    assert [n.index for n in prior.nodules] == [0, 1, 2] and [n.index for n in current.nodules] == [0, 1, 3]
    assert all(n.nodule_type == "solid" for n in prior.nodules + current.nodules)
    assert (prior.acquisition["thickness_mm"], current.acquisition["thickness_mm"]) == (2.0, 1.25)
    before = {n.index: n for n in prior.nodules}
    for n in current.nodules[:2]:
        # rendered sizes: the asked growth, within the partial voxels of a 1.5 mm drawing grid
        assert n.diameter_mm - before[n.index].diameter_mm == pytest.approx(dict(CURRENT.grow_mm)[n.index], abs=0.4)
    for ph in prior_and_current:  # the patient's pose moves centres and truth labels alike
        for label, n in enumerate(ph.nodules, start=1):
            i, j, k = np.round(ph.ct.world_to_index(np.asarray(n.center_lps))).astype(int)
            assert ph.labels[k, j, i] == label
    with pytest.raises(ValueError, match="no nodule"):
        generate_phantom(SEED, small=True, max_nodules=6, rescan=Rescan(hidden=(7,)))


def test_followup_pairs_each_nodule_with_itself_growth_and_doubling_time_of_the_truth(prior_and_current):
    prior, current = prior_and_current
    registration = register_scans(prior.ct, current.ct)
    pairs = compare(measured_findings(prior), measured_findings(current), registration, INTERVAL_DAYS)
    index = {("prior", i + 1): n.index for i, n in enumerate(prior.nodules)} | {("current", i + 1): n.index
                                                                     for i, n in enumerate(current.nodules)}
    matched = {index[("prior", r.prior_number)]: r for r in pairs if r.status == "matched"}
    assert sorted(matched) == [0, 1]
    assert all(index[("current", r.current_number)] == i for i, r in matched.items())
    assert [index[("current", r.current_number)] for r in pairs if r.status == "new"] == [3]
    assert [index[("prior", r.prior_number)] for r in pairs if r.status == "resolved"] == [2]
    assert not any(r.uncertain for r in pairs), [r.reasons for r in pairs if r.uncertain]
    before = {n.index: n for n in prior.nodules}
    after = {n.index: n for n in current.nodules}
    for i, r in matched.items():
        true_growth = after[i].diameter_mm - before[i].diameter_mm
        assert abs(r.diameter_change_mm - true_growth) < 1.0, (i, r.diameter_change_mm, true_growth)
        true_vdt = INTERVAL_DAYS * math.log(2) / math.log((after[i].diameter_mm / before[i].diameter_mm) ** 3)
        assert abs(r.volume_doubling_time_days - true_vdt) < 0.2 * true_vdt, (i, r.volume_doubling_time_days, true_vdt)
        assert r.growing  # both grew by more than 1.5 mm


@pytest.mark.slow
def test_followup_command_writes_the_picture_with_the_table_as_one_set(prior_and_current, tmp_path):
    from resmtnet.cli.cli import main as cli_main
    from resmtnet.detect.nodules import Detection
    from resmtnet.io.ctio import write_volume
    from resmtnet.io.fileset import read_set
    from resmtnet.report.outputs import write_detection_outputs

    folders = []
    for label, ph in zip(("prior", "current"), prior_and_current):
        ph.ct.source = str(tmp_path / f"{label}.nrrd")
        write_volume(ph.ct, ph.ct.source)
        det = Detection(ph.ct.seriesuid, measured_findings(ph), ph.labels, ph.ct.spacing, ph.ct.origin,
                        ph.ct.direction)
        write_detection_outputs(ph.ct, det, tmp_path / label, slicer_files=False)
        folders.append(str(tmp_path / label))
    out = tmp_path / "followup"
    assert cli_main(["followup", *folders, "-o", str(out), "--prior-date", "2025-01-10",
                     "--current-date", "2025-07-09"]) == 0
    manifest = read_set(out, verify=True)
    assert manifest is not None and {"followup.csv", "followup.json", "followup.png"} <= set(manifest["files"])
    import matplotlib.image

    picture = matplotlib.image.imread(out / "followup.png")
    assert picture.shape[0] == 4 * 330 and picture.shape[1] == 640  # a row per table row, prior | current
    # each side shows the chest: grey lung and tissue in every crop, not an empty panel
    for row in range(4):
        for col in range(2):
            crop = picture[row * 330 + 60: row * 330 + 300, col * 320 + 20: col * 320 + 300, 0]
            assert crop.std() > 0.05, (row, col)
