"""The follow-up table in Slicer's scene: a table node with followup.csv's rows, and a line per matched pair.

Each line joins the prior nodule's centre to the current one's, both in the world (RAS) both volumes are
shown in: across the two volumes, so the line's length is how far the patient and the nodule moved between
the scans. Uncertain pairs are drawn in orange, certain ones in light blue, as in ``followup.png``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..scene.slicer_scene import RESEARCH_NOTE
from .followup import CSV_COLUMNS, Pair, csv_rows

LINE_COLORS = {False: (0.31, 0.76, 0.97), True: (1.0, 0.44, 0.26)}  # certain, uncertain
ROLE_ATTRIBUTE = "ResMTNet.FollowupRole"


def lps_to_ras(point: Sequence[float]) -> list[float]:
    return [-float(point[0]), -float(point[1]), float(point[2])]


def pair_line_name(pair: Pair) -> str:
    return f"N{pair.prior_number} → N{pair.current_number}" + (" (uncertain)" if pair.uncertain else "")


def add_followup_nodes(scene: Any, pairs: Sequence[Pair | dict], name: str = "Follow-up") -> dict[str, Any]:
    """Add the table (``table``) and one locked line markup per matched pair (``lines``) to ``scene``."""
    import vtk

    pairs = [p if isinstance(p, Pair) else Pair(**p) for p in pairs]
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    was_modifying = table.StartModify()
    rows = csv_rows(pairs)
    for c, column in enumerate(CSV_COLUMNS):
        array = vtk.vtkStringArray()
        array.SetName(column)
        for row in rows:
            array.InsertNextValue(row[c])
        table.AddColumn(array)
    table.SetLocked(True)
    table.SetDescription(RESEARCH_NOTE)
    table.SetAttribute(ROLE_ATTRIBUTE, "table")
    table.EndModify(was_modifying)
    lines = []
    for pair in pairs:
        if pair.status != "matched":
            continue
        line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"{name} {pair_line_name(pair)}")
        line.CreateDefaultDisplayNodes()
        line.AddControlPoint(lps_to_ras(pair.prior_center_lps), f"prior N{pair.prior_number}")
        line.AddControlPoint(lps_to_ras(pair.current_center_lps), f"N{pair.current_number}")
        line.SetLocked(True)
        line.SetDescription("; ".join(pair.reasons) or RESEARCH_NOTE)
        line.SetAttribute(ROLE_ATTRIBUTE, "line")
        display = line.GetDisplayNode()
        display.SetSelectedColor(*LINE_COLORS[pair.uncertain])
        display.SetColor(*LINE_COLORS[pair.uncertain])
        lines.append(line)
    return {"table": table, "lines": lines}
