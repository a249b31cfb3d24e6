"""The "ResMTNet chest phantom" of Slicer's Sample Data module: a small synthetic chest CT made here, never
downloaded.

Slicer's Sample Data module loads a sample from a file in its cache folder and downloads that file only when
it is missing there. :func:`register_sample` (called by the module file) registers the phantom under
:data:`FILE_NAME` with a loader that first calls :func:`ensure_sample_phantom` on that cache path, so the
first click generates the CT (a few seconds) and later clicks reuse it. The phantom is
:func:`resmtnet.data.phantom.generate_phantom` with :data:`SEED`, small (coarse voxels, about 1.9 x 1.9 x 2 mm),
axis-aligned: three solid nodules of 15, 10 and 5.5 mm that the shipped model finds (p 0.91, 0.86, 0.64) with
no false finding.

Nothing heavy is imported here at module level: Slicer imports this when it starts, to register the sample.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SAMPLE_NAME = "ResMTNet chest phantom"  # the button's text, and the name SampleData.downloadSample knows
NODE_NAME = "ResMTNetChestPhantom"  # the loaded volume's node name; the thumbnail is Resources/Icons/NODE_NAME.png
CATEGORY = "ResMTNet"  # the Sample Data section the button appears in
FILE_NAME = f"{NODE_NAME}.nrrd"  # in Slicer's cache folder
SEED = 2  # three solid nodules (15, 10 and 5.5 mm; ratings 4, 4, 3) that the shipped model finds, and nothing else
SERIES_UID = f"phantom-s{SEED}"  # what generate_phantom names the scan; the written file keeps it
DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # axial slices as scanners write them


def generate_sample_phantom():
    """The sample's phantom (CT and its truth nodules), the same on every machine."""
    from ..data.phantom import generate_phantom

    return generate_phantom(SEED, small=True, direction=DIRECTION)


def ensure_sample_phantom(path: str | Path) -> Path:
    """The sample CT at ``path``: the file already there if it is this sample, else a new one written whole.

    A file that does not read as a CT (cut short, not an image) or is another scan (its series UID, which
    the file keeps, is not the sample's) is replaced. Returns ``path``.
    """
    from ..io.ctio import read_ct, write_volume
    from ..util.errors import ResMTNetError

    path = Path(path)
    if path.is_file():
        try:
            if read_ct(path).seriesuid == SERIES_UID:
                return path
        except ResMTNetError:
            pass  # not a usable CT: write it again
    ct = generate_sample_phantom().ct
    assert ct.seriesuid == SERIES_UID, ct.seriesuid
    write_volume(ct, path)  # whole or not at all (temporary name, then rename)
    return path


def register_sample(sample_data_module: Any, cache_folder: Callable[[], str], icons_folder: str | Path) -> None:
    """Add the sample to Slicer's Sample Data module (``sample_data_module``: the ``SampleData`` module).

    ``cache_folder()`` is Slicer's cache folder, asked when the button is pressed (the user may change it);
    ``icons_folder`` holds the thumbnail ``NODE_NAME.png``. The button's loader first writes the phantom into
    the cache folder, so that Sample Data finds the file there and downloads nothing.
    """

    def cache_path() -> str:
        return str(Path(cache_folder()) / FILE_NAME)

    def generate_and_load(source):
        ensure_sample_phantom(cache_path())
        return sample_data_module.SampleDataLogic().downloadFromSource(source)

    sample_data_module.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=Path(cache_path()).as_uri(),
        fileNames=FILE_NAME,
        nodeNames=NODE_NAME,
        thumbnailFileName=str(Path(icons_folder) / f"{NODE_NAME}.png"),
        loadFileType="VolumeFile",
        customDownloader=generate_and_load,
    )
