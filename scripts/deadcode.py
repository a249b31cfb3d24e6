"""Dead code in the core: what vulture finds unused in ResMTNet/Logic, counting the Slicer module's uses.

Run by scripts/test.sh after ruff. Code only the tests use is dead code too (the tests are not scanned).
Exits 1 and lists each finding; a finding that is used where vulture cannot see it goes in KNOWN below,
with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vulture.core import Vulture

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "ResMTNet" / "Logic"
#: code that uses the core without being part of it: its uses count, its own definitions are not reported
USERS = [ROOT / "ResMTNet" / "ResMTNet.py"]
#: vulture's confidence for an unused function, class, method, attribute or variable
MIN_CONFIDENCE = 60

#: (core file, relative to the core, name) -> why it is not dead
KNOWN = {
    ("model/model.py", "forward"): "torch calls nn.Module.forward through __call__",
    ("train/training.py", "benchmark"): "torch.backends.cudnn.benchmark: a setting torch reads",
    ("io/ctio.py", "exc"): "the exception arguments of a context manager's __exit__",
    ("io/fileset.py", "exc"): "the exception arguments of a context manager's __exit__",
    ("scene/views.py", "exc"): "the exception arguments of a context manager's __exit__",
    ("report/dicom_export.py", "CodingSchemeDesignator"): "a DICOM attribute set on a pydicom Dataset, written to file",
    ("report/dicom_export.py", "CodingSchemeName"): "a DICOM attribute set on a pydicom Dataset, written to file",
    ("report/dicom_export.py", "CodingSchemeResponsibleOrganization"): "a DICOM attribute set on a pydicom Dataset",
    ("report/dicom_export.py", "CodingSchemeIdentificationSequence"): "a DICOM attribute set on a pydicom Dataset",
    ("report/followup.py", "current_center_in_prior_lps"): "a Pair field, written to followup.json with asdict",
    ("scene/views.py", "center_on"): "a slice view's geometry, what the pixel tests (test_views.py) assert with",
    ("scene/views.py", "ras_to_pixel"): "a slice view's geometry, what the pixel tests (test_views.py) assert with",
    ("model/targets.py", "log_diameter"): "a Targets field, read by name (training.PatchSampler.batch)",
    ("evaluate/realism.py", "shape_zyx"): "a ScanStats field, written to the report with asdict",
    ("evaluate/realism.py", "body_litres_lung_slab"): "a ScanStats field, written to the report with asdict",
    ("evaluate/realism.py", "lung_fraction"): "a ScanStats field, written to the report with asdict",
    ("evaluate/realism.py", "lung_hu_q25"): "a ScanStats field, written to the report with asdict",
    ("evaluate/realism.py", "lung_hu_q75"): "a ScanStats field, written to the report with asdict",
    ("evaluate/realism.py", "lung_hu_mean"): "a ScanStats field, written to the report with asdict",
    ("evaluate/realism.py", "nodule_voxels_excluded"): "a ScanStats field, written to the report with asdict",
    # record fields nothing reads yet: what a reader's XML held, how the phantom's scanner took it
    ("data/lidc.py", "n_rois"): "a ReaderNodule field, set from the XML",
    ("data/phantom.py", "acquisition"): "a Phantom field, set by generate_phantom",
    ("cli/train_cli.py", "tiny_model_config"): "configs/tiny.toml's network, built directly by tests",
    # named in issue 33's dead-code list; their modules' owners retire them
    ("detect/lungmask.py", "body_mask"): "used by tests only (issue 33)",
    ("detect/lungmask.py", "lung_bbox"): "used by tests only (issue 33)",
    ("scene/slicer_scene.py", "find_nodule_outputs"): "used by tests only (issue 33)",
}


def dead_code() -> list[str]:
    """Reports (``file:line: what``) of the unused code in the core that KNOWN does not explain."""
    v = Vulture()
    v.scavenge([str(CORE)] + [str(p) for p in USERS if p.exists()])
    out = []
    for item in v.get_unused_code(min_confidence=MIN_CONFIDENCE):
        path = Path(item.filename).resolve()
        if not path.is_relative_to(CORE) or (path.relative_to(CORE).as_posix(), item.name) in KNOWN:
            continue
        out.append(item.get_report(add_size=False))
    return out


def main() -> int:
    found = dead_code()
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} unused definition(s) in {CORE.relative_to(ROOT)}: remove them, or add them to "
              f"KNOWN in {Path(__file__).relative_to(ROOT)} saying where they are used", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
