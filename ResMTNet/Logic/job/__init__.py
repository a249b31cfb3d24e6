"""The Slicer module's detection job: one run of the detector (and the follow-up and DICOM outputs it may
ask for) in a child process, with progress, cancel and the result read back."""
