"""The "ResMTNet chest phantom" of Slicer's Sample Data module.

The core's generation (resmtnet.scene.sample_data) runs for real: it writes a CT that reads back, once, and replaces
a broken or foreign file. Its registration (``register_sample``, which the module file's registerSampleData
calls once Slicer has started) runs on a real slicer-core scene (its cache manager, as in Slicer) and with a
stand-in for the one thing that exists only in the Slicer application: the SampleData module, which here
records the registration and, when the button's loader asks it to load the source, does what Slicer's does for
a source whose file is already in the cache folder (loads it with the volumes logic, downloads nothing).
"""

from __future__ import annotations

import ast
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest_slicer import *  # noqa: F403  (the fixture slicer_app)
from resmtnet.io.ctio import read_ct
from resmtnet.scene import sample_data
from resmtnet.scene.sample_data import ensure_sample_phantom

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "ResMTNet" / "ResMTNet.py"


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory) -> Path:
    return ensure_sample_phantom(tmp_path_factory.mktemp("cache") / sample_data.FILE_NAME)


def test_sample_phantom_is_a_chest_ct_with_its_nodules(sample_file):
    ct = read_ct(sample_file)
    truth = sample_data.generate_sample_phantom()  # the same seed gives the same phantom
    assert ct.seriesuid == sample_data.SERIES_UID
    assert ct.array.shape == truth.ct.array.shape and ct.array.ndim == 3
    assert np.allclose(ct.spacing, truth.ct.spacing) and np.allclose(ct.direction, sample_data.DIRECTION)
    assert np.array_equal(ct.array, np.round(truth.ct.array))  # stored as whole HU
    lung = truth.lung_mask
    assert 0.05 < lung.mean() < 0.5
    assert -950 < np.median(ct.array[lung]) < -700  # aerated lung
    assert len(truth.nodules) >= 2
    for i, nodule in enumerate(truth.nodules, start=1):
        assert np.median(ct.array[truth.labels == i]) > -300, nodule  # solid nodules stand out of the lung


def test_sample_phantom_is_written_once_and_then_reused(sample_file):
    stat = sample_file.stat()
    assert ensure_sample_phantom(sample_file) == sample_file
    assert sample_file.stat().st_mtime_ns == stat.st_mtime_ns and sample_file.stat().st_ino == stat.st_ino


def test_a_broken_or_foreign_file_is_replaced_whole(tmp_path, sample_file):
    path = tmp_path / sample_data.FILE_NAME
    path.write_bytes(sample_file.read_bytes()[: sample_file.stat().st_size // 2])  # cut short
    ensure_sample_phantom(path)
    assert path.read_bytes() == sample_file.read_bytes()

    foreign = read_ct(sample_file)
    foreign.seriesuid = "someone-else"
    from resmtnet.io.ctio import write_volume

    write_volume(foreign, path)
    assert read_ct(path).seriesuid == "someone-else"
    ensure_sample_phantom(path)
    assert read_ct(path).seriesuid == sample_data.SERIES_UID
    assert sorted(p.name for p in tmp_path.iterdir()) == [sample_data.FILE_NAME]  # no temporary file left


# ------------------------------------------------------------------------------------------------
# Registering the sample with Slicer's Sample Data module


def test_module_registers_the_sample_when_slicer_has_started():
    tree = ast.parse(MODULE_FILE.read_text())
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ResMTNet")
    init = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    connects = [c for c in ast.walk(init) if isinstance(c, ast.Call) and ast.unparse(c.func) == "slicer.app.connect"]
    assert [[ast.unparse(a) for a in c.args] for c in connects] == [["'startupCompleted()'", "registerSampleData"]]
    register = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSampleData")
    calls = [ast.unparse(c.func) for c in ast.walk(register) if isinstance(c, ast.Call)]
    assert "sampleData.register_sample" in calls  # the core's registration, tested above on a real scene


class _SampleDataStandIn(types.ModuleType):
    """Slicer's SampleData module, reduced to what registerSampleData uses."""

    def __init__(self, scene, volumes_logic):
        super().__init__("SampleData")
        registered = self.registered = []

        class SampleDataLogic:
            @staticmethod
            def registerCustomSampleDataSource(**kwargs):
                registered.append(kwargs)

            def downloadFromSource(self, source):
                # Slicer's: the file in the cache folder is used as it is (downloaded only when missing);
                # a "VolumeFile" with a node name is loaded as a volume of that name.
                cache = scene.GetCacheManager().GetRemoteCacheDirectory()
                nodes = []
                for file_name, node_name in zip(source.fileNames, source.nodeNames):
                    path = os.path.join(cache, file_name)
                    assert os.path.isfile(path), f"{path} would be downloaded from {source.uris}"
                    nodes.append(volumes_logic.AddArchetypeScalarVolume(path, node_name, 0, None))
                return nodes

        self.SampleDataLogic = SampleDataLogic


def test_registered_source_generates_the_phantom_into_the_cache_and_loads_it(monkeypatch, slicer_app):
    stand_in = _SampleDataStandIn(slicer_app.scene, slicer_app.logic("Volumes"))
    monkeypatch.setitem(sys.modules, "SampleData", stand_in)
    cache_manager = slicer_app.scene.GetCacheManager()
    sample_data.register_sample(stand_in, cache_folder=cache_manager.GetRemoteCacheDirectory,
                                icons_folder=REPO / "ResMTNet" / "Resources" / "Icons")

    [kwargs] = stand_in.registered
    cache = Path(slicer_app.scene.GetCacheManager().GetRemoteCacheDirectory())
    path = cache / sample_data.FILE_NAME
    assert kwargs["category"] == "ResMTNet" and kwargs["sampleName"] == "ResMTNet chest phantom"
    assert kwargs["fileNames"] == sample_data.FILE_NAME and kwargs["nodeNames"] == sample_data.NODE_NAME
    assert kwargs["loadFileType"] == "VolumeFile" and kwargs["uris"] == path.as_uri()
    thumbnail = Path(kwargs["thumbnailFileName"])
    assert thumbnail == REPO / "ResMTNet" / "Resources" / "Icons" / "ResMTNetChestPhantom.png"
    assert thumbnail.read_bytes().startswith(b"\x89PNG")
    assert not path.exists()

    # The button: Sample Data calls the source's loader with the source (SampleDataSource's fields as lists)
    source = types.SimpleNamespace(uris=[kwargs["uris"]], fileNames=[kwargs["fileNames"]],
                                   nodeNames=[kwargs["nodeNames"]])
    [node] = kwargs["customDownloader"](source)
    assert path.is_file()
    assert node.GetName() == sample_data.NODE_NAME and node.GetScene() is slicer_app.scene
    assert node.GetImageData().GetDimensions() == read_ct(path).shape_xyz
    first = path.stat().st_mtime_ns
    [again] = kwargs["customDownloader"](source)  # a second click reuses the file (a second node, as in Slicer)
    assert path.stat().st_mtime_ns == first and again.GetName().startswith(sample_data.NODE_NAME)
