"""The Slicer module run as Slicer runs it, on Slicer's own Python base classes, in a fresh interpreter.

``python Testing/slicer_harness.py SCENARIO --volume A.nrrd [--volume B.nrrd] [--checkpoint PATH]``

Slicer's ScriptedLoadableModule.py, parameterNodeWrapper/, i18n.py and util.py (an unmodified extract in
``../shared/slicer``, see its README) are loaded onto ``slicer-core``'s MRML, with the stand-ins of
:mod:`slicer_qt_stand_ins` for ``qt``, ``ctk`` and ``slicer.app``. Then ``ResMTNet/ResMTNet.py`` is
imported from its folder the way Slicer imports a scripted module, with no part of the core imported
beforehand; the module and its widget are made as Slicer makes them; volumes are loaded from files as a
user would load them; and buttons are pressed. A loop stands in for Qt's event loop: it fires the timers
and times every callback, so the longest time the main thread was held is measured.

Each scenario prints one line ``HARNESS {json}`` with what it measured and exits 0, or fails with a
traceback (exit 1). ``bench`` repeats the cancel and main-thread measurements and prints them as text too:
``python Testing/slicer_harness.py bench --volume CT.nrrd --checkpoint MODEL.pt``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "ResMTNet"
SHARED_SLICER = REPO.parent / "shared" / "slicer"
SHARED_SLICER_PYTHON = SHARED_SLICER / "Base" / "Python" / "slicer"
HARNESS_PREFIX = "HARNESS "
LOOP_SLEEP_S = 0.002


# --------------------------------------------------------------------------------------------------
# Making the Slicer world


class ErrorLog(logging.Handler):
    """Records every error logged (slicer.util.errorDisplay logs its text at ERROR in testing mode), with
    whether a wait cursor was up at that moment."""

    def __init__(self, app):
        super().__init__(logging.ERROR)
        self.app = app
        self.records: list[tuple[str, int]] = []

    def emit(self, record):
        self.records.append((record.getMessage(), len(self.app.overrideCursors)))


class Harness:
    def __init__(self):
        if "resmtnet" in sys.modules:
            raise AssertionError("the core was imported before the module: the test would not be a fresh session")
        sys.path.insert(0, str(Path(__file__).parent))
        import slicer_qt_stand_ins

        self.app = slicer_qt_stand_ins.install()
        import slicer

        # Slicer's own util.py, ScriptedLoadableModule.py, parameterNodeWrapper/ and i18n.py over slicer-core's
        slicer.__path__.insert(0, str(SHARED_SLICER_PYTHON))
        sys.modules.pop("slicer.util", None)
        slicer.util = importlib.import_module("slicer.util")
        assert Path(slicer.util.__file__).parent == SHARED_SLICER_PYTHON
        self.slicer = slicer
        self.core_app = self._scene_like_slicers()
        slicer.app = self.app
        slicer.mrmlScene = self.core_app.scene
        slicer.modules = type(sys)("slicer.modules")
        slicer.modules.markups = type("MarkupsModule", (), {"logic": lambda self: self.core_app.logic("Markups")})()
        slicer.modules.markups.core_app = self.core_app
        self.loopDelays: list[float] = []  # per turn of the event loop: how long past its sleep it took
        self.errors = ErrorLog(self.app)
        logging.getLogger().addHandler(self.errors)

    def _scene_like_slicers(self):
        """A scene with the logics Slicer's application registers (ResMTNet/Logic/scene/slicer_app.py, loaded by
        its path under a name of its own: the core package itself must stay unimported)."""
        spec = importlib.util.spec_from_file_location("harness_slicer_app",
                                                      MODULE_DIR / "Logic" / "scene" / "slicer_app.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module.create_slicer_core_app()

    def load_module(self):
        """Import ResMTNet.py and make the module and its widget as Slicer does."""
        import slicer
        import slicer_qt_stand_ins as qs

        sys.path.insert(0, str(MODULE_DIR))
        self.module_file = importlib.import_module("ResMTNet")
        parent = type("qSlicerScriptedLoadableModule", (), {})()
        parent.path = str(MODULE_DIR / "ResMTNet.py")
        slicer.modules.resmtnet = parent
        self.module = self.module_file.ResMTNet(parent)
        slicer.modules.ResMTNetInstance = self.module
        panel = qs.qSlicerScriptedLoadableModuleWidget()
        panel.setLayout(qs.QVBoxLayout())
        self.widget = self.module_file.ResMTNetWidget(panel)
        self.widget.setup()
        panel.isEntered = True  # the user opens the module
        self.widget.enter()
        core = sys.modules.get("resmtnet")
        assert core is not None and Path(core.__file__).parent == MODULE_DIR / "Logic", core
        return self.widget

    def load_volume(self, path, name):
        """As File > Add Data would (the volumes logic reads the file)."""
        node = self.core_app.logic("Volumes").AddArchetypeScalarVolume(str(path), name, 0, None)
        assert node is not None, path
        return node

    # ---- the event loop

    def run_until(self, condition, timeout_s=120.0, what="the condition"):
        """Run the timers until ``condition()`` holds; the main thread sleeps between events as Qt's would."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout_s} s "
                                     f"(status: {self.widget.ui.statusLabel.text!r})")
            started = time.perf_counter()
            self.app.processEvents()
            time.sleep(LOOP_SLEEP_S)
            # beyond the sleep: the callbacks, and any wait for the interpreter lock another thread holds
            self.loopDelays.append(time.perf_counter() - started - LOOP_SLEEP_S)

    def press(self, button):
        """Click a button, timing the handler (a main-thread callback like the timers')."""
        started = time.perf_counter()
        button.click()
        self.app.callbackTimes.append((time.perf_counter() - started, f"{button.objectName} clicked"))

    @property
    def ui(self):
        return self.widget.ui

    def job(self):
        return self.widget._job

    def running(self):
        return self.widget._job is not None

    def wait_for_status(self, text, timeout_s=120.0):
        self.run_until(lambda: text in self.ui.statusLabel.text or not self.running(), timeout_s,
                       f"status {text!r}")
        assert self.running(), f"the job ended before {text!r}: {self.ui.statusLabel.text!r}"

    def node_ids(self):
        scene = self.slicer.mrmlScene
        return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))

    def parameters(self):
        return self.widget._parameterNode


def process_gone(pid, timeout_s):
    """Seconds until process ``pid`` no longer exists (reaped), or None when it outlived ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return time.monotonic() - started
        time.sleep(0.001)
    return None


# --------------------------------------------------------------------------------------------------
# Scenarios


def use_checkpoint(h, checkpoint, tta=False):
    """Set the panel to the checkpoint (None: the shipped weights), the CPU and TTA on or off."""
    p = h.parameters()
    if checkpoint is None:
        p.modelSource = h.module_file.MODEL_SHIPPED
    else:
        p.modelSource = h.module_file.MODEL_CHECKPOINT
        p.checkpointPath = Path(checkpoint)
        # the untrained model of the tests reports some 50 findings of 5-12 mm on a small phantom: the
        # largest few are plenty for the plumbing, and the nodes of fewer are built faster
        p.minDiameterMm = 9.0
    p.device = "cpu"
    p.testTimeAugmentation = tta


def apply_and_wait(h, timeout_s=180.0):
    """Press Apply, follow the progress bar, wait until the run has ended; returns (largest callback time
    during the detection, what it was, progress values seen, status texts seen)."""
    assert h.ui.applyButton.enabled and h.ui.applyButton.text == "Apply", h.ui.applyButton.toolTip
    h.app.callbackTimes.clear()
    h.loopDelays.clear()
    h.press(h.ui.applyButton)
    assert h.running(), f"Apply did not start a detection: {h.ui.statusLabel.text!r}; errors: {h.errors.records}"
    assert h.ui.applyButton.text == "Cancel" and h.ui.progressBar.visible
    progress, statuses = [], []

    def ended():
        if h.ui.progressBar.value not in progress[-1:]:
            progress.append(h.ui.progressBar.value)
        if h.ui.statusLabel.text not in statuses:
            statuses.append(h.ui.statusLabel.text)
        return not h.running()

    h.run_until(ended, timeout_s, "the end of the detection")
    # the last callback is the one that saw the result and built the nodes: not part of the detection
    during = h.app.callbackTimes[:-1]
    stall, what = max(during) if during else (0.0, "")
    loop_delay = max(h.loopDelays[:-1], default=0.0)  # the last turn built the nodes
    return {"largest_stall_s": round(stall, 4), "stall_in": what, "largest_loop_delay_s": round(loop_delay, 4),
            "scene_build_s": round(h.app.callbackTimes[-1][0], 4),
            "progress": progress, "statuses": statuses}


def check_outputs(h, volume, expected_nodules=None):
    """The volume's outputs in the scene agree with the panel's table and with each other."""
    import resmtnet.scene.slicer_scene as scene_module

    scene = h.slicer.mrmlScene
    outputs = scene_module.find_nodule_outputs(scene, volume)
    assert outputs["segmentation"] is not None and outputs["table"] is not None, f"no outputs for {volume.GetName()}"
    count = outputs["segmentation"].GetSegmentation().GetNumberOfSegments()
    assert len(outputs["markups"]) == count == outputs["table"].GetTable().GetNumberOfRows()
    if expected_nodules is not None:
        assert count == expected_nodules, (count, expected_nodules)
    return {"nodules": count, "segmentation": outputs["segmentation"].GetID(),
            "table": outputs["table"].GetID(), "markups": [n.GetID() for n in outputs["markups"]]}


def scenario_apply(h, args):
    """A fresh session: the widget, a volume, Apply, progress, the nodes."""
    h.load_module()
    assert "resmtnet" in sys.modules and not hasattr(sys.modules["resmtnet"], "pipeline"), \
        "the module imported the detector into Slicer's process"
    volume = h.load_volume(args.volume[0], "Chest A")
    assert h.parameters().inputVolume is volume, "the panel did not pick the volume"
    use_checkpoint(h, args.checkpoint)
    # the patient's Brock inputs, set in the panel's widgets as a user sets them: age and sex given, the rest not
    h.ui.patientAgeSpinBox.value = 63
    h.ui.patientSexComboBox.currentIndex = list(h.module_file.SEX_LABELS).index("F")
    assert h.ui.patientSexComboBox.currentText == "Female", h.ui.patientSexComboBox.currentText
    p = h.parameters()
    assert (p.patientAge, p.patientSex, p.familyHistory, p.emphysema) == (63.0, "F", "unknown", "unknown")
    run = apply_and_wait(h)
    assert not h.errors.records, h.errors.records
    assert "torch" not in sys.modules, "torch was imported into Slicer's process"
    outputs = check_outputs(h, volume)
    assert outputs["nodules"] > 0 and h.ui.resultsTableWidget.rowCount() == outputs["nodules"]
    brock = "Brock inputs: age 63, sex F, family history no (default), emphysema no (default)."
    assert h.ui.statusLabel.text.endswith(f"nodule(s) found. {brock}"), h.ui.statusLabel.text
    table = h.slicer.mrmlScene.GetNodeByID(outputs["table"])
    assert table.GetDescription().endswith(brock), table.GetDescription()  # the child got the inputs
    header = h.ui.resultsTableWidget.horizontalHeaderLabels()
    assert header == ["Nodule", "Diameter (mm)", "Type", "Margin", "Lung-RADS", "Malignancy (%)", "Brock (%)",
                      "Probability (%)"], header
    brock_cells = [h.ui.resultsTableWidget.item(r, 6).text() for r in range(h.ui.resultsTableWidget.rowCount())]
    assert all(c == "n/a" or 0.0 <= float(c) <= 100.0 for c in brock_cells), brock_cells
    assert run["progress"][-1] > 50 and len(run["progress"]) >= 3, run["progress"]
    assert any("lungs" in s for s in run["statuses"]) and any("Res-MTNet" in s for s in run["statuses"]), run
    p = h.parameters()
    assert p.outputSegmentation.GetID() == outputs["segmentation"] and p.outputTable.GetID() == outputs["table"]
    assert h.ui.applyButton.text == "Apply" and not h.ui.progressBar.visible
    assert h.ui.legendLabel.text, "no colour legend in the panel"
    h.ui.resultsTableWidget.setCurrentCell(0, 0)  # jump to the first nodule: no error
    too_old = h.module_file.torchVersionProblem("2.1.2+cu118", "2.2")
    assert "PyTorch 2.1.2+cu118 is installed" in too_old and "2.2 or newer" in too_old, too_old
    assert h.module_file.torchVersionProblem("2.10.0", "2.2") is None  # compared as numbers, not as text
    assert not h.errors.records, h.errors.records
    return {**run, **outputs}


def scenario_followup(h, args):
    """Follow-up mode: a prior volume chosen in the panel (here the same CT loaded again), Apply: the volume's
    outputs as in a plain run, plus a follow-up table and a line joining each pair across the two volumes."""
    h.load_module()
    volume = h.load_volume(args.volume[0], "Chest A")
    prior = h.load_volume(args.volume[0], "Chest A prior")
    p = h.parameters()
    p.inputVolume = volume
    h.ui.priorVolumeSelector.setCurrentNode(prior)  # as the user picks it
    assert p.priorVolume is prior, "the panel's prior selector does not set the parameter"
    use_checkpoint(h, args.checkpoint)
    run = apply_and_wait(h, timeout_s=300.0)
    assert not h.errors.records, h.errors.records
    assert "torch" not in sys.modules, "torch was imported into Slicer's process"
    outputs = check_outputs(h, volume)
    scene = h.slicer.mrmlScene
    tables = [n for n in scene.GetNodesByClass("vtkMRMLTableNode")
              if n.GetAttribute("ResMTNet.FollowupRole") == "table"]
    lines = [n for n in scene.GetNodesByClass("vtkMRMLMarkupsLineNode")
             if n.GetAttribute("ResMTNet.FollowupRole") == "line"]
    assert len(tables) == 1, tables
    table = tables[0].GetTable()
    statuses = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    lengths = [n.GetLineLengthWorld() for n in lines]
    assert any("prior scan" in s for s in run["statuses"]), run["statuses"]
    return {**outputs, "statuses": statuses, "lines": len(lines), "line_lengths_mm": lengths,
            "status": h.ui.statusLabel.text}


def scenario_dicom_refused(h, args):
    """"DICOM SEG + SR to folder" ticked: Apply waits for a folder; on a volume not loaded from DICOM the run
    ends with the one-line refusal, and nothing is written."""
    h.load_module()
    volume = h.load_volume(args.volume[0], "Chest A")
    use_checkpoint(h, args.checkpoint)
    p = h.parameters()
    assert not h.ui.dicomOutputFolderLineEdit.enabled
    h.ui.writeDicomCheckBox.checked = True  # as the user ticks it
    assert p.writeDicom and h.ui.dicomOutputFolderLineEdit.enabled
    waiting = (h.ui.applyButton.enabled, h.ui.applyButton.toolTip)
    folder = Path(args.volume[0]).parent / "dicom-out"
    h.ui.dicomOutputFolderLineEdit.currentPath = str(folder)
    assert p.dicomOutputFolder == folder and h.ui.applyButton.enabled
    h.press(h.ui.applyButton)
    h.run_until(lambda: not h.running(), 120.0, "the end of the run")
    return {"waiting": waiting, "status": h.ui.statusLabel.text, "errors": [str(r) for r in h.errors.records],
            "written": folder.exists(), "volume": volume.GetName(),
            "outputs": h.slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")}


class FolderDicomDatabase:
    """Slicer's DICOM database (``slicer.dicomDatabase``) as far as the module asks it: the file of an
    instance, here of the series files in one folder."""

    def __init__(self, folder):
        import pydicom

        self.files = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: str(f)
                      for f in Path(folder).iterdir() if f.suffix == ".dcm"}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")

    def instanceValue(self, uid, tag):
        """A tag's value ("gggg,eeee") of an instance, as text; empty where unknown (as ctkDICOMDatabase)."""
        import pydicom

        path = self.files.get(uid)
        if not path:
            return ""
        group, element = (int(part, 16) for part in tag.split(","))
        element_data = pydicom.dcmread(path, stop_before_pixels=True).get((group, element))
        return "" if element_data is None else str(element_data.value)

    def add(self, folder):
        self.files.update(FolderDicomDatabase(folder).files)


def as_loaded_from_dicom(h, volume, files):
    """Mark ``volume`` as Slicer's DICOM module marks what it loads: its instance UIDs, in slice order."""
    import pydicom

    headers = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(d.SOPInstanceUID for d in headers))
    return headers


def scenario_followup_dates(h, args):
    """Follow-up mode on two volumes loaded from DICOM: the interval the child gets (for doubling times) is the
    days between their study dates, and the status says it."""
    h.load_module()
    db = FolderDicomDatabase(args.dicom_series)
    db.add(args.prior_series)
    h.slicer.dicomDatabase = db
    volume = h.load_volume(args.volume[0], "Chest now")
    prior = h.load_volume(args.volume[0], "Chest before")
    as_loaded_from_dicom(h, volume, Path(args.dicom_series).glob("*.dcm"))
    as_loaded_from_dicom(h, prior, Path(args.prior_series).glob("*.dcm"))
    p = h.parameters()
    p.inputVolume = volume
    h.ui.priorVolumeSelector.setCurrentNode(prior)
    use_checkpoint(h, args.checkpoint)
    apply_and_wait(h, timeout_s=300.0)
    assert not h.errors.records, h.errors.records
    return {"interval_days": h.widget.logic.intervalDays(prior, volume), "status": h.ui.statusLabel.text}


def scenario_dicom(h, args):
    """A CT loaded as Slicer's DICOM module loads one (the volume, its instance UIDs, the series UID on its
    subject hierarchy item), "DICOM SEG + SR to folder" ticked: Apply writes them beside the scene's outputs."""
    import pydicom

    h.load_module()
    db = FolderDicomDatabase(args.dicom_series)
    h.slicer.dicomDatabase = db
    volume = h.load_volume(args.volume[0], "Chest DICOM")
    headers = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in db.files.values()),
                     key=lambda d: float(d.ImagePositionPatient[2]))
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(d.SOPInstanceUID for d in headers))
    sh = h.slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(h.slicer.mrmlScene)
    item = sh.GetItemByDataNode(volume) or sh.CreateItem(sh.GetSceneItemID(), volume)
    sh.SetItemUID(item, "DICOM", headers[0].SeriesInstanceUID)
    use_checkpoint(h, args.checkpoint)
    p = h.parameters()
    p.minDiameterMm = 0.0  # the tiny chest's findings are small
    h.ui.writeDicomCheckBox.checked = True
    folder = Path(args.dicom_series).parent / "dicom-out"
    h.ui.dicomOutputFolderLineEdit.currentPath = str(folder)
    apply_and_wait(h)
    assert not h.errors.records, h.errors.records
    outputs = check_outputs(h, volume)
    return {**outputs, "status": h.ui.statusLabel.text, "written": sorted(f.name for f in folder.glob("*.dcm")),
            "folder": str(folder)}


def scenario_second_volume(h, args):
    """A run on volume B creates B's outputs and leaves A's as they were."""
    h.load_module()
    from resmtnet.scene.selftest import read_table_rows  # the core the module loaded

    volume_a = h.load_volume(args.volume[0], "Chest A")
    volume_b = h.load_volume(args.volume[1], "Chest B")
    use_checkpoint(h, args.checkpoint)
    h.parameters().inputVolume = volume_a
    apply_and_wait(h)
    before = check_outputs(h, volume_a)
    scene = h.slicer.mrmlScene
    seg_a = scene.GetNodeByID(before["segmentation"])
    table_a = scene.GetNodeByID(before["table"])
    segments_a = [seg_a.GetSegmentation().GetNthSegment(i).GetName() for i in range(before["nodules"])]
    rows_a = read_table_rows(table_a)
    # a segmentation of the user's own, picked as the output: it must not be wiped either
    users = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    users.GetSegmentation().AddEmptySegment("mine", "mine", [0.2, 0.4, 0.6])

    h.parameters().inputVolume = volume_b
    assert h.parameters().outputSegmentation is seg_a  # the panel still names A's outputs
    apply_and_wait(h)
    after_a = check_outputs(h, volume_a)
    outputs_b = check_outputs(h, volume_b)
    assert after_a == before, f"volume A's outputs changed: {before} -> {after_a}"
    assert [seg_a.GetSegmentation().GetNthSegment(i).GetName() for i in range(before["nodules"])] == segments_a
    assert read_table_rows(table_a) == rows_a
    assert outputs_b["segmentation"] != before["segmentation"] and outputs_b["table"] != before["table"]
    assert h.parameters().outputSegmentation.GetID() == outputs_b["segmentation"]

    h.parameters().outputSegmentation = users
    apply_and_wait(h)  # B again, with the user's segmentation picked
    assert users.GetSegmentation().GetNumberOfSegments() == 1 and users.GetSegmentation().GetSegment("mine")
    assert "my segmentation: other results, left as they were" in h.ui.statusLabel.text, h.ui.statusLabel.text
    again_b = check_outputs(h, volume_b)
    assert check_outputs(h, volume_a) == before
    assert not h.errors.records, h.errors.records
    return {"a": before, "b": outputs_b, "b_again": again_b}


def cancel_at(h, status, args, tta):
    """Apply, wait for ``status``, press Cancel; the child must be gone soon and nothing added."""
    use_checkpoint(h, args.checkpoint, tta=tta)
    nodes = h.node_ids()
    h.app.callbackTimes.clear()
    h.press(h.ui.applyButton)
    h.wait_for_status(status)
    job = h.job()
    pid, temp_dir = job.pid, job.tempDir
    assert pid is not None
    pressed = time.monotonic()
    h.press(h.ui.applyButton)  # the same button, now Cancel
    gone = process_gone(pid, 10.0)
    pressed_to_gone = time.monotonic() - pressed
    assert gone is not None, "the child outlived Cancel by 10 s"
    assert not h.running() and h.ui.applyButton.text == "Apply" and h.ui.applyButton.enabled
    assert h.ui.statusLabel.text.startswith("Cancelled"), h.ui.statusLabel.text
    h.run_until(lambda: not job.isRunning(), 10.0, "the end of the job's thread")
    for _ in range(30):  # a while of event loop: nothing arrives from the cancelled run
        h.app.processEvents()
        time.sleep(0.01)
    assert h.node_ids() == nodes, "a cancelled run changed the scene"
    assert not os.path.exists(temp_dir), "temporary files left behind"
    assert not h.errors.records, h.errors.records
    stall, what = max(h.app.callbackTimes)
    return {"cancel_to_gone_s": round(gone, 4), "pressed_to_gone_s": round(pressed_to_gone, 4),
            "largest_stall_s": round(stall, 4), "stall_in": what}


def cancel_after_the_result(h, args):
    """Cancel pressed after the detection has finished but before the panel has seen its result: no results."""
    use_checkpoint(h, args.checkpoint)
    nodes = h.node_ids()
    h.press(h.ui.applyButton)
    job = h.job()
    deadline = time.monotonic() + 120
    while job.isRunning():  # the event loop is busy elsewhere: the timer does not run meanwhile
        assert time.monotonic() < deadline, "the detection did not end"
        time.sleep(0.01)
    assert any(kind == "done" for kind, _ in list(job.messages.queue)), list(job.messages.queue)
    assert h.ui.applyButton.text == "Cancel"
    h.press(h.ui.applyButton)
    for _ in range(30):
        h.app.processEvents()
        time.sleep(0.01)
    assert h.node_ids() == nodes, "results appeared after Cancel"
    assert h.ui.statusLabel.text.startswith("Cancelled"), h.ui.statusLabel.text


def scenario_cancel(h, args):
    """Apply then Cancel: at the lungs stage, during inference, and after the result but before it is shown."""
    h.load_module()
    h.load_volume(args.volume[0], "Chest A")
    lungs = cancel_at(h, "finding the lungs", args, tta=False)
    inference = cancel_at(h, "running Res-MTNet", args, tta=True)
    for result in (lungs, inference):
        assert result["cancel_to_gone_s"] < 1.0, result  # loosely: the benchmark measures it
    cancel_after_the_result(h, args)
    return {"lungs": lungs, "inference": inference}


def scenario_sigkill(h, args):
    """The child dies mid-run (SIGKILL, as the kernel's out-of-memory killer would): an error message, the
    scene as it was, no temporary files."""
    h.load_module()
    h.load_volume(args.volume[0], "Chest A")
    use_checkpoint(h, args.checkpoint, tta=True)
    nodes = h.node_ids()
    h.press(h.ui.applyButton)
    h.wait_for_status("running Res-MTNet")
    job = h.job()
    os.kill(job.pid, signal.SIGKILL)
    h.run_until(lambda: not h.running(), 10.0, "the panel noticing the death")
    assert h.node_ids() == nodes, "the scene changed"
    assert not os.path.exists(job.tempDir)
    assert h.ui.statusLabel.text.startswith("Failed:") and "SIGKILL" in h.ui.statusLabel.text, h.ui.statusLabel.text
    messages = [m for m, _ in h.errors.records if "Nodule detection failed" in m]
    assert messages and "killed by SIGKILL" in messages[0], h.errors.records
    assert all(cursors == 0 for _, cursors in h.errors.records), "an error shown under a wait cursor"
    assert h.ui.applyButton.text == "Apply" and h.ui.applyButton.enabled
    return {"status": h.ui.statusLabel.text}


def scenario_close_scene(h, args):
    """Closing the scene during a run cancels it quietly; the panel works on in the new scene."""
    h.load_module()
    h.load_volume(args.volume[0], "Chest A")
    use_checkpoint(h, args.checkpoint, tta=True)
    h.press(h.ui.applyButton)
    h.wait_for_status("running Res-MTNet")
    job = h.job()
    pid = job.pid
    h.slicer.mrmlScene.Clear(0)  # File > Close Scene
    assert process_gone(pid, 5.0) is not None, "the child outlived the scene"
    for _ in range(50):
        h.app.processEvents()
        time.sleep(0.01)
    assert not h.running() and not h.errors.records, h.errors.records
    assert h.slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not os.path.exists(job.tempDir)
    # the panel is connected to the new scene: a volume loaded now is picked, and Apply runs on it
    volume = h.load_volume(args.volume[0], "Chest A again")
    assert h.parameters() is not None and h.parameters().inputVolume is volume
    use_checkpoint(h, args.checkpoint)
    apply_and_wait(h)
    outputs = check_outputs(h, volume)
    h.widget.cleanup()
    return {"after_close": outputs}


def scenario_cleanup(h, args):
    """The module is unloaded (cleanup) during a run: the child is stopped."""
    h.load_module()
    h.load_volume(args.volume[0], "Chest A")
    use_checkpoint(h, args.checkpoint, tta=True)
    h.press(h.ui.applyButton)
    h.wait_for_status("Res-MTNet")
    pid = h.job().pid
    h.app.moduleManager().moduleAboutToBeUnloaded.emit("ResMTNet")  # Slicer calls cleanup() on this signal
    gone = process_gone(pid, 5.0)
    assert gone is not None and not h.running()
    return {"cleanup_to_gone_s": round(gone, 4)}


def scenario_selftest(h, args):
    """The module's own self-test, as Slicer's self-test runner calls it."""
    h.load_module()
    started = time.monotonic()
    h.slicer.selfTests["ResMTNet"](msec=0)
    assert not h.errors.records, h.errors.records
    return {"selftest_s": round(time.monotonic() - started, 1)}


def scenario_bench(h, args, repeats=3):
    """The numbers behind the acceptance lines: how long the child lives on after Cancel (at the lungs
    stage, during inference), and the longest the main thread was held while detections ran."""
    h.load_module()
    volume = h.load_volume(args.volume[0], "Chest A")
    runs = []
    for _ in range(repeats):
        use_checkpoint(h, args.checkpoint)
        h.parameters().inputVolume = volume
        runs.append(apply_and_wait(h))
    lungs = [cancel_at(h, "finding the lungs", args, tta=False)["cancel_to_gone_s"] for _ in range(repeats)]
    inference = [cancel_at(h, "running Res-MTNet", args, tta=True)["cancel_to_gone_s"] for _ in range(repeats)]
    result = {
        "cancel_at_lungs_s": lungs, "cancel_during_inference_s": inference,
        "largest_callback_s": max(r["largest_stall_s"] for r in runs),
        "callbacks_s": [(r["largest_stall_s"], r["stall_in"]) for r in runs],
        "largest_loop_delay_s": max(r["largest_loop_delay_s"] for r in runs),
        "scene_build_s": max(r["scene_build_s"] for r in runs), "nodules": check_outputs(h, volume)["nodules"]}
    print(f"Cancel → child gone: at the lungs stage {1000 * max(lungs):.0f} ms (max of {repeats}), during inference "
          f"{1000 * max(inference):.0f} ms")
    print(f"Main thread during {repeats} detections: longest callback {1000 * result['largest_callback_s']:.0f} ms, "
          f"longest event-loop delay {1000 * result['largest_loop_delay_s']:.0f} ms; building the nodes of "
          f"{result['nodules']} findings afterwards {1000 * result['scene_build_s']:.0f} ms")
    return result


SCENARIOS = {"apply": scenario_apply, "second-volume": scenario_second_volume, "cancel": scenario_cancel,
             "sigkill": scenario_sigkill, "close-scene": scenario_close_scene, "cleanup": scenario_cleanup,
             "selftest": scenario_selftest, "bench": scenario_bench,
             "followup": scenario_followup, "dicom-refused": scenario_dicom_refused,
             "dicom": scenario_dicom, "followup-dates": scenario_followup_dates}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--volume", action="append", default=[], help="a CT file to load (repeat for a second)")
    parser.add_argument("--checkpoint", help="the model the panel is set to use (default: the shipped weights)")
    parser.add_argument("--dicom-series", help="dicom: the folder of the DICOM series the volume was loaded from")
    parser.add_argument("--prior-series", help="followup-dates: the folder of the prior scan's DICOM series")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not SHARED_SLICER_PYTHON.is_dir():
        print(f"{SHARED_SLICER_PYTHON} is absent", file=sys.stderr)
        return 77
    h = Harness()
    started = time.monotonic()
    result = SCENARIOS[args.scenario](h, args)
    result["harness_s"] = round(time.monotonic() - started, 2)
    print(HARNESS_PREFIX + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
