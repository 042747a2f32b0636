"""One installed package, `resnest_serving`, whose sub-packages are the repository's top-level folders.

Metadata and requirements are in setup.cfg; this file only maps folders to names (setup.cfg cannot list
sub-packages of a mapped folder by itself), so a new sub-package needs no edit here.
"""

from pathlib import Path

from setuptools import setup

ROOT = "resnest_serving"
FOLDERS = ("protocol", "export", "pipeline", "serving", "client", "demo")
HERE = Path(__file__).resolve().parent


def packages() -> list[str]:
    found = [ROOT]
    for folder in FOLDERS:
        for init in sorted((HERE / folder).rglob("__init__.py")):
            relative = init.parent.relative_to(HERE).as_posix()
            found.append(f"{ROOT}.{relative.replace('/', '.')}")
    return found


setup(packages=packages(),
      package_dir={ROOT: ROOT, **{f"{ROOT}.{folder}": folder for folder in FOLDERS if (HERE / folder).is_dir()}})
