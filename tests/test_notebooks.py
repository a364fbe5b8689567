"""Every notebook in colab/ runs top to bottom on the CPU at its CI size; the install cell installs a wheel
built from this checkout, and skips when the package is already importable."""

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))


def _install_cell(nb) -> str:
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and "PACKAGE_SOURCE" in code[0].source, "the first code cell installs from PACKAGE_SOURCE"
    return code[0].source


def test_there_are_notebooks():
    assert os.path.join(ROOT, "colab", "pretrain_bert_demo.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    source = _install_cell(nb)
    for placeholder in ("YOUR-ORG", "YOUR_ORG", "<owner>", "example.com"):
        assert placeholder not in source, f"placeholder {placeholder} in the install cell"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "outputs are not committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The kernel inherits this environment: one CPU device, the CI size, no TPU backend.
    monkeypatch.setenv("BERTGPT_JAX_NOTEBOOK_SIZE", "ci")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "bertgpt_jax is already installed: skipping the installation" in text


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # Built from a copy of the tracked files, so the checkout gets no build/ or egg-info.
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)) and not name.startswith(("tests/", "bench/", "colab/")):
            os.makedirs(os.path.dirname(build / name), exist_ok=True)
            with open(os.path.join(ROOT, name), "rb") as src, open(build / name, "wb") as dst:
                dst.write(src.read())
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(build)], check=True, capture_output=True, timeout=600)
    (path,) = glob.glob(str(out / "bertgpt_jax-*.whl"))
    return path


# Runs a notebook's install cell in a fresh interpreter that cannot import the checkout's bertgpt_jax (the
# editable install's finder and the checkout's path removed), as on a fresh Colab runtime.
_RUN_CELL = """
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if "editable" not in (getattr(f, "__module__", "") or "") + type(f).__module__]
sys.path[:] = [p for p in sys.path if p not in ("", {root!r})] + [{target!r}]
for name in [m for m in sys.modules if m.startswith("bertgpt_jax")]:
    del sys.modules[name]
import importlib.util
assert importlib.util.find_spec("bertgpt_jax") is None, "the checkout is still importable"
exec(compile(open({cell!r}).read(), "install_cell", "exec"))
import bertgpt_jax
print(json.dumps({{"file": bertgpt_jax.__file__}}))
"""


def _run_install_cell(source, workdir, target, env_extra):
    cell = workdir / "install_cell.py"
    cell.write_text(source)
    script = _RUN_CELL.format(root=ROOT, target=str(target), cell=str(cell))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BERTGPT_JAX_PACKAGE_SOURCE")}
    # pip installs into target, with no dependencies and no index: the test installs only the wheel.
    env.update(PIP_TARGET=str(target), PIP_NO_DEPS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               **env_extra)
    return subprocess.run([sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_install_cell_installs_the_wheel_and_finds_an_uploaded_one(path, wheel, tmp_path):
    source = _install_cell(nbformat.read(path, as_version=4))
    with zipfile.ZipFile(wheel) as z:
        assert "bertgpt_jax/training/aot.py" in z.namelist()
    # Named in PACKAGE_SOURCE (through its environment variable).
    target = tmp_path / "site"
    proc = _run_install_cell(source, tmp_path, target, {"BERTGPT_JAX_PACKAGE_SOURCE": wheel})
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = json.loads(proc.stdout.strip().splitlines()[-1])["file"]
    assert installed.startswith(str(target)), installed
    assert "pip install " + wheel in proc.stdout
    # Uploaded to the runtime's working directory, PACKAGE_SOURCE left empty.
    upload = tmp_path / "upload"
    upload.mkdir()
    shutil.copy(wheel, upload)
    proc = _run_install_cell(source, upload, upload / "site", {})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["file"].startswith(str(upload / "site"))
    # Nothing to install from: a clear error saying what to do.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run_install_cell(source, empty, empty / "site", {})
    assert proc.returncode != 0 and "PACKAGE_SOURCE is empty" in proc.stderr
