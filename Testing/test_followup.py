"""Follow-up (``resmtnet followup``): a phantom chest and the same chest scanned again with known changes.

The phantom is drawn in the patient's own coordinates (body, two lungs, heart, spine, solid nodules with a
one-voxel partial-volume edge) and sampled on each scan's grid: the prior at 1.25 mm slices, the current
with the patient shifted (10, -6, 15) mm and rotated 4° about z and 3° about x, at 2 mm slices, with other
noise. Between the two, nodule A grows from 6 to 9 mm, B from 10 to 12 mm, C stays 8 mm, D (7 mm) is gone
and E (7 mm) is new; 180 days pass. The findings handed to the follow-up are what a detector gives: a centre
off by up to 1 mm, and the size measured on each scan by the detector's own mask (``measurement.grow_mask``).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from resmtnet.cli.cli import main as cli_main
from resmtnet.detect.measurement import equivalent_diameter, grow_mask
from resmtnet.detect.nodules import Detection, Nodule
from resmtnet.io.ctio import CTVolume
from resmtnet.report.followup import compare, register_scans
from resmtnet.report.outputs import write_detection_outputs

INTERVAL_DAYS = 180
#: name: (centre in the patient's coordinates mm, prior diameter or None, current diameter or None)
NODULES = {"A": ((60.0, -10.0, 30.0), 6.0, 9.0), "B": ((-70.0, 20.0, -20.0), 10.0, 12.0),
           "C": ((-60.0, -30.0, 50.0), 8.0, 8.0), "D": ((75.0, 25.0, -50.0), 7.0, None),
           "E": ((-55.0, 10.0, 75.0), None, 7.0)}
SHIFT = np.array([10.0, -6.0, 15.0])


def rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def chest_hu(x: np.ndarray, y: np.ndarray, z: np.ndarray, nodules: dict[str, float], edge_mm: float) -> np.ndarray:
    """HU at points (``x``, ``y``, ``z``) of the patient's coordinates; ``nodules``: name → diameter drawn."""
    hu = np.full(x.shape, -1000.0, np.float32)
    hu[(x / 150) ** 2 + (y / 105) ** 2 <= 1] = 40.0
    for side in (-1, 1):
        hu[((x - side * 70) / 52) ** 2 + ((y + 5) / 68) ** 2 + (z / 105) ** 2 <= 1] = -860.0
    hu[((x - 15) / 40) ** 2 + ((y + 35) / 35) ** 2 + ((z + 45) / 45) ** 2 <= 1] = 45.0  # heart, off the midline
    hu[(x / 14) ** 2 + ((y - 85) / 14) ** 2 <= 1] = 400.0  # spine
    for name, d in nodules.items():
        cx, cy, cz = NODULES[name][0]
        reach = d / 2 + 2 * edge_mm
        near = (np.abs(x - cx) <= reach) & (np.abs(y - cy) <= reach) & (np.abs(z - cz) <= reach)
        r = np.sqrt((x[near] - cx) ** 2 + (y[near] - cy) ** 2 + (z[near] - cz) ** 2)
        w = np.clip(0.5 - (r - d / 2) / edge_mm, 0.0, 1.0)  # partial volume over one voxel
        hu[near] += (w * (30.0 - hu[near])).astype(np.float32)
    return hu


def scan(pose: np.ndarray, shift: np.ndarray, nodules: dict[str, float], slice_mm: float, seed: int) -> CTVolume:
    """The chest placed by ``pose`` and ``shift`` (world = pose @ patient + shift), on an axial grid."""
    pixel = 1.2
    nx, ny, nz = 270, 200, int(round(230 / slice_mm))
    origin = np.array([-(nx - 1) * pixel / 2, -(ny - 1) * pixel / 2, -115.0])
    wx = (origin[0] + pixel * np.arange(nx, dtype=np.float32) - shift[0])[None, None, :]
    wy = (origin[1] + pixel * np.arange(ny, dtype=np.float32) - shift[1])[None, :, None]
    wz = (origin[2] + slice_mm * np.arange(nz, dtype=np.float32) - shift[2])[:, None, None]
    # patient coordinates: pose.T @ (world - shift)
    x, y, z = (pose[0, a] * wx + pose[1, a] * wy + pose[2, a] * wz for a in range(3))
    hu = chest_hu(x, y, z, nodules, edge_mm=pixel)
    hu += np.random.default_rng(seed).normal(0, 15, hu.shape).astype(np.float32)
    return CTVolume(hu, (pixel, pixel, slice_mm), tuple(origin), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), f"chest-{seed}",
                    "")


def findings(ct: CTVolume, pose: np.ndarray, shift: np.ndarray, which: int, seed: int) -> list[Nodule]:
    """What a detector reports: each drawn nodule's centre off by up to 1 mm, its size measured on ``ct``."""
    rng = np.random.default_rng(seed)
    found = []
    for name, (centre, *sizes) in NODULES.items():
        d = sizes[which]
        if d is None:
            continue
        world = pose @ np.array(centre) + shift + rng.uniform(-0.58, 0.58, 3)
        _box, mask, measured = grow_mask(ct, world, d * rng.uniform(0.9, 1.1))
        assert measured
        volume = float(mask.sum() * np.prod(ct.spacing))
        found.append(Nodule(number=len(found) + 1, center_lps=tuple(world), probability=0.9,
                            diameter_mm=equivalent_diameter(volume), malignancy=0.5, volume_mm3=volume,
                            extra={"name": name}))
    return found


@pytest.fixture(scope="module")
def prior_and_current():
    identity = np.eye(3)
    pose = rotation(4.0, 3.0)
    prior_ct = scan(identity, np.zeros(3), {k: v[1] for k, v in NODULES.items() if v[1]}, 1.25, seed=1)
    current_ct = scan(pose, SHIFT, {k: v[2] for k, v in NODULES.items() if v[2]}, 2.0, seed=2)
    return (prior_ct, findings(prior_ct, identity, np.zeros(3), 0, seed=3),
            current_ct, findings(current_ct, pose, SHIFT, 1, seed=4))


def truth_vdt(d0: float, d1: float) -> float:
    return INTERVAL_DAYS * math.log(2) / math.log((d1 / d0) ** 3)


@pytest.fixture(scope="module")
def registration(prior_and_current):
    prior_ct, _, current_ct, _ = prior_and_current
    return register_scans(prior_ct, current_ct)


def test_every_pair_matched_with_growth_and_doubling_time_of_the_truth(prior_and_current, registration):
    prior_ct, prior, current_ct, current = prior_and_current
    assert registration.lungs_used
    # the registration recovers the patient's move: a current point maps to where it lay in the prior scan
    pose = rotation(4.0, 3.0)
    for q in ([0.0, 0.0, 0.0], [60.0, -10.0, 30.0], [-70.0, 20.0, -20.0]):
        assert np.linalg.norm(registration.to_prior(pose @ np.array(q) + SHIFT) - q) < 1.5
    pairs = compare(prior, current, registration, INTERVAL_DAYS)
    name = {("prior", n.number): n.extra["name"] for n in prior} | {("current", n.number): n.extra["name"]
                                                                      for n in current}
    by_status = {s: [r for r in pairs if r.status == s] for s in ("matched", "new", "resolved")}
    matched = {name[("prior", r.prior_number)]: r for r in by_status["matched"]}
    assert sorted(matched) == ["A", "B", "C"]
    assert all(name[("current", r.current_number)] == n for n, r in matched.items())
    assert [name[("current", r.current_number)] for r in by_status["new"]] == ["E"]
    assert [name[("prior", r.prior_number)] for r in by_status["resolved"]] == ["D"]
    assert not any(r.uncertain for r in pairs), [r.reasons for r in pairs if r.uncertain]
    for n, r in matched.items():
        _, d0, d1 = NODULES[n]
        assert abs(r.diameter_change_mm - (d1 - d0)) < 1.0, (n, r.diameter_change_mm)
    for n in ("A", "B"):
        vdt = matched[n].volume_doubling_time_days
        assert abs(vdt - truth_vdt(*NODULES[n][1:])) < 0.2 * truth_vdt(*NODULES[n][1:]), (n, vdt)
    assert matched["A"].growing and matched["A"].lung_rads == "4B"  # grew 3 mm to 9 mm: >= 8 mm
    assert matched["B"].growing and matched["B"].lung_rads == "4B"  # grew 2 mm (> 1.5 mm) to 12 mm
    assert matched["C"].growing is False and matched["C"].lung_rads == "2"  # 8 mm, unchanged for 180 days
    assert by_status["new"][0].lung_rads == "4A"  # new, 7 mm: 6 to < 8 mm


def test_a_pair_far_apart_for_its_size_is_flagged_not_dropped(prior_and_current, registration):
    prior_ct, prior, current_ct, current = prior_and_current
    moved = [Nodule(**{**n.__dict__, "center_lps": tuple(np.array(n.center_lps) + [7.0, 0, 0])})
             if n.extra["name"] == "C" else n for n in current]
    pairs = compare(prior, moved, registration, INTERVAL_DAYS)
    (c,) = [r for r in pairs if r.status == "matched" and r.current_number ==
            next(n.number for n in moved if n.extra["name"] == "C")]
    assert c.uncertain and "far for the nodules' size" in c.reasons[0]


@pytest.mark.slow
def test_followup_command_on_two_detect_result_folders(prior_and_current, tmp_path):
    prior_ct, prior, current_ct, current = prior_and_current
    folders = []
    for label, ct, nodules in (("prior", prior_ct, prior), ("current", current_ct, current)):
        ct.source = str(tmp_path / f"{label}.nrrd")
        from resmtnet.io.ctio import write_volume

        write_volume(ct, ct.source)
        det = Detection(ct.seriesuid, nodules, np.zeros(ct.array.shape, np.uint16), ct.spacing, ct.origin,
                        ct.direction)
        write_detection_outputs(ct, det, tmp_path / label, slicer_files=False)
        folders.append(str(tmp_path / label))
    out = tmp_path / "followup"
    status = cli_main(["followup", *folders, "-o", str(out), "--prior-date", "2025-01-10",
                       "--current-date", "2025-07-09"])
    assert status == 0
    result = json.loads((out / "followup.json").read_text())
    assert result["interval_days"] == INTERVAL_DAYS
    with open(out / "followup.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["matched"] * 3 + ["new", "resolved"]
    assert len(result["pairs"]) == len(rows)
    assert all(r["uncertain"] == "false" for r in rows)
    grown = [r for r in rows if r["status"] == "matched" and float(r["diameter_change_mm"]) > 2.5]
    assert len(grown) == 1 and float(grown[0]["volume_doubling_time_days"]) == pytest.approx(
        truth_vdt(6.0, 9.0), rel=0.2)


@pytest.mark.slow
def test_lidc_0001_against_itself_moved_matches_its_nodule_with_no_growth(lidc_dir, tmp_path):
    """LIDC-IDRI-0001 and the same scan with the patient moved (3° about z, 2° about x, shifted 8/-5/10 mm),
    both run through the shipped model. Its confident finding (the readers' 24 mm nodule) pairs with itself,
    unchanged within measurement noise. Threshold 0.9: the model's fainter findings come and go on the
    interpolated copy (without it: 2 of 3 paired, 4 more findings on the copy, reported as new, not forced)."""
    import SimpleITK as sitk
    from resmtnet.io.ctio import read_ct, write_volume

    img = read_ct(lidc_dir / "dicom").to_sitk()
    move = sitk.Euler3DTransform()
    move.SetCenter(img.TransformContinuousIndexToPhysicalPoint([s / 2 for s in img.GetSize()]))
    move.SetRotation(np.radians(2.0), 0.0, np.radians(3.0))
    move.SetTranslation((8.0, -5.0, 10.0))
    moved = sitk.Resample(img, img, move.GetInverse(), sitk.sitkLinear, -1024.0)
    write_volume(CTVolume.from_sitk(moved, seriesuid="moved"), tmp_path / "moved.nrrd")
    out = tmp_path / "followup"
    status = cli_main(["followup", str(lidc_dir / "dicom"), str(tmp_path / "moved.nrrd"), "-o", str(out),
                       "--no-tta", "--threshold", "0.9", "--prior-date", "2000-01-01", "--current-date", "2000-07-01"])
    assert status == 0
    pairs = json.loads((out / "followup.json").read_text())["pairs"]
    assert [p["status"] for p in pairs] == ["matched"]
    (pair,) = pairs
    assert not pair["uncertain"]
    assert abs(pair["diameter_change_mm"]) < 1.0
    truth = np.array(move.GetInverse().TransformPoint(pair["current_center_lps"]))
    assert np.linalg.norm(np.array(pair["current_center_in_prior_lps"]) - truth) < 1.5  # the registration
    assert pair["distance_mm"] < 2.0


def test_dates_in_the_wrong_order_and_a_missing_ct_are_one_line_each(prior_and_current, tmp_path, capsys):
    prior_ct, prior, _, _ = prior_and_current
    from resmtnet.io.ctio import write_volume

    ct = CTVolume(prior_ct.array[::4, ::4, ::4].copy(), tuple(4 * s for s in prior_ct.spacing), prior_ct.origin,
                  prior_ct.direction, "small", str(tmp_path / "small.nrrd"))
    write_volume(ct, ct.source)
    write_detection_outputs(ct, Detection(ct.seriesuid, prior[:1], np.zeros(ct.array.shape, np.uint16), ct.spacing,
                                          ct.origin, ct.direction), tmp_path / "results", slicer_files=False)
    assert cli_main(["followup", str(tmp_path / "results"), str(tmp_path / "results"), "-o", str(tmp_path / "o"),
                     "--prior-date", "2025-02-01", "--current-date", "2025-01-01"]) == 2
    assert "lies before --prior-date" in capsys.readouterr().err
    (tmp_path / "small.nrrd").unlink()
    assert cli_main(["followup", str(tmp_path / "results"), str(tmp_path / "results"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "small.nrrd" in err and "which is not there" in err
    assert not (tmp_path / "o").exists()
