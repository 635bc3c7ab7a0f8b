"""Install the DiffuGen FiftyOne plugin (``fiftyone.yml`` + ``operators/``) into FiftyOne's plugins folder.

FiftyOne discovers a plugin by its ``fiftyone.yml`` anywhere under ``fo.config.plugins_dir``
(``FIFTYONE_PLUGINS_DIR``). :func:`install_plugin` links this checkout there (or copies the plugin
files), so the App's operator browser lists ``@diffugen/diffugen/...``. The operators import the
``diffugen`` package, so it must be installed in the environment that runs the App (and any
``fiftyone delegated launch`` worker).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import DiffuGenError

PLUGIN_NAME = "@diffugen/diffugen"
PLUGIN_FILES = ("fiftyone.yml", "operators", "README.md")


def plugin_root() -> Path:
    """The folder holding ``fiftyone.yml`` (the repository root of a source checkout)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "fiftyone.yml").is_file():
        raise DiffuGenError(f"no fiftyone.yml in {root}: install the plugin from a source checkout "
                            f"(pip install -e <checkout>), or run `fiftyone plugins download <repo url>`")
    return root


def install_plugin(plugins_dir: str | Path | None = None, link: bool = True, overwrite: bool = False,
                   name: str = "diffugen") -> Path:
    """Make the plugin discoverable: ``<plugins_dir>/<name>`` → this checkout.

    Args:
        plugins_dir: default ``fo.config.plugins_dir`` (``FIFTYONE_PLUGINS_DIR``; required).
        link: symlink the checkout (edits take effect at once); ``False`` copies the plugin files.
        overwrite: replace an existing ``<plugins_dir>/<name>``.

    Returns:
        The installed path.
    """
    if plugins_dir is None:
        import fiftyone as fo

        plugins_dir = fo.config.plugins_dir
    if not plugins_dir:
        raise DiffuGenError("FiftyOne has no plugins folder: set FIFTYONE_PLUGINS_DIR or pass --plugins-dir")
    root = plugin_root()
    dest = Path(plugins_dir).expanduser().resolve() / name
    if dest.is_symlink() and dest.resolve() == root and link:
        return dest
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise DiffuGenError(f"{dest} already exists: pass overwrite=True (--force) to replace it")
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        else:
            shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        dest.symlink_to(root, target_is_directory=True)
    else:
        dest.mkdir()
        for item in PLUGIN_FILES:
            src = root / item
            if src.is_dir():
                shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.is_file():
                shutil.copy2(src, dest / item)
    return dest
