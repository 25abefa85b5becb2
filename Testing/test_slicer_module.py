"""The Slicer module checked without Slicer: its .ui, parameter node, packaging and imports.

What these tests cannot check (widget behaviour, MRML I/O, the module's own test) runs
inside Slicer only; docs/user-guide.md lists both sides.
"""

from __future__ import annotations

import ast
import importlib.util
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "RegisterByGeneration"
MODULE_FILE = MODULE_DIR / "RegisterByGeneration.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "RegisterByGeneration.ui"
LIB_DIR = REPO / "RegisterByGenerationLib"
HEADLESS_SCRIPT = MODULE_DIR / "Scripts" / "run_headless.py"

#: Widget-name suffix -> Qt class: the naming rule the module code relies on.
SUFFIX_CLASSES = (
    ("CollapsibleButton", "ctkCollapsibleButton"),
    ("Selector", "qMRMLNodeComboBox"),
    ("ComboBox", "QComboBox"),
    ("CheckBox", "QCheckBox"),
    ("Button", "QPushButton"),
    ("ProgressBar", "QProgressBar"),
    ("Label", "QLabel"),
    ("TextEdit", "QPlainTextEdit"),
)
#: Field annotation -> widget class the parameterNodeWrapper can bind it to.
BINDABLE = {"bool": "QCheckBox", "str": "QLineEdit", "int": "QSpinBox", "float": "ctkSliderWidget"}


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _dynamic_property(widget: ET.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop.findtext("string")
    return None


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def _parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class."""
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def _enum_names() -> set[str]:
    return {n.name for n in ast.walk(_module_tree()) if isinstance(n, ast.ClassDef) and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in n.bases)}


def _expected_class(name: str) -> str:
    for suffix, cls in SUFFIX_CLASSES:
        if name.lower().endswith(suffix.lower()):
            return cls
    raise AssertionError(f"widget {name!r} follows none of the naming suffixes {[s for s, _ in SUFFIX_CLASSES]}")


def test_ui_parses_and_is_a_mrml_widget():
    root = ET.parse(UI_FILE).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "RegisterByGeneration"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("ctk", "qMRML"))} <= declared


def test_every_widget_the_code_uses_exists_with_the_right_class():
    widgets = _ui_widgets()
    code = MODULE_FILE.read_text(encoding="utf-8")
    referenced = set(re.findall(r"self\.ui\.(\w+)", code))
    assert {"applyButton", "progressBar", "statusLabel", "logTextEdit", "modelComboBox", "importModelButton"} <= referenced
    missing = sorted(referenced - widgets.keys())
    assert not missing, f"the module uses widgets missing from the .ui: {missing}"
    for name in referenced:
        assert widgets[name].get("class") == _expected_class(name), f"{name} is a {widgets[name].get('class')}"


def test_every_slicer_parameter_name_is_a_field_and_fits_its_widget():
    fields, enums, widgets = _parameter_fields(), _enum_names(), _ui_widgets()
    bound = {}
    for name, widget in widgets.items():
        parameter = _dynamic_property(widget, "SlicerParameterName")
        if parameter is None:
            continue
        assert parameter in fields, f"{name}: SlicerParameterName {parameter!r} is not a parameter-node field"
        assert parameter not in bound, f"{parameter!r} bound twice"
        bound[parameter] = widget
        annotation, cls = fields[parameter], widget.get("class")
        if annotation.startswith("vtkMRML"):
            node_types = [s.text for s in widget.iter("string") if s.text and s.text.startswith("vtkMRML")]
            assert cls == "qMRMLNodeComboBox" and node_types == [annotation], f"{name}: {cls} {node_types} for {annotation}"
        elif annotation in enums:
            assert cls == "QComboBox", f"{name}: enum field {parameter} needs a QComboBox, got {cls}"
        else:
            assert cls == BINDABLE.get(annotation), f"{name}: {annotation} field {parameter} cannot bind to {cls}"
    # A field without a widget must be kept up to date by the code itself.
    code = MODULE_FILE.read_text(encoding="utf-8")
    for field in fields.keys() - bound.keys():
        assert re.search(rf"_parameterNode\.{field}\s*=", code), f"field {field!r} is neither bound in the .ui nor set by the widget"


def test_module_and_headless_script_compile(tmp_path):
    for path in (MODULE_FILE, HEADLESS_SCRIPT):
        py_compile.compile(str(path), cfile=str(tmp_path / (path.stem + ".pyc")), doraise=True)
    tree = _module_tree()
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["RegisterByGeneration"] == ["ScriptedLoadableModule"]
    assert classes["RegisterByGenerationWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["RegisterByGenerationLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["RegisterByGenerationTest"] == ["ScriptedLoadableModuleTest"]
    process = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "process")
    args = [a.arg for a in process.args.args]
    assert args[:5] == ["self", "inputVolume", "referenceVolume", "outputVolume", "boneSegmentation"]
    assert {"modality", "model", "device", "prealign", "waitForCompletion", "progressCallback"} <= set(args)


def _imported_top_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_slicer_qt_ctk_vtk_or_the_module():
    forbidden = {"slicer", "qt", "ctk", "vtk", "RegisterByGeneration", "PythonQt", "sitkUtils", "PyTorchUtils"}
    offenders = {str(p.relative_to(REPO)): sorted(_imported_top_names(p) & forbidden) for p in LIB_DIR.rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_scene_code_never_imports_qt():
    """RegisterByGenerationSceneLib runs on slicer-core (MRML without Qt) in the tests."""
    scene_lib = MODULE_DIR / "RegisterByGenerationSceneLib"
    offenders = {p.name: sorted(_imported_top_names(p) & {"qt", "ctk", "PythonQt", "RegisterByGeneration"}) for p in scene_lib.glob("*.py")}
    assert offenders and not {k: v for k, v in offenders.items() if v}


def test_what_the_module_imports_at_load_needs_no_heavy_package():
    """Slicer loads the module before torch & co. are installed: the library modules it
    imports at the top must import with torch, SimpleITK, NumPy, SciPy and MONAI absent."""
    imported = sorted({node.module for node in _module_tree().body if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("RegisterByGenerationLib")})
    assert imported, "the module imports nothing from the library?"
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'SimpleITK', 'numpy', 'scipy', 'monai', 'psutil', 'safetensors'}:\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import {name}\n" for name in imported)
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"no set({variable} ...)"
    return [item for item in match.group(1).split() if not item.startswith("#")]


def _library_files() -> tuple[set[str], set[str]]:
    files = {p.relative_to(LIB_DIR).as_posix() for p in LIB_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return {f for f in files if f.endswith(".py")}, {f for f in files if not f.endswith(".py")}


def test_cmake_lists_and_files_on_disk_agree():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed_scripts, listed_resources = _cmake_list(text, "LIB_PYTHON_SCRIPTS"), _cmake_list(text, "LIB_PYTHON_RESOURCES")
    assert len(listed_scripts) == len(set(listed_scripts)), "a library file is listed twice"
    py_files, data_files = _library_files()
    assert not sorted(py_files - set(listed_scripts)), f"add to LIB_PYTHON_SCRIPTS: {sorted(py_files - set(listed_scripts))}"
    assert not sorted(set(listed_scripts) - py_files), f"listed but missing: {sorted(set(listed_scripts) - py_files)}"
    assert set(listed_resources) == data_files
    module_scripts = {s.replace("${MODULE_NAME}", "RegisterByGeneration") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    assert module_scripts == {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    module_resources = {s.replace("${MODULE_NAME}", "RegisterByGeneration") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    assert module_resources == {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    values = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert values.get(key), f"{key} is not set"
    assert values["EXTENSION_CATEGORY"] == "Registration"
    assert "PyTorch" in values["EXTENSION_DEPENDS"].split()
    assert "add_subdirectory(RegisterByGeneration)" in text
    icon = re.sub(r"^\$\{EXTENSION_RAW_URL\}/", "", values["EXTENSION_ICONURL"])
    assert (REPO / icon).is_file(), f"extension icon {icon} missing"
    for url in values["EXTENSION_SCREENSHOTURLS"].split():  # every link names a file of this repository
        assert url.startswith("${EXTENSION_RAW_URL}/"), url
        assert (REPO / url.removeprefix("${EXTENSION_RAW_URL}/")).is_file(), f"screenshot {url} missing"
    assert values["EXTENSION_HOMEPAGE"].startswith("${EXTENSION_SOURCE_URL}/blob/main/")
    assert (REPO / values["EXTENSION_HOMEPAGE"].removeprefix("${EXTENSION_SOURCE_URL}/blob/main/")).is_file()
    from PIL import Image

    for path in (REPO / icon, MODULE_DIR / "Resources" / "Icons" / "RegisterByGeneration.png"):
        with Image.open(path) as image:
            assert image.size == (128, 128)


def _headless():
    spec = importlib.util.spec_from_file_location("run_headless", HEADLESS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the script only imports slicer inside main()
    return module


def test_headless_script_arguments():
    headless = _headless()
    args = headless.parse_arguments(["--", "--input", "a.nii.gz", "--reference", "b.nii.gz", "--output", "c.nrrd", "--modality", "cbct", "--no-prealign"])
    assert (args.input, args.reference, args.output, args.modality, args.prealign, args.bone_method, args.device) == ("a.nii.gz", "b.nii.gz", "c.nrrd", "CBCT", False, "auto", "auto")
    with pytest.raises(SystemExit):
        headless.parse_arguments(["--input", "a", "--reference", "b"])  # --output missing
    with pytest.raises(SystemExit):
        headless.parse_arguments(["--input", "a", "--reference", "b", "--output", "c", "--bones", "s.seg.nrrd", "--bone-method", "none"])


def test_the_method_menu_offers_every_method_of_the_library():
    """The module's Method enum (read from its source: it needs Slicer to import) is "auto"
    plus runner.METHODS, each with a label."""
    from RegisterByGenerationLib import runner

    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.ClassDef) and node.name == "Method":
            values = [v.value for a in node.body if isinstance(a, ast.Assign) for v in getattr(a.value, "elts", [a.value]) if isinstance(v, ast.Constant)]
            labels = next(n for n in ast.walk(node) if isinstance(n, ast.Dict))
            assert values == ["auto", *runner.METHODS]
            assert sorted(k.value for k in labels.keys) == sorted(values)
            return
    raise AssertionError("no Method enum in the module")
