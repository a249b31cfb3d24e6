"""Finding nodules in one CT: lung mask, the detection pipeline, measurement, the nodule list, checks."""
