"""Installing what a host application needs: pinned Python packages and model folders.

Used by the Slicer module on first use (never at import). It only decides *what* to
install; the host installs it (Slicer: ``PyTorchUtils`` for torch, which picks the CUDA
build matching the driver, and ``slicer.util.pip_install`` for the rest). NumPy and
SimpleITK are Slicer's own builds (Slicer's SimpleITK has its own IO classes), so they
are never installed or upgraded: :func:`protection_constraints` pins them to the
installed versions, and pip fails instead of replacing them.

Nothing here imports torch or SimpleITK.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from .errors import ModelError
from .modelstore import MODEL_FILE, WEIGHTS_FILE, ModelInfo, file_sha256, user_models_dir

__all__ = [
    "HOST_REQUIREMENTS",
    "PROTECTED_PACKAGES",
    "TORCH_MINIMUM_VERSION",
    "missing_requirements",
    "protection_constraints",
    "torch_is_usable",
    "import_model_folder",
]

#: Pinned packages the engine needs besides torch, NumPy and SimpleITK; the same pins as
#: ``pyproject.toml`` (a test keeps them equal).
HOST_REQUIREMENTS = (
    "scipy==1.15.3",
    "monai==1.6.1",
    "safetensors==0.8.0",
    "slicerio==1.4.0",
    "tqdm==4.70.1",
    "psutil==7.2.2",
    "matplotlib==3.11.2",
    "scikit-image==0.26.0",
)
#: Packages the host provides and that must never be replaced.
PROTECTED_PACKAGES = ("numpy", "SimpleITK")
#: Oldest torch the engine runs with (``torch.OutOfMemoryError``, ``inference_mode``,
#: safetensors loading); the PyTorch extension installs a build for the local GPU.
TORCH_MINIMUM_VERSION = "2.5"


def _parse(requirement: str) -> tuple[str, str | None]:
    """``"name==1.2"`` → ``("name", "1.2")``; only exact pins are used here."""
    name, _, version = requirement.partition("==")
    if not name.strip() or any(c in name for c in "<>=!~; "):
        raise ValueError(f"requirement must be 'name' or 'name==version', got {requirement!r}")
    return name.strip(), (version.strip() or None)


def missing_requirements(requirements: tuple[str, ...] | list[str] = HOST_REQUIREMENTS) -> list[str]:
    """The requirements that are not installed at exactly the pinned version.

    Args:
        requirements: ``name==version`` (or bare ``name``: any version will do).

    Returns:
        The unmet requirements, as given, in order.

    Raises:
        ValueError: a requirement is not of the form ``name`` or ``name==version``.
    """
    missing = []
    for requirement in requirements:
        name, version = _parse(requirement)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if version is not None and installed != version:
            missing.append(requirement)
    return missing


def protection_constraints(packages: tuple[str, ...] = PROTECTED_PACKAGES) -> list[str]:
    """pip constraint lines pinning each installed protected package to its version.

    Written to a file and passed as ``pip install -c FILE ...``, they make pip refuse
    (with an error) any plan that would replace Slicer's NumPy or SimpleITK. A package
    that is not installed gets no line.
    """
    lines = []
    for name in packages:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return lines


def torch_is_usable(minimum: str = TORCH_MINIMUM_VERSION) -> tuple[bool, str]:
    """Whether an installed torch is at least ``minimum``, without importing it.

    Returns:
        ``(ok, explanation)``; the explanation names the installed version or says none is.
    """
    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False, "PyTorch is not installed"
    ok = _version_tuple(installed) >= _version_tuple(minimum)
    return ok, f"PyTorch {installed} is installed" + ("" if ok else f"; version {minimum} or newer is needed")


def _version_tuple(version: str) -> tuple[int, ...]:
    """Numeric release part of a version (``"2.13.0+cu128"`` → ``(2, 13, 0)``,
    ``"2.6.0rc1"`` → ``(2, 6, 0)``). Hand-written because ``packaging`` is not one of our
    dependencies, and a release comparison is all that is needed."""
    numbers = []
    for part in version.split("+")[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
        if match.end() != len(part):
            break
    return tuple(numbers)


def import_model_folder(source: str | os.PathLike, models_dir: str | os.PathLike | None = None, *, overwrite: bool = False) -> ModelInfo:
    """Copy a model folder into the user's models folder, after checking it.

    The card must parse (:meth:`ModelInfo.from_directory`) and the weights must match
    their recorded sha256, so a broken folder is refused before anything is copied. The
    copy is staged and renamed, so an interrupted import leaves nothing half-written.

    Args:
        source: folder with ``model.json`` and its weights file.
        models_dir: destination root (default :func:`~.modelstore.user_models_dir`).
        overwrite: replace an installed model of the same name.

    Returns:
        The :class:`ModelInfo` of the installed copy (``<models_dir>/<name>``).

    Raises:
        ModelError: not a model folder, weights missing or corrupt, or a model of that
            name is installed and ``overwrite`` is False.
    """
    info = ModelInfo.from_directory(source)
    weights = info.path / info.metadata["weights"].get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelError(f"{weights}: weights file missing; the folder is incomplete")
    if file_sha256(weights) != info.sha256:
        raise ModelError(f"{weights}: sha256 does not match {MODEL_FILE}; the file is corrupt or replaced")
    root = Path(models_dir) if models_dir is not None else user_models_dir()
    name = info.name
    if not name or any(c in name for c in '/\\:*?"<>|') or name in (".", ".."):
        raise ModelError(f"{info.path / MODEL_FILE}: model name {name!r} cannot be a folder name")
    target = root / name
    if target.resolve() == info.path.resolve():
        return info  # already installed there
    if target.exists() and not overwrite:
        raise ModelError(f"{target}: a model named {name!r} is already installed; remove it or import with overwrite")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.import-", dir=root))
    try:
        copied = staging / name
        shutil.copytree(info.path, copied)
        ModelInfo.from_directory(copied)
        if target.exists():
            shutil.rmtree(target)
        os.replace(copied, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ModelInfo.from_directory(target)


def import_published_checkpoints(checkpoints, python_executable: str | os.PathLike, *, env=None, force: bool = False) -> ModelInfo:
    """Convert the authors' published ``.ckpt`` files into an installed model, in a child
    process (``python -m RegisterByGenerationLib models import-published``): the
    conversion needs torch, which the Slicer module never loads into Slicer itself.

    Args:
        checkpoints: the ``.ckpt`` files (see docs/import-published.md).
        python_executable: the interpreter with the library (in Slicer ``PythonSlicer``).
        env: environment of the child (in Slicer :func:`~.runner.library_environment`).
        force: replace an installed model of the same name.

    Returns:
        The imported model (in the user's models folder).

    Raises:
        ModelError: the conversion failed; the message is the command's one-line error.
    """
    argv = [str(python_executable), "-m", "RegisterByGenerationLib", "models", "import-published", *map(str, checkpoints)]
    completed = subprocess.run(argv + (["--force"] if force else []), env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.splitlines() if line.strip()]
        raise ModelError(lines[-1].removeprefix("rbg: error: ") if lines else f"import-published exited with status {completed.returncode}")
    match = re.search(r"^imported \S+ .* into (.+)$", completed.stdout, re.M)
    if match is None:
        raise ModelError(f"import-published did not say where it wrote the model: {completed.stdout.strip()[-300:]!r}")
    return ModelInfo.from_directory(match.group(1))

