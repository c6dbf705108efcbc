"""colab/: the quickstart runs top to bottom (tiny config, CPU, a kernel on this venv's Python);
both notebooks are stored with cleared outputs; the TPU notebook's cells parse and the configs it
names exist."""
from __future__ import annotations

import ast
import importlib
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "colab" / "quickstart.ipynb"
REPRODUCE = REPO / "colab" / "reproduce_tables.ipynb"
NOTEBOOKS = [QUICKSTART, REPRODUCE]


def parameters_cell(nb):
  [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  return cell


def output_texts(cell) -> list[str]:
  texts = []
  for out in cell.get("outputs", []):
    texts.append(out.get("text", ""))
    texts += [v for k, v in out.get("data", {}).items() if k.startswith("text/")]
  return texts


def venv_kernel(folder: Path):
  """A kernel manager whose kernel is this interpreter (the venv the tests run in), whatever
  kernels the machine's Jupyter paths hold."""
  from jupyter_client import KernelManager
  from jupyter_client.kernelspec import KernelSpecManager
  spec = folder / "kernels" / "wst-venv"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "wst-jax venv", "language": "python"}))
  return KernelManager(kernel_name="wst-venv",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
  from nbclient import NotebookClient
  nb = nbformat.read(QUICKSTART, as_version=4)
  params = parameters_cell(nb)
  names = {t.id for node in ast.parse(params.source).body for t in node.targets}
  assert {"CONFIG_ARG", "NUM_STEPS", "WORKDIR", "GSM8K_TABLE"} <= names, params.source
  params.source = (f'CONFIG_ARG = "tiny"\nNUM_STEPS = 4\nWORKDIR = {str(tmp_path / "run")!r}\n'
                   'GSM8K_TABLE = False\nREPO_URL = ""')
  # The kernel inherits this environment: a private model cache, no Hub, the inline plot backend.
  monkeypatch.setenv("WST_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.delenv("MPLBACKEND", raising=False)
  client = NotebookClient(nb, km=venv_kernel(tmp_path / "jupyter"), timeout=600,
                          resources={"metadata": {"path": str(QUICKSTART.parent)}})
  client.execute()  # raises CellExecutionError, with the cell and traceback, if any cell fails

  everything = "\n".join(t for c in nb.cells if c.cell_type == "code" for t in output_texts(c))
  assert f"wst-jax from {REPO}" in everything
  assert everything.count("student: ") >= 3  # the student's answers with no instruction
  plots = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert plots, "no reward / KL plot was displayed"
  assert "'reward'" in everything and "'kl'" in everything  # the last step's metrics
  tables = [o["data"]["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
            if "text/markdown" in o.get("data", {})]
  assert len(tables) == 1 and "| instruction source |" in tables[0], tables
  for row in ("(a) student alone", "(b) human instruction", "(c) untrained teacher",
              "(d) WST teacher (step 4)"):
    assert row in tables[0]
  assert "(c) untrained teacher" in everything and "(d) WST teacher" in everything  # instructions
  assert (tmp_path / "run" / "eval" / "table.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_reproduce_tables_cells_parse_and_name_existing_configs():
  nb = nbformat.read(REPRODUCE, as_version=4)
  sources = [c.source for c in nb.cells if c.cell_type == "code"]
  for source in sources:  # `!cmd` and `%magic` lines become Python as IPython would run them
    ast.parse(TransformerManager().transform_cell(source))
  text = "\n".join(c.source for c in nb.cells)
  mentioned = set(re.findall(r"configs/\w+\.py", text))
  mentioned |= {f"configs/{name}.py" for name in re.findall(r'^CONFIG = "(\w+)"', text, re.M)}
  assert {"configs/gsm8k.py", "configs/math500.py", "configs/hh_rlhf.py",
          "configs/pod_gsm8k.py"} <= mentioned
  missing = sorted(p for p in mentioned if not (REPO / p).is_file())
  assert not missing, f"reproduce_tables.ipynb names configs that do not exist: {missing}"
  # Every config it names has the fields its code cells read and override.
  fields = set(re.findall(r"(?<![\w'\"])config\.((?:\w+\.)*\w+)", "\n".join(sources)))
  assert {"teacher.path", "mesh.model", "train.batch_size"} <= fields
  for path in sorted(mentioned - {"configs/common.py"}):  # common.py: the schema, no get_config
    config = importlib.import_module(path[:-len(".py")].replace("/", ".")).get_config()
    for field in fields:
      node = config
      for part in field.split("."):
        assert part in node, f"{path} has no config.{field}"
        node = node[part]
