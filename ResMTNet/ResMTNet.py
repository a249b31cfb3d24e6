"""ResMTNet: pulmonary nodule detection, size and malignancy in chest CT (3D Slicer module).

This file is the Slicer face of the project and stays thin: the panel, a background job, and glue.
Everything that can be tested without Slicer lives in the Qt-free core in ``Logic/``, imported under
the unique name ``resmtnet`` (see :func:`loadCore`), so it never collides with another extension's
``Logic`` package on Slicer's shared ``sys.path``.

Nothing heavy is imported when Slicer loads this module: the core is loaded on first use, and torch
(through the PyTorch extension, installed on first use after asking) only when Apply runs.
"""

import contextlib
import importlib.util
import logging
import os
import pathlib
import queue
import shutil
import sys
import threading
import traceback
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
COLOR_BY_LABELS = {"malignancy": "Malignancy (green to red)", "lung-rads": "Size (Lung-RADS category)"}


def loadCore():
    """Import the core from this module's ``Logic/`` folder as the package ``resmtnet``.

    The folder is registered in ``sys.modules`` under that name, so its relative imports
    (``from .ctio import ...``) and later ``import resmtnet.x`` statements all resolve to it.
    """
    if CORE_MODULE_NAME in sys.modules:
        return sys.modules[CORE_MODULE_NAME]
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
    return module


def unloadCore():
    """Forget the core's modules (module reload in developer mode picks up edited core files)."""
    for name in [n for n in sys.modules if n == CORE_MODULE_NAME or n.startswith(CORE_MODULE_NAME + ".")]:
        del sys.modules[name]


class DetectionJob:
    """One detection on a worker thread. Qt- and MRML-free: it only calls ``detect`` and posts
    ``(kind, payload)`` messages into a queue that the main thread drains (kinds: progress, done,
    cancelled, error). Cancel sets an event that ``detect`` polls through its ``cancel`` callback."""

    def __init__(self, detect, cancelledError=None):
        self.messages = queue.Queue()
        self._detect = detect
        self._cancelledError = cancelledError
        self._cancelEvent = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ResMTNet detection", daemon=True)

    def start(self):
        self._thread.start()

    def cancel(self):
        self._cancelEvent.set()

    @property
    def cancelRequested(self):
        return self._cancelEvent.is_set()

    def isRunning(self):
        return self._thread.is_alive()

    def drain(self):
        """All messages posted so far (call on the main thread)."""
        items = []
        while True:
            try:
                items.append(self.messages.get_nowait())
            except queue.Empty:
                return items

    def _progress(self, fraction, message=""):
        self.messages.put(("progress", (float(fraction), str(message))))

    def _run(self):
        try:
            result = self._detect(progress=self._progress, cancel=self._cancelEvent.is_set)
        except BaseException as e:  # noqa: B036 - everything must reach the main thread
            if self._cancelledError is not None and isinstance(e, self._cancelledError):
                self.messages.put(("cancelled", None))
            else:
                self.messages.put(("error", (e, traceback.format_exc())))
            return
        self.messages.put(("done", result))


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
coloured by predicted malignancy (or by Lung-RADS size category). Choose a row of the results table to
centre the views on that nodule.<br><b>Research use only: not for clinical diagnosis.</b>
""")
        self.parent.acknowledgementText = _("""
Res-MTNet core and Slicer module by the ResMTNet developers. Uses 3D Slicer, PyTorch (through the
PyTorch extension) and SimpleITK.
""")
        # The chest phantom in Sample Data, once the application (and its Sample Data module) has started
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add the "ResMTNet chest phantom" to Slicer's Sample Data module, generated here, nothing downloaded.

    Sample Data loads a sample from its cache folder and downloads only what is missing there; this button's
    loader first writes the phantom into that folder (a few seconds, the first time), so Sample Data finds it.
    """
    import SampleData

    loadCore()
    sampleData = importlib.import_module(CORE_MODULE_NAME + ".sample_data")
    iconsDir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", "Icons")

    def cachePath():
        return os.path.join(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory(), sampleData.FILE_NAME)

    def generateAndLoad(source):
        sampleData.ensure_sample_phantom(cachePath())
        return SampleData.SampleDataLogic().downloadFromSource(source)

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=sampleData.CATEGORY,
        sampleName=sampleData.SAMPLE_NAME,
        uris=pathlib.Path(cachePath()).as_uri(),
        fileNames=sampleData.FILE_NAME,
        nodeNames=sampleData.NODE_NAME,
        thumbnailFileName=os.path.join(iconsDir, sampleData.NODE_NAME + ".png"),
        loadFileType="VolumeFile",
        customDownloader=generateAndLoad,
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
    colorBy - colour fiducials and segments by malignancy or by Lung-RADS size category.
    testTimeAugmentation - also run the network on the mirror images and average (default; about 8x the
      network's time with the shipped weights, fewer false findings).
    outputSegmentation, outputTable - filled by a run; created when not chosen.
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
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode


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
        self._job = None
        self._jobInput = None
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

        # The worker thread never touches Qt or MRML: this timer brings its messages to the main thread.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None:
            self._job.cancel()
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
        unloadCore()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self._job.cancel()
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
        for index, key in enumerate(COLOR_BY_LABELS):
            self.ui.colorByComboBox.setItemText(index, COLOR_BY_LABELS[key])
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
        self.ui.thresholdSliderWidget.enabled = bool(p) and not p.useModelThreshold and not running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.settingsCollapsibleButton,
                       self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the detection")
            self.ui.applyButton.enabled = not self._job.cancelRequested
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
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self.updateGuiState()
            return
        with self.showErrors(_("Nodule detection could not start.")):
            p = self._parameterNode
            if not self.logic.ensureTorch():
                self.ui.statusLabel.text = _("PyTorch is needed to run the detector; nothing was run.")
                return
            self._jobInput = p.inputVolume
            self._job = self.logic.startDetection(
                p.inputVolume, checkpointPath=self.logic.checkpointFile(p), device=p.device,
                threshold=None if p.useModelThreshold else p.threshold, minDiameterMm=p.minDiameterMm,
                tta=p.testTimeAugmentation)
            self.ui.progressBar.value = 0
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = _("Starting...")
            self._pollTimer.start()
        self.updateGuiState()

    def onPollJob(self):
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        for kind, payload in job.drain():
            if kind == "progress":
                fraction, message = payload
                self.ui.progressBar.value = int(round(100 * max(0.0, min(1.0, fraction))))
                if not job.cancelRequested:
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
                slicer.util.errorDisplay(_("Nodule detection failed.\n\n{error}").format(error=error),
                                         detailedText=details)
        if self._job is job and not job.isRunning() and job.messages.empty():
            self.finishJob()  # the thread ended without a last word: should not happen

    def finishJob(self):
        self._job = None
        self._pollTimer.stop()
        self.ui.progressBar.setVisible(False)
        self.updateGuiState()

    def showDetection(self, detection):
        p = self._parameterNode
        with self.showErrors(_("The nodules were found but could not be put into the scene.")):
            nodes = self.logic.showResults(self._jobInput, detection, colorBy=p.colorBy,
                                           segmentationNode=p.outputSegmentation, tableNode=p.outputTable)
            p.outputSegmentation = nodes["segmentation"]
            p.outputTable = nodes["table"]
            self.fillResultsTable(detection, nodes["table"], p.colorBy)
            count = len(detection.nodules)
            self.ui.statusLabel.text = (_("No nodule found.") if count == 0 else
                                        _("{count} nodule(s) found.").format(count=count))

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
    def showErrors(self, message):
        """Errors go to Slicer's error display (with details), not as a traceback to the console."""
        try:
            with slicer.util.tryWithErrorDisplay(message, waitCursor=True):
                yield
        except Exception as e:
            logging.error(f"ResMTNet: {message} {e}")


#
# ResMTNetLogic
#


class ResMTNetLogic(ScriptedLoadableModuleLogic):
    """Glue between Slicer and the core; usable from Slicer's Python console without the panel:

    >>> logic = ResMTNetLogic()
    >>> nodes = logic.process(volumeNode)   # runs on this thread, returns the output nodes
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ResMTNetParameterNode(super().getParameterNode())

    @staticmethod
    def core():
        return loadCore()

    # ---- dependencies

    def ensureTorch(self):
        """True when torch can be imported; otherwise offers to install it through the PyTorch extension
        (which picks a CUDA build when the NVIDIA driver allows). False when the user declines."""
        if importlib.util.find_spec("torch") is not None:
            return True
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
        return None

    def legendHtml(self, colorBy):
        return self.core().slicer_scene.legend_html(colorBy) if colorBy else ""

    def resultsRows(self, detection, colorBy):
        """Header and rows ((cells, rgb) pairs) of the panel's results table."""
        scene = self.core().slicer_scene
        header = [_("Nodule"), _("Diameter (mm)"), _("Malignancy (%)"), _("Lung-RADS"), _("Probability (%)")]
        rows = []
        for nodule in detection.nodules:
            cells = [f"N{nodule.number}", f"{nodule.diameter_mm:.1f}", f"{100 * nodule.malignancy:.0f}",
                     nodule.lung_rads, f"{100 * nodule.probability:.0f}"]
            rows.append((cells, scene.nodule_color(nodule, colorBy)))
        return header, rows

    # ---- running

    def detectFunction(self, ct, checkpointPath=None, device="auto", threshold=None, minDiameterMm=0.0, tta=True):
        """A function of (progress, cancel) that runs the detector on ``ct`` (no MRML inside: it may run
        on a worker thread)."""
        self.core()  # registered here, on the main thread; the worker then imports its submodules

        def detect(progress=None, cancel=None):
            import resmtnet.allocator
            import resmtnet.pipeline  # torch is imported here, on the worker thread

            # Freed memory stays in Slicer's process while the detector runs (about a third faster: no
            # page faults on its large buffers) and goes back to the system when it ends.
            with resmtnet.allocator.freed_memory_kept():
                # model: a checkpoint path, or None for the shipped weights
                return resmtnet.pipeline.detect_ct(ct, model=checkpointPath or None, device=device,
                                                   threshold=threshold, min_diameter_mm=minDiameterMm,
                                                   progress=progress, cancel=cancel, tta=tta)

        return detect

    def startDetection(self, volumeNode, checkpointPath=None, device="auto", threshold=None,
                       minDiameterMm=0.0, tta=True):
        """Copy the CT out of the scene (main thread) and start detecting on a worker thread."""
        core = self.core()
        ct = core.slicer_scene.ct_from_volume_node(volumeNode)
        job = DetectionJob(self.detectFunction(ct, checkpointPath, device, threshold, minDiameterMm, tta),
                           cancelledError=core.errors.Cancelled)
        job.start()
        return job

    def showResults(self, volumeNode, detection, colorBy="malignancy", segmentationNode=None, tableNode=None):
        """Fiducials, segmentation, table and legend for ``detection`` (main thread only)."""
        scene = self.core().slicer_scene
        outputs = {"segmentation": segmentationNode, "table": tableNode}
        nodes = scene.build_nodule_scene(slicer.mrmlScene, volumeNode, detection, color_by=colorBy,
                                         output_nodes={k: v for k, v in outputs.items() if v is not None})
        displayNode = nodes["segmentation"].GetDisplayNode()
        if displayNode is not None:
            displayNode.SetPreferredDisplayRepresentationName3D("Closed surface")
            displayNode.SetVisibility(True)
        return nodes

    def process(self, volumeNode, checkpointPath=None, device="auto", threshold=None, minDiameterMm=0.0,
                colorBy="malignancy", segmentationNode=None, tableNode=None, tta=True):
        """Detect and show, on this thread (scripting and tests)."""
        ct = self.core().slicer_scene.ct_from_volume_node(volumeNode)
        detection = self.detectFunction(ct, checkpointPath, device, threshold, minDiameterMm, tta)()
        return detection, self.showResults(volumeNode, detection, colorBy, segmentationNode, tableNode)

    def jumpToTableRow(self, tableNode, row):
        r, a, s = self.core().slicer_scene.table_row_ras(tableNode, row)
        slicer.modules.markups.logic().JumpSlicesToLocation(r, a, s, True)


#
# ResMTNetTest
#


class ResMTNetTest(ScriptedLoadableModuleTest):
    """Runs the scenario the pytest suite runs on a slicer-core scene (``resmtnet.selftest``), here on
    Slicer's own scene: a small phantom, its nodules put into the scene by the module's logic, and
    every node and colour checked."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ResMTNetPhantomScene()
        self.setUp()
        self.test_ResMTNetDetection()

    def test_ResMTNetPhantomScene(self):
        self.delayDisplay("Phantom truth into the scene through the module logic")
        selftest = importlib.import_module(loadCore().__name__ + ".selftest")
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
        self.delayDisplay("Detector on a phantom, results into the scene")
        selftest = importlib.import_module(loadCore().__name__ + ".selftest")
        logic = ResMTNetLogic()

        def detect(ct):
            return logic.detectFunction(ct, device="cpu")()

        result = selftest.run_phantom_scenario(slicer.mrmlScene, seed=1, detect=detect)
        self.assertEqual(result.problems, [])
        self.delayDisplay(f"Test passed: {len(result.detection.nodules)} nodule(s) found")
