"""The MRML scene and Slicer files: scene building, slice views, the viewer, Slicer's detection job."""
