"""The follow-up table and pair lines on a real slicer-core MRML scene (resmtnet.report.slicer_followup)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from conftest_slicer import *  # noqa: F403  (the fixture slicer_app)
from resmtnet.detect.nodules import Nodule
from resmtnet.report.followup import CSV_COLUMNS, Registration, compare
from resmtnet.report.slicer_followup import LINE_COLORS, add_followup_nodes


def nodule(number: int, centre: tuple[float, float, float], diameter: float) -> Nodule:
    return Nodule(number=number, center_lps=centre, probability=0.9, diameter_mm=diameter, malignancy=0.5,
                  volume_mm3=float(np.pi / 6 * diameter ** 3))


def test_table_rows_and_a_line_per_matched_pair_in_ras(slicer_app):
    moved = sitk.TranslationTransform(3, (-5.0, 2.0, -3.0))  # current → prior: the patient moved by (5, -2, 3)
    prior = [nodule(1, (60.0, -10.0, 30.0), 8.0), nodule(2, (-70.0, 20.0, -20.0), 10.0),
             nodule(3, (75.0, 25.0, -50.0), 7.0)]
    current = [nodule(1, (65.0, -12.0, 33.0), 10.0), nodule(2, (-65.0, 18.0, -17.0), 10.0),
               nodule(3, (-40.0, 0.0, 70.0), 6.0), nodule(4, (-63.0, 18.0, -17.0), 9.0)]
    pairs = compare(prior, current, Registration(moved, 0.0, True), 180.0)
    nodes = add_followup_nodes(slicer_app.scene, pairs)
    table = nodes["table"].GetTable()
    assert [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())] == CSV_COLUMNS
    statuses = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    assert sorted(statuses) == sorted(p.status for p in pairs) and "new" in statuses and "resolved" in statuses
    matched = [p for p in pairs if p.status == "matched"]
    assert len(nodes["lines"]) == len(matched) == 2
    for line, pair in zip(nodes["lines"], matched):
        assert slicer_app.scene.IsNodePresent(line) and line.GetNumberOfControlPoints() == 2
        ras = np.array([line.GetNthControlPointPosition(i) for i in range(2)])
        assert np.allclose(ras[0], np.array(pair.prior_center_lps) * [-1, -1, 1])
        assert np.allclose(ras[1], np.array(pair.current_center_lps) * [-1, -1, 1])
        assert np.allclose(line.GetDisplayNode().GetSelectedColor(), LINE_COLORS[pair.uncertain])
    # current N2 and N4 both lie near prior N2: the pair is flagged, and its line says why
    (flagged,) = [p for p in matched if p.uncertain]
    line = nodes["lines"][matched.index(flagged)]
    assert "uncertain" in line.GetName() and "nearly as close" in line.GetDescription()
