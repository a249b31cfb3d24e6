"""ResMTNet: pulmonary nodule detection, size and malignancy in chest CT (3D Slicer module).

This file is the Slicer face of the project and stays thin: the panel, the polling of a detection, and
glue. Everything that can be tested without Slicer lives in the Qt-free core in ``Logic/``, imported
under the unique name ``resmtnet`` (see :func:`loadCore`), so it never collides with another extension's
``Logic`` package on Slicer's shared ``sys.path``.

What runs where: Apply copies the CT out of the scene (main thread); a helper thread writes it to a
temporary file and starts the detector in a child process with Slicer's own Python (PythonSlicer); the
child imports torch, finds the nodules and writes them to files; a timer on the main thread reads the
child's progress lines and, once it is done, builds the nodes. torch is never imported into Slicer's
process by Apply, so an out-of-memory or a CUDA fault ends the child, not Slicer; Cancel kills the child.
``ResMTNetLogic.process()`` (Slicer's Python console, scripts) runs the detector in Slicer's process.
"""

import contextlib
import importlib
import importlib.util
import logging
import os
import pathlib
import shutil
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

CORE_MODULE_NAME = "resmtnet"
MINIMUM_TORCH_VERSION = "2.2"

MODEL_SHIPPED = "Shipped weights"
MODEL_CHECKPOINT = "Checkpoint file"
COLOR_BY_LABELS = {"malignancy": "Malignancy (green to red)", "lung-rads": "Lung-RADS v2022 category (1 to 4X)"}
#: The patient's inputs to the Brock model: "unknown" leaves the model's reference value (and the outputs say so).
SEX_LABELS = {"unknown": "Not given (male)", "F": "Female", "M": "Male"}
YES_NO_LABELS = {"unknown": "Not given (no)", "yes": "Yes", "no": "No"}


#: the core's submodules this file reads as attributes (``core.scene.slicer_scene``): imported by loadCore()
CORE_SUBMODULES = ("util.errors", "scene.slicer_scene", "job.slicer_job", "detect.brock")


def loadCore():
    """Import the core from this module's ``Logic/`` folder as the package ``resmtnet``, with the
    submodules this file uses (a package's ``__init__`` does not import its submodules).

    The folder is registered in ``sys.modules`` under that name, so its relative imports
    (``from ..io.ctio import ...``) and later ``import resmtnet.x`` statements all resolve to it.
    """
    module = sys.modules.get(CORE_MODULE_NAME)
    if module is None:
        logicDir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Logic")
        spec = importlib.util.spec_from_file_location(
            CORE_MODULE_NAME, os.path.join(logicDir, "__init__.py"), submodule_search_locations=[logicDir])
        module = importlib.util.module_from_spec(spec)
        sys.modules[CORE_MODULE_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[CORE_MODULE_NAME]
            raise
    for name in CORE_SUBMODULES:
        importlib.import_module(f"{CORE_MODULE_NAME}.{name}")
    return module


def unloadCore():
    """Forget the core's modules (module reload in developer mode picks up edited core files)."""
    for name in [n for n in sys.modules if n == CORE_MODULE_NAME or n.startswith(CORE_MODULE_NAME + ".")]:
        del sys.modules[name]


def versionNumbers(text):
    """(2, 2, 1) from "2.2.1+cu121"; () when the text starts with no number."""
    import re

    match = re.match(r"\d+(\.\d+)*", text or "")
    return tuple(int(part) for part in match.group(0).split(".")) if match else ()


def installedTorchVersion():
    """The installed torch's version, read from its package metadata (torch is not imported), or None."""
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = sys.modules.get("torch")
        return getattr(torch, "__version__", None)


def torchVersionProblem(version, minimum=MINIMUM_TORCH_VERSION):
    """Why an installed torch of ``version`` cannot run the detector, or None."""
    if version is None or versionNumbers(version) >= versionNumbers(minimum):
        return None
    return _("PyTorch {version} is installed, but ResMTNet needs PyTorch {minimum} or newer. In the 'PyTorch Util' "
             "module, uninstall PyTorch and install it again (a version of at least {minimum}), restart Slicer, "
             "and try again.").format(version=version, minimum=minimum)


#
# ResMTNet
#


class ResMTNet(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ResMTNet")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["ResMTNet developers"]
        self.parent.helpText = _("""
Finds pulmonary nodules in a chest CT and estimates, for each, its size and how likely it is to be
malignant, with one multi-task network (Res-MTNet). Results appear as fiducials, segments and a table,
coloured by predicted malignancy (or by Lung-RADS v2022 category). Choose a row of the results table to
centre the views on that nodule.<br><b>Research use only: not for clinical diagnosis.</b>
""")
        self.parent.acknowledgementText = _("""
Res-MTNet core and Slicer module by the ResMTNet developers. Uses 3D Slicer, PyTorch (through the
PyTorch extension) and SimpleITK.
""")
        # The chest phantom in Sample Data, once the application (and its Sample Data module) has started
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the "ResMTNet chest phantom" to Slicer's Sample Data module, generated here, nothing downloaded
    (``resmtnet.scene.sample_data.register_sample``)."""
    import SampleData

    loadCore()
    sampleData = importlib.import_module(CORE_MODULE_NAME + ".scene.sample_data")
    sampleData.register_sample(
        SampleData,
        cache_folder=lambda: slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory(),
        icons_folder=os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons"),
    )


#
# Parameters
#


@parameterNodeWrapper
class ResMTNetParameterNode:
    """The panel's choices, kept in the scene.

    inputVolume - the chest CT.
    modelSource - the shipped weights or a checkpoint file (checkpointPath).
    device - auto, cuda or cpu.
    useModelThreshold - use the threshold stored in the model's checkpoint instead of ``threshold``.
    threshold - minimum nodule probability of a reported finding.
    minDiameterMm - smallest reported diameter.
    colorBy - colour fiducials and segments by malignancy or by Lung-RADS v2022 category.
    patientAge, patientSex, familyHistory, emphysema - the patient's inputs to the Brock (PanCan) probability
      shown beside the network's malignancy; age 0 and "unknown" are not given (the model's reference value
      stands: age 62, male, no, no, and the results say which were defaulted).
    testTimeAugmentation - also run the network on the mirror images and average (default; about 8x the
      network's time with the shipped weights, fewer false findings).
    outputSegmentation, outputTable - filled by a run; created when not chosen.
    writeDicom, dicomOutputFolder - also write a DICOM SEG and SR on the CT's own DICOM series to that folder.
    priorVolume - follow-up mode: an earlier CT of the same patient, detected too and paired with inputVolume's
      nodules (a follow-up table and a line joining each pair); None: detection only.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelSource: Annotated[str, Choice([MODEL_SHIPPED, MODEL_CHECKPOINT])] = MODEL_SHIPPED
    checkpointPath: pathlib.Path
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    minDiameterMm: Annotated[float, WithinRange(0.0, 30.0)] = 3.0
    colorBy: Annotated[str, Choice(list(COLOR_BY_LABELS))] = "malignancy"
    testTimeAugmentation: bool = True
    patientAge: Annotated[float, WithinRange(0.0, 120.0)] = 0.0
    patientSex: Annotated[str, Choice(list(SEX_LABELS))] = "unknown"
    familyHistory: Annotated[str, Choice(list(YES_NO_LABELS))] = "unknown"
    emphysema: Annotated[str, Choice(list(YES_NO_LABELS))] = "unknown"
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode
    priorVolume: vtkMRMLScalarVolumeNode
    writeDicom: bool = False
    dicomOutputFolder: pathlib.Path


#
# ResMTNetWidget
#


class ResMTNetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running detection (resmtnet.job.slicer_job.DetectionProcess)
        self._jobVolume = None  # its input volume: the results go to this volume, whatever is selected now
        self._resultTable = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ResMTNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ResMTNetLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.resultsTableWidget.connect("currentCellChanged(int,int,int,int)", self.onResultRowChanged)
        self.ui.progressBar.setVisible(False)

        # The detection runs in a child process; this timer reads its messages on the main thread.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    def cleanup(self):
        self.cancelJob()
        self._pollTimer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.updateDeviceLabels()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)

    def onReload(self):
        self.cancelJob()
        unloadCore()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        # the nodes the results would go to are going away: stop quietly, no error popup
        self.cancelJob(_("Cancelled: the scene was closed."))
        self._resultTable = None
        self.ui.resultsTableWidget.clearContents()
        self.ui.resultsTableWidget.setRowCount(0)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = firstVolume

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Each .ui widget names its parameter in the dynamic property "SlicerParameterName".
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGuiState)
            self.relabelChoices()
            self.updateGuiState()

    def relabelChoices(self):
        """Friendlier texts for the combo boxes (the connector fills them with the raw choices)."""
        for comboBox, labels in ((self.ui.colorByComboBox, COLOR_BY_LABELS), (self.ui.patientSexComboBox, SEX_LABELS),
                                 (self.ui.familyHistoryComboBox, YES_NO_LABELS),
                                 (self.ui.emphysemaComboBox, YES_NO_LABELS)):
            for index, key in enumerate(labels):
                comboBox.setItemText(index, labels[key])
        self.updateDeviceLabels()

    def updateDeviceLabels(self):
        labels = self.logic.deviceLabels()
        for index in range(self.ui.deviceComboBox.count):
            key = self.ui.deviceComboBox.itemText(index).split(" ")[0].lower()
            if key in labels:
                self.ui.deviceComboBox.setItemText(index, labels[key])

    def updateGuiState(self, caller=None, event=None):
        p = self._parameterNode
        running = self._job is not None
        self.ui.checkpointPathLineEdit.enabled = bool(p) and p.modelSource == MODEL_CHECKPOINT and not running
        self.ui.dicomOutputFolderLineEdit.enabled = bool(p) and p.writeDicom and not running
        self.ui.thresholdSliderWidget.enabled = bool(p) and not p.useModelThreshold and not running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.patientCollapsibleButton,
                       self.ui.settingsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the detection")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        problem = self.logic.inputProblem(p) if p else _("No parameter node")
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or _("Find the nodules in the selected CT")
        if p:
            self.ui.legendLabel.text = self.logic.legendHtml(p.colorBy)

    # ---- running

    def onApplyButton(self):
        if self._job is not None:
            self.cancelJob(_("Cancelled. The scene was not changed."))
            return
        ready = False
        # No wait cursor here: ensureTorch may ask the user (install PyTorch?).
        with self.showErrors(_("Nodule detection could not start."), waitCursor=False):
            ready = self.logic.ensureTorch()
            if not ready:
                self.ui.statusLabel.text = _("PyTorch is needed to run the detector; nothing was run.")
        if not ready:
            return
        with self.showErrors(_("Nodule detection could not start.")):
            p = self._parameterNode
            self._jobVolume = p.inputVolume
            self._job = self.logic.startDetection(
                p.inputVolume, checkpointPath=self.logic.checkpointFile(p), device=p.device,
                threshold=None if p.useModelThreshold else p.threshold, minDiameterMm=p.minDiameterMm,
                tta=p.testTimeAugmentation, patient=self.logic.patientInputs(p),
                priorVolumeNode=p.priorVolume if p.priorVolume is not p.inputVolume else None,
                dicomOutputFolder=str(p.dicomOutputFolder) if p.writeDicom else None)
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("Starting...")
            self._pollTimer.start()
        self.updateGuiState()

    def cancelJob(self, status=None):
        """Kill the running detection, if any: its results never reach the scene."""
        job = self._job
        if job is None:
            return
        job.cancel()
        self.finishJob()
        if status:
            self.ui.statusLabel.text = status

    def onPollJob(self):
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        for kind, payload in job.drain():
            if self._job is not job:
                return  # cancelled meanwhile: nothing more of this job is shown
            if kind == "progress":
                fraction, message = payload
                self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
                self.ui.statusLabel.text = message
            elif kind == "done":
                self.finishJob()
                self.showDetection(payload)
            elif kind == "cancelled":
                self.finishJob()
                self.ui.statusLabel.text = _("Cancelled. The scene was not changed.")
            elif kind == "error":
                error, details = payload
                self.finishJob()
                self.ui.statusLabel.text = _("Failed: {error}").format(error=error)
                slicer.util.errorDisplay(_("Nodule detection failed. The scene was not changed.\n\n{error}").format(
                    error=error), detailedText=details)
        if self._job is job and not job.isRunning() and job.messages.empty():
            self.finishJob()  # the helper thread ended without a last word: should not happen
            self.ui.statusLabel.text = _("The detection ended without a result. The scene was not changed.")

    def finishJob(self):
        self._job = None
        self._pollTimer.stop()
        self.ui.progressBar.setVisible(False)
        self.updateGuiState()

    def showDetection(self, detection):
        """Results of the run on ``self._jobVolume`` into the scene: that volume's outputs only."""
        p = self._parameterNode
        volume = self._jobVolume
        self._jobVolume = None
        if p is None or volume is None or not slicer.mrmlScene.IsNodePresent(volume):
            self.ui.statusLabel.text = _("The input volume is gone from the scene: the results were dropped.")
            return
        with self.showErrors(_("The nodules were found but could not be put into the scene.")):
            picked = [n for n in (p.outputSegmentation, p.outputTable) if n is not None]
            segmentationNode, tableNode = self.logic.outputNodesFor(volume, p.outputSegmentation, p.outputTable)
            nodes = self.logic.showResults(volume, detection, colorBy=p.colorBy,
                                           segmentationNode=segmentationNode, tableNode=tableNode)
            p.outputSegmentation = nodes["segmentation"]
            p.outputTable = nodes["table"]
            self.fillResultsTable(detection, nodes["table"], p.colorBy)
            count = len(detection.nodules)
            status = (_("No nodule found.") if count == 0 else _("{count} nodule(s) found.").format(count=count))
            brockInputs = self.logic.core().scene.slicer_scene.brock_inputs_text(detection)
            if count and brockInputs:
                status += " " + brockInputs
            dicomOut = detection.info.get("dicom_out")
            if dicomOut is not None:
                status += " " + _("DICOM: {files} in {folder}.").format(files=", ".join(dicomOut["files"]),
                                                                        folder=dicomOut["folder"])
            followup = detection.info.get("followup")
            if followup is not None:
                self.logic.showFollowup(volume, followup)
                pairs = followup["pairs"]
                counts = {kind: sum(r["status"] == kind for r in pairs) for kind in ("matched", "new", "resolved")}
                status += " " + _("Follow-up: {matched} paired ({uncertain} uncertain), {new} new, "
                                  "{resolved} resolved.").format(
                    uncertain=sum(r["status"] == "matched" and r["uncertain"] for r in pairs), **counts)
                days = followup.get("interval_days")
                status += " " + (_("{days:.0f} days between the study dates.").format(days=days) if days is not None
                                 else _("No study dates (DICOM): no doubling times."))
            keptAsTheyWere = [n.GetName() for n in picked if n not in (nodes["segmentation"], nodes["table"])]
            if keptAsTheyWere:
                status += " " + _("{names}: other results, left as they were; the results are in new nodes.").format(
                    names=", ".join(keptAsTheyWere))
            self.ui.statusLabel.text = status

    def fillResultsTable(self, detection, tableNode, colorBy):
        header, rows = self.logic.resultsRows(detection, colorBy)
        table = self.ui.resultsTableWidget
        table.clearContents()
        table.setColumnCount(len(header))
        table.setHorizontalHeaderLabels(header)
        table.setRowCount(len(rows))
        for r, (cells, rgb) in enumerate(rows):
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                if c == 0:
                    item.setBackground(qt.QBrush(qt.QColor(*[int(round(255 * v)) for v in rgb])))
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        self._resultTable = tableNode

    def onResultRowChanged(self, row, column, previousRow, previousColumn):
        if row < 0 or self._resultTable is None:
            return
        with self.showErrors(_("Could not jump to the nodule.")):
            self.logic.jumpToTableRow(self._resultTable, row)

    @contextlib.contextmanager
    def showErrors(self, message, waitCursor=True):
        """Errors go to Slicer's error display (with details), not as a traceback to the console."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=waitCursor):
                yield
        except Exception as e:
            logging.error(f"ResMTNet: {message} {e}")


#
# ResMTNetLogic
#


class ResMTNetLogic(ScriptedLoadableModuleLogic):
    """Glue between Slicer and the core; usable from Slicer's Python console without the panel:

    >>> logic = ResMTNetLogic()
    >>> detection, nodes = logic.process(volumeNode)   # in Slicer's process, on this thread
    >>> job = logic.startDetection(volumeNode)           # or in a child process, as Apply does:
    >>> nodes = logic.showResults(volumeNode, logic.waitForDetection(job))
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._torchReady = False

    def getParameterNode(self):
        return ResMTNetParameterNode(super().getParameterNode())

    @staticmethod
    def core():
        return loadCore()

    # ---- dependencies

    def ensureTorch(self):
        """True when a torch recent enough is installed; otherwise offers to install it through the PyTorch
        extension (which picks a CUDA build when the NVIDIA driver allows). False when the user declines;
        an error naming the versions when the installed torch is too old. Never imports torch here: the
        detector's own process does."""
        if self._torchReady:
            return True
        if importlib.util.find_spec("torch") is None and not self.installTorch():
            return False
        problem = torchVersionProblem(installedTorchVersion(), MINIMUM_TORCH_VERSION)
        if problem:
            raise RuntimeError(problem)
        self._torchReady = True  # checked once a session: reading package metadata takes tens of ms
        return True

    def installTorch(self):
        try:
            import PyTorchUtils
        except ModuleNotFoundError as e:
            raise RuntimeError(_("ResMTNet needs the PyTorch extension. Install 'PyTorch' from the "
                                 "Extensions Manager, restart Slicer, and try again.")) from e
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if torchLogic.torchInstalled():
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("ResMTNet needs PyTorch, which is not installed yet. Install it now? This downloads about "
                  "2 GB and may take several minutes."), _("Install PyTorch")):
            return False
        torch = torchLogic.installTorch(askConfirmation=False,
                                        torchVersionRequirement=f">={MINIMUM_TORCH_VERSION}")
        if torch is None:
            raise RuntimeError(_("PyTorch could not be installed. Use the 'PyTorch Util' module to "
                                 "install it."))
        return True

    def deviceLabels(self):
        """Device combo texts saying what is available. torch is asked only once it is loaded anyway;
        before that, the NVIDIA driver's tool tells whether a GPU is there."""
        torch = sys.modules.get("torch")
        if torch is not None:
            if torch.cuda.is_available():
                cuda = _("cuda ({name}, available)").format(name=torch.cuda.get_device_name(0))
            else:
                cuda = _("cuda (not available)")
        elif shutil.which("nvidia-smi"):
            cuda = _("cuda (NVIDIA driver found)")
        else:
            cuda = _("cuda (no NVIDIA driver found)")
        return {"auto": _("auto (GPU if available, else CPU)"), "cuda": cuda, "cpu": _("cpu")}

    # ---- checks and texts for the panel

    def checkpointFile(self, p):
        if p.modelSource != MODEL_CHECKPOINT:
            return None
        return str(p.checkpointPath)

    def inputProblem(self, p):
        """Why Apply cannot run now, or None."""
        if not p.inputVolume:
            return _("Select a chest CT volume")
        if p.inputVolume.IsA("vtkMRMLLabelMapVolumeNode"):
            return _("The input is a label map, not a CT")
        if p.modelSource == MODEL_CHECKPOINT and not os.path.isfile(str(p.checkpointPath)):
            return _("Choose a checkpoint file, or use the shipped weights")
        if p.writeDicom and str(p.dicomOutputFolder) in ("", "."):
            return _("Choose the folder for the DICOM SEG and SR, or untick it")
        return None

    def legendHtml(self, colorBy):
        return self.core().scene.slicer_scene.legend_html(colorBy) if colorBy else ""

    def patientInputs(self, p):
        """The Brock model's patient inputs from the panel (``resmtnet.detect.brock.PatientInputs``); age 0 and
        "unknown" are not given."""
        yesNo = {"unknown": None, "yes": True, "no": False}
        return self.core().detect.brock.PatientInputs(
            age=p.patientAge if p.patientAge > 0 else None, sex=None if p.patientSex == "unknown" else p.patientSex,
            family_history=yesNo[p.familyHistory], emphysema=yesNo[p.emphysema])

    def resultsRows(self, detection, colorBy):
        """Header and rows ((cells, rgb) pairs) of the panel's results table."""
        scene = self.core().scene.slicer_scene
        header = [_("Nodule"), _("Diameter (mm)"), _("Type"), _("Margin"), _("Lung-RADS"), _("Malignancy (%)"),
                  _("Brock (%)"), _("Probability (%)")]
        rows = []
        for nodule in detection.nodules:
            cells = [f"N{nodule.number}", f"{nodule.diameter_mm:.1f}", nodule.nodule_type, nodule.margin,
                     nodule.lung_rads, f"{100 * nodule.malignancy:.0f}", scene.brock_text(nodule),
                     f"{100 * nodule.probability:.0f}"]
            rows.append((cells, scene.nodule_color(nodule, colorBy)))
        return header, rows

    # ---- running

    def detectFunction(self, ct, checkpointPath=None, device="auto", threshold=None, minDiameterMm=0.0, tta=True,
                       patient=None):
        """A function of (progress, cancel) that runs the detector on ``ct`` in this process (no MRML
        inside; ``resmtnet.job.slicer_job.detect_in_this_process``). Used by :meth:`process`; the panel's Apply
        runs the detector in a child process instead."""
        core = self.core()

        def detect(progress=None, cancel=None):
            return core.job.slicer_job.detect_in_this_process(ct, model=checkpointPath or None, device=device,
                                                          threshold=threshold, min_diameter_mm=minDiameterMm,
                                                          tta=tta, progress=progress, cancel=cancel,
                                                          patient=patient)

        return detect

    @staticmethod
    def pythonExecutable():
        """The Python the detector's process runs: Slicer's own (PythonSlicer, which sets up Slicer's
        environment), or this interpreter where there is no PythonSlicer and it is a plain Python (tests
        outside Slicer)."""
        python = shutil.which("PythonSlicer")
        if python:
            return python
        if "python" in os.path.basename(sys.executable).lower():
            return sys.executable
        raise RuntimeError(_("Slicer's Python (PythonSlicer) was not found, so the detector cannot be started."))

    @staticmethod
    def childEnvironment():
        """The environment Slicer was started in (PythonSlicer adds Slicer's own settings to it), or None
        (this process's) where the application cannot tell it."""
        try:
            return slicer.util.startupEnvironment()
        except Exception:
            return None

    def startDetection(self, volumeNode, checkpointPath=None, device="auto", threshold=None,
                       minDiameterMm=0.0, tta=True, priorVolumeNode=None, dicomOutputFolder=None, patient=None):
        """Take the CT out of the scene (a view of its voxels, main thread) and start the detector in a child
        process, which gets them through a file the helper thread writes; returns
        the job (``resmtnet.job.slicer_job.DetectionProcess``) to poll with ``drain()`` and stop with ``cancel()``.
        With ``priorVolumeNode`` (follow-up mode) the child detects that scan too and pairs the two scans'
        nodules: the result's ``info["followup"]``. With ``dicomOutputFolder`` it also writes a DICOM SEG and SR
        on the volume's DICOM series there (``info["dicom_out"]``). ``patient``: the Brock model's patient inputs
        (``resmtnet.detect.brock.PatientInputs``; None: all defaulted)."""
        core = self.core()
        toCt = core.scene.slicer_scene.ct_from_volume_node
        ct = toCt(volumeNode, copy=False)  # the helper thread writes it to a file
        prior = None if priorVolumeNode is None else toCt(priorVolumeNode, copy=False)
        job = core.job.slicer_job.DetectionProcess(
            ct, self.pythonExecutable(), model=checkpointPath or None, device=device, threshold=threshold,
            min_diameter_mm=minDiameterMm, tta=tta, env=self.childEnvironment(), prior_ct=prior, patient=patient,
            interval_days=None if priorVolumeNode is None else self.intervalDays(priorVolumeNode, volumeNode),
            dicom_out=dicomOutputFolder, dicom_source=self.dicomSeriesFolder(volumeNode) if dicomOutputFolder else None)
        job.start()
        return job

    @staticmethod
    def waitForDetection(job, timeoutS=600.0, progress=None):
        """Poll ``job`` until it ends, keeping the application responsive (self-test, scripts); returns its
        Detection. Raises on an error, a cancel or the timeout."""
        import time

        deadline = time.monotonic() + timeoutS
        while time.monotonic() < deadline:
            for kind, payload in job.drain():
                if kind == "progress" and progress is not None:
                    progress(*payload)
                elif kind == "done":
                    return payload
                elif kind == "error":
                    raise RuntimeError(payload[0] + ("\n" + payload[1] if payload[1] else ""))
                elif kind == "cancelled":
                    raise RuntimeError(_("The detection was cancelled."))
            slicer.app.processEvents()
            time.sleep(0.02)
        job.cancel()
        raise RuntimeError(_("The detection did not end within {seconds} s.").format(seconds=timeoutS))

    def outputNodesFor(self, volumeNode, segmentationNode=None, tableNode=None):
        """The output nodes a run on ``volumeNode`` fills: each chosen node that this module made from the
        same volume, or that is empty; otherwise the volume's own outputs of an earlier run, or None (new
        nodes are made). Another volume's results and the user's own data are never overwritten."""
        scene = self.core().scene.slicer_scene
        chosen = []
        for node, role in ((segmentationNode, scene.ROLE_SEGMENTATION), (tableNode, scene.ROLE_TABLE)):
            if node is None or not scene.may_fill(node, volumeNode, role):
                earlier = scene.find_outputs(slicer.mrmlScene, volumeNode, role)
                node = earlier[0] if earlier else None
            chosen.append(node)
        return tuple(chosen)

    def showResults(self, volumeNode, detection, colorBy="malignancy", segmentationNode=None, tableNode=None):
        """Fiducials, segmentation, table and legend for ``detection`` (main thread only)."""
        scene = self.core().scene.slicer_scene
        outputs = {"segmentation": segmentationNode, "table": tableNode}
        nodes = scene.build_nodule_scene(slicer.mrmlScene, volumeNode, detection, color_by=colorBy,
                                         output_nodes={k: v for k, v in outputs.items() if v is not None})
        displayNode = nodes["segmentation"].GetDisplayNode()
        if displayNode is not None:
            displayNode.SetPreferredDisplayRepresentationName3D("Closed surface")
            displayNode.SetVisibility(True)
        return nodes

    @staticmethod
    def dicomInstance(volumeNode):
        """``(Slicer's DICOM database, the first instance UID)`` of the series ``volumeNode`` was loaded from, or
        ``(None, None)`` where it was not loaded from DICOM."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        return (database, uids[0]) if uids and database is not None else (None, None)

    def dicomSeriesFolder(self, volumeNode):
        """The folder of the DICOM files ``volumeNode`` was loaded from, or None."""
        database, uid = self.dicomInstance(volumeNode)
        path = database.fileForInstance(uid) if database is not None else ""
        return os.path.dirname(path) if path else None

    def studyDate(self, volumeNode):
        """The study date of the DICOM series ``volumeNode`` was loaded from, or None."""
        database, uid = self.dicomInstance(volumeNode)
        text = database.instanceValue(uid, "0008,0020") if database is not None else ""  # StudyDate
        return self.core().io.identity.parse_dicom_date(text)

    def intervalDays(self, priorVolumeNode, volumeNode):
        """Days from the prior scan to this one by their DICOM study dates (doubling times need them); None
        where either date is unknown."""
        followup = importlib.import_module(f"{CORE_MODULE_NAME}.report.followup")
        return followup.study_interval_days(self.studyDate(priorVolumeNode), self.studyDate(volumeNode))

    def showFollowup(self, volumeNode, followup):
        """The follow-up table and a line joining each pair across the two volumes (main thread only)."""
        # imported only when asked: it brings SimpleITK
        slicerFollowup = importlib.import_module(f"{CORE_MODULE_NAME}.report.slicer_followup")
        return slicerFollowup.add_followup_nodes(slicer.mrmlScene, followup["pairs"],
                                                 name=_("{name} follow-up").format(name=volumeNode.GetName()))

    def process(self, volumeNode, checkpointPath=None, device="auto", threshold=None, minDiameterMm=0.0,
                colorBy="malignancy", segmentationNode=None, tableNode=None, tta=True, patient=None):
        """Detect and show, in this process and on this thread (Slicer's Python console, scripts). The chosen
        output nodes are filled only where :meth:`outputNodesFor` allows."""
        ct = self.core().scene.slicer_scene.ct_from_volume_node(volumeNode)
        detection = self.detectFunction(ct, checkpointPath, device, threshold, minDiameterMm, tta, patient)()
        segmentationNode, tableNode = self.outputNodesFor(volumeNode, segmentationNode, tableNode)
        return detection, self.showResults(volumeNode, detection, colorBy, segmentationNode, tableNode)

    def jumpToTableRow(self, tableNode, row):
        r, a, s = self.core().scene.slicer_scene.table_row_ras(tableNode, row)
        slicer.modules.markups.logic().JumpSlicesToLocation(r, a, s, True)


#
# ResMTNetTest
#


class ResMTNetTest(ScriptedLoadableModuleTest):
    """The module's self-test on Slicer's own scene. First the scene scenario the pytest suite runs on a
    slicer-core scene (``resmtnet.scene.selftest``): a small phantom's truth put into the scene by the logic and
    every node and colour checked. Then the detector on that phantom through the path Apply takes (a child
    process running the shipped weights): each phantom nodule of 4 mm or more must be marked within 2 mm in
    its colour, and a second run must replace the first's outputs, not add to them."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ResMTNetPhantomScene()
        self.setUp()
        self.test_ResMTNetDetection()

    def test_ResMTNetPhantomScene(self):
        self.delayDisplay("Phantom truth into the scene through the module logic")
        selftest = importlib.import_module(loadCore().__name__ + ".scene.selftest")
        logic = ResMTNetLogic()
        for colorBy in ("malignancy", "lung-rads"):  # the second run must replace the first's outputs
            result = selftest.run_phantom_scenario(slicer.mrmlScene, seed=0, color_by=colorBy)
            self.assertEqual(result.problems, [])
            nodes = logic.showResults(result.volume_node, result.detection, colorBy=colorBy)
            problems = selftest.check_nodule_scene(slicer.mrmlScene, result.volume_node, result.detection,
                                                   nodes, color_by=colorBy)
            self.assertEqual(problems, [])
        self.delayDisplay("Test passed")

    def test_ResMTNetDetection(self):
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("PyTorch is not installed: the detector part of the self-test is skipped")
            return
        core = loadCore()
        selftest = importlib.import_module(core.__name__ + ".scene.selftest")
        phantomModule = importlib.import_module(core.__name__ + ".data.phantom")
        seed = selftest.DETECTION_SEED
        self.delayDisplay(f"Detector (shipped weights, child process) on the small phantom of seed {seed}")
        phantom = phantomModule.generate_phantom(seed, small=True)
        volume = core.scene.slicer_scene.volume_node_from_ct(slicer.mrmlScene, phantom.ct, f"Phantom {seed}")
        core.scene.slicer_scene.put_volume_in_study(
            slicer.mrmlScene, volume, "ResMTNet phantom", f"Phantom study {seed}")
        logic = ResMTNetLogic()
        previous = None
        for run in (1, 2):
            job = logic.startDetection(volume, tta=False)  # without TTA: seconds, and all three are found
            detection = logic.waitForDetection(job)
            segmentationNode, tableNode = logic.outputNodesFor(
                volume, *(previous["segmentation"], previous["table"]) if previous else (None, None))
            nodes = logic.showResults(volume, detection, segmentationNode=segmentationNode, tableNode=tableNode)
            self.assertEqual(selftest.check_nodule_scene(slicer.mrmlScene, volume, detection, nodes), [])
            self.assertEqual(selftest.check_phantom_found(phantom, detection, nodes), [])
            if previous:  # replaced, not piled up
                self.assertFalse(any(slicer.mrmlScene.IsNodePresent(n) for n in previous["markups"]))
                self.assertIs(nodes["segmentation"], previous["segmentation"])
                self.assertIs(nodes["table"], previous["table"])
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 1)
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode"), 1)
            previous = nodes
            self.delayDisplay(f"Run {run}: {len(detection.nodules)} nodule(s) found, every phantom nodule "
                              f"of {selftest.FOUND_MIN_DIAMETER_MM:g} mm or more among them")
        self.delayDisplay("Test passed")
