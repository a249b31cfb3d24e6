"""Res-MTNet core: pulmonary nodule detection, size and malignancy from chest CT.

Qt-free. Imported as ``resmtnet`` both from pip and inside 3D Slicer (the module file loads this
folder under that name, so no bare ``Logic`` package lands on Slicer's shared ``sys.path``).
Heavy dependencies (torch, SimpleITK, vtk/slicer) are imported by the submodules that need them.

Sub-packages in the order of the flow, each importing only from itself and those before it: util, io,
model, detect, data, scene, report, job, evaluate, train, cli (the code map: docs/development.md).
"""

__version__ = "0.1.0"
