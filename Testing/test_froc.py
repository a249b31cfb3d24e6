"""LUNA16 FROC/CPM on hand-built cases whose sensitivities are worked out by hand below."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from resmtnet.cli.cli import main
from resmtnet.evaluate import froc
from resmtnet.evaluate.froc import Finding
from resmtnet.io.luna16_csv import ReferenceNodule

RATES = froc.FROC_FP_RATES


def F(sid, xyz, p, row=0, diameter=None, malignancy=None):
    return Finding(sid, tuple(float(v) for v in xyz), float(p), diameter, malignancy, row)


def M(sid, xyz, d, rating=None, excluded=False):
    return ReferenceNodule(sid, tuple(float(v) for v in xyz), float(d), rating, excluded=excluded)


def four_scan_case():
    """S1: nodules A (d 10) and B (d 6); S2: nodule C (d 8, missed) and an excluded mark (d -1 → 10 mm);
    S3: no nodule; S4: nodule D, no finding at all."""
    marks = [M("S1", (0, 0, 0), 10), M("S1", (50, 0, 0), 6),
             M("S2", (0, 0, 0), 8), M("S2", (30, 0, 0), -1, excluded=True),
             M("S4", (0, 0, 0), 12)]
    findings = [
        F("S1", (3, 0, 0), 0.9, 0),      # hits A (3 < 5)
        F("S1", (0, 4, 0), 0.2, 1),      # second hit on A: ignored, neither TP nor FP
        F("S1", (50, 0, 2.9), 0.4, 2),   # hits B (2.9 < 3)
        F("S1", (100, 0, 0), 0.8, 3),    # FP
        F("S2", (34.9, 0, 0), 0.95, 4),  # on the excluded mark (4.9 < 5): ignored
        F("S2", (0, 0, 4), 0.7, 5),      # exactly on C's radius (4): not a hit (strict <), so a FP
        F("S3", (0, 0, 0), 0.3, 6),      # FP on a scan without nodules
    ]
    return findings, marks, ["S1", "S2", "S3", "S4"]


def test_radius_duplicates_excluded_and_scans_without_findings_by_hand():
    findings, marks, series = four_scan_case()
    r = froc.evaluate(findings, marks, series, n_bootstrap=0)
    m = r.match
    # 4 nodules (A, B, C, D); TP entries A@0.9 and B@0.4; FPs 0.8, 0.7, 0.3;
    # ignored: the duplicate and the hit on the excluded mark
    assert len(m.nodules) == 4
    assert [n.detected for n in m.nodules] == [True, True, False, False]
    assert m.nodules[0].best.probability == 0.9 and m.nodules[0].n_hits == 2
    assert m.duplicate_hits == 1
    assert [f.row for f in m.ignored_on_excluded] == [4]
    assert sorted(f.probability for f in m.false_positives) == [0.3, 0.7, 0.8]
    # Curve over 4 scans (FP/4, TP/4): (0,0) → 0.9 TP (0, .25) → 0.8 FP (.25, .25) → 0.7 FP (.5, .25)
    # → 0.4 TP (.5, .5) → 0.3 FP (.75, .5)
    np.testing.assert_allclose(r.curve.fps, [0, 0, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(r.curve.sensitivity, [0, 0.25, 0.25, 0.25, 0.5, 0.5])
    # 1/8 → .25 (flat), 1/4 → .25, 1/2 → top of the rise at .5 = .5, 1..8 → beyond the last point: .5
    np.testing.assert_allclose(r.sensitivities, [0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert r.cpm == pytest.approx(3.0 / 7)


def test_the_operating_point_at_a_rate_finds_the_nodules_above_its_threshold():
    """four_scan_case's curve (0,0) → .9 TP → .8 FP (.25) → .7 FP (.5) → .4 TP (.5) → .3 FP (.75): the point
    at 1/2 FP/scan is the last with at most that many (threshold .4: A and B found); at 1/4 it is .8 (A
    only); under the first FP the first TP's .9; and no false positive at all allowed before the first TP
    means no threshold reached (+inf, nothing found)."""
    findings, marks, series = four_scan_case()
    r = froc.evaluate(findings, marks, series, n_bootstrap=0)
    assert froc.found_at(r, 0.5) == (0.4, [True, True, False, False])
    assert froc.found_at(r, 0.25) == (0.8, [True, False, False, False])
    assert froc.found_at(r, 0.1) == (0.9, [True, False, False, False])
    assert froc.found_at(r, 8.0) == (0.3, [True, True, False, False])
    first_fp = froc.evaluate([F("S", (0, 0, 50), 0.9), F("S", (0, 0, 0), 0.8)], [M("S", (0, 0, 0), 10)], ["S"],
                             n_bootstrap=0)
    assert froc.found_at(first_fp, 0.5) == (float("inf"), [False])
    assert sum(froc.found_at(r, 0.5)[1]) / len(r.match.nodules) == r.sensitivities[RATES.index(0.5)]


def test_kinds_found_at_two_fp_per_scan_by_hand():
    """Scan S: a solid pleural nodule hit at .9, a ground-glass one hit at .3, a 3 mm one (excluded) and three
    false positives at .8, .5 and .4: at 2 FP/scan (threshold .5) the solid one is found; the ground-glass one,
    hit only after the third false positive, is not; the excluded one is not scored. Without findings there is
    no threshold."""
    from resmtnet.cli.evaluate_cli import format_by_kind
    from resmtnet.evaluate.phantom_eval import sensitivity_by_kind

    marks = [ReferenceNodule("S", (0.0, 0, 0), 8, 2, "solid", location="pleural"),
             ReferenceNodule("S", (50.0, 0, 0), 6, 3, "ground-glass", location="parenchyma"),
             ReferenceNodule("S", (100.0, 0, 0), 3, 1, "solid", location="vascular", excluded=True)]
    findings = [F("S", (0, 0, 1), 0.9), F("S", (0, 40, 0), 0.8), F("S", (0, 80, 0), 0.5), F("S", (0, 120, 0), 0.4),
                F("S", (51, 0, 0), 0.3), F("S", (100, 0, 0), 0.95)]
    by_kind = sensitivity_by_kind(froc.evaluate(findings, marks, ["S"], n_bootstrap=0))
    assert by_kind["threshold"] == 0.5
    assert by_kind["nodule_type"] == {"solid": {"found": 1, "nodules": 1}, "ground-glass": {"found": 0, "nodules": 1}}
    assert by_kind["location"] == {"pleural": {"found": 1, "nodules": 1}, "parenchyma": {"found": 0, "nodules": 1}}
    assert "by nodule type: ground-glass 0/1, solid 1/1" in format_by_kind(by_kind)
    none = sensitivity_by_kind(froc.evaluate([], marks, ["S"], n_bootstrap=0))
    assert none["threshold"] is None and none["nodule_type"]["solid"] == {"found": 0, "nodules": 1}
    assert "no finding qualifies" in format_by_kind(none)


def test_scan_without_findings_changes_fp_rate():
    """Leaving out S4 (no finding) gives 3 scans: FP/scan 1/3, 2/3, 2/3(+TP), 1 → at 1/2 FP/scan the curve is
    between (1/3, .25) and (2/3, .25): .25, not .5. And D no longer counts: sensitivity in thirds."""
    findings, marks, _ = four_scan_case()
    r = froc.evaluate(findings, marks, ["S1", "S2", "S3"], n_bootstrap=0)
    # nodules A, B, C: TP A@.9, FP .8 (1/3), FP .7 (2/3), TP B@.4 (2/3, 2/3), FP .3 (1, 2/3)
    np.testing.assert_allclose(r.sensitivities, [1 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert r.cpm == pytest.approx((3 * 1 / 3 + 4 * 2 / 3) / 7)


def test_linear_interpolation_between_operating_points():
    """One scan, 2 nodules: FP@.9, TP@.8, FP@.7, FP@.6, TP@.5
    → points (0,0) (1,0) (1,.5) (2,.5) (3,.5) (3,1)."""
    marks = [M("S", (0, 0, 0), 10), M("S", (100, 0, 0), 10)]
    findings = [F("S", (0, 0, 50), 0.9), F("S", (0, 0, 0), 0.8), F("S", (0, 50, 0), 0.7),
                F("S", (0, 80, 0), 0.6), F("S", (100, 0, 1), 0.5)]
    r = froc.evaluate(findings, marks, ["S"], n_bootstrap=0)
    # 1/8, 1/4, 1/2: between (0,0) and (1,0) → 0; 1 → top at 1 = .5; 2 → .5; 4, 8 → 1 (last point)
    np.testing.assert_allclose(r.sensitivities, [0, 0, 0, 0.5, 0.5, 1, 1])
    # and with 4 scans the same curve is squeezed by 4: (0,0) (.25,0) (.25,.5) (.5,.5) (.75,.5) (.75,1)
    r4 = froc.evaluate(findings, marks, ["S", "x", "y", "z"], n_bootstrap=0)
    # 1/8: between (0,0) and (.25, bottom 0) → 0; 1/4 → top .5; 1/2 → .5; 1..8 → 1
    np.testing.assert_allclose(r4.sensitivities, [0, 0.5, 0.5, 1, 1, 1, 1])
    # (without ties a FROC curve is a staircase: sloped stretches come only from ties, tested below)


def test_ties_enter_together_and_do_not_depend_on_order():
    """3 scans, 2 nodules. FP@.9 then a tie at .5 of a hit and a FP, then a hit at .2:
    points (0,0) (1/3,0) (2/3,.5) (2/3,1). At 1/2 FP/scan the tie's straight segment gives
    0 + (.5-1/3)/(1/3) * .5 = .25 (hit-first would give .5, FP-first 0)."""
    marks = [M("S1", (0, 0, 0), 10), M("S2", (0, 0, 0), 10)]
    findings = [F("S1", (0, 0, 1), 0.5, 0), F("S1", (40, 0, 0), 0.5, 1), F("S3", (0, 0, 0), 0.9, 2),
                F("S2", (1, 0, 0), 0.2, 3)]
    series = ["S1", "S2", "S3"]
    r = froc.evaluate(findings, marks, series, n_bootstrap=0)
    np.testing.assert_allclose(r.curve.fps, [0, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.curve.sensitivity, [0, 0, 0.5, 1.0])
    np.testing.assert_allclose(r.sensitivities, [0, 0, 0.25, 1, 1, 1, 1])
    assert r.cpm == pytest.approx(4.25 / 7)
    r_rev = froc.evaluate(list(reversed(findings)), marks, series, n_bootstrap=0)
    np.testing.assert_allclose(r_rev.sensitivities, r.sensitivities)


def test_duplicate_hits_keep_the_highest_probability():
    """The nodule's entry takes the best hit's probability (0.6, not the 0.1 hit listed first):
    1 scan, FP@.3 then... with 0.6 the nodule enters before the FP: sens 1 from 0 FP/scan."""
    marks = [M("S", (0, 0, 0), 20)]
    findings = [F("S", (1, 0, 0), 0.1, 0), F("S", (0, 2, 0), 0.6, 1), F("S", (0, 0, 50), 0.3, 2)]
    r = froc.evaluate(findings, marks, ["S"], n_bootstrap=0)
    assert r.match.nodules[0].best.row == 1
    assert len(r.match.false_positives) == 1 and r.match.duplicate_hits == 1
    np.testing.assert_allclose(r.sensitivities, [1] * 7)
    # if the hits' probability were the 0.1 one, the FP@.3 would come first: (0,0) (1,0) (1,1) → .125 → 0


def test_no_false_positives_and_no_detection():
    marks = [M("S1", (0, 0, 0), 10), M("S2", (0, 0, 0), 10)]
    only_hits = [F("S1", (0, 0, 0), 0.3)]
    r = froc.evaluate(only_hits, marks, ["S1", "S2"], n_bootstrap=0)
    # the script's no-FP case: the final sensitivity everywhere
    np.testing.assert_allclose(r.sensitivities, [0.5] * 7)
    only_fps = [F("S1", (0, 0, 30), 0.3)]
    r0 = froc.evaluate(only_fps, marks, ["S1", "S2"], n_bootstrap=0)
    np.testing.assert_allclose(r0.sensitivities, [0.0] * 7)
    assert r0.cpm == 0.0


def test_finding_on_excluded_mark_that_also_hits_a_nodule_is_a_hit():
    marks = [M("S", (0, 0, 0), 10), M("S", (4, 0, 0), -1, excluded=True)]
    r = froc.evaluate([F("S", (2, 0, 0), 0.5)], marks, ["S"], n_bootstrap=0)
    assert r.match.nodules[0].detected and not r.match.ignored_on_excluded


def test_bootstrap_is_seeded_and_collapses_on_identical_scans():
    # three identical scans: every resample has the same curve, so the interval is the point itself
    marks = [M(s, (0, 0, 0), 10) for s in "ABC"]
    findings = [F(s, (0, 0, 0), 0.9) for s in "ABC"] + [F(s, (0, 0, 30), 0.5) for s in "ABC"]
    r = froc.evaluate(findings, marks, list("ABC"), n_bootstrap=50, seed=1)
    assert r.bootstrap_used == 50
    assert r.cpm_ci95 == pytest.approx((r.cpm, r.cpm))
    # different scans: same seed → same interval; the interval brackets the point estimate here
    findings2, marks2, series2 = four_scan_case()
    a = froc.evaluate(findings2, marks2, series2, n_bootstrap=200, seed=7)
    b = froc.evaluate(findings2, marks2, series2, n_bootstrap=200, seed=7)
    assert a.cpm_ci95 == b.cpm_ci95
    lo, hi = a.cpm_ci95
    assert lo <= a.cpm <= hi and lo < hi
    assert a.sensitivity_ci95.shape == (7, 2)


def test_malignancy_auc_and_diameter_error_by_hand():
    # ratings 5, 4, 2, 1 and 3 (left out); the best hit's malignancy is scored
    marks = [M("S", (0, 0, 0), 10, 5), M("S", (100, 0, 0), 6, 4), M("S", (200, 0, 0), 8, 2),
             M("S", (300, 0, 0), 10, 1), M("S", (400, 0, 0), 10, 3)]
    findings = [F("S", (0, 0, 0), 0.9, 0, diameter=12, malignancy=0.9),
                F("S", (0, 1, 0), 0.5, 1, diameter=30, malignancy=0.0),   # weaker duplicate: not scored
                F("S", (100, 0, 0), 0.8, 2, diameter=5, malignancy=0.3),
                F("S", (200, 0, 0), 0.7, 3, diameter=8, malignancy=0.4),
                F("S", (300, 0, 0), 0.6, 4, diameter=10, malignancy=0.1),
                F("S", (400, 0, 0), 0.6, 5, diameter=14, malignancy=0.99)]
    r = froc.evaluate(findings, marks, ["S"], n_bootstrap=0)
    # malignant {.9, .3} vs benign {.4, .1}: pairs .9>.4 .9>.1 .3<.4 .3>.1 → 3/4
    assert r.malignancy_auc["auc"] == pytest.approx(0.75)
    a = r.malignancy_auc
    assert (a["malignant"], a["benign"], a["uncertain_left_out"]) == (2, 2, 1)
    # errors +2, -1, 0, 0, +4 → MAE 7/5, signed 5/5
    assert r.diameter_error["mae_mm"] == pytest.approx(7 / 5)
    assert r.diameter_error["mean_signed_error_mm"] == pytest.approx(1.0)
    assert froc.roc_auc([0.5], [0.5]) == 0.5


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _write_case_files(tmp_path):
    findings, marks, series = four_scan_case()
    pred = tmp_path / "pred.csv"
    _write_csv(pred, ["seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm"],
               [[f.seriesuid, *f.center, f.probability, 9.0] for f in findings])
    ann = tmp_path / "annotations.csv"
    _write_csv(ann, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
               [[m.seriesuid, *m.center_lps, m.diameter_mm] for m in marks if not m.excluded])
    exc = tmp_path / "annotations_excluded.csv"
    _write_csv(exc, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
               [[m.seriesuid, *m.center_lps, m.diameter_mm] for m in marks if m.excluded])
    sl = tmp_path / "seriesuids.csv"
    sl.write_text("\n".join(series) + "\n")
    return pred, ann, exc, sl


def test_cli_writes_json_and_plot(tmp_path, capsys):
    pred, ann, exc, sl = _write_case_files(tmp_path)
    out = tmp_path / "out"
    rc = main(["evaluate", str(pred), str(ann), "--excluded", str(exc), "--series-list", str(sl),
               "-o", str(out), "--bootstrap", "100", "--seed", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "CPM: 0.4286" in text and "sensitivity at 1/8 FP/scan: 0.2500" in text
    d = json.loads((out / "froc.json").read_text())
    assert d["cpm"] == pytest.approx(3 / 7)
    assert d["sensitivities"] == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert d["counts"]["scans"] == 4 and d["counts"]["ignored_on_excluded_marks"] == 1
    assert d["bootstrap"]["samples"] == 100 and len(d["cpm_ci95"]) == 2
    # predicted 9 mm on A (10 mm) and B (6 mm): |−1| and |+3| → 2
    assert d["diameter_error"]["mae_mm"] == pytest.approx(2.0)
    png = (out / "froc.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_cli_without_series_list_or_excluded(tmp_path, capsys):
    pred, ann, _exc, _sl = _write_case_files(tmp_path)
    # without the excluded file, the 0.95 finding on S2 is a FP; scans come from annotations + predictions
    # (S1..S4): FP .95 (.25,0) TP .9 (.25,.25) FP .8 (.5,.25) FP .7 (.75,.25) TP .4 (.75,.5) FP .3 (1,.5)
    rc = main(["evaluate", str(pred), str(ann), "-o", str(tmp_path / "o"), "--bootstrap", "0"])
    assert rc == 0
    d = json.loads((tmp_path / "o" / "froc.json").read_text())
    assert d["sensitivities"] == pytest.approx([0, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5])
    # only the annotations' scans (S1, S2, S4): S3's FP is no longer counted, FP/scan divides by 3
    rc = main(["evaluate", str(pred), str(ann), "--all-series-from-annotations", "-o", str(tmp_path / "a"),
               "--bootstrap", "0"])
    assert rc == 0
    d = json.loads((tmp_path / "a" / "froc.json").read_text())
    assert d["counts"]["scans"] == 3 and d["counts"]["findings_outside_series_list"] == 1
    capsys.readouterr()


def test_cli_reads_a_folder_of_detect_outputs(tmp_path, capsys):
    """Predictions as `resmtnet detect` leaves them: one folder per scan with its nodules.csv."""
    from resmtnet.detect.nodules import Nodule, write_nodules_csv

    _pred, ann, exc, sl = _write_case_files(tmp_path)
    findings, _marks, series = four_scan_case()
    for s in series:
        (tmp_path / "det" / s).mkdir(parents=True)
        write_nodules_csv(tmp_path / "det" / s / "nodules.csv", s,
                          [Nodule(i + 1, f.center, f.probability, 9.0, 0.5) for i, f in enumerate(findings)
                           if f.seriesuid == s])
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "det"), str(ann), "--excluded", str(exc), "--series-list", str(sl),
                 "-o", str(out), "--bootstrap", "0"]) == 0
    d = json.loads((out / "froc.json").read_text())
    assert d["cpm"] == pytest.approx(3 / 7)  # the same as from one CSV (test_cli_writes_json_and_plot)
    assert d["counts"]["findings_outside_series_list"] == 0
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), str(ann), "-o", str(tmp_path / "o2")]) == 2
    assert "holds no nodules.csv" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_cli_bad_input_writes_nothing(tmp_path, capsys):
    pred, ann, _exc, _sl = _write_case_files(tmp_path)
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "nope.csv"), str(ann), "-o", str(out)]) == 2
    assert "predictions CSV file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    _write_csv(bad, ["seriesuid", "coordX", "coordY", "probability"], [["S1", 1, 2, 0.5]])
    assert main(["evaluate", str(bad), str(ann), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "lacks column(s) coordZ" in err and "resmtnet evaluate: error" in err
    nonnum = tmp_path / "nonnum.csv"
    _write_csv(nonnum, ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], [["S1", 1, 2, 3, "big"]])
    assert main(["evaluate", str(pred), str(nonnum), "-o", str(out)]) == 2
    assert "line 2: diameter_mm is not a number" in capsys.readouterr().err
    assert not out.exists()


def test_validation_scores_nodules_under_the_minimum_as_excluded_marks():
    """Training's validation follows the phantom protocol: a finding on a 3 mm nodule is neither a hit
    nor a false positive when only nodules of 4 mm and more count."""
    from resmtnet.data.training_data import TrainCase
    from resmtnet.model.prepare import ModelGrid
    from resmtnet.train.validation import case_marks

    case = TrainCase(case_id="c", image=np.zeros((40, 40, 40), np.int16), origin=np.zeros(3), spacing=1.5,
                     centers=np.array([[10.0, 10, 10], [30, 30, 30]], np.float32),
                     diameters=np.array([3.0, 6.0], np.float32), malignancy=np.zeros(2, np.int16),
                     negatives=np.zeros((0, 3), np.float32))
    assert [m.excluded for m in case_marks(case)] == [False, False]
    marks = case_marks(case, 4.0)
    assert [m.excluded for m in marks] == [True, False]
    grid = ModelGrid(origin=np.zeros(3), spacing=1.5, shape=(40, 40, 40))
    on_small = Finding("c", tuple(grid.voxel_to_world(np.array([10.0, 10, 10]))), 0.9)
    on_large = Finding("c", tuple(grid.voxel_to_world(np.array([30.0, 30, 30]))), 0.8)
    res = froc.evaluate([on_small, on_large], marks, ["c"], n_bootstrap=0)
    c = res.to_dict()["counts"]
    assert c["nodules"] == 1 and c["detected_nodules"] == 1 and c["false_positives"] == 0
    assert c["ignored_on_excluded_marks"] == 1


@pytest.mark.slow
def test_evaluate_on_a_fresh_phantom_detects_scores_and_records_how(tmp_path, capsys):
    """`resmtnet evaluate --phantoms`: a real phantom generated, the shipped model run over it, and its
    nodules of 4 mm and more scored; froc.json says how detection ran."""
    out = tmp_path / "eval"
    assert main(["evaluate", "--phantoms", "1", "--phantom-seed", "7", "--no-tta", "--bootstrap", "0",
                 "-o", str(out)]) == 0
    with open(out / "phantoms" / "annotations.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    d = json.loads((out / "froc.json").read_text())
    assert d["inputs"]["test_time_augmentation"] is False and d["inputs"]["tta_passes"] == 1
    # scored: 4 mm and more, at least half in the lung (the others are excluded marks)
    scored = [r for r in truth if float(r["diameter_mm"]) >= 4.0 and float(r["lung_share"]) >= 0.5]
    assert d["counts"]["nodules"] == len(scored) > 0
    assert d["inputs"]["min_lung_share"] == 0.5
    assert d["inputs"]["excluded_outside_lung"] == sum(float(r["diameter_mm"]) >= 4.0 for r in truth) - len(scored)
    assert d["counts"]["detected_nodules"] >= 1
    with open(out / "detections" / "phantom-s7-0000" / "nodules.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["seriesuid"] == "phantom-s7-0000" for r in rows)
    printed = capsys.readouterr().out
    assert "CPM" in printed
    # which kinds of nodule the 2 FP/scan point finds: every scored nodule once per column, by its own kind,
    # as many found as the 2 FP/scan sensitivity says (one scan: that rate is an operating point of its own)
    by_kind = d["by_kind"]
    for column in ("nodule_type", "location"):
        cells = by_kind[column]
        assert {k: c["nodules"] for k, c in cells.items()} == {
            k: sum(r[column] == k for r in scored) for k in {r[column] for r in scored}}
        found = sum(c["found"] for c in cells.values())
        assert found == round(d["sensitivities"][d["fp_rates"].index(2.0)] * len(scored))
    assert "by nodule type:" in printed and "by location:" in printed
    # the same folder asked for another seed: that seed's phantom is made and scored, not the one there
    assert main(["evaluate", "--phantoms", "1", "--phantom-seed", "8", "--no-tta", "--bootstrap", "0",
                 "-o", str(out)]) == 0
    d = json.loads((out / "froc.json").read_text())
    assert d["series"] == ["phantom-s8-0000"] and (out / "phantoms" / "phantom-s8-0000.nrrd").is_file()
    with open(out / "phantoms" / "annotations.csv", newline="") as f:
        assert {r["seriesuid"] for r in csv.DictReader(f)} == {"phantom-s8-0000"}
