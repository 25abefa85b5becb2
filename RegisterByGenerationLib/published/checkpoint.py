"""Read a PyTorch Lightning ``.ckpt`` without executing anything from the file.

The authors' checkpoints pickle whole modules and ``functools.partial`` objects in
``hyper_parameters``, so ``torch.load(weights_only=True)`` refuses them, and a plain
``torch.load`` would run whatever the pickle names. :func:`read_checkpoint` unpickles with
an unpickler whose only callables are ours: tensors are rebuilt from the archive's raw
storages by our own code, ``collections.OrderedDict`` is the one real class admitted, and
every other name in the file becomes an inert :class:`InertObject` subclass that records
its arguments and state and does nothing else. Storages are read lazily, so the optimizer
states a checkpoint carries cost nothing unless asked for.

Only the zip format of ``torch.save`` (PyTorch ≥ 1.6, little-endian) is read.
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError

__all__ = ["InertObject", "LazyTensor", "LightningCheckpoint", "read_checkpoint"]

_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class InertObject:
    """Stands in for an object the file names (a module, a ``functools.partial``, …).

    Constructing, ``__setstate__``, ``append``/``extend`` and item assignment only record
    what the pickle passes; nothing is imported or called. ``qualname`` says what it was.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        instance = super().__new__(cls)
        instance.args, instance.kwargs, instance.state = args, kwargs, None
        instance.items, instance.mapping = [], {}
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.mapping[key] = value

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


class _StorageType:
    """The storage class a persistent id names, reduced to its dtype."""

    def __init__(self, name: str) -> None:
        self.name, self.dtype = name, _DTYPES[name]


class _Storage:
    """One storage of the archive, read on first use and checked against its recorded size."""

    def __init__(self, archive: zipfile.ZipFile, entry: str, dtype: torch.dtype, numel: int, path: Path) -> None:
        self.archive, self.entry, self.dtype, self.numel, self.path = archive, entry, dtype, numel, path
        self._flat: torch.Tensor | None = None

    def flat(self) -> torch.Tensor:
        if self._flat is None:
            try:
                raw = self.archive.read(self.entry)
            except (KeyError, zipfile.BadZipFile, OSError) as error:
                raise ModelError(f"{self.path}: storage {self.entry} cannot be read ({error})") from error
            itemsize = torch.empty((), dtype=self.dtype).element_size()
            if len(raw) != self.numel * itemsize:
                raise ModelError(f"{self.path}: storage {self.entry} holds {len(raw)} bytes, expected {self.numel * itemsize}")
            self._flat = torch.frombuffer(bytearray(raw), dtype=self.dtype) if raw else torch.empty(0, dtype=self.dtype)
        return self._flat


class LazyTensor:
    """A tensor of the checkpoint, materialised by :meth:`load` (a copy, detached)."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    def load(self) -> torch.Tensor:
        """The tensor's values.

        Raises:
            ModelError: the view runs past its storage.
        """
        flat = self.storage.flat()
        if all(n > 0 for n in self.size):
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if self.offset < 0 or last >= flat.numel():
                raise ModelError(f"{self.storage.path}: a tensor of shape {self.size} runs past its storage {self.storage.entry}")
        return flat.as_strided(self.size, self.stride, self.offset).clone()


def _ints(value: Any, path: Path) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ModelError(f"{path}: malformed tensor record (size/stride {value!r})")
    return tuple(value)


def _rebuild_tensor(path: Path):
    def rebuild(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> LazyTensor:
        if not isinstance(storage, _Storage) or not isinstance(offset, int):
            raise ModelError(f"{path}: malformed tensor record (storage {storage!r}, offset {offset!r})")
        return LazyTensor(storage, offset, _ints(size, path), _ints(stride, path))

    return rebuild


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data  # a Parameter is its tensor here


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves names to our own rebuild functions, ``OrderedDict``, or inert classes."""

    def __init__(self, stream, archive: zipfile.ZipFile, root: str, path: Path) -> None:
        super().__init__(stream)
        self.archive, self.root, self.path = archive, root, path
        self.inert: set[str] = set()
        self.storages: dict[str, _Storage] = {}
        rebuild = _rebuild_tensor(path)
        self.allowed = {
            ("torch._utils", "_rebuild_tensor_v2"): rebuild,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("collections", "OrderedDict"): collections.OrderedDict,
        }

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol 2, torch.save's default) to today's, as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        qualname = f"{module}.{name}"
        self.inert.add(qualname)
        return type(name, (InertObject,), {"qualname": qualname})

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ModelError(f"{self.path}: unsupported persistent record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(key, str) or not isinstance(numel, int):
            raise ModelError(f"{self.path}: malformed storage record {pid!r:.80}")
        if key not in self.storages:
            entry = f"{self.root}/data/{key}"
            self.storages[key] = _Storage(self.archive, entry, storage_type.dtype, numel, self.path)
        return self.storages[key]


@dataclass
class LightningCheckpoint:
    """What :func:`read_checkpoint` found in one file.

    Attributes:
        path: the file.
        state_dict: the ``state_dict`` entries, ``key → LazyTensor`` (anything else in it
            is kept as read, for the importer to refuse).
        lightning_version: ``pytorch-lightning_version`` when the file records one.
        epoch, global_step: the training progress recorded, when present.
        inert: the names the file's pickle referred to that were replaced by inert objects.
    """

    path: Path
    state_dict: dict[str, Any]
    lightning_version: str | None = None
    epoch: int | None = None
    global_step: int | None = None
    inert: list[str] = field(default_factory=list)


def read_checkpoint(path: str | os.PathLike) -> LightningCheckpoint:
    """Read ``path`` (a Lightning ``.ckpt`` or any ``torch.save`` dict with a ``state_dict``).

    Raises:
        ModelError: missing or unreadable file, not a zip-format ``torch.save`` archive,
            big-endian data, a malformed pickle, or no ``state_dict`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ModelError(f"{path}: not a zip-format PyTorch checkpoint (torch.save of PyTorch 1.6 or later): {error}") from error
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise ModelError(f"{path}: not a torch.save archive (expected one <root>/data.pkl, found {len(pickles)})")
    root = pickles[0].split("/")[0]
    if f"{root}/byteorder" in archive.namelist() and archive.read(f"{root}/byteorder").strip() != b"little":
        raise ModelError(f"{path}: big-endian checkpoints are not supported")
    with archive.open(pickles[0]) as stream:
        unpickler = _RestrictedUnpickler(stream, archive, root, path)
        try:
            content = unpickler.load()
        except ModelError:
            raise
        except Exception as error:  # any malformed pickle: the file is the problem, not our code
            raise ModelError(f"{path}: the checkpoint's pickle cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict):
        raise ModelError(f"{path}: no 'state_dict' mapping (not a Lightning checkpoint)")

    def optional(key: str, kind: type) -> Any:
        value = content.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    return LightningCheckpoint(
        path=path,
        state_dict=dict(content["state_dict"]),
        lightning_version=optional("pytorch-lightning_version", str),
        epoch=optional("epoch", int),
        global_step=optional("global_step", int),
        inert=sorted(unpickler.inert),
    )
