"""Res-MTNet core: pulmonary nodule detection, size and malignancy from chest CT.

Qt-free. Imported as ``resmtnet`` both from pip and inside 3D Slicer (the module file loads this
folder under that name, so no bare ``Logic`` package lands on Slicer's shared ``sys.path``).
Heavy dependencies (torch, SimpleITK, vtk/slicer) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
