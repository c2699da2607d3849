"""The ``dbdl`` command: migrate, inspect the registry, run SQL, run the demo."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .errors import Error


def _console():
    from rich.console import Console

    return Console(soft_wrap=True)


def _connect(url: str | None, migrate: bool | None = None):
    from .database import connect

    return connect(url, migrate=migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    from . import migrate as migrations
    from .backends.base import Backend

    options = {"python_path": args.python_path} if args.python_path else {}
    backend = Backend.open(args.url, **options)
    console = _console()
    try:
        applied = migrations.migrate(backend, on_apply=lambda m: console.print(f"applied {m.id:04d}_{m.name}"))
        done = migrations.applied(backend.catalog)
        state = f"schema at migration {max(done):04d}" if done else "no migrations"
        console.print(f"{'up to date' if not applied else f'{len(applied)} migration(s) applied'}; {state}")
        python_path = backend.recorded_python_path()
        if python_path:
            console.print(f"the server's Python imports dbdl from: {', '.join(python_path)}")
    finally:
        backend.close()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """What the database's Python can import, and how to fix what it cannot."""
    import platform

    import numpy
    import onnxruntime

    from .backends.base import Backend

    console = _console()
    console.print(f"client: Python {platform.python_version()}, numpy {numpy.__version__}, "
                  f"onnxruntime {onnxruntime.__version__}")
    backend = Backend.open(args.url)
    try:
        report = backend.doctor()
    finally:
        backend.close()
    if not report:
        console.print(f"{backend.name}: predict runs in this process; nothing else to check")
        return 0
    if "error" in report:
        fix = ("connect as a role granted dbdl_admin (GRANT dbdl_admin TO <role>), or a superuser"
               if "permission denied" in report["error"]
               else f"run `dbdl migrate {args.url}` as a superuser (it installs dbdl.doctor())")
        console.print(f"[red]cannot ask the server[/]: {report['error']}\nfix: {fix}")
        return 1
    console.print(f"server: Python {report['python'].split()[0]} ({report.get('executable')}), OS uid {report['uid']}")
    problems = []
    for path, readable in report.get("readable", {}).items():
        mark = "[green]ok[/]" if readable else "[red]not readable[/]"
        console.print(f"  python_path {path}: {mark}")
        if not readable:
            problems.append(f"the server's OS user (uid {report['uid']}) cannot read {path}: make it and its parent "
                            f"folders readable (chmod o+rx), or install dbdl where the server can read it")
    for module in ("numpy", "onnxruntime", "onnx", "dbdl_udf"):
        version = report.get(module)
        if version:
            console.print(f"  {module}: [green]{version}[/]")
        else:
            console.print(f"  {module}: [red]{report.get(module + '_error', 'missing')}[/]")
            if module != "onnx":  # onnx is optional on the server (cost facts only)
                problems.append(f"the server cannot import {module}: {report.get(module + '_error')}")
    if not report.get("python_path"):
        problems.append("no python_path is recorded")
    if problems:
        console.print("[red]problems:[/]")
        for p in problems:
            console.print(f"  - {p}")
        console.print(f"fix: `dbdl migrate {args.url} --python-path DIR [DIR ...]` with the folder that holds dbdl_udf "
                      "(udf/ in a checkout) and a site-packages with numpy and onnxruntime built for the server's "
                      "Python version")
        return 1
    console.print("[green]the server can run dbdl's functions[/]")
    return 0


def _models_table(infos):
    from rich.table import Table

    table = Table()
    for col in ("name", "version", "serving", "source", "inputs", "outputs", "params", "FLOPs/row", "bytes", "created"):
        table.add_column(col)
    for m in infos:
        table.add_row(
            m.name, str(m.version), "●" if m.serving else "", m.source,
            ", ".join(f"{s.name}{list(s.shape)}" for s in m.inputs),
            ", ".join(f"{s.name}{list(s.shape)}" for s in m.outputs),
            f"{m.n_params:,}", f"{m.flops_per_row:,}", f"{m.size_bytes:,}", f"{m.created_at:%Y-%m-%d %H:%M}",
        )
    return table


def cmd_models(args: argparse.Namespace) -> int:
    console = _console()
    with _connect(args.url, migrate=False) as db:
        if args.action == "list":
            infos = db.models.list(args.name)
            if args.json:
                print(json.dumps([_info_dict(m) for m in infos], indent=2, default=str))
            else:
                console.print(_models_table(infos) if infos else "no models registered")
        elif args.action == "show":
            info = db.models.get(args.name, args.version)
            if args.json:
                print(json.dumps(_info_dict(info), indent=2, default=str))
            else:
                console.print(_models_table([info]))
                console.print(f"batch: {_batch_text(info)}")
                if info.rewrites:
                    console.print("rewritten at registration (the original bytes are kept: "
                                  f"db.models.model_bytes({info.name!r}, {info.version}, original=True)):")
                    for r in info.rewrites:
                        console.print(f"  - {r.kind}: {r.note}", soft_wrap=True)
        elif args.action == "drop":
            n = db.models.drop(args.name, args.version)
            console.print(f"dropped {n} version(s) of {args.name!r}")
        elif args.action == "promote":
            db.models.promote(args.name, args.version)
            console.print(f"{args.name!r} now serves version {args.version}")
        elif args.action == "rollback":
            v = db.models.rollback(args.name)
            console.print(f"{args.name!r} rolled back to version {v}")
        elif args.action == "options":
            changes = dict(_option(text) for text in args.set)
            options = db.models.set_options(args.name, **changes) if changes else db.models.options(args.name)
            print(json.dumps(options, indent=2))
        elif args.action == "cache":
            if args.clear:
                db.models.clear_cache(args.name)
                console.print(f"emptied the result cache of {args.name!r}")
            stats = db.models.cache_stats(args.name)
            if args.json:
                print(json.dumps([vars(s) for s in stats], indent=2))
            elif not stats:
                console.print("nothing cached" + (f" for {args.name!r}" if args.name else ""))
            else:
                from rich.table import Table

                table = Table()
                for col in ("name", "version", "output", "hits", "misses", "hit rate", "rows", "bytes", "bound",
                            "evicted"):
                    table.add_column(col)
                for s in stats:
                    table.add_row(s.name, str(s.version), str(s.output), f"{s.hits:,}", f"{s.misses:,}",
                                  "" if s.hit_rate is None else f"{s.hit_rate:.1%}", f"{s.rows:,}", f"{s.bytes:,}",
                                  f"{s.max_bytes:,}", f"{s.evicted:,}")
                console.print(table)
    return 0


def _option(text: str) -> tuple[str, object]:
    """key=value from the command line: true/false, whole numbers (with KiB/MiB/GiB), else text."""
    key, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"dbdl: options are key=value, e.g. cache=true or cache_max_bytes=2GiB; got {text!r}")
    low = value.strip().lower()
    if low in ("true", "false", "on", "off"):
        return key.strip(), low in ("true", "on")
    for suffix, factor in (("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("", 1)):
        if low.endswith(suffix) and low[: len(low) - len(suffix)].isdigit():
            return key.strip(), int(low[: len(low) - len(suffix)]) * factor
    return key.strip(), value


def _info_dict(m) -> dict:
    return {
        "name": m.name, "version": m.version, "serving": m.serving, "source": m.source, "sha256": m.sha256,
        "inputs": [vars(s) for s in m.inputs], "outputs": [vars(s) for s in m.outputs], "n_features": m.n_features,
        "n_params": m.n_params, "flops_per_row": m.flops_per_row, "size_bytes": m.size_bytes,
        "created_at": m.created_at, "description": m.description, "batch": m.batch, "batch_mode": m.batch_mode,
        "original_sha256": m.original_sha256, "rewrites": [r.to_dict() for r in m.rewrites],
    }


def _batch_text(m) -> str:
    return {"dynamic": "any number of rows per run", "symbolic": "any number of rows per run (made symbolic at "
            "registration)", "slices": f"fixed at {m.batch}: scored {m.batch} rows at a time, the last slice padded"
            }[m.batch_mode]


def cmd_datasets(args: argparse.Namespace) -> int:
    from rich.table import Table

    console = _console()
    with _connect(args.url, migrate=False) as db:
        if args.action == "drop":
            info = db.datasets.drop(args.name)
            console.print(f"dropped dataset {info.name!r} (version {info.version}, {info.n_rows:,} rows)")
            return 0
        infos = db.datasets.list() if args.action == "list" else [db.datasets.get(args.name)]
        if args.json:
            print(json.dumps([_dataset_dict(i) for i in infos], indent=2, default=str))
            return 0
        if not infos:
            console.print("no datasets; make one with CALL dbdl.train_export('SELECT ...', 'name')")
            return 0
        table = Table()
        for col in ("name", "version", "table", "shape", "dtype", "label", "train", "validation", "test", "created"):
            table.add_column(col)
        for i in infos:
            table.add_row(i.name, str(i.version), i.table, str(list(i.shape)), i.dtype, i.label_dtype,
                          f"{i.n_train:,}", f"{i.n_validation:,}", f"{i.n_test:,}", str(i.created_at)[:16])
        console.print(table)
        if args.action == "show":
            console.print(f"source query: {infos[0].source_query}")
    return 0


def _dataset_dict(i) -> dict:
    return {"name": i.name, "version": i.version, "table": i.table, "view": i.view, "shape": list(i.shape),
            "dtype": i.dtype, "label_dtype": i.label_dtype, "counts": i.counts, "seed": i.seed,
            "train_fraction": i.train_fraction, "validation_fraction": i.validation_fraction,
            "features": list(i.features), "label_column": i.label_column, "source_query": i.source_query,
            "created_at": i.created_at}


def cmd_register(args: argparse.Namespace) -> int:
    with _connect(args.url) as db:
        version = db.models.register(args.name, args.path, description=args.description, promote=not args.no_promote)
        _console().print(f"registered {args.name}@{version}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _connect(args.url, migrate=False) as db:
        result = db.sql(args.query)
        table = Table()
        for col in result.columns:
            table.add_column(col)
        for row in result.fetchall()[: args.limit]:
            table.add_row(*[str(v) for v in row])
        _console().print(table)
        if len(result) > args.limit:
            _console().print(f"… {len(result) - args.limit} more rows")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    with _connect(args.url, migrate=False) as db:
        print(db.explain(args.query, strategy=args.strategy))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _connect(args.url, migrate=False) as db:
        measured = db.calibrate(rows=args.rows)
    table = Table(title="cost-model constants stored in dbdl.calibration")
    table.add_column("constant")
    table.add_column("value", justify="right")
    for key, value in sorted(measured.items()):
        table.add_row(key, f"{value:.4g}")
    _console().print(table)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.url)


class _StrategyChoices(list):
    """The choices argparse lists; a strategy whose variants depend on the model (``hybrid:<k>``)
    takes any variant, which the planner checks against the model (naming the valid ones)."""

    def __contains__(self, value: object) -> bool:
        from .strategies import STRATEGIES

        name, sep, variant = str(value).partition(":")
        known = STRATEGIES.get(name)
        return super().__contains__(value) or bool(sep and variant and known is not None and known.model_variants)


def _strategy_choices() -> list[str]:
    """What --strategy takes: the registered strategies, relation's layouts ("relation:blocked"),
    and hybrid's split points ("hybrid:<k>")."""
    from .strategies import STRATEGIES

    return _StrategyChoices([*STRATEGIES, "relation:element", "relation:blocked", "hybrid:<k>"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbdl", description="In-database deep learning for DuckDB and PostgreSQL.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="install or upgrade dbdl's schema in a database")
    p.add_argument("url", help="duckdb:///file.db, a file path, or postgresql://user@host/db")
    p.add_argument("--python-path", nargs="+", metavar="DIR",
                   help="PostgreSQL: folders the server's Python imports dbdl_udf, numpy and onnxruntime from "
                        "(default: this dbdl's udf/ folder and this environment's site-packages)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("doctor", help="check that the database's Python can run dbdl's functions")
    p.add_argument("url")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("models", help="list, show, drop, promote or roll back registered models")
    msub = p.add_subparsers(dest="action", required=True)
    for action, helptext in (("list", "every registered version"), ("show", "one version (the serving one by default)"),
                             ("drop", "delete a version or the whole model"), ("promote", "serve a version"),
                             ("rollback", "serve the previously promoted version"),
                             ("options", "show or set a model's options (cache=true, cache_max_bytes=1GiB)"),
                             ("cache", "the result cache's counters (hits, misses, rows, bytes); --clear empties it")):
        a = msub.add_parser(action, help=helptext)
        a.add_argument("url")
        if action in ("list", "cache"):
            a.add_argument("name", nargs="?")
        else:
            a.add_argument("name")
        if action in ("show", "drop"):
            a.add_argument("--version", type=int)
        if action == "promote":
            a.add_argument("version", type=int)
        if action == "options":
            a.add_argument("set", nargs="*", metavar="KEY=VALUE", help="options to change")
        if action == "cache":
            a.add_argument("--clear", action="store_true", help="empty the model's cache (the option stays on)")
        if action in ("list", "show", "cache"):
            a.add_argument("--json", action="store_true", help="print JSON instead of a table")
        a.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="list, show or drop the training datasets made by train_export")
    dsub = p.add_subparsers(dest="action", required=True)
    for action, helptext in (("list", "every dataset"), ("show", "one dataset"),
                             ("drop", "delete a dataset's table and catalog row")):
        a = dsub.add_parser(action, help=helptext)
        a.add_argument("url")
        if action != "list":
            a.add_argument("name")
        if action != "drop":
            a.add_argument("--json", action="store_true", help="print JSON instead of a table")
        a.set_defaults(func=cmd_datasets)

    p = sub.add_parser("register", help="register a .onnx file as the next version of a model")
    p.add_argument("url")
    p.add_argument("name")
    p.add_argument("path")
    p.add_argument("--description")
    p.add_argument("--no-promote", action="store_true", help="keep serving the current version")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("sql", help="run one SQL statement (with predict) and print its rows")
    p.add_argument("url")
    p.add_argument("query")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("explain", help="each predict call's strategy estimates and the planner's choice")
    p.add_argument("url")
    p.add_argument("query")
    p.add_argument("--strategy", choices=_strategy_choices(), help="force a strategy")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("calibrate", help="measure the cost model's constants on this machine")
    p.add_argument("url")
    p.add_argument("--rows", type=int, default=20000)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="the end-to-end demo on embedded DuckDB")
    p.add_argument("--url", default="duckdb:///:memory:")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Error as exc:
        print(f"dbdl: error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

