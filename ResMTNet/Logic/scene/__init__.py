"""The MRML scene and Slicer files: scene building, Slicer's files, the offscreen views and the browser viewer."""
