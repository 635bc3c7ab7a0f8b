"""``diffugen app`` (open a dataset in the FiftyOne App) and ``diffugen plugin install``."""

from __future__ import annotations

import argparse

from ._shared import load_dataset, port


def cmd_app(args: argparse.Namespace) -> int:
    import fiftyone as fo

    session = fo.launch_app(load_dataset(args.dataset), port=args.port, remote=args.remote)
    session.wait()
    return 0


def cmd_plugin_install(args: argparse.Namespace) -> int:
    from ..plugin.install import PLUGIN_NAME, install_plugin

    dest = install_plugin(args.plugins_dir, link=not args.copy, overwrite=args.force)
    print(f"installed the FiftyOne plugin {PLUGIN_NAME} at {dest}")
    print("restart the App, then press ` (backtick) in it to browse the diffugen operators")
    return 0


def add_parsers(sub) -> None:
    """Add ``diffugen plugin install`` to the CLI's subparsers (``sub`` from ``add_subparsers``)."""
    p = sub.add_parser("plugin", help="install the FiftyOne plugin (operators in the App)")
    actions = p.add_subparsers(dest="plugin_command", required=True)
    i = actions.add_parser("install", help="link (or copy) this checkout into FiftyOne's plugins folder")
    i.add_argument("--plugins-dir", help="default: fo.config.plugins_dir (FIFTYONE_PLUGINS_DIR)")
    i.add_argument("--copy", action="store_true", help="copy the plugin files instead of a symlink")
    i.add_argument("--force", action="store_true", help="replace an existing install")
    i.set_defaults(func=cmd_plugin_install)

    a = sub.add_parser("app", help="open a dataset in the FiftyOne App")
    a.add_argument("dataset")
    a.add_argument("--port", type=port, default=5151)
    a.add_argument("--remote", action="store_true", help="serve without opening a browser")
    a.set_defaults(func=cmd_app)
