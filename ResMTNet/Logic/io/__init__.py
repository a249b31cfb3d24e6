"""Reading and writing files: CT volumes and DICOM series, CSV tables, file sets, memory estimates."""
