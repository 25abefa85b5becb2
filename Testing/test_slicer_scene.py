"""The module's scene code against real Slicer MRML (the ``slicer-core`` wheel, no Qt).

Volume, segmentation and transform nodes, storage nodes and the segmentations logic
are Slicer's own C++ here, as in the application. The scene fixture sets up what
``qSlicerCoreApplication`` would: an application logic with its colour nodes and the
segmentations logic. What still needs the Qt application (widgets, the QTimer, the
installer, slice views) is listed in docs/user-guide.md.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]

try:
    import slicer
    import vtk
    from vtk.util import numpy_support
except ImportError as error:  # no slicer-core wheel for this platform or Python
    if os.environ.get("CI"):
        raise  # CI installs the test extra: a missing wheel there is a failure, not a skip
    pytest.skip(f"slicer-core is not installed ({error}); `pip install -e .[test]` installs it where a wheel exists", allow_module_level=True)

sys.path.insert(0, str(REPO / "RegisterByGeneration"))
import RegisterByGenerationSceneLib as scenelib  # noqa: E402  (the module folder is Slicer's sys.path entry)
from RegisterByGenerationSceneLib import scene as scenemodule  # noqa: E402

from RegisterByGenerationLib.bone_labels import BONE_COLORS, BONE_LABELS  # noqa: E402
from RegisterByGenerationLib.bones.segfile import BONE_TERMINOLOGY, TERMINOLOGY_CONTEXT, write_bone_outputs  # noqa: E402

from conftest import make_volume  # noqa: E402


@pytest.fixture
def mrml():
    """A scene set up as Slicer's core application does it (colours, segmentations logic).
    Slicer's Qt-side subject-hierarchy plugins, which give every new data node an item,
    are not here: tests create the items they need."""
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLScene(scene)
    segmentations.SetMRMLApplicationLogic(app)
    yield scene, segmentations
    scene.Clear(True)


def _add_volume(scene, path, name):
    node = scenelib.loadVolume(path, name)
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def _linear_transform(scene, degrees=12.0, shift=(12.5, -3.0, 7.0)):
    matrix = vtk.vtkMatrix4x4()
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    for (i, j), value in {(0, 0): c, (0, 1): -s, (1, 0): s, (1, 1): c}.items():
        matrix.SetElement(i, j, value)
    for i, value in enumerate(shift):
        matrix.SetElement(i, 3, value)
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetMatrixTransformToParent(matrix)
    return node


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def _file_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The IJK→RAS matrix of an image SimpleITK read (SimpleITK is LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = np.reshape(image.GetDirection(), (3, 3)) * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _voxels(node) -> np.ndarray:
    image = node.GetImageData()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return array.reshape(tuple(reversed(image.GetDimensions())))  # [k, j, i] like SimpleITK


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


# --------------------------------------------------------------------------- export


def test_export_writes_the_world_geometry_and_leaves_the_node_alone(mrml, real_ct_path, tmp_path):
    """Plain, under a linear transform (world, not local, geometry in the file) and
    hardened (the same file as under the transform): the file's IJK→RAS is the node's
    world one within 1e-6, its voxels the node's; the node and its storage are unchanged."""
    scene, _ = mrml
    node = _add_volume(scene, real_ct_path, "ct")
    voxels = _voxels(node).copy()
    local = _matrix(scenelib.worldGeometry(node)[1])
    scenelib.exportVolume(node, tmp_path / "plain.nrrd")
    plain = sitk.ReadImage(str(tmp_path / "plain.nrrd"))
    assert np.abs(_file_ijk_to_ras(plain) - local).max() < 1e-6
    assert np.array_equal(sitk.GetArrayViewFromImage(plain), voxels)

    transform = _linear_transform(scene)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = _matrix(scenelib.worldGeometry(node)[1])
    assert np.abs(world - local).max() > 1  # the transform moves it
    scenelib.exportVolume(node, tmp_path / "moved.nrrd")
    moved = sitk.ReadImage(str(tmp_path / "moved.nrrd"))
    assert np.abs(_file_ijk_to_ras(moved) - world).max() < 1e-6
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    assert np.array_equal(_matrix(ijk_to_ras), local) and node.GetTransformNodeID() == transform.GetID()
    assert node.GetStorageNode() is None and np.array_equal(_voxels(node), voxels)

    slicer.vtkSlicerTransformLogic.hardenTransform(node)
    assert node.GetTransformNodeID() is None
    scenelib.exportVolume(node, tmp_path / "hardened.nrrd")
    hardened = sitk.ReadImage(str(tmp_path / "hardened.nrrd"))
    assert np.abs(_file_ijk_to_ras(hardened) - world).max() < 1e-6
    assert np.array_equal(sitk.GetArrayViewFromImage(hardened), voxels)


def test_export_to_an_unwritable_place_is_a_one_line_error(mrml, real_ct_path, tmp_path):
    scene, _ = mrml
    node = _add_volume(scene, real_ct_path, "ct")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RuntimeError, match=r"^Could not write ct to .*file/ct\.nrrd\.$"):
        scenelib.exportVolume(node, tmp_path / "file" / "ct.nrrd")


# --------------------------------------------------------------------------- validation


def test_validation_on_real_nodes(mrml, real_ct_path):
    scene, _ = mrml
    ct = _add_volume(scene, real_ct_path, "ct")
    mr = _add_volume(scene, real_ct_path, "mr")
    assert scenelib.validationError(mr, ct) is None
    assert "Select an input" in scenelib.validationError(None, ct)
    assert "Select a reference" in scenelib.validationError(mr, scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
    assert "must be different" in scenelib.validationError(mr, mr)
    assert "must not overwrite" in scenelib.validationError(mr, ct, ct)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    labels.SetAndObserveImageData(ct.GetImageData())
    assert scenelib.validationError(labels, ct) == "labels is a label map, not an image."
    mr.SetAndObserveTransformNodeID(_linear_transform(scene).GetID())
    assert scenelib.validationError(mr, ct) is None  # linear: exported in world coordinates
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    displacement = vtk.vtkImageData()
    displacement.SetDimensions(4, 4, 4)
    displacement.AllocateScalars(vtk.VTK_DOUBLE, 3)
    grid_transform = slicer.vtkOrientedGridTransform()
    grid_transform.SetDisplacementGridData(displacement)
    grid.SetAndObserveTransformFromParent(grid_transform)
    ct.SetAndObserveTransformNodeID(grid.GetID())
    assert scenelib.validationError(mr, ct) == "ct is under a non-linear transform; harden it first (Data module)."


# --------------------------------------------------------------------------- results


def _pseudo_ct_file(node, path, shift_mm=0.0):
    """A pseudo-CT file on the world grid of ``node`` (shifted by ``shift_mm`` along x)."""
    exported = path.with_suffix(".grid.nrrd")
    scenelib.exportVolume(node, exported)
    grid = sitk.ReadImage(str(exported))
    image = make_volume(grid.GetSize(), grid.GetSpacing(), direction=grid.GetDirection(), seed=3)
    image.SetOrigin(tuple(o + (shift_mm if i == 0 else 0.0) for i, o in enumerate(grid.GetOrigin())))
    sitk.WriteImage(image, str(path))
    return path


def test_results_go_into_new_or_given_nodes_with_the_input_world_geometry(mrml, real_ct_path, tmp_path):
    scene, _ = mrml
    mr = _add_volume(scene, real_ct_path, "mr")
    mr.SetAndObserveTransformNodeID(_linear_transform(scene).GetID())
    hierarchy = scene.GetSubjectHierarchyNode()
    study = hierarchy.CreateStudyItem(hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "patient"), "study")
    hierarchy.CreateItem(study, mr)
    write_bone_outputs(_labels_like(sitk.ReadImage(str(_pseudo_ct_file(mr, tmp_path / "grid.nii.gz")))), tmp_path)
    loaded = scenelib.loadVolume(_pseudo_ct_file(mr, tmp_path / "pct.nii.gz"), "loaded")
    bones = scenelib.loadSegmentation(tmp_path / "bones.seg.nrrd")

    volume, segmentation = scenemodule.commitResults(scene, mr, loaded, bones)
    assert volume.GetName() == "mr pseudo-CT" and segmentation.GetName() == "mr bones"
    assert volume.GetTransformNodeID() is None
    assert scenelib.sameGeometry(scenelib.worldGeometry(volume), scenelib.worldGeometry(mr), 1e-9)
    display = volume.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey" and (display.GetWindow(), display.GetLevel()) == (400, 40)
    assert not display.GetAutoWindowLevel()
    for node in (volume, segmentation):
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
        assert node.GetStorageNode() is None  # nothing points at the deleted exchange folder
    assert segmentation.GetSegmentation().GetNumberOfSegments() == len(BONE_LABELS)

    given_volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    given_volume.SetAndObserveTransformNodeID(_linear_transform(scene, degrees=-5).GetID())
    given_bones = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my bones")
    hierarchy.CreateItem(hierarchy.GetSceneItemID(), given_volume)  # as Slicer's plugins would have
    again = scenemodule.commitResults(scene, mr, scenelib.loadVolume(tmp_path / "pct.nii.gz", "x"), scenelib.loadSegmentation(tmp_path / "bones.seg.nrrd"),
                                      given_volume, given_bones)  # fmt: skip
    assert again == (given_volume, given_bones) and given_volume.GetName() == "mine"
    assert given_volume.GetTransformNodeID() is None
    assert scenelib.sameGeometry(scenelib.worldGeometry(given_volume), scenelib.worldGeometry(mr), 1e-9)
    assert given_bones.GetSegmentation().GetNumberOfSegments() == len(BONE_LABELS)
    assert all(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study for node in again)

    before = _node_ids(scene)
    shifted = scenelib.loadVolume(_pseudo_ct_file(mr, tmp_path / "shifted.nii.gz", shift_mm=0.5), "shifted")
    with pytest.raises(RuntimeError, match="geometry differs from the input's"):
        scenemodule.commitResults(scene, mr, shifted, None)
    assert _node_ids(scene) == before


def _labels_like(image: sitk.Image) -> sitk.Image:
    """Every bone label in its own block, on the grid of ``image``."""
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    step = array.shape[1] // (len(BONE_LABELS) + 1)
    for value in BONE_LABELS:
        array[2:-2, value * step : value * step + step // 2, 5:-5] = value
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


def test_bones_seg_nrrd_reads_in_slicer_as_the_library_defines_it(mrml, real_ct_path, tmp_path):
    """Slicer's own segmentation reader: every segment's name, label value, colour and
    terminology (deserialised by the terminologies logic: context, category, type,
    modifier) as bone_labels/segfile define them; Slicer's label-map export of it is
    bones.nii.gz voxel for voxel, on its grid."""
    scene, segmentations = mrml
    labels = _labels_like(sitk.ReadImage(str(real_ct_path)))
    paths = write_bone_outputs(labels, tmp_path)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.GetSegmentation().DeepCopy(scenelib.loadSegmentation(paths["segmentation"]))
    segmentation = node.GetSegmentation()
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    found = {}
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        tag = vtk.mutable("")
        assert segment.GetTag("TerminologyEntry", tag)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminologies.DeserializeTerminologyEntry(str(tag), entry)
        modifier = entry.GetTypeModifierObject().GetCodeValue()
        found[segment.GetName()] = (segment.GetLabelValue(), tuple(round(c, 4) for c in segment.GetColor()), entry.GetTerminologyContextName(),
                                    entry.GetCategoryObject().GetCodeValue(), entry.GetTypeObject().GetCodeValue(), modifier)  # fmt: skip
    expected = {}
    for value, name in BONE_LABELS.items():
        code_type, code_modifier = BONE_TERMINOLOGY[name]
        expected[name] = (value, tuple(round(c, 4) for c in BONE_COLORS[value]), TERMINOLOGY_CONTEXT, "123037004", code_type[1],
                          code_modifier[1] if code_modifier else None)  # fmt: skip
    assert found == expected

    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    reference = _add_volume(scene, real_ct_path, "ct")
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference)  # as the module does on commit
    assert segmentations.ExportAllSegmentsToLabelmapNode(node, labelmap, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
    assert scenelib.sameGeometry(scenelib.worldGeometry(labelmap), scenelib.worldGeometry(reference), 1e-6)
    assert np.array_equal(_voxels(labelmap), sitk.GetArrayViewFromImage(sitk.ReadImage(str(paths["labelmap"]))))


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory) -> Path:
    from RegisterByGenerationLib.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=1, seed=1, modality="mr", size=(64, 48, 16))[0]


def _task(scene, case, tiny_mr_model, tmp_path, **overrides):
    mr = _add_volume(scene, case / "mr.nii.gz", "mr")
    ct = _add_volume(scene, case / "ct.nii.gz", "ct")
    options = {"modality": "mr", "model": tiny_mr_model, "device": "cpu", "prealign": False, "bones": "threshold", "threads": 1, **overrides}
    events = []
    task = scenelib.PseudoCtTask(scene, mr, ct, pythonExecutable=sys.executable, temporaryDirectory=tmp_path, runOptions=options,
                                 progressCallback=lambda *event: events.append(event))  # fmt: skip
    return task, mr, events


def _wait(task, timeout=240.0):
    deadline = time.monotonic() + timeout
    while (result := task.poll()) is None:
        assert time.monotonic() < deadline, task.process.log_lines[-20:]
        time.sleep(0.05)
    return result


def test_a_run_commits_a_pseudo_ct_and_bones_and_cleans_up(mrml, phantom_case, tiny_mr_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    scene, _ = mrml
    task, mr, events = _task(scene, phantom_case, tiny_mr_model, tmp_path)
    before = scene.GetNumberOfNodes()
    task.start()
    assert task.running and len(os.listdir(tmp_path)) == 1
    result = _wait(task)
    assert result.success, result.errorMessage
    assert events and events[-1][0] == pytest.approx(1.0)
    assert scenelib.sameGeometry(scenelib.worldGeometry(result.outputVolume), scenelib.worldGeometry(mr), 1e-6)
    assert result.report["bones"]["method"] == "threshold" and result.device == "cpu"
    names = {result.boneSegmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(result.boneSegmentation.GetSegmentation().GetNumberOfSegments())}
    assert names == set(BONE_LABELS.values())
    assert os.listdir(tmp_path) == []  # the exchange folder is gone
    storage_files = [scene.GetNthNode(i).GetFileName() for i in range(scene.GetNumberOfNodes()) if scene.GetNthNode(i).IsA("vtkMRMLStorageNode")]
    assert not [f for f in storage_files if f and str(tmp_path) in f]  # no storage node points at it
    added = scene.GetNumberOfNodes() - before
    assert added == 4  # the pseudo-CT, the bones and one display node each


def test_failures_and_cancel_leave_the_scene_unchanged(mrml, phantom_case, tiny_mr_model, tmp_path, monkeypatch):
    """An engine failure (its one-line message), a pseudo-CT on another grid (a loaded
    result that fails the check) and Cancel: the scene as before, the folder removed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    scene, _ = mrml
    failing, _, _ = _task(scene, phantom_case, tiny_mr_model, tmp_path, model="no-such-model")
    before = _node_ids(scene)
    result = _wait(failing.start())
    assert not result.success and not result.cancelled and "no-such-model" in result.errorMessage
    assert _node_ids(scene) == before and os.listdir(tmp_path) == []

    original = scenemodule.loadVolume

    def shifted(path, name):
        node = original(path, name)
        node.SetOrigin(*(o + 2.0 for o in node.GetOrigin()))
        return node

    monkeypatch.setattr(scenemodule, "loadVolume", shifted)
    moved, _, _ = _task(scene, phantom_case, tiny_mr_model, tmp_path, bones="none")
    before = _node_ids(scene)
    result = _wait(moved.start())
    assert not result.success and result.errorMessage == "Could not load the results: the pseudo-CT's geometry differs from the input's"
    assert _node_ids(scene) == before and os.listdir(tmp_path) == []
    monkeypatch.setattr(scenemodule, "loadVolume", original)

    cancelled, _, events = _task(scene, phantom_case, tiny_mr_model, tmp_path, prealign=True)
    before = _node_ids(scene)
    cancelled.start()
    deadline = time.monotonic() + 180
    while not events:  # the child is inside the pipeline
        assert time.monotonic() < deadline and cancelled.poll() is None
        time.sleep(0.02)
    cancelled.cancel()
    result = _wait(cancelled, timeout=30)
    assert result.cancelled and not result.success
    assert _node_ids(scene) == before and os.listdir(tmp_path) == []


def test_invalid_nodes_start_nothing(mrml, real_ct_path, tmp_path):
    scene, _ = mrml
    ct = _add_volume(scene, real_ct_path, "ct")
    task = scenelib.PseudoCtTask(scene, ct, ct, pythonExecutable=sys.executable, temporaryDirectory=tmp_path, runOptions={})
    with pytest.raises(ValueError, match="must be different"):
        task.start()
    assert task.process is None and os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- the module's Logic


class _Timer:
    """Stands in for qt.QTimer: the test fires it by hand (the event loop's part)."""

    def __init__(self):
        self.slot, self.active = None, False

    def setInterval(self, milliseconds):
        self.interval = milliseconds

    def connect(self, signal, slot):
        assert signal == "timeout()"
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def _base(name):
    return type(name, (), {"__init__": lambda self, *args: None})


@pytest.fixture
def module_logic(mrml, tmp_path, monkeypatch):
    """The module file itself, imported with real MRML and stand-ins for the Qt side only:
    qt (the QTimer), slicer.i18n, the parameter-node wrapper, the scripted-module bases
    and slicer.app (temporary folder, processEvents, no layout manager)."""
    import importlib.util
    import types

    scene, _ = mrml
    timers = []
    fake_qt = types.ModuleType("qt")
    fake_qt.QTimer = lambda: timers.append(_Timer()) or timers[-1]
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr, i18n.translate = (lambda text: text), (lambda context, text: text)
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"):
        setattr(scripted, name, _base(name))
    scripted.__all__ = [n for n in vars(scripted) if n.startswith("Scripted")]
    for name, module in (("qt", fake_qt), ("slicer.i18n", i18n), ("slicer.parameterNodeWrapper", wrapper), ("slicer.ScriptedLoadableModule", scripted)):
        monkeypatch.setitem(sys.modules, name, module)
    app = types.SimpleNamespace(temporaryPath=str(tmp_path), slicerHome=str(tmp_path), processEvents=lambda: None,
                                layoutManager=lambda: None, testingEnabled=lambda: True)  # fmt: skip
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    spec = importlib.util.spec_from_file_location("RegisterByGenerationModuleUnderTest", REPO / "RegisterByGeneration" / "RegisterByGeneration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "python_slicer_executable", lambda home: sys.executable)  # no PythonSlicer here
    return module.RegisterByGenerationLogic(), scene, timers


def test_the_logic_runs_blocking_and_asynchronously(module_logic, phantom_case, tiny_mr_model, tmp_path, monkeypatch):
    """Logic.process as the console and the GUI call it, against a real rbg run child:
    blocking returns the result; asynchronous returns at once, the QTimer's polls drive
    it, the completion callback gets the result and the timer stops; Cancel reports a
    cancel and leaves the scene alone; a second run into the same nodes reuses them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic, scene, timers = module_logic
    mr = _add_volume(scene, phantom_case / "mr.nii.gz", "mr")
    ct = _add_volume(scene, phantom_case / "ct.nii.gz", "ct")
    options = dict(modality="MR", model=str(tiny_mr_model), device="cpu", prealign=False, threads=1)
    result = logic.process(mr, ct, boneMethod="threshold", **options)
    assert result.success and not logic.isRunning()
    assert scenelib.sameGeometry(scenelib.worldGeometry(result.outputVolume), scenelib.worldGeometry(mr), 1e-6)

    completed = []
    nodes = scene.GetNumberOfNodes()
    assert logic.process(mr, ct, result.outputVolume, result.boneSegmentation, boneMethod="threshold", waitForCompletion=False,
                         completedCallback=completed.append, **options) is None  # fmt: skip
    timer = timers[-1]
    assert logic.isRunning() and timer.active
    with pytest.raises(RuntimeError, match="already running"):
        logic.process(mr, ct, **options)
    deadline = time.monotonic() + 240
    while not completed:
        assert time.monotonic() < deadline
        timer.slot()
        time.sleep(0.05)
    assert completed[0].success and completed[0].outputVolume is result.outputVolume and completed[0].boneSegmentation is result.boneSegmentation
    assert not timer.active and not logic.isRunning() and scene.GetNumberOfNodes() == nodes

    cancelled, progress = [], []
    logic.process(mr, ct, boneMethod="none", waitForCompletion=False, completedCallback=cancelled.append,
                  progressCallback=lambda *event: progress.append(event), **{**options, "prealign": True})  # fmt: skip
    while not progress:
        assert time.monotonic() < deadline + 120
        timers[-1].slot()
        time.sleep(0.02)
    logic.cancel()
    while not cancelled:
        assert time.monotonic() < deadline + 180
        timers[-1].slot()
        time.sleep(0.05)
    assert cancelled[0].cancelled and scene.GetNumberOfNodes() == nodes and os.listdir(tmp_path) == []


def test_the_logic_runs_a_method_without_a_model(module_logic, phantom_case, monkeypatch):
    """``method="rigid"`` reaches ``rbg run --method rigid``: the result is the pre-aligned
    reference on the input's exact grid and the report names the method and no model."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    logic, scene, _ = module_logic
    mr = _add_volume(scene, phantom_case / "mr.nii.gz", "mr")
    ct = _add_volume(scene, phantom_case / "ct.nii.gz", "ct")
    result = logic.process(mr, ct, modality="MR", method="rigid", device="cpu", boneMethod="none", threads=1)
    assert result.success and result.report["method"] == "rigid" and result.report["model"] is None
    assert scenelib.sameGeometry(scenelib.worldGeometry(result.outputVolume), scenelib.worldGeometry(mr), 1e-6)
    with pytest.raises(ValueError, match="'cyclegan' is not a valid Method"):
        logic.process(mr, ct, modality="MR", method="cyclegan")
