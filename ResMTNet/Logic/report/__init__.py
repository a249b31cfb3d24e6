"""What a detection writes for people: output folders, overview pictures, DICOM export, follow-up."""
