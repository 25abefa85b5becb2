"""The Slicer-free core of the module's logic, with real ``rbg run`` child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import SimpleITK as sitk

from RegisterByGenerationLib.cli import build_parser
from RegisterByGenerationLib.errors import MissingInputError, ModelError
from RegisterByGenerationLib.io import same_geometry
from RegisterByGenerationLib.runner import (
    EXIT_CANCELLED,
    RunProcess,
    build_run_command,
    library_environment,
    python_slicer_executable,
)

PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
#: One compute thread per child: on a shared, busy CPU, OpenMP threads waiting for each
#: other make a tiny model ~100x slower (measured 7 s instead of 0.08 s per forward).
CHILD_ENV = library_environment({**os.environ, "OMP_NUM_THREADS": "1"})


def _bones_option() -> str | None:
    """``"none"`` when ``rbg run`` has ``--bones`` (keeps the runs fast), else None."""
    try:
        build_parser().parse_args(["run", "a", "b", "-o", "o", "--bones", "none"])
    except SystemExit:
        return None
    return "none"


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory) -> Path:
    from RegisterByGenerationLib.phantoms import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=1, seed=1, modality="mr", size=(64, 48, 16))[0]


def _command(case: Path, out: Path, tiny_model: Path, **options) -> list[str]:
    options = {"modality": "mr", "model": tiny_model, "device": "cpu", "prealign": False, "bones": _bones_option(), **options}
    return build_run_command(sys.executable, case / "mr.nii.gz", case / "ct.nii.gz", out, **options)


def test_build_run_command():
    argv = build_run_command("/opt/Slicer/bin/PythonSlicer", "in.nrrd", Path("ref.nrrd"), "out", modality="CBCT", model="m", device="cuda:1", prealign=False, bones="threshold", save_intermediate=True, batch_size=8)
    assert argv == ["/opt/Slicer/bin/PythonSlicer", "-m", "RegisterByGenerationLib", "run", "in.nrrd", "ref.nrrd", "-o", "out", "--modality", "cbct", "--device", "cuda:1",
                    "--model", "m", "--no-prealign", "--bones", "threshold", "--save-intermediate", "--batch-size", "8", "--progress", "json"]
    plain = build_run_command("py", "a", "b", "o", bones=None)
    assert plain == ["py", "-m", "RegisterByGenerationLib", "run", "a", "b", "-o", "o", "--modality", "mr", "--device", "auto", "--progress", "json"]
    assert build_run_command("py", "a", "b", "o", method="stn-fusion", model="m")[12:16] == ["--model", "m", "--method", "stn-fusion"]
    tuned = build_run_command("py", "a", "b", "o", threads=3, precision="bfloat16")
    assert tuned[-6:] == ["--threads", "3", "--precision", "bfloat16", "--progress", "json"]
    for bad, match in (({"modality": "ct"}, "modality"), ({"device": "gpu"}, "device"), ({"bones": "magic"}, "bones"), ({"batch_size": 0}, "batch_size"),
                       ({"threads": 0}, "threads"), ({"precision": "double"}, "precision"), ({"method": "cyclegan"}, "method")):
        with pytest.raises(ValueError, match=match):
            build_run_command("py", "a", "b", "o", **bad)
    with pytest.raises(ValueError, match="input_path"):
        build_run_command("py", "", "b", "o")


def test_library_environment_and_python_slicer_lookup(tmp_path, monkeypatch):
    env = library_environment({"PYTHONPATH": os.pathsep.join(["/x", PACKAGE_PARENT]), "PATH": "/bin"})
    assert env["PYTHONPATH"].split(os.pathsep) == [PACKAGE_PARENT, "/x"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="PythonSlicer not found"):
        python_slicer_executable(tmp_path)
    (tmp_path / "bin").mkdir()
    launcher = tmp_path / "bin" / ("PythonSlicer.exe" if sys.platform == "win32" else "PythonSlicer")
    launcher.write_text("")
    assert python_slicer_executable(tmp_path) == str(launcher)


def test_unstarted_process_is_refused():
    process = RunProcess([sys.executable, "-c", "pass"])
    assert process.poll() == [] and not process.running and process.returncode is None
    with pytest.raises(RuntimeError, match="start"):
        process.wait()
    process.start()
    with pytest.raises(RuntimeError, match="already started"):
        process.start()
    assert process.wait(timeout=30) == 0
    with pytest.raises(ValueError, match="argv"):
        RunProcess([])


def test_progress_arrives_in_order_and_outputs_are_found(phantom_case, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    # From another folder, as from Slicer: the child finds the package through PYTHONPATH.
    process = RunProcess(_command(phantom_case, out, tiny_mr_model), env=CHILD_ENV, cwd=tmp_path).start()
    events = []
    code = process.wait(timeout=180, callback=events.append)
    assert code == 0, process.log_lines
    progress = [e for e in events if e.kind == "progress"]
    fractions = [e.fraction for e in progress]
    assert fractions == sorted(fractions) and fractions[0] >= 0.0 and fractions[-1] == 1.0
    assert "generate" in {e.stage for e in progress}
    assert progress[-1].stage == "finished" and progress[-1].result == process.result
    assert events[-1].kind == "exit" and events[-1].returncode == 0 and [e.kind for e in events].count("exit") == 1
    assert process.error_message is None and not process.running and not process.cancelled
    outputs = process.outputs()
    assert outputs["pseudo_ct"] == out / "pseudo_ct.nii.gz"
    assert same_geometry(sitk.ReadImage(str(outputs["pseudo_ct"])), sitk.ReadImage(str(phantom_case / "mr.nii.gz")))
    # What the Slicer module looks up by file name (bones are off in these runs).
    assert process.output_file("pseudo_ct.nii.gz") == outputs["pseudo_ct"]
    assert process.output_file("report.json") == out / "report.json"
    assert process.output_file("bones.seg.nrrd") is None
    assert process.poll() == []  # nothing after the exit event


def test_outputs_fall_back_to_known_file_names(tmp_path):
    """Without a "finished" record (other text on stdout), the files are looked up by name."""
    out = tmp_path / "out"
    out.mkdir()
    code = f"open({str(out / 'pseudo_ct.nii.gz')!r}, 'wb').write(b'x'); print('not a progress record')"
    process = RunProcess([sys.executable, "-c", code], output_dir=out).start()
    assert process.wait(timeout=30) == 0
    assert process.result is None and process.log_lines == ["not a progress record"]
    assert process.outputs() == {"pseudo_ct": out / "pseudo_ct.nii.gz"}
    assert process.output_file("pseudo_ct.nii.gz") == out / "pseudo_ct.nii.gz" and process.output_file("report.json") is None


def test_cancel_stops_within_seconds_and_leaves_no_outputs(phantom_case, tiny_mr_model, tmp_path):
    out = tmp_path / "out"
    process = RunProcess(_command(phantom_case, out, tiny_mr_model, prealign=True), env=CHILD_ENV).start()
    seen = []
    deadline = time.monotonic() + 180
    while not any(e.kind == "progress" for e in seen):  # the child is inside the pipeline now
        assert time.monotonic() < deadline and process.running, process.log_lines
        seen += process.poll()
        time.sleep(0.02)
    pid = process.pid
    start = time.monotonic()
    process.cancel(timeout=5)
    code = process.wait(timeout=10)
    assert time.monotonic() - start < 6
    assert code != 0 and process.cancelled
    assert process.error_message == "cancelled; nothing was written"
    assert _gone(pid)
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert leftovers == [], f"cancel left {leftovers}"
    assert process.outputs() == {}


@pytest.mark.skipif(sys.platform == "win32", reason="signal-ignoring children are a POSIX construction")
def test_cancel_kills_a_tree_that_ignores_interrupt_and_terminate():
    ignore = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    code = (
        f"{ignore}\n"
        "import subprocess, sys\n"
        f"child = subprocess.Popen([sys.executable, '-c', {ignore + '; print(1, flush=True); time.sleep(60)'!r}])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    process = RunProcess([sys.executable, "-c", code]).start()
    lines = []
    deadline = time.monotonic() + 30
    while len(lines) < 2:  # the grandchild's pid and its "1" (it shares our stdout)
        assert time.monotonic() < deadline, lines
        lines += [e.message for e in process.poll() if e.kind == "log"]
        time.sleep(0.02)
    grandchild = int(next(line for line in lines if line != "1"))
    start = time.monotonic()
    process.cancel(timeout=2)
    assert process.wait(timeout=10) != 0
    assert time.monotonic() - start < 4
    assert _gone(process.pid) and _gone(grandchild)


def test_runner_lifecycle_needs_no_heavy_package(tmp_path):
    """Slicer's own process has no torch or SimpleITK before the first install: start,
    poll, cancel, wait and outputs must work with them blocked (they run in the child)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("kept")
    child_code = f"import time; open({str(out / 'pseudo_ct.nii.gz')!r}, 'w'); print(1, flush=True); time.sleep(30)"
    code = (
        "import sys, time\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'SimpleITK', 'numpy', 'scipy', 'monai', 'safetensors'}:\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from RegisterByGenerationLib.runner import RunProcess\n"
        f"child = [sys.executable, '-c', {child_code!r}]\n"
        f"process = RunProcess(child, output_dir={str(out)!r}).start()\n"
        "while not process.poll(): time.sleep(0.02)\n"
        "process.cancel(timeout=2)\n"
        "assert process.wait(timeout=10) != 0 and process.outputs() == {}, process.log_lines\n"
        "print(process.error_message)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], env=library_environment(), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "cancelled; nothing was written"
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]  # the partial pseudo-CT went, older files stay


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie waiting for its (new) parent to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_failing_runs_report_their_one_line_error(phantom_case, tiny_mr_model, tmp_path):
    missing = tmp_path / "no-such-mr.nii.gz"
    runs = {
        "missing input": RunProcess(build_run_command(sys.executable, missing, phantom_case / "ct.nii.gz", tmp_path / "a", model=tiny_mr_model, device="cpu"), env=CHILD_ENV).start(),
        "unknown model": RunProcess(_command(phantom_case, tmp_path / "b", tiny_mr_model, model="no-such-model"), env=CHILD_ENV).start(),
    }
    codes = {name: run.wait(timeout=120) for name, run in runs.items()}
    assert codes == {"missing input": MissingInputError.exit_code, "unknown model": ModelError.exit_code}
    assert runs["missing input"].error_message == f"{missing}: file not found"
    assert runs["unknown model"].error_message.startswith("model 'no-such-model' not found")
    for run in runs.values():
        assert run.outputs() == {} and not run.cancelled
    assert EXIT_CANCELLED == 130
