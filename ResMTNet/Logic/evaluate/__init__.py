"""Scoring detections: LUNA16 FROC, real-CT and phantom evaluation, phantom realism."""
