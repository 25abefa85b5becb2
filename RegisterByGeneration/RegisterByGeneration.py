"""3D Slicer module: a pseudo-CT aligned with an MR or CBCT, from the patient's own (misaligned) CT.

Thin by design: this file holds the widgets, the parameter node, the QTimer and the
installer. The scene code (nodes to files and back, one run) is the Qt-free
``RegisterByGenerationSceneLib``, tested against real MRML. The work runs in a
``PythonSlicer`` child process (``python -m RegisterByGenerationLib run ... --progress
json``), so the GUI stays responsive, Cancel stops the whole process tree, and torch is
never loaded into Slicer.
"""

import enum
import logging
import os
import shutil
import sys
import tempfile
import time

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import *  # noqa: F403 (the Slicer template's idiom)
from slicer.util import VTKObservationMixin

# Only the standard library is imported by these modules; torch & co. stay out of Slicer.
from RegisterByGenerationLib import install
from RegisterByGenerationLib.modelstore import list_models, user_models_dir
from RegisterByGenerationLib.runner import METHODS_WITHOUT_MODEL, MODELS_OF_OTHER_METHODS, library_environment, python_slicer_executable
from RegisterByGenerationSceneLib import PseudoCtTask, sameGeometry, validationError, worldGeometry

#
# RegisterByGeneration
#


class RegisterByGeneration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Register by Generation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RegisterByGeneration contributors"]
        self.parent.helpText = _("""
Generates a <b>pseudo-CT</b> on the grid of an MR or CBCT volume from a CT of the same patient that
is not aligned with it, keeping the CT's own intensities and texture ("Register by Generation"),
and segments the bones of the pseudo-CT. See the
<a href="https://github.com/RegisterByGeneration/SlicerRegisterByGeneration/blob/main/docs/user-guide.md">user guide</a>.
""")
        self.parent.acknowledgementText = _("""
Implements the methods of "Register by Generation" and "RegistFormer" (published research; no code of the
reference implementations is used). Follows the 3D Slicer scripted-module template by Jean-Christophe
Fillion-Robin (Kitware), Andras Lasso (PerkLab) and Steve Pieper (Isomics).
""")


#
# Parameter node
#


# Values are the library's words; label() is what the combo boxes show (parameterNodeWrapper uses it).
class Modality(enum.Enum):
    MR, CBCT = "mr", "cbct"

    def label(self):
        return self.value.upper()


class Method(enum.Enum):
    AUTO, RBG, REGISTFORMER, STN_FUSION, DUAL_SIMILARITY = "auto", "rbg", "registformer", "stn-fusion", "dual-similarity"
    MR_GAN, REGISTRATION_BY_SYNTHESIS = "mr-gan", "registration-by-synthesis"
    RIGID, SYN, ELASTIX = "rigid", "syn", "elastix"

    def label(self):
        return {"auto": _("Automatic (the model's own)"), "rbg": _("Register by Generation"), "registformer": _("RegistFormer"),
                "stn-fusion": _("STN + early fusion (3-D)"), "dual-similarity": _("Dual-similarity registration (3-D)"),
                "mr-gan": _("MR-GAN synthesis alone"), "registration-by-synthesis": _("Registration by synthesis (MR-GAN + demons)"),
                "rigid": _("Rigid registration only"), "syn": _("ANTs SyN"),
                "elastix": _("elastix B-spline")}[self.value]  # fmt: skip

    @property
    def argument(self):
        """What ``rbg run --method`` gets: None for the model's own method."""
        return None if self is Method.AUTO else self.value

    @property
    def takesModel(self):
        return self.value not in METHODS_WITHOUT_MODEL

    @property
    def modelKind(self):
        """The method a model card must name to run with this method (None: any)."""
        return None if self is Method.AUTO else MODELS_OF_OTHER_METHODS.get(self.value, self.value)


class Device(enum.Enum):
    AUTO, CUDA, CPU = "auto", "cuda", "cpu"

    def label(self):
        return {"auto": _("Automatic (GPU if available)"), "cuda": _("GPU (CUDA)"), "cpu": _("CPU")}[self.value]


class Precision(enum.Enum):
    AUTO, FLOAT32, BFLOAT16 = "auto", "float32", "bfloat16"

    def label(self):
        return {"auto": _("Automatic (mixed on GPU or bfloat16 CPU)"), "float32": _("Float32"), "bfloat16": _("BFloat16")}[self.value]


class BoneMethod(enum.Enum):
    AUTO, TOTALSEGMENTATOR, THRESHOLD, NONE = "auto", "totalsegmentator", "threshold", "none"

    def label(self):
        return {"auto": _("Automatic"), "totalsegmentator": _("TotalSegmentator"), "threshold": _("HU threshold"), "none": _("None")}[self.value]


@parameterNodeWrapper
class RegisterByGenerationParameterNode:
    """GUI state, saved with the scene. ``model`` "" means the default model of the modality."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    modality: Modality = Modality.MR
    method: Method = Method.AUTO
    model: str = ""
    device: Device = Device.AUTO
    threads: int = 0  # 0: automatic; the spin box limits it to 0-256
    precision: Precision = Precision.AUTO
    prealign: bool = True
    boneMethod: BoneMethod = BoneMethod.AUTO
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode


#
# Widget
#


class RegisterByGenerationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelListKey = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RegisterByGeneration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RegisterByGenerationLogic()

        self.ui.progressBar.hide()
        self.ui.modelsFolderValueLabel.text = str(user_models_dir())
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.importModelButton.connect("clicked(bool)", self.onImportModelButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic and self.logic.isRunning():
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are bound to the fields.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Apply is enabled only when the inputs are valid; its tooltip says why not. While
        a run is going on it is the Cancel button."""
        if self.logic.isRunning():
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the processing (the scene is left as it was)")
            self.ui.applyButton.enabled = True
            return
        self.ui.applyButton.text = _("Apply")
        if not self._parameterNode:
            self.ui.applyButton.enabled = False
            return
        self._updateModelList()
        p = self._parameterNode
        reason = self.logic.validationError(p.inputVolume, p.referenceVolume, p.outputVolume)
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason or _("Generate the pseudo-CT (and the bone segmentation)")

    def _updateModelList(self) -> None:
        """Fill the model list with the installed models of the selected modality and method
        (none for a method without a model)."""
        modality, method = self._parameterNode.modality.value, self._parameterNode.method
        wanted = self._parameterNode.model
        if (modality, method) == self._modelListKey and self.ui.modelComboBox.currentData == wanted:
            return
        self._modelListKey = (modality, method)
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.enabled = method.takesModel
        if not method.takesModel:
            combo.addItem(_("None: {method} registers the reference CT").format(method=method.label()), "")
        else:
            combo.addItem(_("Default for {modality}").format(modality=modality.upper()), "")
            for info in list_models():
                if info.modality == modality and method.modelKind in (None, info.method):
                    combo.addItem(f"{info.name} ({info.method})", info.name)
        index = max(0, combo.findData(wanted))
        combo.setCurrentIndex(index)
        combo.blockSignals(wasBlocked)
        if combo.itemData(index) != wanted:
            self._parameterNode.model = combo.itemData(index) or ""

    def onModelSelected(self, index) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.ui.modelComboBox.itemData(index) or ""

    def onImportModelButton(self) -> None:
        """Install a model folder (its model.json) or convert the authors' published .ckpt files."""
        paths = qt.QFileDialog.getOpenFileNames(slicer.util.mainWindow(), _("Select a model's model.json, or the published .ckpt files"), "",
                                                _("Models (model.json *.ckpt)"))  # fmt: skip
        if not paths:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not import the model."), waitCursor=True):
            if all(path.lower().endswith(".ckpt") for path in paths):
                self.logic.setupPythonRequirements()  # the conversion runs in PythonSlicer, with torch
                info = install.import_published_checkpoints(paths, python_slicer_executable(slicer.app.slicerHome), env=library_environment())
            elif len(paths) == 1 and os.path.basename(paths[0]) == "model.json":
                info = install.import_model_folder(os.path.dirname(paths[0]))
            else:
                raise ValueError(_("Select either one model.json or the published .ckpt files, not both."))
            self._modelListKey = None  # force a refresh
            self._parameterNode.modality = Modality(info.modality)
            self._parameterNode.model = info.name
            self._checkCanApply()
            slicer.util.infoDisplay(_("Model '{name}' installed in {path}.").format(name=info.name, path=info.path))

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.ui.statusLabel.text = _("Cancelling...")
            self.logic.cancel()
            return
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Starting...")
        started = False
        with slicer.util.tryWithErrorDisplay(_("Failed to start the processing."), waitCursor=True):
            self.logic.process(
                p.inputVolume, p.referenceVolume, p.outputVolume, p.outputSegmentation,
                modality=p.modality.value, method=p.method.argument, model=p.model or None, device=p.device.value, prealign=p.prealign,
                boneMethod=p.boneMethod.value, threads=p.threads or None, precision=p.precision.value, waitForCompletion=False,
                progressCallback=self.onProgress, logCallback=self.onLog, completedCallback=self.onCompleted)
            started = True
        if not started:
            self.ui.progressBar.hide()
            self.ui.statusLabel.text = _("Not started.")
        self._checkCanApply()

    def onProgress(self, fraction, stage, message) -> None:
        self.ui.progressBar.value = int(round(fraction * 1000))
        self.ui.statusLabel.text = f"{stage}: {message}" if message else stage

    def onLog(self, line) -> None:
        self.ui.logTextEdit.appendPlainText(line)

    def onCompleted(self, result) -> None:
        self.ui.progressBar.hide()
        if result.success:
            if self._parameterNode:  # None if the scene was closed meanwhile
                self._parameterNode.outputVolume = result.outputVolume
                if result.boneSegmentation:
                    self._parameterNode.outputSegmentation = result.boneSegmentation
            status = _("Done in {seconds:.0f} s on {device}.").format(seconds=result.seconds, device=result.device)
            bones = (result.report or {}).get("bones") or {}
            if bones.get("method"):  # which bone method ran, and why "auto" fell back
                status += " " + _("Bones: {method}.").format(method=bones["method"]) + (f" ({bones['note']})" if bones.get("note") else "")
            self.ui.statusLabel.text = status
        elif result.cancelled:
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        else:
            self.ui.statusLabel.text = _("Failed: {message}").format(message=result.errorMessage)
            slicer.util.errorDisplay(_("Pseudo-CT generation failed: {message}").format(message=result.errorMessage), detailedText="\n".join(result.log[-200:]))
        self._checkCanApply()


#
# Logic
#


class RegisterByGenerationLogic(ScriptedLoadableModuleLogic):
    """Usable without the GUI (Python console, ``--python-script``); see ``process``."""

    POLL_INTERVAL_MS = 200

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.keepTemporaryFiles = False  # set True to inspect the exchanged files after a run
        self._task = None
        self._timer = None
        self._completedCallback = None

    def getParameterNode(self):
        return RegisterByGenerationParameterNode(super().getParameterNode())

    def isRunning(self) -> bool:
        return self._task is not None

    def cancel(self) -> None:
        """Stop the running process tree; the completion callback then reports a cancel.
        Returns at once: the stopping (up to a few seconds) runs on a worker thread."""
        if self._task is not None:
            self._task.cancel()

    validationError = staticmethod(validationError)

    def process(self, inputVolume, referenceVolume, outputVolume=None, boneSegmentation=None, modality="MR", model=None, method=None, device="auto",
                prealign=True, boneMethod="auto", threads=None, precision="auto", waitForCompletion=True, progressCallback=None,
                logCallback=None, completedCallback=None):
        """Generate the pseudo-CT of ``inputVolume`` with the texture of ``referenceVolume``.

        :param outputVolume: receives the pseudo-CT (HU, exactly the input's geometry); None creates "<input> pseudo-CT".
        :param boneSegmentation: receives one segment per bone; None creates "<input> bones" (unless boneMethod is "none").
        :param modality: "MR" or "CBCT". :param model: installed model name or folder; None for the default.
        :param method: one of runner.METHODS ("rbg", "registformer", "stn-fusion", "dual-similarity", "mr-gan", "registration-by-synthesis", "rigid", "syn", "elastix"); None for the model's own.
        :param device: "auto", "cuda", "cuda:N" or "cpu". :param boneMethod: "auto", "totalsegmentator", "threshold" or "none".
        :param threads: CPU threads (None: OMP_NUM_THREADS if set, else all cores). :param precision: "auto", "float32" or "bfloat16".
        :param waitForCompletion: True blocks until done and returns a RegisterByGenerationResult (raises RuntimeError
            with one line on failure); False returns None at once and calls completedCallback(result) later.
        :param progressCallback: called as (fraction, stage, message). :param logCallback: called with each log line.

        Nothing in the scene changes unless the run succeeds. The results join the input's
        study in the subject hierarchy.
        """
        reason = validationError(inputVolume, referenceVolume, outputVolume)
        if reason:
            raise ValueError(reason)
        method = None if method in (None, "", Method.AUTO) else _choice(method, Method)
        runOptions = dict(modality=_choice(modality, Modality), model=model, method=method, device=str(device), prealign=prealign,
                          bones=_choice(boneMethod, BoneMethod), threads=threads, precision=precision)  # fmt: skip
        if self.isRunning():
            raise RuntimeError(_("A pseudo-CT generation is already running; cancel it or wait for it."))
        self.setupPythonRequirements()
        self._task = PseudoCtTask(
            slicer.mrmlScene, inputVolume, referenceVolume, outputVolume, boneSegmentation,
            pythonExecutable=python_slicer_executable(slicer.app.slicerHome), temporaryDirectory=slicer.app.temporaryPath,
            runOptions=runOptions, progressCallback=progressCallback, logCallback=logCallback, keepTemporaryFiles=self.keepTemporaryFiles,
        ).start()  # fmt: skip
        self._completedCallback = completedCallback
        if not waitForCompletion:
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_INTERVAL_MS)
            self._timer.connect("timeout()", self._poll)
            self._timer.start()
            return None
        while (result := self._poll()) is None:
            slicer.app.processEvents()  # keeps a GUI painting (and a Cancel button working) while blocked
            time.sleep(0.05)
        if not result.success:
            raise RuntimeError(result.errorMessage)
        return result

    def _poll(self):
        """Drain the child's events (never blocks); on its exit, finish and return the result."""
        task = self._task
        result = task.poll() if task is not None else None
        if result is None:
            return None
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._task = None
        if result.success and slicer.app.layoutManager():  # no layout when headless
            slicer.util.setSliceViewerLayers(background=result.outputVolume, foreground=task.inputVolume, foregroundOpacity=0.5, fit=True)
        if self._completedCallback:
            self._completedCallback(result)
        return result

    def setupPythonRequirements(self) -> None:
        """Install what the child process needs, on first use: torch through the PyTorch
        extension (it picks the build for the GPU driver), the rest pinned with pip, never
        replacing Slicer's NumPy or SimpleITK. Raises RuntimeError with one line on failure."""
        torchOk, torchStatus = install.torch_is_usable()
        missing = install.missing_requirements()
        if torchOk and not missing:
            return
        if slicer.app.testingEnabled():
            raise RuntimeError(_("Python packages are missing ({what}); open the module once outside testing mode to install them.").format(
                what=", ".join(missing + ([] if torchOk else ["torch"]))))
        what = ([] if torchOk else [_("PyTorch ({status})").format(status=torchStatus)]) + missing
        if not _confirm(_("Register by Generation needs these Python packages: {what}. Install them now? This needs a network connection "
                          "and may take several minutes (PyTorch with CUDA is about 2-3 GB).").format(what=", ".join(what))):
            raise RuntimeError(_("The required Python packages were not installed."))
        if not torchOk:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                raise RuntimeError(_("This module needs the PyTorch extension: install it with the Extensions Manager, restart Slicer, and try again."))
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=f">={install.TORCH_MINIMUM_VERSION}")
            if torch is None:
                raise RuntimeError(_("PyTorch could not be installed; use the 'PyTorch Utils' module to install it, then try again."))
        if missing:
            loadedBefore = [r.split("==")[0] for r in missing if r.split("==")[0] in sys.modules]
            constraints = os.path.join(tempfile.mkdtemp(prefix="RegisterByGeneration-pip-", dir=slicer.app.temporaryPath), "constraints.txt")
            with open(constraints, "w", encoding="utf-8") as stream:
                stream.write("\n".join(install.protection_constraints()) + "\n")
            try:
                slicer.util.pip_install(["-c", constraints, *missing])
            except Exception as error:
                raise RuntimeError(_("Installing {what} failed ({error}); see the Python console for pip's output.").format(what=", ".join(missing), error=error))
            finally:
                shutil.rmtree(os.path.dirname(constraints), ignore_errors=True)
            if loadedBefore and _confirm(_("Updated {names}, which were already loaded in Slicer. The processing runs in a separate process and is "
                                           "not affected, but other modules may need a restart. Restart Slicer now?").format(names=", ".join(loadedBefore)), default=False):
                slicer.util.restart()


def _choice(value, enumType):
    """The value of an enum member, or of the one a case-insensitive string names (else ValueError)."""
    return value.value if isinstance(value, enumType) else enumType(str(value).lower()).value


def _confirm(text, default=True):
    """Ask OK/Cancel in the GUI; without a main window (headless) log it and return ``default``."""
    if slicer.util.mainWindow() is None:
        logging.warning("RegisterByGeneration: %s (no main window: answered %s)", text, "yes" if default else "no")
        return default
    return slicer.util.confirmOkCancelDisplay(text, windowTitle=_("Register by Generation"))


#
# Test
#


class RegisterByGenerationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: ``Slicer --testing`` (see docs/user-guide.md) or Developer mode's "Reload and Test"."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_InvalidInputsLeaveSceneUnchanged, self.test_PhantomPseudoCT):
            self.setUp()
            test()

    def _phantom(self):
        """A small MR + reference CT phantom made by the library's generator (no download)."""
        import subprocess

        folder = tempfile.mkdtemp(prefix="RegisterByGenerationTest-", dir=slicer.app.temporaryPath)
        try:
            argv = [python_slicer_executable(slicer.app.slicerHome), "-m", "RegisterByGenerationLib", "phantom", "-o", folder,
                    "--cases", "1", "--seed", "1", "--modality", "mr", "--size", "64", "48", "16"]
            completed = subprocess.run(argv, env=library_environment(), capture_output=True, text=True)
            self.assertEqual(completed.returncode, 0, completed.stderr)
            caseDir = next(os.path.join(folder, name) for name in sorted(os.listdir(folder)) if os.path.isdir(os.path.join(folder, name)))
            return [loader(os.path.join(caseDir, name)) for loader, name in (
                (slicer.util.loadVolume, "mr.nii.gz"), (slicer.util.loadVolume, "ct.nii.gz"), (slicer.util.loadLabelVolume, "mask.nii.gz"))]
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def test_InvalidInputsLeaveSceneUnchanged(self):
        logic = RegisterByGenerationLogic()
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            logic.process(volume, None)
        with self.assertRaises(ValueError):
            logic.process(volume, volume)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)

    def test_PhantomPseudoCT(self):
        """A missing dependency or model fails this test, saying how to install it: a
        self-test that skips what it cannot run would pass on a broken installation."""
        import numpy as np
        from RegisterByGenerationLib.errors import ModelError
        from RegisterByGenerationLib.modelstore import default_model_name, find_model

        ok, status = install.torch_is_usable()
        missing = install.missing_requirements()
        if not ok or missing:
            self.fail(f"Python packages missing (torch: {status}; others: {', '.join(missing) or 'none'}): open the module in Slicer "
                      "outside testing mode and click Apply once, which installs them, then run the test again")
        try:
            find_model(default_model_name("mr"))
        except ModelError as error:
            self.fail(f"the default MR model is not installed ({error}): it ships with the extension in Resources/Models; "
                      "reinstall the extension, or install a model folder with the module's 'Import model...' button")
        self.delayDisplay("Generating a phantom")
        inputVolume, referenceVolume, bodyMask = self._phantom()
        self.delayDisplay("Running the default MR model on the CPU")
        result = RegisterByGenerationLogic().process(inputVolume, referenceVolume, modality="MR", device="cpu", boneMethod="threshold")
        self.assertTrue(sameGeometry(worldGeometry(result.outputVolume), worldGeometry(inputVolume), 1e-6))
        hu = slicer.util.arrayFromVolume(result.outputVolume)
        self.assertLessEqual(hu.min(), -900, "no air around the body")
        self.assertGreaterEqual(hu.max(), 300, "no bone")
        bodyMedian = float(np.median(hu[slicer.util.arrayFromVolume(bodyMask) > 0]))
        self.assertTrue(-150 <= bodyMedian <= 150, f"median HU in the body is {bodyMedian}, not soft tissue")
        segmentation = result.boneSegmentation.GetSegmentation()
        from RegisterByGenerationLib.bone_labels import BONE_LABELS

        names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
        self.assertTrue(names, "no bone segments")
        self.assertLessEqual(names, set(BONE_LABELS.values()))
        self.delayDisplay("Test passed")
