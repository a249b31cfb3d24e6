"""Case sources (LUNA16-shaped folder of small phantoms, phantom set, LIDC-IDRI), folds, the cache."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from resmtnet.data import datasets
from resmtnet.data.datasets import Luna16Source, PhantomFolderSource
from resmtnet.data.phantom import generate_phantom
from resmtnet.util.errors import InputError

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
LIDC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LUNA_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.{}"


def make_luna16_folder(root: Path, seeds=(11, 12, 13)) -> dict:
    """Small phantoms as LUNA16 has its scans: subsetN/<seriesuid>.mhd + .raw, annotations.csv and
    candidates.csv (class 1 at the nodules, class 0 elsewhere). Returns the phantoms by seriesuid."""
    ann_rows, cand_rows, phantoms = [], [], {}
    for i, seed in enumerate(seeds):
        ph = generate_phantom(seed, small=True, direction=IDENTITY)
        uid = LUNA_UID.format(100 + i)
        sub = root / f"subset{i % 2}"
        sub.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.Cast(ph.ct.to_sitk(), sitk.sitkInt16), str(sub / f"{uid}.mhd"), False)
        for n in ph.nodules:
            ann_rows.append([uid, *n.center_lps, n.diameter_mm])
            cand_rows.append([uid, *np.add(n.center_lps, 1.0), 1])
        cand_rows.append([uid, *ph.ct.index_to_world(np.array([5.0, 5.0, 5.0])), 0])
        cand_rows.append([uid, *ph.ct.index_to_world(np.array([6.0, 7.0, 8.0])), 0])
        phantoms[uid] = ph
    # LUNA16's annotations list every scan, also those not downloaded
    ann_rows.append([LUNA_UID.format(999), 1.0, 2.0, 3.0, 5.0])
    coords = ["seriesuid", "coordX", "coordY", "coordZ"]
    for name, header, rows in (("annotations.csv", coords + ["diameter_mm"], ann_rows),
                               ("candidates.csv", coords + ["class"], cand_rows)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)
    return phantoms


@pytest.fixture(scope="module")
def luna_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("luna16")
    return root, make_luna16_folder(root)


def test_luna16_folder_loads_with_correct_positions(luna_folder):
    root, phantoms = luna_folder
    src = Luna16Source(root, root / "annotations.csv", root / "candidates.csv")
    assert isinstance(src, datasets.CaseSource)
    assert src.case_ids() == sorted(phantoms)
    for uid, ph in phantoms.items():
        ct, truths = src.load(uid)
        assert ct.seriesuid == uid and ct.array.shape == ph.ct.array.shape
        np.testing.assert_allclose(ct.array, ph.ct.array, atol=1.0)  # int16 on disk
        np.testing.assert_allclose(ct.origin, ph.ct.origin, atol=1e-4)
        assert len(truths) == len(ph.nodules)
        for t, n in zip(truths, ph.nodules, strict=True):
            assert t.malignancy_rating is None and t.nodule_type is None  # LUNA16 has no malignancy
            # the annotated world point, through the CT read back from .mhd, lands in that nodule's label
            i, j, k = np.round(ct.world_to_index(np.array(t.center_lps))).astype(int)
            assert ph.labels[k, j, i] == ph.nodules.index(n) + 1
        neg = src.negatives(uid)
        assert len(neg) == 2  # class 0 only
        assert all(min(np.linalg.norm(np.subtract(p, n.center_lps)) for n in ph.nodules) > 5 for p in neg)
    # the .raw data file is part of what identifies a case
    assert any(p.suffix == ".raw" for p in src.source_files(LUNA_UID.format(100)))


def test_luna16_bad_input(tmp_path, luna_folder):
    root, _ = luna_folder
    with pytest.raises(InputError, match="no volume"):
        Luna16Source(tmp_path, root / "annotations.csv")
    bad = tmp_path / "ann.csv"
    bad.write_text("seriesuid,coordX,coordY\nx,1,2\n")
    with pytest.raises(InputError, match="lacks column"):
        Luna16Source(root, bad)
    with pytest.raises(InputError, match="no case"):
        Luna16Source(root, root / "annotations.csv").load("nope")


@pytest.mark.slow
def test_phantom_folder_source(tmp_path):
    from resmtnet.data.phantom import phantom_seed, write_phantom_set

    write_phantom_set(tmp_path, 2, seed=5, small=True)
    src = PhantomFolderSource(tmp_path)
    assert src.case_ids() == ["phantom-s5-0000", "phantom-s5-0001"]
    ct, truths = src.load("phantom-s5-0001")
    ph = generate_phantom(phantom_seed(5, 1), small=True)
    assert [t.malignancy_rating for t in truths] == [n.malignancy for n in ph.nodules]
    assert [t.nodule_type for t in truths] == [n.nodule_type for n in ph.nodules]
    assert [t.lung_share for t in truths] == pytest.approx([n.lung_share for n in ph.nodules], abs=1e-3)
    for t, n in zip(truths, ph.nodules, strict=True):
        assert np.linalg.norm(np.subtract(t.center_lps, n.center_lps)) < 0.01
        i, j, k = np.round(ct.world_to_index(np.array(t.center_lps))).astype(int)
        assert ph.labels[k, j, i] == ph.nodules.index(n) + 1
    assert src.negatives("phantom-s5-0000") == []
    # training cases from the folder carry each nodule's lung_share (what train --min-lung-share reads)
    cache = datasets.TrainCaseCache(src, tmp_path / "tc", 3.0)
    (case,) = cache.load(["phantom-s5-0001"])
    np.testing.assert_allclose(case.lung_share, [t.lung_share for t in truths], atol=1e-6)
    # the annotations file is part of a case's cache key: other shares are another cache file; a CSV
    # without the column reads as every nodule in the lung
    rows = (tmp_path / "annotations.csv").read_text().splitlines()
    col = rows[0].split(",").index("lung_share")
    wall = [",".join(f if k != col else "0.2" for k, f in enumerate(r.split(","))) if r.startswith("phantom-s5-0001")
            else r for r in rows]
    (tmp_path / "wall.csv").write_text("\n".join(wall) + "\n")
    in_wall = PhantomFolderSource(tmp_path, tmp_path / "wall.csv")
    assert all(t.lung_share == 0.2 for t in in_wall.truths("phantom-s5-0001"))
    cache_wall = datasets.TrainCaseCache(in_wall, tmp_path / "tc", 3.0)
    plain = [",".join(r.split(",")[:col]) for r in rows]
    (tmp_path / "plain.csv").write_text("\n".join(plain) + "\n")
    no_column = PhantomFolderSource(tmp_path, tmp_path / "plain.csv")
    assert all(t.lung_share == 1.0 for t in no_column.truths("phantom-s5-0001"))
    cache_plain = datasets.TrainCaseCache(no_column, tmp_path / "tc", 3.0)
    paths = {c.path("phantom-s5-0001") for c in (cache, cache_wall, cache_plain)}
    assert len(paths) == 3 and all(p.name.startswith("phantom-s5-0001-") for p in paths)


def _patient(cid: str) -> str:
    return cid.split("/")[0]


def test_ten_fold_split_keeps_patients_together():
    # 23 patients with 1 to 3 scans each
    ids = [f"P{p:02d}/scan{s}" for p in range(23) for s in range(1 + p % 3)]
    folds = datasets.ten_fold_split(ids, patient_of=_patient, seed=0)
    assert len(folds) == 10
    assert sorted(c for f in folds for c in f) == sorted(ids)
    owner = {}
    for k, f in enumerate(folds):
        for c in f:
            assert owner.setdefault(_patient(c), k) == k  # no patient in two folds
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 3
    assert datasets.ten_fold_split(ids, patient_of=_patient, seed=0) == folds
    assert datasets.ten_fold_split(ids, patient_of=_patient, seed=1) != folds
    train, val = datasets.fold_split(ids, 3, patient_of=_patient)
    assert val == folds[3] and not set(train) & set(val) and sorted(train + val) == sorted(ids)
    assert not {_patient(c) for c in train} & {_patient(c) for c in val}
    with pytest.raises(InputError, match="fold must be in 0..9"):
        datasets.fold_split(ids, 10)


@pytest.mark.skipif(not (LIDC_ROOT / "LIDC-IDRI-0001" / "reader-annotations-lidc.xml").is_file(),
                    reason=f"LIDC-IDRI-0001 not found under {LIDC_ROOT}")
def test_lidc_source_on_the_real_case():
    src = datasets.LidcSource(LIDC_ROOT)
    assert src.case_ids() == ["LIDC-IDRI-0001"]
    assert src.patient_of("LIDC-IDRI-0001") == "LIDC-IDRI-0001"
    ct, truths = src.load("LIDC-IDRI-0001")
    assert ct.array.shape == (133, 512, 512)
    assert len(truths) == 1
    t = truths[0]
    assert t.malignancy_rating == 5 and t.nodule_type == "solid" and 20 < t.diameter_mm < 28
    neg = src.negatives("LIDC-IDRI-0001")
    assert all(np.linalg.norm(np.subtract(p, t.center_lps)) > 10 for p in neg)
    files = src.source_files("LIDC-IDRI-0001")
    assert files[0].suffix == ".xml" and sum(p.suffix == ".dcm" for p in files) == 133


def test_train_case_cache_builds_each_case_once(luna_folder, tmp_path, monkeypatch):
    from resmtnet.model.prepare import ModelGrid

    root, phantoms = luna_folder
    built = []
    real = datasets.build_train_case

    def counting_build(source, case_id, spacing, crop=True):
        built.append(case_id)
        return real(source, case_id, spacing, crop)

    monkeypatch.setattr(datasets, "build_train_case", counting_build)
    src = Luna16Source(root, root / "annotations.csv", root / "candidates.csv")
    cache = datasets.TrainCaseCache(src, tmp_path / "tc", 3.0)
    uid = LUNA_UID.format(102)
    (case,) = cache.load([uid])
    assert built == [uid]
    grid = ModelGrid(origin=np.asarray(case.origin, float), spacing=case.spacing, shape=case.image.shape)
    truths = src.truths(uid)
    np.testing.assert_allclose(grid.voxel_to_world(case.centers), [t.center_lps for t in truths], atol=1e-3)
    np.testing.assert_allclose(case.diameters, [t.diameter_mm for t in truths], rtol=1e-5)
    assert list(case.malignancy) == [0] * len(truths)  # LUNA16: unknown
    np.testing.assert_allclose(grid.voxel_to_world(case.negatives), src.negatives(uid), atol=1e-3)
    # cropped to the lungs: smaller than the whole scan on the same grid
    ct, _ = src.load(uid)
    extent = (np.asarray(ct.shape_xyz) - 1) * np.asarray(ct.spacing)
    assert np.prod(case.image.shape) < np.prod(np.floor(extent / 3.0) + 1)
    cache.ensure([uid])
    (again,) = datasets.TrainCaseCache(src, tmp_path / "tc", 3.0).load([uid])
    assert built == [uid]
    np.testing.assert_array_equal(again.image, case.image)
