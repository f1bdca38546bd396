"""What `pip install .` puts in the wheel, checked against pyproject.toml without building one
(building needs the network for setuptools here): every file the studio serves and every
built-in config is inside the packages and package data it declares, and the console command
points at a function that exists. tests/test_cli.py runs the config names from another folder;
a real `pip install .` into a fresh venv, run from outside the checkout, was checked by hand
(issue 23: `jaxcomposer --mode=all --config=tiny`, the default config, --mode=serve)."""

from __future__ import annotations

import fnmatch
import importlib
import tomllib

from conftest import REPO
from setuptools import find_packages

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_wheel_holds_the_configs_and_the_studio_page():
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = set(find_packages(str(REPO), include=find["include"]))
    assert {"jaxcomposer", "jaxcomposer.studio", "configs"} <= packages
    # Every folder of Python files under jaxcomposer/ is a package that ships.
    folders = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "jaxcomposer").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert folders <= packages, folders - packages
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["jaxcomposer.studio"]
    static = REPO / "jaxcomposer" / "studio"
    served = [p.relative_to(static).as_posix() for p in (static / "static").iterdir()]
    assert served and all(any(fnmatch.fnmatch(f, g) for g in data) for f in served), served
    from jaxcomposer.studio import server

    assert set(server.STATIC) <= {f.removeprefix("static/") for f in served}


def test_the_console_command_exists():
    module, _, name = PYPROJECT["project"]["scripts"]["jaxcomposer"].partition(":")
    assert module == "jaxcomposer.main" and callable(getattr(importlib.import_module(module), name))
