"""Synthetic chest CT phantoms with ground-truth nodules, for training and testing without patient data.

A phantom is built in two steps, the way a scanner sees a patient:

1. *Anatomy* on an internal isotropic grid (1 mm; 1.5 mm for ``small``) in LPS world millimetres:
   body outline with subcutaneous fat and muscle, couch, ribs, spine, sternum, mediastinum with heart,
   aorta and trachea, two lungs with parenchyma texture and a posterior (dependent) density gradient,
   a branching pulmonary vessel tree and airway tree inside each lung, and nodules of 3–30 mm: solid,
   part-solid, ground-glass or calcified; smooth, lobulated or spiculated; free in the parenchyma,
   touching the pleura or touching a vessel.
2. *Acquisition*: slice-thickness blur, resampling to a scanner grid (in-plane 0.5–1.0 mm on a 512
   matrix, slices 0.625–2.5 mm or, in the ``thick`` mix, 3–5 mm, any of :data:`DIRECTIONS`), quantum
   noise, and sometimes the padding value outside the circular field of view (-2048 or -3024) that real
   scanners write.

Which nodules are drawn, and which slice thicknesses the scanner takes, follows a :class:`PhantomMix`:
the screening mix for every evaluation set, or a training-only mix: thick slices (3–5 mm, as older and
low-dose scans have), or masses of 30–80 mm against the chest wall, the mediastinum or a hilum beside the
nodules (:func:`_draw_masses`). :func:`insert_lesions` draws the same nodules and masses into a real scan.

Every nodule gets a LIDC-style malignancy rating 1–5 drawn from its size, margin, texture and
calcification (large, spiculated, solid → high; small, smooth, calcified → low) plus reader noise.
Everything is drawn from one seed, so a phantom is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.ctio import CTVolume, write_volume
from ..io.luna16_csv import PHANTOM_ANNOTATION_COLUMNS, ReferenceNodule, write_annotations

#: Direction matrices (row-major, ITK) the generator draws from: axis-aligned, with flipped axes.
DIRECTIONS: list[tuple[float, ...]] = [
    (1, 0, 0, 0, 1, 0, 0, 0, 1),
    (1, 0, 0, 0, 1, 0, 0, 0, -1),
    (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    (-1, 0, 0, 0, 1, 0, 0, 0, 1),
    (1, 0, 0, 0, -1, 0, 0, 0, -1),
]
DIRECTION_WEIGHTS = [0.4, 0.2, 0.2, 0.1, 0.1]

NODULE_TYPES = ["solid", "part-solid", "ground-glass", "calcified"]
MARGINS = ["smooth", "lobulated", "spiculated"]
LOCATIONS = ["parenchyma", "pleural", "vascular"]
#: a nodule with less of its sphere in the lung than this (its centre outside the lung, in effect) is no lung
#: nodule: the phantom evaluation does not score it (:attr:`PhantomNodule.lung_share`)
MIN_LUNG_SHARE = 0.5
AERATED_HU = -400.0  # lung parenchyma and airway lumen lie below it; vessels, walls, heart, wall tissue above

LUNG_HU = -890.0


@dataclass(frozen=True)
class PhantomMix:
    """How a phantom is drawn: the share of each nodule texture and location, the size range, and the
    slice thicknesses the scanner reconstructs (one drawn per phantom, which is also its slice spacing).

    ``screening`` is the mix every evaluation set uses. ``thick`` is a training-only mix: the screening
    mix's nodules seen through 3–5 mm slices, whose blur along the body axis stretches a nodule's profile:
    a network that never saw it over-sizes nodules on such scans. Evaluation never uses a training-only
    mix, so a model trained on one is still scored on ``screening``.
    """

    type_weights: tuple[float, float, float, float]  # NODULE_TYPES
    location_weights: tuple[float, float, float]  # LOCATIONS
    diameter_range_mm: tuple[float, float]  # before the skew toward small nodules
    slice_thicknesses_mm: tuple[float, ...] = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5)  # full-size phantoms
    #: masses (:func:`_draw_masses`) drawn beside the nodules: (fewest, most) per phantom
    masses: tuple[int, int] = (0, 0)


_SCREENING_MIX = PhantomMix((0.55, 0.15, 0.15, 0.15), (0.5, 0.3, 0.2), (3.0, 30.0))
PHANTOM_MIXES: dict[str, PhantomMix] = {
    "screening": _SCREENING_MIX,
    "thick": replace(_SCREENING_MIX, slice_thicknesses_mm=(3.0, 4.0, 5.0)),
    # training only: one or two masses of 30-80 mm against the chest wall, the mediastinum or the hilum, some
    # invading them, beside the screening mix's nodules, on thin and thick slices
    "masses": replace(_SCREENING_MIX, slice_thicknesses_mm=(1.0, 1.25, 2.0, 2.5, 3.0, 5.0), masses=(1, 2)),
}
#: where a mass is drawn: against the chest wall, against the mediastinum, at the hilum
MASS_LOCATIONS = ["chest wall", "mediastinal", "hilar"]
MASS_DIAMETER_RANGE_MM = (30.0, 80.0)
#: how far a lobulated mass's outline reaches, in radii (its spicules reach further, thin): what keeps a mass
#: clear of the nodules drawn before it, of other masses and of a real scan's own lesions
MASS_OUTLINE = 1.4
#: a mass is placed with at least this share of its sphere in aerated lung (TrainConfig.min_lung_share is 0.5)
MIN_MASS_LUNG_SHARE = 0.55
#: how a nodule is drawn, in the cache key of every cached phantom and real-background case (2: ground glass as
#: the Fleischner Society's glossary defines it, a hazy rise in the lung's attenuation that leaves the margins of
#: the vessels and bronchial walls in it visible, with a softer edge than a solid nodule's)
NODULE_RENDERER_VERSION = 2
#: the width (mm) over which a solid nodule's edge, and a ground-glass nodule's or component's, goes from lung to
#: nodule before the scanner's blur: a solid nodule's edge is sharp, ground glass fades into the lung around it
SOLID_EDGE_MM = 0.6
GROUND_GLASS_EDGE_MM = 2.0
#: the masses mix's generator version, in its cache key (2: masses clear of what was drawn by their outline, and
#: at least MIN_MASS_LUNG_SHARE in the lung)
MASS_GENERATOR_VERSION = 2


def phantom_mix(name: str) -> PhantomMix:
    """The :data:`PHANTOM_MIXES` entry ``name``; a clear error for any other name."""
    if name not in PHANTOM_MIXES:
        raise ValueError(f"unknown phantom mix {name!r} (one of {', '.join(PHANTOM_MIXES)})")
    return PHANTOM_MIXES[name]


@dataclass
class PhantomNodule:
    center_lps: tuple[float, float, float]
    diameter_mm: float
    malignancy: int
    nodule_type: str
    margin: str
    location: str
    # share of the nodule's sphere that was aerated lung (under AERATED_HU) before the nodule was drawn. A
    # juxtapleural nodule is meant to sit in the lung against the wall (>= 0.9 on a flat wall), but the
    # placement can land one in the chest wall, the heart or the mediastinum (the lung field the placement
    # reads overlaps the heart); under MIN_LUNG_SHARE it is no visible lung nodule, and the phantom
    # evaluation leaves it out as LUNA16 leaves out what its readers do not call a nodule
    lung_share: float = 1.0
    #: its index among the nodules drawn from the phantom's seed (a :class:`Rescan` may hide some)
    index: int | None = None
    #: a mass (30-80 mm) with an air cavity in it, its wall thick and uneven
    cavitating: bool = False


@dataclass
class Phantom:
    ct: CTVolume
    nodules: list[PhantomNodule]
    labels: np.ndarray  # uint16 (z, y, x) on ct's grid, label i+1 = nodules[i]
    lung_mask: np.ndarray  # bool (z, y, x) on ct's grid
    acquisition: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Rescan:
    """The same patient scanned again, with known changes: what :func:`generate_phantom` re-makes from a seed.

    Nodules are numbered by their index in the phantom drawn from the seed (``nodules[i]``). ``hidden``: the
    nodules not drawn on this scan (one absent from the prior is *new* on the current, one absent from the
    current *resolved*); ``grow_mm``: millimetres added to a nodule's drawn diameter. The patient lies
    rotated by ``rotation_deg`` (about z, then y, then x, degrees) about the body's centre and moved by
    ``shift_mm``; the scanner takes ``thickness_mm`` slices (None: as drawn) and its noise from ``noise_seed``.
    Every scan of a follow-up pair, the prior included, is made through a ``Rescan``: its nodules are drawn
    with their own random streams, so a grown nodule keeps its shape and the rest of the phantom stays put.
    """

    hidden: tuple[int, ...] = ()
    grow_mm: tuple[tuple[int, float], ...] = ()
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    thickness_mm: float | None = None
    noise_seed: int = 0

    def rotation(self) -> np.ndarray:
        """The patient's rotation (3x3, patient → world)."""
        z, y, x = np.radians(self.rotation_deg)
        rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
        ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
        return rz @ ry @ rx


# ----------------------------------------------------------------------------------------------------------
# Internal grid helpers


class _Grid:
    """Axis-aligned isotropic grid in LPS mm (identity direction); arrays are (z, y, x)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, step: float):
        self.step = float(step)
        self.lo = np.asarray(lo, dtype=np.float64)
        self.shape_xyz = np.ceil((np.asarray(hi) - self.lo) / step).astype(int) + 1
        self.shape = tuple(int(v) for v in self.shape_xyz[::-1])

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (self.lo[0] + self.step * np.arange(self.shape[2])).astype(np.float32)
        y = (self.lo[1] + self.step * np.arange(self.shape[1])).astype(np.float32)
        z = (self.lo[2] + self.step * np.arange(self.shape[0])).astype(np.float32)
        return x, y, z

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        i0 = np.maximum(np.floor((np.asarray(lo_mm) - self.lo) / self.step).astype(int), 0)
        i1 = np.minimum(np.ceil((np.asarray(hi_mm) - self.lo) / self.step).astype(int) + 1, self.shape_xyz)
        if np.any(i1 <= i0):
            return None
        return (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (z, y, x broadcastable) of the voxels of ``box``."""
        zs, ys, xs = box
        x = (self.lo[0] + self.step * np.arange(xs.start, xs.stop)).astype(np.float32)
        y = (self.lo[1] + self.step * np.arange(ys.start, ys.stop)).astype(np.float32)
        z = (self.lo[2] + self.step * np.arange(zs.start, zs.stop)).astype(np.float32)
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def index_of(self, p: np.ndarray) -> np.ndarray:
        """(z, y, x) integer index of world point p (x, y, z)."""
        return np.round((np.asarray(p) - self.lo) / self.step).astype(int)[::-1]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float, coarse: int = 4) -> np.ndarray:
    """Zero-mean, unit-std smooth random field, made on a coarse grid and zoomed up (cheap)."""
    import torch

    cshape = tuple(max(2, s // coarse + 2) for s in shape)
    f = ndimage.gaussian_filter(rng.standard_normal(cshape).astype(np.float32), max(sigma_vox / coarse, 0.5))
    t = torch.from_numpy(f)[None, None]
    f = torch.nn.functional.interpolate(t, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    f -= f.mean()
    f /= f.std() + 1e-6
    return f


def _render_tubes(field_: np.ndarray, grid: _Grid, segments: list[tuple], edge: float = 0.7) -> None:
    """Max-accumulate soft tube occupancy (0..1) of segments (p0, p1, r0, r1) into ``field_``."""
    for p0, p1, r0, r1 in segments:
        p0 = np.asarray(p0, np.float32)
        p1 = np.asarray(p1, np.float32)
        rmax = max(r0, r1) + 2 * edge
        box = grid.box(np.minimum(p0, p1) - rmax, np.maximum(p0, p1) + rmax)
        if box is None:
            continue
        z, y, x = grid.coords(box)
        d = p1 - p0
        ll = float(d @ d) + 1e-6
        t = ((x - p0[0]) * d[0] + (y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / ll
        t = np.clip(t, 0.0, 1.0)
        dist = np.sqrt((x - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)
        r = r0 + t * (r1 - r0)
        occ = np.clip(0.5 + (r - dist) / edge, 0.0, 1.0)
        np.maximum(field_[box], occ, out=field_[box])


# ----------------------------------------------------------------------------------------------------------
# Anatomy


@dataclass
class _Body:
    ax: float  # body half-width (x)
    ay: float  # body half-depth (y)
    fat: float
    muscle: float
    lung_top: float
    lung_bottom: float
    lung_cx: float
    lung_ax: float
    lung_ay: float
    lung_cy: float
    heart_c: np.ndarray
    heart_r: np.ndarray
    dome: float


def _draw_body(rng: np.random.Generator, scale: float) -> _Body:
    ax = rng.uniform(135, 175) * scale
    ay = rng.uniform(95, 125) * scale
    lung_height = rng.uniform(190, 260) * scale
    return _Body(
        ax=ax, ay=ay,
        fat=rng.uniform(6, 28) * scale, muscle=rng.uniform(8, 16) * scale,
        lung_bottom=0.0, lung_top=lung_height,
        lung_cx=ax * rng.uniform(0.42, 0.50),
        lung_ax=ax * rng.uniform(0.33, 0.40),
        lung_ay=ay * rng.uniform(0.66, 0.76),
        lung_cy=ay * rng.uniform(0.02, 0.10),
        heart_c=np.array([ax * 0.12, -ay * 0.18, lung_height * 0.22]),
        heart_r=np.array([ax * 0.33, ay * 0.42, lung_height * 0.22]),
        dome=rng.uniform(25, 45) * scale,
    )


def _lung_fields(body: _Body, x: np.ndarray, y: np.ndarray, z: np.ndarray, side: int) -> np.ndarray:
    """Implicit lung function (< 0 inside) for one side (+1 patient left, -1 right), broadcast (z, y, x)."""
    h = body.lung_top - body.lung_bottom
    u = np.clip((z - body.lung_bottom) / h, 0.0, 1.2)
    # narrow rounded apex, widest near the base
    prof = np.sqrt(np.clip(1.0 - np.clip((u - 0.35) / 0.68, 0, None) ** 2, 0.0, 1.0)) * (0.85 + 0.15 * (1 - u))
    prof = np.maximum(prof, 1e-3)
    cx = side * body.lung_cx
    f = ((x - cx) / (body.lung_ax * prof)) ** 2 + ((y - body.lung_cy) / (body.lung_ay * prof)) ** 2 - 1.0
    # diaphragm dome: lung lies above z = bottom + dome * (1 - r^2)
    r2 = ((x - cx) / body.lung_ax) ** 2 + ((y - body.lung_cy) / body.lung_ay) ** 2
    dome_z = body.lung_bottom + body.dome * np.clip(1.0 - r2, 0.0, 1.0) - 10.0 * np.clip(r2 - 1, 0, 1)
    f = np.maximum(f, (dome_z - z) / 15.0)
    # medial side flattened by the mediastinum; the heart pushes the left lung aside
    medial = (side * (cx - x) - 0.55 * body.lung_ax) / 15.0
    f = np.maximum(f, medial)
    heart = (((x - body.heart_c[0]) / body.heart_r[0]) ** 2 + ((y - body.heart_c[1]) / body.heart_r[1]) ** 2
             + ((z - body.heart_c[2]) / body.heart_r[2]) ** 2)
    f = np.maximum(f, (1.0 - heart) * 2.0)
    return f


def _vessel_tree(rng: np.random.Generator, inside, hilum: np.ndarray, r0: float, generations: int,
                 bounds: tuple[np.ndarray, np.ndarray], n_roots: int, max_segments: int = 1800) -> list[tuple]:
    """A branching tree from the hilum toward random targets inside the lung, grown breadth-first.

    Radii follow roughly Murray's law (children ~0.8 of the parent), so vessels stay visible (>= 1 mm)
    for most of the lung, as on real CT; ``max_segments`` bounds the work.
    """
    lo, hi = bounds
    segs: list[tuple] = []
    targets = lo + rng.random((4000, 3)) * (hi - lo)
    targets = targets[inside(targets)]
    if len(targets) == 0:
        return segs
    queue = []
    for _ in range(n_roots):
        d = targets[rng.integers(0, len(targets))] - hilum
        queue.append((hilum.copy(), d / (np.linalg.norm(d) + 1e-9), r0 * rng.uniform(0.8, 1.1), 0))
    head = 0
    while head < len(queue) and len(segs) < max_segments:
        p, direction, r, gen = queue[head]
        head += 1
        if gen > generations or r < 0.4:
            continue
        length = float(np.clip(r * rng.uniform(5, 9), 3, 35))
        d = direction + rng.normal(0, 0.2, 3)
        d /= np.linalg.norm(d) + 1e-9
        q = None
        for frac in (1.0, 0.6, 0.35):
            cand_q = p + d * length * frac
            if inside(cand_q[None])[0]:
                q = cand_q
                break
        if q is None:
            continue
        r_end = r * rng.uniform(0.9, 0.97)
        segs.append((p, q, r, r_end))
        n_child = 2 if rng.random() < 0.85 else 3
        for _ in range(n_child):
            cand = targets[rng.integers(0, len(targets), 12)]
            ahead = cand[((cand - q) @ d) > 0]
            tgt = ahead[rng.integers(0, len(ahead))] if len(ahead) else cand[0]
            nd = tgt - q
            nd = 0.5 * nd / (np.linalg.norm(nd) + 1e-9) + 0.5 * d
            queue.append((q, nd / (np.linalg.norm(nd) + 1e-9), r_end * rng.uniform(0.74, 0.88), gen + 1))
    return segs


def _malignancy_rating(rng: np.random.Generator, diameter: float, margin: str, kind: str) -> int:
    """LIDC-reader-like rating 1–5 from size, margin, texture and calcification, with reader noise."""
    if kind == "calcified":
        return int(rng.choice([1, 1, 1, 2]))
    s = 1.2 + 2.6 * np.clip(math.log(diameter / 3.0) / math.log(30.0 / 3.0), 0, 1)
    s += {"smooth": -0.3, "lobulated": 0.4, "spiculated": 1.0}[margin]
    s += {"solid": 0.0, "part-solid": 0.5, "ground-glass": -0.4}[kind]
    s += rng.normal(0.0, 0.45)
    return int(np.clip(round(s), 1, 5))


def _draw_diameter(rng: np.random.Generator, small: bool, mix: PhantomMix) -> float:
    # skewed toward small nodules, as in screening; small (coarse-voxel) phantoms keep them visible
    lo, hi = (6.0, 20.0) if small else mix.diameter_range_mm
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)) * 0.85 + np.log(lo) * 0.15 + rng.normal(0, 0.1)))


def _lung_share(hu: np.ndarray, grid: _Grid, center: np.ndarray, radius: float) -> float:
    """Share of the sphere (``center`` LPS mm, ``radius`` mm) that is aerated lung in ``hu`` (on ``grid``): under
    :data:`AERATED_HU`. Draws nothing from the generator's random stream, so phantoms stay what they were."""
    c = np.asarray(center, np.float32)
    box = grid.box(c - radius, c + radius)
    if box is None:
        return 0.0
    z, y, x = grid.coords(box)
    near = hu[box]
    inside = np.broadcast_to((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= radius * radius, near.shape)
    return float((near[inside] < AERATED_HU).mean()) if inside.any() else 0.0


def _render_nodule(hu: np.ndarray, labels: np.ndarray, grid: _Grid, rng: np.random.Generator,
                   nod: PhantomNodule, label: int) -> None:
    c = np.asarray(nod.center_lps, np.float32)
    R = nod.diameter_mm / 2.0
    spikes = nod.margin == "spiculated"
    reach = R * (2.0 if spikes else 1.4) + 3
    box = grid.box(c - reach, c + reach)
    if box is None:
        return
    z, y, x = grid.coords(box)
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-6
    # radius as a function of direction: lobulation from a few random cosine lobes
    rad = np.full(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), R, np.float32)
    n_lobes = {"smooth": 2, "lobulated": 5, "spiculated": 4}[nod.margin]
    amp = {"smooth": 0.05, "lobulated": 0.18, "spiculated": 0.10}[nod.margin]
    for _ in range(n_lobes):
        v = rng.normal(size=3)
        v /= np.linalg.norm(v)
        cosang = (dx * v[0] + dy * v[1] + dz * v[2]) / dist
        rad = rad + R * amp * rng.uniform(0.5, 1.0) * np.cos(rng.uniform(1.5, 3.5) * np.arccos(np.clip(cosang, -1, 1)))
    edge = SOLID_EDGE_MM
    occ = np.clip(0.5 + (rad - dist) / edge, 0.0, 1.0).astype(np.float32)
    if spikes:
        segs = []
        for _ in range(rng.integers(6, 14)):
            v = rng.normal(size=3)
            v /= np.linalg.norm(v)
            length = R * rng.uniform(0.4, 1.0)
            segs.append((c + v * R * 0.7, c + v * (R + length), rng.uniform(0.5, 0.9), 0.3))
        spike = np.zeros(occ.shape, np.float32)
        sub = _Grid(grid.lo + np.array([box[2].start, box[1].start, box[0].start]) * grid.step,
                    grid.lo + np.array([box[2].stop - 1, box[1].stop - 1, box[0].stop - 1]) * grid.step, grid.step)
        _render_tubes(spike, sub, segs, edge=0.6)
        occ = np.maximum(occ, spike * 0.8)
    texture = _smooth_noise(rng, occ.shape, 1.5 / grid.step, coarse=1) if min(occ.shape) > 3 else 0.0
    if nod.nodule_type == "solid":
        val = rng.uniform(0, 60) + 15 * texture
    elif nod.nodule_type == "ground-glass":
        val = rng.uniform(-700, -450) + 40 * texture
    elif nod.nodule_type == "part-solid":
        core_r = R * rng.uniform(0.3, 0.6)
        core = np.clip(0.5 + (core_r - dist) / edge, 0, 1)
        val = (1 - core) * (rng.uniform(-650, -450) + 40 * texture) + core * rng.uniform(0, 50)
    else:  # calcified: solid nodule with central, laminated or diffuse calcium
        pattern = rng.choice(["central", "diffuse", "popcorn"])
        base = rng.uniform(20, 80) + 15 * texture
        if pattern == "diffuse":
            calc = np.ones_like(occ)
        elif pattern == "central":
            calc = np.clip(0.5 + (R * rng.uniform(0.35, 0.7) - dist) / edge, 0, 1)
        else:
            calc = (texture > 0.6).astype(np.float32)
        val = base + calc * rng.uniform(250, 900)
    if nod.cavitating:  # an eccentric air cavity, its wall about a fifth of the radius thick or more (lobes thin it)
        rc = R * rng.uniform(0.3, 0.5)
        v = rng.normal(size=3)
        off = v / np.linalg.norm(v) * (R - rc) * rng.uniform(0.2, 0.6)
        cd = np.sqrt((dx - off[0]) ** 2 + (dy - off[1]) ** 2 + (dz - off[2]) ** 2)
        cavity = np.clip(0.5 + (rc * (1 + 0.15 * texture) - cd) / edge, 0, 1)
        val = val * (1 - cavity) + rng.uniform(-1000, -950) * cavity
    region = hu[box]
    if nod.nodule_type in ("ground-glass", "part-solid"):
        # ground glass raises what is under it toward its own level and hides nothing denser: a vessel or wall
        # in it keeps its attenuation and margins; a part-solid nodule's solid core (0-50 HU) hides what is under
        # it as a solid nodule does. Its edge fades over GROUND_GLASS_EDGE_MM; where it is half drawn (the label)
        # is where a solid nodule's would be.
        haze = np.clip(0.5 + (rad - dist) / GROUND_GLASS_EDGE_MM, 0.0, 1.0).astype(np.float32)
        if spikes:
            haze = np.maximum(haze, spike * 0.8)
        hu[box] = np.maximum(region, region * (1 - haze) + val * haze)
    else:
        hu[box] = region * (1 - occ) + val * occ
    lab = labels[box]
    lab[(occ >= 0.5) & (lab == 0)] = label


def _redraw_nodules(without_nodules: np.ndarray, grid: _Grid, nodules: list[PhantomNodule], rescan: Rescan,
                    seed: int) -> tuple[np.ndarray, np.ndarray, list[PhantomNodule]]:
    """The chest of a :class:`Rescan`: the nodules not hidden, grown as asked, each drawn with a random stream of
    its own (seed, index), so its lobes and spikes are the same on every scan of the patient."""
    hu = without_nodules
    labels = np.zeros(grid.shape, np.uint16)
    grow = dict(rescan.grow_mm)
    unknown = (set(rescan.hidden) | set(grow)) - set(range(len(nodules)))
    if unknown:
        raise ValueError(f"phantom {seed} has {len(nodules)} nodules: no nodule {sorted(unknown)}")
    drawn: list[PhantomNodule] = []
    for i, nod in enumerate(nodules):
        if i in rescan.hidden:
            continue
        nod = replace(nod, diameter_mm=nod.diameter_mm + grow.get(i, 0.0), index=i)
        _render_nodule(hu, labels, grid, np.random.default_rng([seed, i]), nod, len(drawn) + 1)
        drawn.append(nod)
    return hu, labels, drawn


# ----------------------------------------------------------------------------------------------------------
# The generator


def generate_phantom(seed: int, *, small: bool = False, direction: tuple[float, ...] | None = None,
                     max_nodules: int | None = None, mix: str = "screening", rescan: Rescan | None = None
                     ) -> Phantom:
    """One synthetic chest CT with its nodules, drawn from ``seed``.

    ``small`` gives a reduced body on coarse voxels (about 1.5–2 mm) that generates in about a second,
    for tests. ``direction`` forces one of :data:`DIRECTIONS` (otherwise drawn). ``max_nodules`` raises
    or lowers the number of nodules drawn (1 to 6 by default; training sets use more per scan). ``mix``
    names the :data:`PHANTOM_MIXES` entry the nodules are drawn from. ``rescan`` re-makes the phantom of
    ``seed`` as another scan of the same patient with known changes (:class:`Rescan`); ``nodules`` then holds
    the nodules drawn on that scan, each with its index in the phantom drawn from the seed as ``index``.
    """
    nodule_mix = phantom_mix(mix)
    rng = np.random.default_rng(seed)
    scale = 0.72 if small else 1.0
    step = 1.5 if small else 1.0
    body = _draw_body(rng, scale)

    margin = 12.0
    lo = np.array([-body.ax - margin, -body.ay - margin, body.lung_bottom - 35 * scale])
    hi = np.array([body.ax + margin, body.ay + 35 * scale, body.lung_top + 25 * scale])
    grid = _Grid(lo, hi, step)
    x, y, z = grid.axes()
    Z, Y, X = z[:, None, None], y[None, :, None], x[None, None, :]

    # body outline: ellipse, flatter posteriorly, a little narrower toward the neck
    top_taper = 1.0 - 0.12 * np.clip((Z - body.lung_top * 0.7) / (body.lung_top * 0.4), 0, 1)
    ey = np.where(Y > 0, body.ay * 0.92, body.ay)
    rbody = np.sqrt((X / (body.ax * top_taper)) ** 2 + (Y / (ey * top_taper)) ** 2)
    mean_axis = 0.5 * (body.ax + body.ay)
    depth = (1.0 - rbody) * mean_axis  # approx. mm below the skin
    hu = np.full(grid.shape, -1000.0, np.float32)
    soft_tex = _smooth_noise(rng, grid.shape, 3.0 / step)
    fat_hu = -100 + 10 * soft_tex
    muscle_hu = 45 + 8 * soft_tex
    body_occ = np.clip(0.5 + depth / 1.0, 0, 1)
    tissue = np.where(depth < body.fat, fat_hu, muscle_hu)
    hu = hu * (1 - body_occ) + tissue * body_occ
    # couch below the back
    couch_y = body.ay * 0.92 + rng.uniform(3, 15)
    couch = (Y > couch_y) & (Y < couch_y + 6) & (np.abs(X) < body.ax * 1.1)
    hu = np.where(couch, np.float32(rng.uniform(-300, 100)), hu)

    # lungs
    lung_f = [_lung_fields(body, X, Y, Z, s) for s in (1, -1)]
    lung_occ = np.clip(0.5 - np.minimum(lung_f[0], lung_f[1]) * 12.0, 0, 1).astype(np.float32)
    lung_tex = _smooth_noise(rng, grid.shape, 2.5 / step)
    fine_tex = _smooth_noise(rng, grid.shape, 1.0 / step, coarse=2)
    gravity = np.clip((Y - body.lung_cy) / (body.lung_ay + 1e-6), -1, 1)
    lung_base = LUNG_HU + rng.uniform(-40, 40)
    lung_hu = lung_base + rng.uniform(10, 22) * lung_tex + 12 * fine_tex + rng.uniform(15, 45) * gravity
    hu = hu * (1 - lung_occ) + lung_hu * lung_occ

    # mediastinal fat near the midline, heart, aorta
    med = (np.abs(X) < body.lung_cx * 0.5) & (Y < body.ay * 0.5) & (Z > body.lung_bottom) & (Z < body.lung_top * 0.9)
    med = med & (lung_occ < 0.5)
    hu = np.where(med & (soft_tex > 0.8), np.float32(-90), hu)
    heart = (((X - body.heart_c[0]) / body.heart_r[0]) ** 2 + ((Y - body.heart_c[1]) / body.heart_r[1]) ** 2
             + ((Z - body.heart_c[2]) / body.heart_r[2]) ** 2)
    blood = rng.uniform(30, 60) if rng.random() < 0.6 else rng.uniform(150, 300)  # with/without contrast
    hu = np.where(heart < 1, np.float32(blood), hu)

    tubes = np.zeros(grid.shape, np.float32)
    aorta_r = rng.uniform(11, 15) * scale
    arch_z = body.lung_top * 0.72
    aorta = [((0, -body.ay * 0.25, body.heart_c[2]), (body.ax * 0.03, -body.ay * 0.2, arch_z), aorta_r, aorta_r),
             ((body.ax * 0.03, -body.ay * 0.2, arch_z), (body.ax * 0.12, body.ay * 0.15, arch_z), aorta_r, aorta_r),
             ((body.ax * 0.12, body.ay * 0.15, arch_z), (body.ax * 0.08, body.ay * 0.35, body.lung_bottom - 30),
              aorta_r * 0.9, aorta_r * 0.85)]
    _render_tubes(tubes, grid, aorta)
    hu = hu * (1 - tubes) + blood * tubes

    # spine and sternum
    spine_y = body.ay * 0.62
    spine_r = rng.uniform(15, 20) * scale
    sd = np.sqrt(X ** 2 + ((Y - spine_y) / 1.1) ** 2)
    bone_tex = _smooth_noise(rng, grid.shape, 2.0 / step, coarse=2)
    vertebra = np.clip(0.5 + (spine_r - sd) / 1.0, 0, 1)
    bone_hu = np.where(sd > spine_r - 2.5, 650.0, 220.0 + 50 * bone_tex)
    canal = np.clip(0.5 + (spine_r * 0.45 - np.sqrt(X ** 2 + (Y - spine_y - spine_r * 1.25) ** 2)) / 1.0, 0, 1)
    hu = hu * (1 - vertebra) + bone_hu * vertebra
    hu = hu * (1 - canal) + 35.0 * canal
    sternum = (np.abs(X) < 14 * scale) & (Y > -body.ay + body.fat) & (Y < -body.ay + body.fat + 9 * scale)
    sternum = sternum & (Z > body.lung_top * 0.25) & (Z < body.lung_top * 0.95)
    hu = np.where(sternum, np.float32(300) + 60 * bone_tex, hu)
    del sd, bone_hu, canal, vertebra, sternum

    # ribs: curved tubes in the chest wall, sloping down anteriorly, cortex brighter than marrow
    ribs = np.zeros(grid.shape, np.float32)
    rib_segs = []
    n_ribs = 11
    for k in range(n_ribs):
        zr = body.lung_top * (0.95 - 0.9 * k / n_ribs)
        for side in (1, -1):
            pts = []
            for t in np.linspace(0.08, 0.85, 9):
                ang = math.pi / 2 + side * math.pi * t  # posterior (+y) around to anterior (-y)
                rr = 1.0 - (body.fat + body.muscle * 0.5) / mean_axis
                pts.append((body.ax * rr * math.cos(ang) * 0.98, body.ay * rr * math.sin(ang), zr - 35 * scale * t))
            rr_ = rng.uniform(3.5, 5.0) * scale
            rib_segs += [(pts[i], pts[i + 1], rr_, rr_) for i in range(len(pts) - 1)]
    _render_tubes(ribs, grid, rib_segs)
    hu = hu * (1 - ribs) + (480.0 + 80 * bone_tex) * ribs
    del ribs

    # trachea and main bronchi (air lumen with a soft-tissue wall)
    carina = np.array([0.0, -body.ay * 0.05, body.lung_top * 0.62])
    tr_r = rng.uniform(7, 10) * scale
    airway_segs = [((0.0, -body.ay * 0.1, hi[2] + 5), tuple(carina), tr_r, tr_r)]
    hila = []
    for side in (1, -1):
        hilum = np.array([side * (body.lung_cx - 0.45 * body.lung_ax), body.lung_cy - 5, body.lung_top * 0.55])
        hila.append(hilum)
        airway_segs.append((tuple(carina), tuple(hilum), tr_r * 0.7, tr_r * 0.55))

    # vessel and airway trees inside each lung
    def make_inside(side: int):
        def inside(p: np.ndarray) -> np.ndarray:
            return _lung_fields(body, p[:, 0], p[:, 1], p[:, 2], side) < -0.05
        return inside

    vessel_segs = []
    bronchi_segs = []
    gens = 7 if small else 10
    for side, hilum in zip((1, -1), hila):
        inside = make_inside(side)
        vessel_segs += _vessel_tree(rng, inside, hilum, rng.uniform(3.0, 4.2) * scale, gens, (lo, hi),
                                    n_roots=int(rng.integers(4, 7)), max_segments=600)
        bronchi_segs += _vessel_tree(rng, inside, hilum, tr_r * 0.5, gens - 5, (lo, hi), n_roots=3)
    vessels = np.zeros(grid.shape, np.float32)
    _render_tubes(vessels, grid, vessel_segs)
    hu = hu * (1 - vessels) + (blood + 5 * soft_tex) * vessels
    wall = np.zeros(grid.shape, np.float32)
    lumen = np.zeros(grid.shape, np.float32)
    _render_tubes(wall, grid, [(a, b, r0 * 1.25 + 0.5, r1 * 1.25 + 0.5) for a, b, r0, r1 in airway_segs + bronchi_segs])
    _render_tubes(lumen, grid, airway_segs + bronchi_segs)
    hu = hu * (1 - wall) + 40.0 * wall
    hu = hu * (1 - lumen) - 990.0 * lumen
    truth_lung = (lung_occ >= 0.5) | ((vessels > 0.5) & (lung_occ > 0))
    del wall, tubes

    # nodules
    without_nodules = hu.copy() if rescan is not None else None
    labels = np.zeros(grid.shape, np.uint16)
    nodules: list[PhantomNodule] = []
    n_nod = int(rng.integers(1, (max_nodules or (3 if small else 6)) + 1))
    lung_pts = np.argwhere(lung_occ[::2, ::2, ::2] > 0.99) * 2
    vessel_pts = [np.asarray(s[1]) for s in vessel_segs if 0.8 < s[3] < 4]
    # distance (mm) to the lung boundary, for pleural placement and keeping free nodules free
    edt = ndimage.distance_transform_edt(lung_occ[::2, ::2, ::2] > 0.5, sampling=2 * step).astype(np.float32)
    edt = np.repeat(np.repeat(np.repeat(edt, 2, 0), 2, 1), 2, 2)[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    tries = 0
    while len(nodules) < n_nod and tries < 300 and len(lung_pts):
        tries += 1
        diameter = _draw_diameter(rng, small, nodule_mix)
        R = diameter / 2
        kind = str(rng.choice(NODULE_TYPES, p=nodule_mix.type_weights))
        margin_ = str(rng.choice(MARGINS, p=[0.45, 0.3, 0.25]))
        if kind == "calcified":
            margin_ = "smooth"
        location = str(rng.choice(LOCATIONS, p=nodule_mix.location_weights))
        if location == "vascular" and vessel_pts:
            vp = vessel_pts[rng.integers(0, len(vessel_pts))]
            v = rng.normal(size=3)
            c = vp + v / np.linalg.norm(v) * (R + rng.uniform(0.5, 2.0))
        else:
            idx = lung_pts[rng.integers(0, len(lung_pts))]
            c = grid.lo + idx[::-1] * step
        ci = grid.index_of(c)
        if np.any(ci < 0) or np.any(ci >= np.array(grid.shape)):
            continue
        depth_mm = edt[tuple(ci)]
        if location == "pleural":
            # move the centre toward the wall until the nodule touches it
            if depth_mm < R * 0.5 or depth_mm > R + 25:
                continue
            g = np.array(np.gradient(edt[tuple(slice(max(i - 2, 0), i + 3) for i in ci)]))
            gi = g[:, min(ci[0], 2), min(ci[1], 2), min(ci[2], 2)][::-1]
            if np.linalg.norm(gi) < 1e-3:
                continue
            c = c - gi / np.linalg.norm(gi) * (depth_mm - R * rng.uniform(0.7, 1.0))
            ci = grid.index_of(c)
            if np.any(ci < 0) or np.any(ci >= np.array(grid.shape)) or edt[tuple(ci)] <= 0:
                continue
        elif depth_mm < R + 2:
            continue
        if any(np.linalg.norm(np.asarray(n.center_lps) - c) < (n.diameter_mm / 2 + R + 6) for n in nodules):
            continue
        nod = PhantomNodule(tuple(float(v) for v in c), float(diameter),
                            _malignancy_rating(rng, diameter, margin_, kind), kind, margin_, location,
                            lung_share=_lung_share(hu, grid, c, R))
        _render_nodule(hu, labels, grid, rng, nod, len(nodules) + 1)
        nodules.append(nod)
    if nodule_mix.masses[1] and rescan is None:
        nodules += _draw_masses(np.random.default_rng([seed, 7919]), hu, labels, grid, edt, lung_pts,
                                nodule_mix.masses, len(nodules) + 1, _phantom_mass_zone(grid, lung_pts, hila))
    if rescan is not None:
        assert without_nodules is not None
        hu, labels, nodules = _redraw_nodules(without_nodules, grid, nodules, rescan, seed)
    # the nodule's diameter is its equivalent-sphere diameter as rendered (what readers' volumes give)
    counts = np.bincount(labels.ravel(), minlength=len(nodules) + 1)
    for i, nod in enumerate(nodules):
        vol = counts[i + 1] * step ** 3
        if vol > 0:
            nod.diameter_mm = float((6 * vol / math.pi) ** (1 / 3))
    if nodule_mix.masses[1]:  # a mass's centre is the centre of what was drawn, not of the sphere it grew from
        masses = [i for i, nod in enumerate(nodules) if nod.location in MASS_LOCATIONS]
        for i, com in zip(masses, ndimage.center_of_mass(labels > 0, labels, [i + 1 for i in masses])):
            nodules[i].center_lps = tuple(float(v) for v in grid.lo + np.asarray(com)[::-1] * step)
    truth_lung |= labels > 0

    return _acquire(rng, grid, hu, labels, truth_lung, nodules, small, direction, seed,
                    nodule_mix.slice_thicknesses_mm, rescan)


def _draw_masses(rng: np.random.Generator, hu: np.ndarray, labels: np.ndarray, grid: _Grid, edt: np.ndarray,
                 lung_pts: np.ndarray, count: tuple[int, int], first_label: int,
                 zone: Callable[[str, float], np.ndarray | None]) -> list[PhantomNodule]:
    """Masses of 30-80 mm drawn into ``hu`` and ``labels``: solid, lobulated or spiculated, some cavitating, each
    centred inside a lung at 0.35-1.0 of its radius from the lung's edge, so that it abuts the chest wall, the
    mediastinum or the hilum and, the deeper it reaches past the edge, invades it (no fat plane: the mass's
    tissue replaces whatever lay there).

    ``lung_pts``: (N, 3) z, y, x indices of lung voxels to centre masses on; ``edt``: each voxel's distance (mm)
    to the lung's edge; ``zone(location, radius)``: which of ``lung_pts`` lie in that part of the lung (one of
    :data:`MASS_LOCATIONS`; None where the chest gives no such place)."""
    step = grid.step
    out: list[PhantomNodule] = []
    want = int(rng.integers(count[0], count[1] + 1))
    for _ in range(40 * want):
        if len(out) >= want:
            break
        diameter = float(np.exp(rng.uniform(*np.log(MASS_DIAMETER_RANGE_MM))))
        R = diameter / 2
        where = str(rng.choice(MASS_LOCATIONS, p=[0.4, 0.35, 0.25]))
        depth = edt[tuple(lung_pts.T)]
        reach = R * rng.uniform(0.35, 1.0)  # the centre's depth in the lung: under R, part of the mass lies beyond
        ok = np.abs(depth - reach) < max(3.0, 0.15 * R)
        in_zone = zone(where, R)
        if in_zone is None:
            continue
        cand = np.flatnonzero(ok & in_zone)
        if not len(cand):
            continue
        c = grid.lo + lung_pts[cand[rng.integers(len(cand))]][::-1] * step
        outline = MASS_OUTLINE * R
        if any(np.linalg.norm(np.asarray(n.center_lps) - c) < MASS_OUTLINE * n.diameter_mm / 2 + outline + 5
               for n in out):
            continue
        if labels[grid.box(c - outline, c + outline) or (slice(0, 0),) * 3].any():  # clear of the nodules drawn
            continue
        share = _lung_share(hu, grid, c, R)
        if share < MIN_MASS_LUNG_SHARE:  # mostly beyond the lung: no lung mass, and training would not teach it
            continue
        margin_ = str(rng.choice(["lobulated", "spiculated"], p=[0.6, 0.4]))
        nod = PhantomNodule(tuple(float(v) for v in c), diameter, int(rng.choice([4, 5, 5])), "solid", margin_,
                            where, lung_share=share, cavitating=bool(rng.random() < 0.3))
        _render_nodule(hu, labels, grid, rng, nod, first_label + len(out))
        out.append(nod)
    return out


def _phantom_mass_zone(grid: _Grid, lung_pts: np.ndarray, hila: list[np.ndarray]
                       ) -> Callable[[str, float], np.ndarray]:
    """The phantom's parts of the lung for masses: medial to the hila (mediastinal), within reach of a hilum
    (hilar), well lateral to them (chest wall)."""
    world = grid.lo + lung_pts[:, ::-1] * grid.step
    medial_x = min(abs(float(h[0])) for h in hila)  # the hila's distance from the midline
    to_hilum = np.min([np.linalg.norm(world - h, axis=1) for h in hila], axis=0)

    def zone(where: str, radius: float) -> np.ndarray:
        if where == "hilar":
            return to_hilum < radius + 25
        if where == "mediastinal":
            return np.abs(world[:, 0]) < medial_x
        return np.abs(world[:, 0]) > medial_x + 25

    return zone


@dataclass
class InsertedLesion:
    """A lesion :func:`insert_lesions` drew into a real scan: what it is, and where (z, y, x voxels)."""

    nodule: PhantomNodule
    center_vox: np.ndarray


def insert_lesions(rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, origin_xyz: np.ndarray,
                   spacing: float, known_vox: np.ndarray, known_diameters: np.ndarray, *, nodules: int,
                   masses: tuple[int, int], clearance_mm: float = 15.0, mix: str = "screening"
                   ) -> tuple[np.ndarray, list[InsertedLesion]]:
    """A real scan on an isotropic axis-aligned grid (``hu``, ``lung``: (z, y, x); ``origin_xyz`` LPS mm of voxel
    (0, 0, 0); ``spacing`` mm) with ``nodules`` nodules of ``mix`` and ``masses`` (fewest, most) masses drawn
    into its lungs by the phantom's renderer, each at least ``clearance_mm`` clear of the scan's own lesions
    (``known_vox``: their centres, z, y, x voxels; ``known_diameters`` mm; a mass by its outline,
    :data:`MASS_OUTLINE`), nodules at least 6 mm clear of each other.

    What is drawn is blurred by half a voxel (the scan's own resampling blur) and given noise of the scan's own
    level (measured in its lungs), so a lesion is no smoother than the parenchyma around it. Each lesion's
    diameter is its equivalent-sphere diameter as drawn; a mass's centre the centre of what was drawn.
    Returns the new image (float32) and the lesions."""
    nodule_mix = phantom_mix(mix)
    grid = _Grid(np.asarray(origin_xyz, float), np.asarray(origin_xyz, float), spacing)
    grid.shape = tuple(int(n) for n in hu.shape)
    grid.shape_xyz = np.array(grid.shape[::-1])
    base = hu.astype(np.float32)
    work = base.copy()
    labels = np.zeros(hu.shape, np.uint16)
    edt = ndimage.distance_transform_edt(lung, sampling=spacing).astype(np.float32)
    known_vox = np.asarray(known_vox, float).reshape(-1, 3)
    known_r = np.asarray(known_diameters, float).reshape(-1) / 2

    def clear_of_known(pts_vox: np.ndarray, radius: float) -> np.ndarray:
        ok = np.ones(len(pts_vox), bool)
        for c, r in zip(known_vox, known_r):
            ok &= np.linalg.norm((pts_vox - c) * spacing, axis=1) >= r + radius + clearance_mm
        return ok

    lung_pts = np.argwhere(lung)
    if len(lung_pts) > 400_000:  # placement needs candidates, not every voxel
        lung_pts = lung_pts[rng.choice(len(lung_pts), 400_000, replace=False)]
    drawn: list[PhantomNodule] = []
    for _ in range(30 * nodules):
        if len(drawn) >= nodules:
            break
        diameter = _draw_diameter(rng, False, nodule_mix)
        R = diameter / 2
        kind = str(rng.choice(NODULE_TYPES, p=nodule_mix.type_weights))
        margin_ = "smooth" if kind == "calcified" else str(rng.choice(MARGINS, p=[0.45, 0.3, 0.25]))
        pleural = rng.random() < 0.35
        depth = edt[tuple(lung_pts.T)]
        ok = (depth >= R * 0.7) & (depth <= R + 1.0) if pleural else depth >= R + 2
        cand = np.flatnonzero(ok)
        if not len(cand):
            continue
        v = lung_pts[cand[rng.integers(len(cand))]]
        if not clear_of_known(v[None].astype(float), R)[0]:
            continue
        c = grid.lo + v[::-1] * spacing
        if any(np.linalg.norm(np.asarray(n.center_lps) - c) < n.diameter_mm / 2 + R + 6 for n in drawn):
            continue
        nod = PhantomNodule(tuple(float(x) for x in c), float(diameter), _malignancy_rating(rng, diameter, margin_,
                                                                                             kind),
                            kind, margin_, "pleural" if pleural else "parenchyma",
                            lung_share=_lung_share(work, grid, c, R))
        _render_nodule(work, labels, grid, rng, nod, len(drawn) + 1)
        drawn.append(nod)
    if masses[1]:
        x = grid.lo[0] + lung_pts[:, 2] * spacing
        mid = 0.5 * (x.min() + x.max()) if len(x) else 0.0
        half = max(float(np.abs(x - mid).max()) if len(x) else 1.0, 1.0)
        off = np.abs(x - mid) / half

        def zone(where: str, radius: float) -> np.ndarray | None:
            if where == "hilar":
                return None  # no hilum is known on a real scan
            part = off < 0.35 if where == "mediastinal" else off > 0.6
            return part & clear_of_known(lung_pts.astype(float), MASS_OUTLINE * radius)

        drawn += _draw_masses(rng, work, labels, grid, edt, lung_pts, masses, len(drawn) + 1, zone)
    if not drawn:
        return base, []
    delta = ndimage.gaussian_filter(work - base, 0.5)
    inside = ndimage.gaussian_filter((labels > 0).astype(np.float32), 0.5)
    noise_sd = _lung_noise_sd(base, lung)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 0.6)
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    out = base + delta + noise * inside
    counts = np.bincount(labels.ravel(), minlength=len(drawn) + 1)
    centres = ndimage.center_of_mass(labels > 0, labels, list(range(1, len(drawn) + 1)))
    lesions = []
    for i, nod in enumerate(drawn):
        if counts[i + 1] == 0:
            continue
        nod.diameter_mm = float((6 * counts[i + 1] * spacing ** 3 / math.pi) ** (1 / 3))
        v = np.asarray(centres[i]) if nod.location in MASS_LOCATIONS else \
            (np.asarray(nod.center_lps) - grid.lo)[::-1] / spacing
        nod.center_lps = tuple(float(a) for a in grid.lo + v[::-1] * spacing)
        lesions.append(InsertedLesion(nod, v))
    return out.astype(np.float32), lesions


def _lung_noise_sd(hu: np.ndarray, lung: np.ndarray) -> float:
    """The scan's noise in its lungs (HU): the robust spread of what a 1-voxel smoothing removes there."""
    inner = ndimage.binary_erosion(lung, iterations=2)
    if inner.sum() < 1000:
        return 20.0
    resid = (hu - ndimage.gaussian_filter(hu, 1.0))[inner]
    resid = resid[np.abs(resid) < 200]  # vessel edges are no noise
    return float(1.4826 * np.median(np.abs(resid - np.median(resid)))) * 1.5


def _acquire(rng: np.random.Generator, grid: _Grid, hu: np.ndarray, labels: np.ndarray, lung: np.ndarray,
             nodules: list[PhantomNodule], small: bool, direction: tuple[float, ...] | None, seed: int,
             thicknesses: tuple[float, ...], rescan: Rescan | None = None) -> Phantom:
    """Scanner simulation: slice blur, resampling to the scanner grid, noise, FOV padding. A ``rescan`` sets the
    patient's pose, the slice thickness and the noise; every value is still drawn, so the rest stays as drawn."""
    if small:
        inplane = float(rng.uniform(1.4, 2.0))
        thickness = float(rng.choice([1.5, 2.0, 2.5]))
        matrix = None
    else:
        inplane = float(rng.uniform(0.5, 1.0))
        thickness = float(rng.choice(list(thicknesses)))
        matrix = 512
    if rescan is not None and rescan.thickness_mm is not None:
        thickness = float(rescan.thickness_mm)
    if direction is None:
        direction = DIRECTIONS[int(rng.choice(len(DIRECTIONS), p=DIRECTION_WEIGHTS))]
    D = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    src = sitk.GetImageFromArray(hu)
    src.SetSpacing((grid.step,) * 3)
    src.SetOrigin(tuple(grid.lo))
    # slice profile + in-plane blur of the reconstruction kernel (sigma in mm)
    sig_xy = float(rng.uniform(0.35, 0.7)) * inplane
    sig_z = 0.42 * thickness
    src = sitk.SmoothingRecursiveGaussian(src, [sig_xy, sig_xy, sig_z])

    extent = grid.lo + (np.asarray(grid.shape_xyz) - 1) * grid.step
    centre = 0.5 * (grid.lo + extent)
    if matrix is None:
        size = np.ceil((extent - grid.lo) / np.array([inplane, inplane, thickness])).astype(int) + 1
    else:
        nz = int(np.ceil((extent[2] - grid.lo[2]) / thickness)) + 1
        size = np.array([matrix, matrix, nz])
    spacing = np.array([inplane, inplane, thickness])
    # world shift: scanners put the origin anywhere (table position); centre the field on the body
    shift = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), rng.uniform(-400, 100)])
    half = (size - 1) * spacing / 2.0
    origin = centre - D @ half  # grid centre lands on the body centre, whichever way the axes run
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing(tuple(float(s) for s in spacing))
    ref.SetDirection(tuple(float(d) for d in D.ravel()))
    ref.SetOrigin(tuple(float(o) for o in origin))
    # the patient's pose: world = R (patient - centre) + centre + t,
    # so the scanner samples the patient at R^T (world - centre - t) + centre
    pose = sitk.Transform()
    rot, move = np.eye(3), np.zeros(3)
    if rescan is not None:
        rot, move = rescan.rotation(), np.asarray(rescan.shift_mm, float)
        pose = sitk.AffineTransform(3)
        pose.SetCenter(tuple(float(v) for v in centre))
        pose.SetMatrix(tuple(float(v) for v in rot.T.ravel()))
        pose.SetTranslation(tuple(float(v) for v in -rot.T @ move))
    out = sitk.Resample(src, ref, pose, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(out)
    # quantum noise, lightly correlated, stronger in dense/large bodies
    noise_sd = float(rng.uniform(8, 35))
    noise = rng.standard_normal(arr.shape, dtype=np.float32)
    if rescan is not None:
        noise = np.random.default_rng([seed, rescan.noise_seed]).standard_normal(arr.shape, dtype=np.float32)
    noise += np.roll(noise, 1, axis=2)  # neighbouring detector/reconstruction correlation, cheaply
    noise += np.roll(noise, 1, axis=1)
    noise *= noise_sd / 2.0
    arr += noise
    del noise
    lab_img = sitk.GetImageFromArray(labels)
    lab_img.CopyInformation(src)
    lab_out = sitk.GetArrayFromImage(sitk.Resample(lab_img, ref, pose, sitk.sitkNearestNeighbor, 0))
    lung_img = sitk.GetImageFromArray(lung.astype(np.uint8))
    lung_img.CopyInformation(src)
    lung_out = sitk.GetArrayFromImage(sitk.Resample(lung_img, ref, pose, sitk.sitkNearestNeighbor, 0)) > 0
    pad_value = None
    if matrix is not None and rng.random() < 0.4:
        # circular reconstruction field: outside it the scanner writes a padding value
        pad_value = float(rng.choice([-2048.0, -3024.0]))
        yy, xx = np.mgrid[: arr.shape[1], : arr.shape[2]]
        r = (arr.shape[1] - 1) / 2.0
        outside = (yy - r) ** 2 + (xx - r) ** 2 > (r * rng.uniform(0.95, 1.0)) ** 2
        arr[:, outside] = pad_value
    arr = np.clip(np.round(arr), -3024, 3071).astype(np.float32)
    # apply the world shift to origin and nodule centres alike
    origin = origin + shift
    for nod in nodules:
        placed = rot @ (np.asarray(nod.center_lps) - centre) + centre + move
        nod.center_lps = tuple(float(v) for v in placed + shift)
    ct = CTVolume(array=arr, spacing=tuple(float(s) for s in spacing), origin=tuple(float(o) for o in origin),
                  direction=tuple(float(d) for d in D.ravel()), seriesuid=f"phantom-s{seed}", source="phantom")
    acq = {"inplane_mm": inplane, "thickness_mm": thickness, "noise_sd": noise_sd, "direction": list(direction),
           "pad_value": pad_value, "blur_sigma_mm": [sig_xy, sig_xy, sig_z]}
    if rescan is not None:
        acq["rescan"] = {"rotation_deg": list(rescan.rotation_deg), "shift_mm": list(rescan.shift_mm),
                         "hidden": list(rescan.hidden), "grow_mm": [list(g) for g in rescan.grow_mm]}
    return Phantom(ct=ct, nodules=nodules, labels=lab_out.astype(np.uint16), lung_mask=lung_out, acquisition=acq)


# ----------------------------------------------------------------------------------------------------------
# Writing sets

def phantom_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th phantom of a set drawn from ``seed`` (sets with other seeds don't overlap)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _write_one(outdir: Path, seed: int, index: int, masks: bool, fmt: str, small: bool, mix: str = "screening"
               ) -> list[ReferenceNodule]:
    """Generate and write phantom ``index`` of a set; return its nodules as annotations."""
    uid = f"phantom-s{seed}-{index:04d}"
    ph = generate_phantom(phantom_seed(seed, index), small=small, mix=mix)
    ph.ct.seriesuid = uid
    write_volume(ph.ct, outdir / f"{uid}.{fmt}", integer=True)
    if masks:
        write_volume(replace(ph.ct, array=ph.labels), outdir / f"{uid}.labels.{fmt}", integer=False)
    return [ReferenceNodule(uid, tuple(nod.center_lps), nod.diameter_mm, malignancy_rating=nod.malignancy,
                            nodule_type=nod.nodule_type, lung_share=nod.lung_share, margin=nod.margin,
                            location=nod.location)
            for nod in ph.nodules]


def write_phantom_set(outdir: str | Path, n: int, seed: int, *, masks: bool = False, fmt: str = "nrrd",
                      small: bool = False, workers: int = 1, progress=None, mix: str = "screening") -> list[Path]:
    """Write ``n`` phantoms and one ``annotations.csv`` (LUNA16 columns, then malignancy, type, margin, location
    and lung share: :data:`resmtnet.io.luna16_csv.PHANTOM_ANNOTATION_COLUMNS`) to ``outdir``.

    Files appear whole: each volume is written under a temporary name and renamed; the CSV last.
    ``workers`` > 1 generates phantoms in that many processes (same files, same order). ``mix``: the
    :data:`PHANTOM_MIXES` entry drawn.
    """
    if fmt not in ("nrrd", "mhd", "nii.gz", "mha"):
        raise ValueError(f"unknown format {fmt!r}")
    if n < 1:
        raise ValueError("n must be at least 1")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    nodules_by_index: dict[int, list[ReferenceNodule]] = {}
    if workers <= 1:
        for i in range(n):
            nodules_by_index[i] = _write_one(out, seed, i, masks, fmt, small, mix)
            if progress:
                progress((i + 1) / n, f"phantom {i + 1}/{n}")
    else:
        from concurrent.futures import as_completed

        from ..util.processes import process_pool

        with process_pool(workers) as pool:
            futs = {pool.submit(_write_one, out, seed, i, masks, fmt, small, mix): i for i in range(n)}
            for done, fut in enumerate(as_completed(futs), start=1):
                nodules_by_index[futs[fut]] = fut.result()
                if progress:
                    progress(done / n, f"phantom {done}/{n}")
    write_annotations(out / "annotations.csv", [nod for i in range(n) for nod in nodules_by_index[i]],
                      PHANTOM_ANNOTATION_COLUMNS)
    return [out / f"phantom-s{seed}-{i:04d}.{fmt}" for i in range(n)]
