"""MRML nodes to files and back, and one ``rbg run`` between them (see the package docstring).

Imports ``slicer`` (MRML, from Slicer or the ``slicer-core`` wheel) and ``vtk``, never Qt.
"""

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading

import slicer
import vtk

from RegisterByGenerationLib.runner import RunProcess, build_run_command, library_environment

try:
    from slicer.i18n import tr as _
except ImportError:  # slicer-core has no Qt, hence no translations: messages stay in English

    def _(text):
        return text


#: World geometry of the pseudo-CT and of the input must agree within this (mm).
GEOMETRY_TOLERANCE_MM = 1e-3


@dataclasses.dataclass
class RegisterByGenerationResult:
    """What a run produced. ``report`` is the run's report.json (or None); ``log`` its text lines."""

    success: bool = False
    cancelled: bool = False
    errorMessage: str = ""
    outputVolume: object = None
    boneSegmentation: object = None
    report: object = None
    device: str = ""
    seconds: float = 0.0
    log: list = dataclasses.field(default_factory=list)


def validationError(inputVolume, referenceVolume, outputVolume=None):
    """Why these nodes cannot be processed, in one sentence; None when they can."""
    if not inputVolume or not inputVolume.GetImageData():
        return _("Select an input volume (MR or CBCT).")
    if not referenceVolume or not referenceVolume.GetImageData():
        return _("Select a reference CT volume.")
    if inputVolume.GetID() == referenceVolume.GetID():
        return _("The input and the reference CT must be different volumes.")
    if outputVolume and outputVolume.GetID() in (inputVolume.GetID(), referenceVolume.GetID()):
        return _("The pseudo-CT output must not overwrite an input; choose 'Create new volume'.")
    for node in (inputVolume, referenceVolume):
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            return _("{name} is a label map, not an image.").format(name=node.GetName())
        if node.GetImageData().GetNumberOfScalarComponents() != 1:
            return _("{name} has several components per voxel (colour or vector); choose a scalar volume.").format(name=node.GetName())
        if min(node.GetImageData().GetDimensions()) < 2:
            return _("{name} is not a 3D volume (a side has a single voxel).").format(name=node.GetName())
        transform = node.GetParentTransformNode()
        if transform and not transform.IsTransformToWorldLinear():
            return _("{name} is under a non-linear transform; harden it first (Data module).").format(name=node.GetName())
    return None


def worldGeometry(volumeNode):
    """(dimensions, IJK-to-world-RAS vtkMatrix4x4) of a volume, applying a linear parent transform."""
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    transform = volumeNode.GetParentTransformNode()
    if transform:
        toWorld = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(toWorld)
        vtk.vtkMatrix4x4.Multiply4x4(toWorld, ijkToRas, ijkToRas)
    return tuple(volumeNode.GetImageData().GetDimensions()), ijkToRas


def sameGeometry(a, b, toleranceMm=GEOMETRY_TOLERANCE_MM):
    """True when two ``worldGeometry`` results have equal dimensions and matrices within the tolerance."""
    if a[0] != b[0]:
        return False
    return all(abs(a[1].GetElement(i, j) - b[1].GetElement(i, j)) <= toleranceMm for i in range(3) for j in range(4))


def exportVolume(volumeNode, path):
    """Write a volume to ``path`` in world coordinates (its linear parent transform applied).

    The node, its storage node and the scene are left alone: a stand-in node outside
    any scene shares the voxels and carries the world geometry.
    """
    standIn = slicer.vtkMRMLScalarVolumeNode()
    standIn.SetAndObserveImageData(volumeNode.GetImageData())
    standIn.SetIJKToRASMatrix(worldGeometry(volumeNode)[1])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(standIn) or not os.path.isfile(path):
        raise RuntimeError(_("Could not write {name} to {path}.").format(name=volumeNode.GetName(), path=path))


def loadVolume(path, name):
    """A scalar volume node read from ``path``, not in any scene and without a storage node."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise RuntimeError(_("Could not read the volume {path}.").format(path=path))
    return node


def loadSegmentation(path):
    """The segmentation in ``path`` (a ``.seg.nrrd``) read by Slicer's own reader, so names,
    colours and terminology come from the file; in a scratch scene of its own (the reader
    makes display nodes), never in the user's, and without a storage node."""
    node = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetSegmentation().GetNumberOfSegments() == 0:
        raise RuntimeError(_("Could not read the segmentation {path}.").format(path=path))
    return node.GetSegmentation()


def removeNodes(scene, *nodes):
    """Remove nodes with their display and storage nodes (RemoveNode alone leaves those behind)."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] + [node.GetStorageNode()]
        scene.RemoveNode(node)
        for helper in helpers:
            if helper is not None and helper.GetScene() is not None:
                scene.RemoveNode(helper)


def commitResults(scene, inputVolume, loadedVolume, loadedBones, outputVolume=None, boneSegmentation=None):
    """Put a checked pseudo-CT (and bones) into the scene; returns ``(volume, segmentation)``.

    ``loadedVolume`` is a volume node from :func:`loadVolume`, ``loadedBones`` a
    ``vtkSegmentation`` from :func:`loadSegmentation` or None.

    The pseudo-CT must have exactly the input's world grid, else RuntimeError and the
    scene is unchanged. It gets the input's world geometry with no parent transform, a
    grey colour table and a soft-tissue CT window, and joins the input's study (its
    parent in the subject hierarchy). ``outputVolume``/``boneSegmentation`` None create
    new nodes named after the input; given nodes are overwritten.
    """
    inputGeometry = worldGeometry(inputVolume)
    if not sameGeometry(worldGeometry(loadedVolume), inputGeometry):
        raise RuntimeError(_("the pseudo-CT's geometry differs from the input's"))
    # Everything is loaded and checked: from here on the scene is changed.
    if outputVolume is None:
        outputVolume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(f"{inputVolume.GetName()} pseudo-CT"))
    outputVolume.SetAndObserveTransformNodeID(None)
    outputVolume.SetIJKToRASMatrix(inputGeometry[1])  # exactly the input's (world) geometry
    outputVolume.SetAndObserveImageData(loadedVolume.GetImageData())
    outputVolume.CreateDefaultDisplayNodes()
    displayNode = outputVolume.GetDisplayNode()
    displayNode.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    displayNode.SetAutoWindowLevel(False)
    displayNode.SetWindowLevel(400, 40)  # soft-tissue CT window
    segmentation = None
    if loadedBones is not None:
        segmentation = boneSegmentation or scene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{inputVolume.GetName()} bones"))
        segmentation.GetSegmentation().DeepCopy(loadedBones)  # names, label values, colours, terminology tags
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(outputVolume)
    _joinStudyOf(scene, inputVolume, outputVolume, segmentation)
    return outputVolume, segmentation


def _joinStudyOf(scene, inputVolume, *nodes):
    """Give ``nodes`` the subject-hierarchy parent (patient/study) of ``inputVolume``."""
    hierarchy = scene.GetSubjectHierarchyNode()
    if hierarchy is None:
        return
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(inputVolume)) or hierarchy.GetSceneItemID()
    for node in nodes:
        if node is None:
            continue
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:  # Slicer's subject-hierarchy logic adds every data node; without it, add it here
            hierarchy.CreateItem(parent, node)


class PseudoCtTask:
    """One pseudo-CT generation: export, ``rbg run`` in a child process, load, check, commit.

    :param scene: the MRML scene (in Slicer ``slicer.mrmlScene``).
    :param pythonExecutable: the interpreter of the child (in Slicer ``PythonSlicer``).
    :param temporaryDirectory: where the exchange folder is made (in Slicer ``slicer.app.temporaryPath``).
    :param runOptions: keyword arguments of :func:`RegisterByGenerationLib.runner.build_run_command`
        (modality, model, device, prealign, bones, threads, precision).
    :param progressCallback: called as (fraction, stage, message). :param logCallback: called with each log line.

    :meth:`start` then :meth:`poll` until it returns the :class:`RegisterByGenerationResult`.
    Nothing in the scene changes unless the run succeeds; the exchange folder is removed
    at the end unless ``keepTemporaryFiles``.
    """

    def __init__(self, scene, inputVolume, referenceVolume, outputVolume=None, boneSegmentation=None, *, pythonExecutable,
                 temporaryDirectory, runOptions, progressCallback=None, logCallback=None, keepTemporaryFiles=False):
        self.scene = scene
        self.inputVolume, self.referenceVolume = inputVolume, referenceVolume
        self.outputVolume, self.boneSegmentation = outputVolume, boneSegmentation
        self.pythonExecutable, self.temporaryDirectory = str(pythonExecutable), temporaryDirectory
        self.runOptions = dict(runOptions)
        self.progressCallback, self.logCallback = progressCallback, logCallback
        self.keepTemporaryFiles = keepTemporaryFiles
        self.process = None
        self.tempDir = None
        self.result = None
        self._cancelling = False

    def start(self):
        """Validate, export the inputs and start the child; returns ``self``.

        Raises ValueError (invalid nodes) or RuntimeError (export failed); nothing is left behind.
        """
        reason = validationError(self.inputVolume, self.referenceVolume, self.outputVolume)
        if reason:
            raise ValueError(reason)
        self.tempDir = tempfile.mkdtemp(prefix="RegisterByGeneration-", dir=self.temporaryDirectory)
        try:
            paths = {"input": os.path.join(self.tempDir, "input.nrrd"), "reference": os.path.join(self.tempDir, "reference.nrrd")}
            exportVolume(self.inputVolume, paths["input"])
            exportVolume(self.referenceVolume, paths["reference"])
            argv = build_run_command(self.pythonExecutable, paths["input"], paths["reference"], os.path.join(self.tempDir, "output"), **self.runOptions)
            logging.info("RegisterByGeneration: %s", " ".join(argv))
            self.process = RunProcess(argv, env=library_environment()).start()
        except Exception:
            shutil.rmtree(self.tempDir, ignore_errors=True)
            raise
        return self

    @property
    def running(self):
        return self.process is not None and self.result is None

    def cancel(self):
        """Stop the child's process tree; :meth:`poll` then returns a cancelled result.
        Returns at once: the stopping (up to a few seconds) runs on a worker thread."""
        if self.running and not self._cancelling:
            self._cancelling = True
            threading.Thread(target=self.process.cancel, name="RegisterByGeneration-cancel", daemon=True).start()

    def poll(self):
        """Drain the child's events (never blocks); the result once the child has exited, else None."""
        if self.result is not None:
            return self.result
        for event in self.process.poll():
            try:
                if event.kind == "progress" and self.progressCallback:
                    self.progressCallback(event.fraction, event.stage, event.message)
                elif event.kind == "log":
                    logging.debug("RegisterByGeneration: %s", event.message)
                    if self.logCallback:
                        self.logCallback(event.message)
            except Exception:  # a failing callback must not lose the exit event
                logging.exception("RegisterByGeneration: progress/log callback failed")
            if event.kind == "exit":
                self.result = self._finish()
        return self.result

    def _finish(self):
        process, result = self.process, RegisterByGenerationResult()
        result.seconds, result.log = process.elapsed_s, process.log_lines
        try:
            if process.returncode == 0:
                self._loadResults(result)
                result.success = True
            else:
                result.cancelled = process.cancelled
                result.errorMessage = process.error_message or _("the processing failed")
        except Exception as error:  # loading failed: report it; the scene was not changed
            logging.exception("RegisterByGeneration: loading the results failed")
            result.errorMessage = _("Could not load the results: {error}").format(error=error)
        finally:
            if self.keepTemporaryFiles:
                logging.info("RegisterByGeneration: temporary files kept in %s", self.tempDir)
            else:
                shutil.rmtree(self.tempDir, ignore_errors=True)
        return result

    def _loadResults(self, result):
        """Load the pseudo-CT (and bones) outside the scene, check them, then commit them."""
        process = self.process
        pseudoCtPath, reportPath = process.output_file("pseudo_ct.nii.gz"), process.output_file("report.json")
        if pseudoCtPath is None:
            raise RuntimeError(_("the processing ended without writing a pseudo-CT"))
        result.device = (process.result or {}).get("device", "")
        if reportPath:
            result.report = json.loads(reportPath.read_text(encoding="utf-8"))
        loadedVolume = loadVolume(pseudoCtPath, "pseudo-CT")
        bonesPath = process.output_file("bones.seg.nrrd")
        loadedBones = loadSegmentation(bonesPath) if self.runOptions.get("bones") != "none" and bonesPath else None
        result.outputVolume, result.boneSegmentation = commitResults(
            self.scene, self.inputVolume, loadedVolume, loadedBones, self.outputVolume, self.boneSegmentation)
