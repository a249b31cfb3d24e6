"""A tiny synthetic chest CT (48 x 48 x 40 voxels of 3 mm) for tests of the plumbing around detection.

A body of soft tissue in air with two air-filled lungs (about 0.35 litres together, just above what the
lung finder accepts): enough for the whole detection to run in well under a second with the tiny
``untrained_checkpoint``. Not a model of anatomy; ``lungs=False`` gives a scan where no lungs are found.
"""

from __future__ import annotations

import numpy as np
from resmtnet.detect.nodules import Detection, Nodule
from resmtnet.io.ctio import CTVolume

SHAPE_ZYX = (40, 48, 48)
SPACING_MM = 3.0


def tiny_chest(seed: int, *, lungs: bool = True) -> CTVolume:
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:SHAPE_ZYX[0], 0:SHAPE_ZYX[1], 0:SHAPE_ZYX[2]].astype(np.float32)
    hu = np.full(SHAPE_ZYX, -1000.0, np.float32)
    hu[((x - 23.5) / 22) ** 2 + ((y - 23.5) / 17) ** 2 <= 1] = 40.0
    if lungs:
        for cx in (13.5, 33.5):
            hu[((x - cx) / 8) ** 2 + ((y - 23.5) / 12) ** 2 + ((z - 19.5) / 16) ** 2 <= 1] = -850.0
    hu += rng.normal(0, 10, SHAPE_ZYX).astype(np.float32)
    origin = tuple(float(v) for v in rng.uniform(-200, 0, 3))
    return CTVolume(np.round(hu), (SPACING_MM,) * 3, origin, (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
                    f"tiny-chest-{seed}", "")


def tiny_detection(ct: CTVolume) -> Detection:
    """One finding in the left lung of a :func:`tiny_chest`, with its mask: a detection's result without
    running the network, for tests of what is written."""
    centre_vox = np.array([13.5, 23.5, 19.5])  # x, y, z
    labels = np.zeros(ct.array.shape, np.uint16)
    z, y, x = np.ogrid[0:SHAPE_ZYX[0], 0:SHAPE_ZYX[1], 0:SHAPE_ZYX[2]]
    inside = (x - centre_vox[0]) ** 2 + (y - centre_vox[1]) ** 2 + (z - centre_vox[2]) ** 2 <= 2.0 ** 2
    labels[inside] = 1
    nodule = Nodule(number=1, center_lps=tuple(float(v) for v in ct.index_to_world(centre_vox)), probability=0.9,
                    diameter_mm=12.0, malignancy=0.3, volume_mm3=float(inside.sum()) * SPACING_MM ** 3)
    return Detection(seriesuid=ct.seriesuid, nodules=[nodule], labels=labels, spacing=ct.spacing, origin=ct.origin,
                     direction=ct.direction, info={"source": "tests"})
