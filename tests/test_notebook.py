"""notebooks/jaxcomposer.ipynb runs headless from top to bottom (nbclient, CPU, tiny parameters);
a failing cell fails the test. Its outputs stay cleared in git."""

from __future__ import annotations

import json
import os

import midi_factory as mf
import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = REPO / "notebooks" / "jaxcomposer.ipynb"


def with_parameters(nb, values: dict):
    """Papermill's convention: a cell right after the `parameters` cell overrides its values."""
    index = next(
        i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    source = "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(index + 1, cell)
    return nb


def test_outputs_are_cleared_in_git():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_on_cpu_with_tiny_parameters(tmp_path):
    corpus = tmp_path / "midi"
    corpus.mkdir()
    for i in range(4):
        mf.simple_file(corpus / f"m{i}.mid", mf.melody(i), qpm=90)
    workdir = tmp_path / "run"
    nb = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4),
        {
            "CONFIG": "tiny",  # by name, as an installed package finds it
            "KEY": "D minor",
            "SCALE": "strict",
            "TEMPERATURE": 0.9,
            "WORKDIR": str(workdir),
            "MIDI_DIR": str(corpus),
            "OVERRIDES": {
                "train": {"num_steps": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 2},
                "data": {"cache_dir": str(tmp_path / "cache"), "num_workers": 1},
            },
            "NUM_SAMPLES": 1,
            "NUM_BARS": 2,
            "PRIMER_MIDI": str(corpus / "m0.mid"),
        },
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )  # fmt: skip
    old = dict(os.environ)
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "CPU: 1 x cpu" in text and "a short version" in text
    kinds = [sorted(o.get("data", {})) for c in nb.cells for o in c.get("outputs", [])]
    assert any("image/png" in k for k in kinds)  # learning curve and scores, inline
    assert any("text/html" in k for k in kinds)  # the audio players
    samples = json.loads((workdir / "continued" / "samples.json").read_text())
    assert samples["settings"]["primer"].endswith("m0.mid")
    # The form's key, scale rule and temperature reach the sampler.
    first = json.loads((workdir / "samples" / "samples.json").read_text())
    assert [s["requested_key"] for s in first["samples"]] == ["D minor"]
    assert first["settings"]["scale"] == "strict" and first["settings"]["temperature"] == 0.9
