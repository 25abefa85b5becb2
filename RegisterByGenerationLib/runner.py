"""Run ``rbg run`` in a child process: the Slicer-free core of the Slicer module's logic.

The contract between a host (the Slicer module, a notebook, a job script) and the engine
is an argv list, files in a folder, an exit status and JSON progress lines on stdout
(:mod:`RegisterByGenerationLib.progress`). This module builds the argv
(:func:`build_run_command`), starts the child in its own process group so the whole tree
can be stopped, reads both pipes on background threads into a queue, and hands the host
parsed events from :meth:`RunProcess.poll`, which never blocks. A GUI drains it from a
timer on its own thread (Slicer: ``qt.QTimer``); a script calls :meth:`RunProcess.wait`.

Nothing here imports torch, SimpleITK, slicer or qt, so the Slicer module can import it
before the heavy dependencies are installed::

    argv = build_run_command(sys.executable, "mr.nii.gz", "ct.nii.gz", "out", modality="mr")
    process = RunProcess(argv, output_dir="out").start()
    code = process.wait(callback=print)
    if code != 0:
        print(process.error_message)
    print(process.outputs())
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .progress import parse_progress_line

__all__ = [
    "BONE_METHODS",
    "DEVICES",
    "EXIT_CANCELLED",
    "METHODS",
    "METHODS_WITHOUT_MODEL",
    "MODELS_OF_OTHER_METHODS",
    "RunEvent",
    "RunProcess",
    "build_run_command",
    "library_environment",
    "python_slicer_executable",
]

#: Values of ``rbg run --precision`` (as ``pipeline.PRECISIONS``; this module imports no torch).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

#: Values of ``rbg run --method`` (as ``methods.METHODS``; this module imports no torch).
METHODS = ("rbg", "registformer", "stn-fusion", "dual-similarity", "mr-gan", "registration-by-synthesis", "rigid", "syn", "elastix")
#: The methods that take no model (classical registrations).
METHODS_WITHOUT_MODEL = ("rigid", "syn", "elastix")
#: Methods that run the models of another method (``Method.model_method``).
MODELS_OF_OTHER_METHODS = {"registration-by-synthesis": "mr-gan"}
#: Values of ``rbg run --bones``.
BONE_METHODS = ("auto", "totalsegmentator", "threshold", "none")
#: Device names a host offers (``rbg run`` also takes ``cuda:N``).
DEVICES = ("auto", "cuda", "cpu", "mps")
#: Exit status of ``rbg`` after Ctrl-C or a cancel (the shell convention 128 + SIGINT).
EXIT_CANCELLED = 130
ERROR_PREFIX = "rbg: error: "
CANCEL_PREFIXES = ("rbg: cancelled", "rbg: interrupted", "rbg: terminated")
#: Names the pipeline gives its staging folder and atomic temporary files in OUTDIR.
_STAGING_PREFIX = ".rbg-staging-"
_LOG_LINES_KEPT = 5000
_PIPE_GRACE_S = 3.0


def build_run_command(
    python_executable: str | os.PathLike,
    input_path: str | os.PathLike,
    reference_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    modality: str = "mr",
    model: str | os.PathLike | None = None,
    method: str | None = None,
    device: str = "auto",
    prealign: bool = True,
    bones: str | None = "auto",
    save_intermediate: bool = False,
    batch_size: int | None = None,
    threads: int | None = None,
    precision: str = "auto",
) -> list[str]:
    """The argv of ``python -m RegisterByGenerationLib run ... --progress json``.

    Args:
        python_executable: the interpreter to run (in Slicer: ``PythonSlicer``).
        input_path: MR or CBCT volume file or DICOM folder.
        reference_path: reference CT file or DICOM folder.
        output_dir: folder the outputs are written to.
        modality: ``"mr"`` or ``"cbct"`` (case-insensitive, so Slicer's ``"MR"`` works).
        model: installed model name or model folder; None for the default of ``modality``
            (and of ``method``).
        method: one of :data:`METHODS`, or None for the model's own method.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        prealign: rigidly pre-align the reference CT first.
        bones: one of :data:`BONE_METHODS`, or None to leave ``--bones`` out (the CLI's
            default applies).
        save_intermediate: also write the Stage-1 image, flow magnitude and pre-aligned CT.
        batch_size: slices per forward pass; None lets the pipeline choose.
        threads: CPU threads; None: the CLI's default (``OMP_NUM_THREADS``, else all cores).
        precision: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (``rbg run --precision``).

    Returns:
        The argument list, ready for :class:`RunProcess` or ``subprocess``.

    Raises:
        ValueError: an empty path, or an unknown modality, method, device, precision or
            bone method.
    """
    for name, value in (("python_executable", python_executable), ("input_path", input_path), ("reference_path", reference_path), ("output_dir", output_dir)):
        if value is None or not str(value):
            raise ValueError(f"{name} must be a non-empty path, got {value!r}")
    modality = str(modality).lower()
    if modality not in ("mr", "cbct"):
        raise ValueError(f"modality must be 'mr' or 'cbct', got {modality!r}")
    if not (device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"device must be one of {DEVICES} or cuda:N, got {device!r}")
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None, got {method!r}")
    if bones is not None and bones not in BONE_METHODS:
        raise ValueError(f"bones must be one of {BONE_METHODS} or None, got {bones!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    argv = [str(python_executable), "-m", "RegisterByGenerationLib", "run", str(input_path), str(reference_path), "-o", str(output_dir), "--modality", modality, "--device", device]
    if model is not None and str(model):
        argv += ["--model", str(model)]
    if method is not None:
        argv += ["--method", method]
    if not prealign:
        argv.append("--no-prealign")
    if bones is not None:
        argv += ["--bones", bones]
    if save_intermediate:
        argv.append("--save-intermediate")
    if batch_size is not None:
        argv += ["--batch-size", str(batch_size)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    if precision != "auto":
        argv += ["--precision", precision]
    argv += ["--progress", "json"]
    return argv


def library_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child that must import this package.

    Inside Slicer the package lives in the extension's ``qt-scripted-modules`` folder,
    which ``PythonSlicer`` does not search; so its parent folder is put first on
    ``PYTHONPATH``. Output is made unbuffered UTF-8 so progress lines arrive at once.
    """
    env = dict(os.environ if base is None else base)
    package_parent = str(Path(__file__).resolve().parents[1])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != package_parent]
    env["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def python_slicer_executable(slicer_home: str | os.PathLike | None = None) -> str:
    """Path of Slicer's ``PythonSlicer`` launcher.

    Looks on ``PATH`` first (Slicer puts its ``bin`` folder there), then in
    ``slicer_home/bin``.

    Raises:
        FileNotFoundError: neither has it (the message says where it looked).
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    looked = ["PATH"]
    if slicer_home:
        for name in ("PythonSlicer.exe", "PythonSlicer") if sys.platform == "win32" else ("PythonSlicer",):
            candidate = Path(slicer_home) / "bin" / name
            looked.append(str(candidate))
            if candidate.is_file():
                return str(candidate)
    raise FileNotFoundError(f"PythonSlicer not found (looked in {', '.join(looked)}); is this a complete Slicer installation?")


@dataclass(frozen=True)
class RunEvent:
    """One thing that happened in the child.

    ``kind`` is ``"progress"`` (``fraction`` in [0, 1], ``stage``, ``message``; the last
    one has stage ``"finished"`` and the run summary in ``result``), ``"log"`` (a line
    of stderr, or of stdout that is not a progress record, in ``message``), or
    ``"exit"`` (``returncode``; always the last event).
    """

    kind: str
    fraction: float | None = None
    stage: str = ""
    message: str = ""
    result: dict[str, Any] | None = None
    returncode: int | None = None


_EOF = object()


@dataclass
class _State:
    """What the reader threads and :meth:`RunProcess.poll` have learnt so far."""

    log: deque = field(default_factory=lambda: deque(maxlen=_LOG_LINES_KEPT))
    error_line: str | None = None
    last_stderr: str | None = None
    last_progress: RunEvent | None = None
    result: dict[str, Any] | None = None


class RunProcess:
    """A child process running ``rbg run --progress json``, read without blocking.

    Args:
        argv: the command, usually from :func:`build_run_command`.
        output_dir: the run's output folder; used by :meth:`outputs` and to remove
            partial files after :meth:`cancel`. Taken from ``-o`` in ``argv`` when None.
        env: environment of the child (default: :func:`library_environment`).
        cwd: working folder of the child.

    Raises:
        ValueError: ``argv`` is empty.
    """

    def __init__(self, argv: Sequence[str], *, output_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None) -> None:
        if not argv:
            raise ValueError("argv must name a program, got an empty list")
        self.argv = [str(a) for a in argv]
        if output_dir is None and "-o" in self.argv[:-1]:
            output_dir = self.argv[self.argv.index("-o") + 1]
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.env = dict(env) if env is not None else library_environment()
        self.cwd = cwd
        self._process: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._open_pipes = 0
        self._state = _State()
        self._returncode: int | None = None
        self._exit_reported = False
        self._cancelled = False
        self._exited_at: float | None = None
        self._preexisting: dict[str, float] = {}
        self.started_at: float | None = None
        self.finished_at: float | None = None

    # -- starting -------------------------------------------------------------------

    def start(self) -> RunProcess:
        """Start the child in a new session / process group; returns ``self``.

        Raises:
            RuntimeError: already started.
            FileNotFoundError: the program in ``argv[0]`` does not exist.
        """
        if self._process is not None:
            raise RuntimeError("this RunProcess was already started; make a new one per run")
        self._preexisting = self._snapshot_outputs()
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            # Own process group (so a console Ctrl-C does not reach Slicer) and no console window.
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel() can signal the whole tree
        self.started_at = time.monotonic()
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        for name, pipe in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            thread = threading.Thread(target=self._read_pipe, args=(name, pipe), name=f"rbg-{name}-reader", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._open_pipes = 2
        return self

    def _read_pipe(self, name: str, pipe) -> None:
        """Reader thread: push every line of one pipe into the queue, then an EOF marker."""
        try:
            for line in pipe:
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # pipe closed under us while killing the child
            pass
        finally:
            self._queue.put((name, _EOF))

    # -- reading ----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the exit event has been handed out."""
        return self._process is not None and not self._exit_reported

    @property
    def returncode(self) -> int | None:
        """Exit status once the exit event was handed out, else None."""
        return self._returncode if self._exit_reported else None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def result(self) -> dict[str, Any] | None:
        """The summary of the ``"finished"`` progress record (outputs, model, device, timings)."""
        return self._state.result

    @property
    def last_progress(self) -> RunEvent | None:
        return self._state.last_progress

    @property
    def log_lines(self) -> list[str]:
        """stderr lines and non-progress stdout lines, the last 5000."""
        return list(self._state.log)

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at

    @property
    def error_message(self) -> str | None:
        """One line saying why the run failed; None while running or after success.

        The child's own ``rbg: error: <message>`` when it printed one; "cancelled" after
        :meth:`cancel`; else the last stderr line (the end of a traceback) and the status.
        """
        code = self.returncode
        if code is None or code == 0:
            return None
        if self._state.error_line:
            return self._state.error_line
        if self._cancelled or code == EXIT_CANCELLED:
            return "cancelled; nothing was written"
        detail = f": {self._state.last_stderr}" if self._state.last_stderr else ""
        return f"the processing exited with status {code}{detail}"

    def poll(self) -> list[RunEvent]:
        """Every event since the last call, oldest first; never blocks.

        The ``"exit"`` event comes once, after all output of the child was read.
        """
        events: list[RunEvent] = []
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is _EOF:
                self._open_pipes -= 1
                continue
            event = self._parse(name, line)
            if event is not None:
                events.append(event)
        if self._process is not None and not self._exit_reported:
            code = self._process.poll()
            if code is not None and self._exited_at is None:
                self._exited_at = time.monotonic()
            # Normally both pipes close with the child; a surviving grandchild that inherited
            # them would keep them open, so after a grace period the exit is reported anyway.
            if code is not None and (self._open_pipes == 0 or time.monotonic() - self._exited_at > _PIPE_GRACE_S):
                self._finish(code)
                events.append(RunEvent("exit", returncode=self._returncode, message=self.error_message or ""))
        return events

    def _parse(self, name: str, line: str) -> RunEvent | None:
        if name == "stdout":
            parsed = parse_progress_line(line)
            if parsed is not None:
                fraction, stage, message = parsed
                result = None
                if stage == "finished":
                    result = json.loads(line).get("result")
                    self._state.result = result
                event = RunEvent("progress", fraction=fraction, stage=stage, message=message, result=result)
                self._state.last_progress = event
                return event
        if not line.strip():
            return None
        self._state.log.append(line)
        if name == "stderr":
            self._state.last_stderr = line.strip()
            if line.startswith(ERROR_PREFIX):
                self._state.error_line = line[len(ERROR_PREFIX):].strip()
        return RunEvent("log", message=line)

    def _finish(self, code: int) -> None:
        self._returncode = code
        self._exit_reported = True
        self.finished_at = time.monotonic()
        if code != 0:
            self._remove_partial_outputs()

    def wait(self, timeout: float | None = None, callback: Callable[[RunEvent], None] | None = None, interval: float = 0.05) -> int:
        """Block until the child exits, passing every event to ``callback``.

        Returns:
            The exit status.

        Raises:
            RuntimeError: not started.
            TimeoutError: still running after ``timeout`` seconds (the child is left running).
        """
        if self._process is None:
            raise RuntimeError("start() the process before waiting for it")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                if callback is not None:
                    callback(event)
            if self._exit_reported:
                return self._returncode
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the processing is still running after {timeout} s")
            time.sleep(interval)

    # -- stopping -------------------------------------------------------------------

    def cancel(self, timeout: float = 5.0) -> None:
        """Stop the child and all its descendants within about ``timeout`` seconds.

        First an interrupt to the process group (POSIX), so ``rbg`` stops the way
        Ctrl-C stops it and removes its staging files; then psutil terminates the
        descendants, then the child (children first, so none is re-parented and
        forgotten), and kills whatever is still alive; on POSIX a last SIGKILL to the
        process group catches late-born descendants. Partial outputs of this run are
        removed from ``output_dir`` once the exit has been read (:meth:`poll`/:meth:`wait`).
        """
        if self._process is None or self._process.poll() is not None:
            return  # not started, or already over: nothing to stop
        self._cancelled = True
        deadline = time.monotonic() + max(timeout, 0.5)
        descendants = _descendants(self._process.pid)  # before the child exits and orphans them
        if sys.platform != "win32":
            try:
                os.killpg(self._process.pid, signal.SIGINT)
                self._process.wait(timeout=min(2.0, timeout / 2))
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                pass
        # Children first, so none is re-parented and forgotten, with half the time left.
        _terminate(descendants, time.monotonic() + (deadline - time.monotonic()) / 2)
        # The child itself through Popen: psutil's wait() would reap it and lose its status.
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if sys.platform != "win32":
            # Sweep the process group: descendants started after the snapshot above, or
            # all of them when psutil is missing.
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # -- results ------------------------------------------------------------------

    def outputs(self) -> dict[str, Path]:
        """Output name → path of the files the run wrote.

        Taken from the ``"finished"`` record; when there is none (the child printed other
        text over it), the known output file names are looked up in ``output_dir``.
        """
        if self._state.result and "outputs" in self._state.result:
            return {name: Path(path) for name, path in self._state.result["outputs"].items() if Path(path).exists()}
        if self.output_dir is None or self.returncode != 0:
            return {}
        return {name: self.output_dir / file for name, file in _output_file_names().items() if (self.output_dir / file).exists()}

    def output_file(self, file_name: str) -> Path | None:
        """Path of the written output with this file name (``"bones.seg.nrrd"``), else None;
        found by name, so it does not depend on the keys ``rbg run`` gives its outputs."""
        for path in self.outputs().values():
            if path.name == file_name:
                return path
        candidate = None if self.output_dir is None or self.returncode != 0 else self.output_dir / file_name
        return candidate if candidate is not None and candidate.is_file() else None

    def _snapshot_outputs(self) -> dict[str, float]:
        if self.output_dir is None or not self.output_dir.is_dir():
            return {}
        return {p.name: p.stat().st_mtime for p in self.output_dir.iterdir() if p.is_file()}

    def _remove_partial_outputs(self) -> None:
        """After a failed or cancelled run: remove staging folders, temporary files and any
        output file this run created or replaced, so the folder is as it was (or empty)."""
        if self.output_dir is None or not self.output_dir.is_dir():
            return
        changed = []
        for path in self.output_dir.iterdir():
            if path.is_dir() and path.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_file() and path.name.startswith(".") and ".part" in path.name:
                path.unlink(missing_ok=True)
            elif path.is_file() and self._preexisting.get(path.name) != path.stat().st_mtime:
                changed.append(path)
        if changed:  # rare (a cancel while files were moved in): only then load the names
            known = set(_output_file_names().values())
            for path in changed:
                if path.name in known:
                    path.unlink(missing_ok=True)

    def __del__(self) -> None:  # a host that forgets to cancel must not leave an orphan computing
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            try:
                self.cancel(timeout=1.0)
            except Exception:  # interpreter shutdown: best effort only
                pass


def _output_file_names() -> dict[str, str]:
    """Output name -> file name of everything ``rbg run`` writes (keys as in its report).

    These modules import torch and SimpleITK, so they are only imported here, when a
    finished record is missing; in a host without them only the pseudo-CT is known.
    """
    try:
        from .bones.segfile import BONE_FILES
        from .case import OVERVIEW_FILE, REPORT_FILE
        from .pipeline import OUTPUT_FILES
    except ImportError:
        return {"pseudo_ct": "pseudo_ct.nii.gz"}
    return {**OUTPUT_FILES, **BONE_FILES, "overview": OVERVIEW_FILE, "report": REPORT_FILE}


def _descendants(pid: int) -> list:
    """psutil handles of every descendant of ``pid`` (empty without psutil)."""
    try:
        import psutil
    except ImportError:
        return []
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _terminate(processes: list, deadline: float) -> None:
    """Terminate (SIGTERM / TerminateProcess) psutil ``processes``; kill those alive at ``deadline``."""
    if not processes:
        return
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=max(0.1, deadline - time.monotonic()))
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=1.0)
