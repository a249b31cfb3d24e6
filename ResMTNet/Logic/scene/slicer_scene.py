"""Nodules into an MRML scene: markups fiducials, a segmentation, a table and a colour legend.

Works on any ``vtkMRMLScene``: ``slicer.mrmlScene`` inside Slicer, or a scene from the ``slicer-core``
wheel outside it (set up by :mod:`.slicer_app`). No Qt; MRML classes come through ``import slicer``,
inside the functions, so that importing this module costs nothing.

Coordinates: the core's nodules are LPS millimetres; Slicer's scene is RAS. The conversion happens
here, once: RAS = (-L, -P, S) for points, and for image geometry IJKToRAS = diag(-1, -1, 1) @ IJKToLPS.

Why one fiducial node per nodule: Slicer colours markups per node (its display node's colour); a
fiducial node has no per-point colour, and the glyph size is per display node too. So that every nodule
shows in its own malignancy colour and with a glyph as large as the nodule, each nodule gets its own
fiducial node with one control point, and the nodes of one run are grouped in one subject-hierarchy
folder under the volume's study (one click hides or shows them all). A single node with all points
would force one colour and one size on every nodule.

Outputs are recognised by the attribute ``ResMTNet.Role`` and a node reference (``ResMTNet.InputVolume``)
to the volume they were computed from, so a second run on the same volume replaces its own outputs and
leaves everything else (other volumes' results, the user's nodes) alone. Node references, unlike IDs
stored in attributes, stay right when a scene is imported and node IDs are renamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..detect.lung_rads import CATEGORY_TEXT
from ..detect.nodules import Detection, Nodule
from ..io.ctio import CTVolume, holds_whole_int16
from ..util.errors import InputError
from .colors import CONFIDENT_PROBABILITY, LUNG_RADS_COLORS, lung_rads_color, malignancy_color

ROLE_ATTRIBUTE = "ResMTNet.Role"
NUMBER_ATTRIBUTE = "ResMTNet.NoduleNumber"
COLOR_BY_ATTRIBUTE = "ResMTNet.ColorBy"
INPUT_VOLUME_REFERENCE = "ResMTNet.InputVolume"
#: the table's attribute naming the Brock model's patient inputs as used, defaults marked
BROCK_INPUTS_ATTRIBUTE = "ResMTNet.BrockInputs"

ROLE_MARKUP = "nodule-markup"
ROLE_SEGMENTATION = "segmentation"
ROLE_TABLE = "table"
ROLE_LEGEND = "legend"
ROLE_FOLDER = "nodules-folder"

COLOR_BY_CHOICES = ("malignancy", "lung-rads")

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

RESEARCH_NOTE = "Research use only, not for diagnosis: ResMTNet's findings must not guide any clinical decision."

WEAK_OPACITY = 0.4  # markers, labels and outlines of findings under the confidence line (colors.CONFIDENT_PROBABILITY)

#: The marker is Slicer's ``Cross2D`` glyph: four arms from 0.2 to 0.5 glyph sizes away from the point and
#: nothing at the centre. At 3 diameters, the arms start 0.6 diameters from the centre, outside the nodule,
#: and reach 1.5 diameters: the cross frames the nodule and never covers it (Slicer fills 2-D glyphs such as
#: Circle2D, which would hide it).
MARKER_GLYPH = "Cross2D"
MARKER_SIZE_PER_DIAMETER = 3.0
MARKER_MIN_SIZE_MM = 10.0

#: Segments: a full outline and a light fill in the slice views.
SEGMENT_FILL_OPACITY = 0.15
WEAK_SEGMENT_FILL_OPACITY = 0.06

LEGEND_FONT_SIZE = 16

#: Slicer's CT-Lung window/level preset (Modules/Loadable/Volumes/Resources/VolumeDisplayPresets.json).
LUNG_WINDOW_LEVEL = (1400.0, -500.0)

#: Standard terminology of a finding's segment (Slicer's terminology string: DICOM master list, SNOMED CT codes):
#: category Morphologically Altered Structure, type Nodule (under 30 mm) or Mass (30 mm and over), region Lung.
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
REGION_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY_CODE = ("SCT", "49755003", "Morphologically Altered Structure")
NODULE_CODE = ("SCT", "27925004", "Nodule")
MASS_CODE = ("SCT", "4147007", "Mass")
LUNG_CODE = ("SCT", "39607008", "Lung")
MASS_DIAMETER_MM = 30.0

# Table columns: (name, kind, unit, description). Kind picks the VTK array type. Values are rounded as shown;
# the centre is LPS, as in nodules.csv.
TABLE_COLUMNS: list[tuple[str, str, str, str]] = [
    ("Finding", "string", "", "Finding N<n>: its fiducial and segment carry the same name (N1 is the most probable)"),
    ("L", "double", "mm", "Centre, LPS x (towards the patient's left), as in nodules.csv; Slicer's R = -L"),
    ("P", "double", "mm", "Centre, LPS y (towards posterior), as in nodules.csv; Slicer's A = -P"),
    ("S", "double", "mm", "Centre, LPS z (towards superior), as in nodules.csv and Slicer"),
    ("Diameter", "double", "mm", "Estimated nodule diameter"),
    ("Volume", "double", "mm3", "Volume of the nodule's segmented mask"),
    ("p", "double", "", "Detection probability that this is a nodule (0 to 1); under "
     f"{CONFIDENT_PROBABILITY} drawn faded"),
    ("Malignancy", "double", "%", "Predicted probability that the nodule is malignant (the network's)"),
    ("Type", "string", "", "Nodule type from the network: solid, part-solid, ground-glass or calcified (benign "
     "calcification); 'solid (assumed)' where the model has no type head"),
    ("Margin", "string", "", "Margin from the network: smooth, lobulated, spiculated (unknown: a model without "
     "the margin head)"),
    ("Solid component", "string", "mm", "Part-solid nodules: mean diameter of the solid part (>= -300 HU) on the "
     "nodule's mask, long and short axial axes; empty for other types"),
    ("Lung-RADS", "string", "", "Lung-RADS v2022 category on a baseline scan, from type, size, solid component "
     "and spiculation (4X); no prior compared, juxtapleural/perifissural morphology not assessed"),
    ("Brock", "string", "%", "Brock (PanCan) full model with spiculation, McWilliams et al. NEJM 2013: a "
     "published screening model beside the network's malignancy; n/a for calcified nodules (not in PanCan)"),
    ("Long axis", "string", "mm", "Longest axial diameter of the nodule's mask, on the axial slice where it is "
     "largest (how masses are measured); empty where no mask was measured"),
    ("Sphere diameter", "string", "mm", "Diameter of the sphere of the mask's volume (equivalent-sphere "
     "diameter); empty where no mask was measured"),
]


# --------------------------------------------------------------------------------------------------
# Colours and legend


def check_color_by(color_by: str) -> str:
    if color_by not in COLOR_BY_CHOICES:
        raise ValueError(f"color_by must be one of {COLOR_BY_CHOICES}, not {color_by!r}")
    return color_by


def nodule_color(nodule: Nodule, color_by: str = "malignancy") -> tuple[float, float, float]:
    """The one colour a nodule gets everywhere (fiducial, segment, table legend)."""
    if check_color_by(color_by) == "malignancy":
        return malignancy_color(nodule.malignancy)
    return lung_rads_color(nodule.lung_rads)


def legend_entries(color_by: str = "malignancy") -> list[tuple[str, tuple[float, float, float]]]:
    """What each colour means: (text, rgb) pairs, low to high."""
    if check_color_by(color_by) == "malignancy":
        steps = (0.0, 0.25, 0.5, 0.75, 1.0)
        names = {0.0: " benign", 0.5: " uncertain", 1.0: " malignant"}
        return [(f"{100 * p:.0f} %{names.get(p, '')}", malignancy_color(p)) for p in steps]
    return [(f"{cat}: {CATEGORY_TEXT[cat]}", rgb) for cat, rgb in LUNG_RADS_COLORS.items()]


def legend_title(color_by: str = "malignancy") -> str:
    """The legend's title: what the colours mean, and that the findings are for research only."""
    what = "Malignancy (model)" if check_color_by(color_by) == "malignancy" else "Lung-RADS v2022 (baseline)"
    return f"{what}\nresearch use only"


def legend_html(color_by: str = "malignancy") -> str:
    """The legend as rich text (coloured squares and their meaning), for a label in the panel."""
    parts = [legend_title(color_by).replace("\n", ", ") + ":"]
    for text, rgb in legend_entries(color_by):
        hexrgb = "#" + "".join(f"{round(255 * c):02x}" for c in rgb)
        parts.append(f'<span style="color:{hexrgb}">&#9632;</span>&nbsp;{text}')
    return "&nbsp;&nbsp; ".join(parts)


# --------------------------------------------------------------------------------------------------
# Geometry: CT volume <-> volume node


def ijk_to_ras_matrix(spacing: Sequence[float], origin_lps: Sequence[float],
                      direction_lps: Sequence[float]) -> np.ndarray:
    """4x4 IJKToRAS from ITK geometry (x, y, z order, LPS)."""
    direction = np.asarray(direction_lps, dtype=np.float64).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = LPS_TO_RAS @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    m[:3, 3] = LPS_TO_RAS @ np.asarray(origin_lps, dtype=np.float64)
    return m


def _vtk_matrix(m: np.ndarray) -> Any:
    import vtk

    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, float(m[r, c]))
    return vm


def _numpy_matrix(vm: Any) -> np.ndarray:
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)])


def _image_data_from_array(array_zyx: np.ndarray, share: bool = False) -> Any:
    """vtkImageData holding a copy of a (z, y, x) array; origin 0, spacing 1 (geometry is in IJKToRAS).

    ``share``: hold the array's own buffer instead of a copy where it is contiguous (the image keeps the
    array alive; writing into either changes both).
    """
    import vtk
    from vtk.util import numpy_support

    a = np.ascontiguousarray(array_zyx)
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    scalars = numpy_support.numpy_to_vtk(a.ravel(), deep=not share)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def volume_node_from_ct(scene: Any, ct: CTVolume, name: str | None = None, share_voxels: bool = False) -> Any:
    """Add a scalar volume node holding ``ct`` (voxels copied, geometry converted LPS → RAS).

    Integer-valued HU are stored as int16, as CT scanners and Slicer's DICOM import give them.
    The display shows a lung window (Slicer's CT-Lung preset, W 1400, L -500). ``share_voxels``: where
    ``ct.array`` is stored as it is (int16, or float32 that are not whole numbers) the node uses it, not a copy
    (for a scene only written to files: a large CT held once).
    """
    a = ct.array
    if np.issubdtype(a.dtype, np.floating) and holds_whole_int16(a):
        a = a.astype(np.int16)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or ct.seriesuid or "CT")
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_matrix(ct.spacing, ct.origin, ct.direction)))
    node.SetAndObserveImageData(_image_data_from_array(a, share=share_voxels and a is ct.array))
    # the display node CreateDefaultDisplayNodes would add (the scene's defaults for the class apply), its window set
    # before it watches the voxels: the automatic window's histogram of the whole CT (0.3-0.5 s for 512x512x133) is
    # never computed only to be replaced
    display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    display.SetAutoWindowLevel(False)
    display.SetWindowLevel(*LUNG_WINDOW_LEVEL)
    if display.GetColorNodeID() is None:
        display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    node.SetAndObserveDisplayNodeID(display.GetID())
    if ct.seriesuid:
        node.SetAttribute("ResMTNet.SeriesUID", ct.seriesuid)
    _item(scene, node)
    return node


def ct_from_volume_node(volume_node: Any, copy: bool = True) -> CTVolume:
    """The core's :class:`CTVolume` (LPS, ITK order) from a scalar volume node (RAS).

    ``copy``: the voxels as a float32 copy, which the core may keep while the node changes. Without it the
    array is a view of the node's own voxel buffer, in their own type, which keeps that buffer alive even if
    the node is removed or given new voxels: what the Slicer job needs, which only writes the voxels to a
    file on its helper thread (a 512x512x133 float32 copy held Slicer's main thread 60-300 ms).
    """
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError("the input must be a scalar volume node (a CT)")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{volume_node.GetName()}: is a label map, not a CT")
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"{volume_node.GetName()}: volume node holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{volume_node.GetName()}: has {image.GetNumberOfScalarComponents()} components per "
                         "voxel; a CT has one")
    if volume_node.GetParentTransformNode() is not None:
        raise InputError(f"{volume_node.GetName()}: is under a transform; harden the transform first "
                         "(Data module, right-click → Harden transform)")
    from vtk.util import numpy_support

    nx, ny, nz = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(nz, ny, nx)
    ijk_to_ras = vtk_ijk_to_ras(volume_node)
    direction_ras = ijk_to_ras[:3, :3] / np.asarray(volume_node.GetSpacing())
    direction_lps = LPS_TO_RAS @ direction_ras
    origin_lps = LPS_TO_RAS @ ijk_to_ras[:3, 3]
    extent = image.GetExtent()
    if extent[0] or extent[2] or extent[4]:  # image starts at a non-zero index: move the origin there
        offset_mm = np.asarray(extent[0::2]) * np.asarray(volume_node.GetSpacing())
        origin_lps = origin_lps + direction_lps @ offset_mm
    return CTVolume(
        array=array.astype(np.float32) if copy else array,
        spacing=tuple(float(s) for s in volume_node.GetSpacing()),
        origin=tuple(float(o) for o in origin_lps),
        direction=tuple(float(d) for d in direction_lps.ravel()),
        seriesuid=_series_uid(volume_node),
        source=f"Slicer volume node {volume_node.GetName()}",
    )


def vtk_ijk_to_ras(volume_node: Any) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _numpy_matrix(m)


def _series_uid(volume_node: Any) -> str:
    scene = volume_node.GetScene()
    if scene is not None:
        sh = _subject_hierarchy(scene)
        item = sh.GetItemByDataNode(volume_node)
        uid = sh.GetItemUID(item, "DICOM") if item else ""
        if uid:
            return uid
    return volume_node.GetAttribute("ResMTNet.SeriesUID") or volume_node.GetName() or ""


# --------------------------------------------------------------------------------------------------
# Subject hierarchy


def _subject_hierarchy(scene: Any) -> Any:
    import slicer

    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        raise RuntimeError("the scene has no subject hierarchy node")
    return sh


def put_volume_in_study(scene: Any, volume_node: Any, patient_name: str, study_name: str) -> int:
    """Place a volume under a new patient / study in the subject hierarchy (as DICOM import would);
    returns the study item. Used for scenes built outside Slicer (the .mrb of ``resmtnet detect``)."""
    sh = _subject_hierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), patient_name)
    study = sh.CreateStudyItem(patient, study_name)
    _place(scene, volume_node, study)
    return study


def output_parent_item(scene: Any, volume_node: Any) -> int:
    """The subject-hierarchy item the outputs go under: the volume's study, or, for a volume that is
    in no study (loaded from a file), the volume's own parent (often the scene)."""
    sh = _subject_hierarchy(scene)
    item = _item(scene, volume_node)
    study = sh.GetItemAncestorAtLevel(item, "Study")
    if study:
        return study
    return sh.GetItemParent(item) or sh.GetSceneItemID()


def _item(scene: Any, node: Any) -> int:
    """The node's subject-hierarchy item, made under the scene if it has none yet (Slicer's
    application adds items for new nodes by itself; a slicer-core scene does not)."""
    sh = _subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def _place(scene: Any, node: Any, parent_item: int) -> None:
    _subject_hierarchy(scene).SetItemParent(_item(scene, node), parent_item)


# --------------------------------------------------------------------------------------------------
# Finding and replacing a run's outputs


def _tag(node: Any, role: str, volume_node: Any) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetNodeReferenceID(INPUT_VOLUME_REFERENCE, volume_node.GetID())


def find_outputs(scene: Any, volume_node: Any, role: str | None = None) -> list[Any]:
    """Nodes this module made from ``volume_node`` (optionally only those of one role), in scene order."""
    nodes = (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
    return [node for node in nodes if made_for(node, volume_node, role)]


def made_for(node: Any, volume_node: Any, role: str | None = None) -> bool:
    """Whether this module made ``node`` from ``volume_node`` (in ``role``, when given)."""
    node_role = node.GetAttribute(ROLE_ATTRIBUTE)
    return bool(node_role) and (role is None or node_role == role) \
        and node.GetNodeReferenceID(INPUT_VOLUME_REFERENCE) == volume_node.GetID()


def holds_nothing(node: Any) -> bool:
    """An output node with nothing in it yet (e.g. made from the panel's node selector): filling it loses
    nothing."""
    if node.IsA("vtkMRMLSegmentationNode"):
        return node.GetSegmentation().GetNumberOfSegments() == 0
    if node.IsA("vtkMRMLTableNode"):
        return node.GetTable().GetNumberOfColumns() == 0
    return False


def may_fill(node: Any, volume_node: Any, role: str) -> bool:
    """Whether a run on ``volume_node`` may replace the content of ``node``: only a node this module made
    from that same volume, or one that holds nothing. Another volume's results and the user's own data
    are never overwritten."""
    if node.GetAttribute(ROLE_ATTRIBUTE):
        return made_for(node, volume_node, role)
    return holds_nothing(node)


def _remove_previous_outputs(scene: Any, volume_node: Any, keep: Sequence[Any]) -> None:
    sh = _subject_hierarchy(scene)
    keep_ids = {n.GetID() for n in keep if n is not None}
    folders = set()
    for node in find_outputs(scene, volume_node):
        if node.GetID() in keep_ids:
            continue
        item = sh.GetItemByDataNode(node)
        parent = sh.GetItemParent(item) if item else 0
        if parent and sh.GetItemAttribute(parent, ROLE_ATTRIBUTE) == ROLE_FOLDER:
            folders.add(parent)
        remove_node(scene, node)
    for folder in folders:
        if sh.GetNumberOfItemChildren(folder) == 0:
            sh.RemoveItem(folder, False, False)


def remove_node(scene: Any, node: Any) -> None:
    """Remove a node with its display and storage nodes and its subject-hierarchy item (Slicer's
    application would clean those up by itself; a slicer-core scene would keep them)."""
    helpers = []
    for getter, count in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                          ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, count):
            helpers += [getattr(node, getter)(i) for i in range(getattr(node, count)())]
    sh = _subject_hierarchy(scene)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.RemoveItem(item, False, False)
    if scene.IsNodePresent(node):
        scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


# --------------------------------------------------------------------------------------------------
# Building the outputs


def _add_markup(scene: Any, volume_node: Any, nodule: Nodule, color_by: str, folder: int) -> Any:
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", nodule.label)
    node.CreateDefaultDisplayNodes()
    index = node.AddControlPoint(list(nodule.center_ras), nodule.label)
    node.SetNthControlPointDescription(index, describe(nodule))
    node.SetDescription(RESEARCH_NOTE)
    node.SetNthControlPointLocked(index, True)  # a finding, not something to drag by accident
    node.SetAttribute(NUMBER_ATTRIBUTE, str(nodule.number))
    node.SetAttribute(COLOR_BY_ATTRIBUTE, color_by)
    _tag(node, ROLE_MARKUP, volume_node)
    rgb = nodule_color(nodule, color_by)
    display = node.GetDisplayNode()
    display.SetSelectedColor(*rgb)
    display.SetColor(*rgb)
    display.SetActiveColor(*rgb)
    # A cross framing the nodule in the slice views, absolute size (see MARKER_GLYPH)
    display.SetGlyphTypeFromString(MARKER_GLYPH)
    display.SetUseGlyphScale(False)
    display.SetGlyphSize(glyph_size_mm(nodule))
    display.SetTextScale(1.8)
    display.SetOpacity(marker_opacity(nodule))
    _place(scene, node, folder)
    return node


def glyph_size_mm(nodule: Nodule) -> float:
    """Fiducial glyph size: the cross's span, 3 times the nodule's diameter (at least 10 mm, to stay visible)."""
    return max(MARKER_MIN_SIZE_MM, MARKER_SIZE_PER_DIAMETER * float(nodule.diameter_mm))


def is_confident(nodule: Nodule) -> bool:
    """Whether a finding is drawn at full strength (detection probability at or above the confidence line)."""
    return float(nodule.probability) >= CONFIDENT_PROBABILITY


def marker_opacity(nodule: Nodule) -> float:
    """Opacity of a finding's marker and label: full above the confidence line, faded below it."""
    return 1.0 if is_confident(nodule) else WEAK_OPACITY


def describe(nodule: Nodule) -> str:
    """A finding in one sentence (the control point's description)."""
    solid = "" if nodule.solid_component_mm is None else f" (solid component {nodule.solid_component_mm:.1f} mm)"
    return (f"Finding {nodule.name}: diameter {nodule.diameter_mm:.1f} mm, "
            f"volume {nodule.volume_mm3:.0f} mm3, {nodule.type_text}{solid}, margin {nodule.margin}, "
            f"detection probability {nodule.probability:.2f}, malignancy {100 * nodule.malignancy:.0f} % (network), "
            f"Brock {brock_text(nodule)} %, Lung-RADS {nodule.lung_rads} ({nodule.lung_rads_result.rule}). "
            f"{RESEARCH_NOTE}")


def brock_text(nodule: Nodule) -> str:
    """The Brock probability in % to 0.1, or n/a (calcified: not in PanCan; or not scored)."""
    return "n/a" if nodule.brock_malignancy is None else f"{100 * nodule.brock_malignancy:.1f}"


def segment_terminology(nodule: Nodule) -> str:
    """Slicer's terminology string for a finding's segment: a lung nodule, or a lung mass from 30 mm."""
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(TERMINOLOGY_CONTEXT)
    entry.SetRegionContextName(REGION_CONTEXT)
    kind = MASS_CODE if float(nodule.diameter_mm) >= MASS_DIAMETER_MM else NODULE_CODE
    for coded, (scheme, value, meaning) in ((entry.GetCategoryObject(), CATEGORY_CODE),
                                            (entry.GetTypeObject(), kind), (entry.GetRegionObject(), LUNG_CODE)):
        coded.SetCodingSchemeDesignator(scheme)
        coded.SetCodeValue(value)
        coded.SetCodeMeaning(meaning)
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


def _labels_image(detection: Detection, nodules: list[Nodule]) -> Any:
    """The detection's label image, relabelled so that the i-th nodule has label i+1, as oriented image
    data in RAS (the segmentations logic fills segment i from label i+1); None when no voxel is labelled.

    Only the box around the labelled voxels is passed on, as an image whose extent starts at the box's
    corner on the CT's grid: a segmentation made from the whole CT's extent took Slicer's main thread
    about 1.5 s on a 512x512x133 scan (most of it making the closed surface of empty space).
    """
    import slicer

    labels = np.asarray(detection.labels)
    box = nonzero_box(labels)
    if box is None:
        return None
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint16)
    for i, n in enumerate(nodules):
        if n.number < lut.size:
            lut[n.number] = i + 1
    relabelled = np.ascontiguousarray(lut[labels[box]])
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    (z0, z1), (y0, y1), (x0, x1) = ((b.start, b.stop - 1) for b in box)
    image.SetExtent(x0, x1, y0, y1, z0, z1)
    scalars = numpy_support.numpy_to_vtk(relabelled.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(_vtk_matrix(ijk_to_ras_matrix(detection.spacing, detection.origin,
                                                              detection.direction)))
    return image


def nonzero_box(labels: np.ndarray, slab: int = 32) -> tuple[slice, slice, slice] | None:
    """The smallest box (z, y, x slices) holding every non-zero voxel, looked for slab by slab (no
    whole-volume temporary); None where there is none."""
    lo, hi = np.full(3, np.iinfo(np.int64).max), np.full(3, -1)
    for z0 in range(0, labels.shape[0], slab):
        part = labels[z0:z0 + slab] != 0
        for axis in range(3):
            hit = np.flatnonzero(part.any(axis=tuple(a for a in range(3) if a != axis)))
            if hit.size:
                offset = z0 if axis == 0 else 0
                lo[axis], hi[axis] = min(lo[axis], hit[0] + offset), max(hi[axis], hit[-1] + offset)
    if hi[0] < 0:
        return None
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))


def _fill_segmentation(scene: Any, node: Any, volume_node: Any, detection: Detection, nodules: list[Nodule],
                       color_by: str) -> None:
    import slicer
    import vtk

    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    segment_ids = vtk.vtkStringArray()
    for nodule in nodules:
        segment_id = nodule.name
        segmentation.AddEmptySegment(segment_id, nodule.label, list(nodule_color(nodule, color_by)))
        segment = segmentation.GetSegment(segment_id)
        for key, value in segment_tags(nodule).items():
            segment.SetTag(key, value)
        segment.SetTerminology(segment_terminology(nodule))
        segment_ids.InsertNextValue(segment_id)
    image = _labels_image(detection, nodules) if nodules and detection.labels is not None else None
    if image is not None:
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(image, node, segment_ids):
            raise RuntimeError("importing the nodule masks into the segmentation failed")
    node.CreateClosedSurfaceRepresentation()
    _style_segments(node, nodules)


def _style_segments(node: Any, nodules: list[Nodule]) -> None:
    """Outline plus light fill in the slice views; findings under the confidence line fainter everywhere."""
    display = node.GetDisplayNode()
    display.SetVisibility2DOutline(True)
    display.SetVisibility2DFill(True)
    display.SetOpacity2DOutline(1.0)
    display.SetOpacity2DFill(1.0)
    display.SetSliceIntersectionThickness(2)
    for nodule in nodules:
        confident = is_confident(nodule)
        display.SetSegmentOpacity2DFill(nodule.name, SEGMENT_FILL_OPACITY if confident else WEAK_SEGMENT_FILL_OPACITY)
        display.SetSegmentOpacity2DOutline(nodule.name, 1.0 if confident else WEAK_OPACITY)
        display.SetSegmentOpacity3D(nodule.name, 1.0 if confident else WEAK_OPACITY)


def segment_tags(nodule: Nodule) -> dict[str, str]:
    """Tags stored on each nodule's segment (strings, as segment tags are). A value that does not apply (the
    solid component of a nodule that is not part-solid, the Brock probability of a calcified one) is left out,
    not stored empty: slicer-core 5.11 crashes writing or freeing a segmentation whose segment has an empty tag
    value (seen on `resmtnet detect` of a phantom: exit on SIGSEGV)."""
    tags = {
        "ResMTNet.Number": str(nodule.number),
        "ResMTNet.DiameterMm": f"{nodule.diameter_mm:.2f}",
        "ResMTNet.VolumeMm3": f"{nodule.volume_mm3:.1f}",
        "ResMTNet.Malignancy": f"{nodule.malignancy:.4f}",
        "ResMTNet.Probability": f"{nodule.probability:.4f}",
        "ResMTNet.Type": nodule.type_text,
        "ResMTNet.Margin": nodule.margin,
        "ResMTNet.LungRADS": nodule.lung_rads,
        "ResMTNet.LungRADSRule": nodule.lung_rads_result.rule,
    }
    if nodule.solid_component_mm is not None:
        tags["ResMTNet.SolidComponentMm"] = f"{nodule.solid_component_mm:.1f}"
    if nodule.long_axis_mm is not None:
        tags["ResMTNet.LongAxisMm"] = f"{nodule.long_axis_mm:.1f}"
    if nodule.sphere_diameter_mm is not None:
        tags["ResMTNet.SphereDiameterMm"] = f"{nodule.sphere_diameter_mm:.1f}"
    if nodule.brock_malignancy is not None:
        tags["ResMTNet.BrockMalignancy"] = f"{nodule.brock_malignancy:.4f}"
    return tags


def table_rows(nodules: list[Nodule]) -> list[list[Any]]:
    """The table's rows, in :data:`TABLE_COLUMNS` order, rounded as a reader wants them: centre (LPS) and
    diameters to 0.1 mm, volume to 1 mm3, p to 0.01, malignancy to 1 %, solid component to 0.1 mm, Brock to 0.1 %."""
    rows = []
    for n in nodules:
        x, y, z = (round(float(c), 1) for c in n.center_lps)
        rows.append([n.name, x, y, z, round(float(n.diameter_mm), 1), float(round(float(n.volume_mm3))),
                     round(float(n.probability), 2), float(round(100.0 * float(n.malignancy))), n.type_text,
                     n.margin, "" if n.solid_component_mm is None else f"{n.solid_component_mm:.1f}", n.lung_rads,
                     brock_text(n), _mm_text(n.long_axis_mm), _mm_text(n.sphere_diameter_mm)])
    return rows


def _mm_text(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def brock_inputs_text(detection: Detection) -> str:
    """The Brock model's patient inputs as used, each marked given or default (the table's description, the
    panel's status); empty where the detection carries none."""
    brock = detection.info.get("brock") or {}
    inputs, defaulted = brock.get("inputs") or {}, set(brock.get("defaulted") or [])
    if not inputs:
        return ""
    shown = {"age": lambda v: f"age {float(v):g}", "sex": lambda v: f"sex {v}",
             "family_history": lambda v: f"family history {'yes' if v else 'no'}",
             "emphysema": lambda v: f"emphysema {'yes' if v else 'no'}"}
    parts = [shown[k](v) + (" (default)" if k in defaulted else "") for k, v in inputs.items() if k in shown]
    return "Brock inputs: " + ", ".join(parts) + "."


def _fill_table(node: Any, detection: Detection) -> None:
    import vtk

    array_class = {"int": vtk.vtkIntArray, "double": vtk.vtkDoubleArray, "string": vtk.vtkStringArray}
    rows = table_rows(list(detection.nodules))
    was_modifying = node.StartModify()
    node.RemoveAllColumns()
    for c, (name, kind, unit, description) in enumerate(TABLE_COLUMNS):
        array = array_class[kind]()
        array.SetName(name)
        for row in rows:
            array.InsertNextValue(row[c])
        node.AddColumn(array)
        node.SetColumnUnitLabel(name, unit)
        node.SetColumnDescription(name, description)
    node.SetLocked(True)  # results: not editable in the table view
    inputs = brock_inputs_text(detection)
    node.SetDescription(f"{RESEARCH_NOTE} {inputs}".strip())
    node.SetAttribute(BROCK_INPUTS_ATTRIBUTE, inputs)
    node.EndModify(was_modifying)


def _add_legend(scene: Any, volume_node: Any, color_by: str, folder: int) -> Any:
    entries = legend_entries(color_by)
    title = "malignancy" if color_by == "malignancy" else "Lung-RADS v2022 category"
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"Nodule colours ({title})")
    node.SetTypeToUser()
    node.SetHideFromEditors(False)  # colour tables are hidden by default; this one is the legend: show it
    node.SetNumberOfColors(len(entries))
    node.GetLookupTable().SetTableRange(0, len(entries) - 1)
    for i, (text, rgb) in enumerate(entries):
        node.SetColor(i, text, rgb[0], rgb[1], rgb[2], 1.0)
    node.SetAttribute("Category", "ResMTNet")
    node.SetAttribute(COLOR_BY_ATTRIBUTE, color_by)
    node.SetDescription(RESEARCH_NOTE)
    _tag(node, ROLE_LEGEND, volume_node)
    _place(scene, node, folder)
    return node


def show_legend(segmentation_node: Any, legend_node: Any, color_by: str) -> Any:
    """Slicer's colour legend for the nodule colours, in the slice and 3-D views.

    A colour legend display node shows the colour table of its primary display node; the segmentation's
    display node gets the legend table as its colour node (segments keep their own colours) and is the
    primary display node. Returns the colour legend display node (one per segmentation, reused)."""
    import slicer

    display = segmentation_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(legend_node.GetID())
    legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(display)
    legend.SetName(f"{legend_node.GetName()} legend")
    legend.SetTitleText(legend_title(color_by))
    legend.SetUseColorNamesForLabels(True)
    legend.SetMaxNumberOfColors(legend_node.GetNumberOfColors())
    legend.SetLabelFormat(legend.GetDefaultTextLabelFormat())
    # bottom left, clear of the labels, which Slicer writes to the right of their marker; text large enough to read
    legend.SetPosition(0.02, 0.08)
    legend.SetSize(0.25, 0.35)
    for text in (legend.GetTitleTextProperty(), legend.GetLabelTextProperty()):
        text.SetFontFamilyToArial()
        text.SetFontSize(LEGEND_FONT_SIZE)
    legend.GetTitleTextProperty().SetBold(True)
    legend.SetVisibility(True)
    legend.SetVisibility2D(True)
    legend.SetVisibility3D(True)
    return legend


def _release_place_node(scene: Any, markups: list[Any]) -> None:
    """Markups logic makes each new fiducial node the active place node; a click in a view would then add a
    point to a finding. Leave no finding active."""
    ids = {n.GetID() for n in markups}
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSelectionNode")):
        selection = scene.GetNthNodeByClass(i, "vtkMRMLSelectionNode")
        if selection.GetActivePlaceNodeID() in ids:
            selection.SetActivePlaceNodeID(None)


def first_view(nodules: list[Nodule]) -> tuple[tuple[float, float, float], float] | None:
    """Where the views open: N1's RAS centre and a square field of view (mm) that shows it with its
    surroundings and room for its label (10 diameters, 100 to 250 mm); None without findings."""
    if not nodules:
        return None
    top = min(nodules, key=lambda n: n.number)
    return top.center_ras, float(min(250.0, max(100.0, 10.0 * float(top.diameter_mm))))


def build_nodule_scene(scene: Any, volume_node: Any, detection: Detection, color_by: str = "malignancy",
                       output_nodes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put a detection into the scene beside its input volume; replace this module's earlier outputs.

    Creates one fiducial node per nodule (in a subject-hierarchy folder), one segmentation (a segment
    per nodule from ``detection.labels``, the volume as reference geometry, closed surface made), one
    table (a row per nodule) and a colour table that is the legend, all under the volume's study.
    ``output_nodes`` may name an existing ``"segmentation"`` and/or ``"table"`` node to fill instead
    of creating one: one this module made from the same volume, or an empty one (:func:`may_fill`);
    anything else raises ValueError, so that no run overwrites another volume's results or the user's data.
    Returns the nodes: ``markups`` (list), ``segmentation``, ``table``, ``legend`` and
    the folder's subject-hierarchy item ``folder``.
    """
    check_color_by(color_by)
    if volume_node is None or volume_node.GetScene() is not scene:
        raise ValueError("the volume node must belong to the scene")
    nodules = list(detection.nodules)
    if detection.labels is not None:
        expected = tuple(reversed(volume_node.GetImageData().GetDimensions()))
        if tuple(np.asarray(detection.labels).shape) != expected:
            raise ValueError(f"labels shape {np.asarray(detection.labels).shape} is not the volume's "
                             f"{expected}")
    output_nodes = dict(output_nodes or {})
    segmentation = output_nodes.get("segmentation")
    table = output_nodes.get("table")
    for node, role in ((segmentation, ROLE_SEGMENTATION), (table, ROLE_TABLE)):
        if node is not None and not may_fill(node, volume_node, role):
            raise ValueError(f"{node.GetName()} holds other results (another volume's, or the user's own); "
                             "it is not overwritten")
    _remove_previous_outputs(scene, volume_node, keep=[segmentation, table])

    sh = _subject_hierarchy(scene)
    parent = output_parent_item(scene, volume_node)
    base = volume_node.GetName() or "CT"
    folder = sh.CreateFolderItem(parent, f"{base} nodules (ResMTNet)")
    sh.SetItemAttribute(folder, ROLE_ATTRIBUTE, ROLE_FOLDER)

    markups = [_add_markup(scene, volume_node, n, color_by, folder) for n in nodules]
    _release_place_node(scene, markups)

    if segmentation is None:
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{base} nodules")
    _tag(segmentation, ROLE_SEGMENTATION, volume_node)
    segmentation.SetAttribute(COLOR_BY_ATTRIBUTE, color_by)
    _fill_segmentation(scene, segmentation, volume_node, detection, nodules, color_by)
    segmentation.SetDescription(RESEARCH_NOTE)
    _place(scene, segmentation, parent)

    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} nodules table")
    _tag(table, ROLE_TABLE, volume_node)
    _fill_table(table, detection)
    _place(scene, table, parent)

    legend = _add_legend(scene, volume_node, color_by, folder)
    show_legend(segmentation, legend, color_by)
    return {"markups": markups, "segmentation": segmentation, "table": table, "legend": legend,
            "folder": folder}


def find_nodule_outputs(scene: Any, volume_node: Any) -> dict[str, Any]:
    """The outputs of the last run on ``volume_node`` found in a scene (e.g. one re-loaded from a .mrb),
    in the shape :func:`build_nodule_scene` returns them; markups sorted by nodule number."""
    def first(role: str) -> Any:
        nodes = find_outputs(scene, volume_node, role)
        return nodes[0] if nodes else None

    markups = sorted(find_outputs(scene, volume_node, ROLE_MARKUP),
                     key=lambda n: int(n.GetAttribute(NUMBER_ATTRIBUTE) or 0))
    sh = _subject_hierarchy(scene)
    folder = sh.GetItemParent(sh.GetItemByDataNode(markups[0])) if markups else 0
    return {"markups": markups, "segmentation": first(ROLE_SEGMENTATION), "table": first(ROLE_TABLE),
            "legend": first(ROLE_LEGEND), "folder": folder}


def table_row_ras(table_node: Any, row: int) -> tuple[float, float, float]:
    """RAS centre of the nodule in a results table row (for jumping the slice views to it); the table holds LPS."""
    t = table_node.GetTable()
    x, y, z = (float(t.GetColumnByName(c).GetValue(row)) for c in ("L", "P", "S"))
    return (-x, -y, z)
