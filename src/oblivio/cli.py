"""`oblivio`: the command-line face. The only core module that may import flows or Prefect.

Heavy libraries are imported inside the commands, so `oblivio --help` answers at once.
Every user mistake ends in one message on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from oblivio.errors import OblivioError


def _emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(result, indent=1, sort_keys=True, default=str))
    else:
        print(human)


def _workspace(args):
    from oblivio.workspace import Workspace

    ws = Workspace.find(Path(args.workspace) if args.workspace else None)
    _ = ws.params, ws.mlflow  # validate both files before anything starts
    os.environ.update(ws.environment())
    _quiet_libraries()
    _ = ws.secret
    return ws


def _quiet_libraries() -> None:
    """Progress bars and advice from MLflow and GX are noise in a pipeline's output."""
    import logging
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    warnings.filterwarnings("ignore", message=".*input example.*")
    warnings.filterwarnings("ignore", message=".*dataset source can be interpreted.*")


def _runner(ws, args):
    from flows.runners import make_task_runner

    ex = ws.params.executor
    return make_task_runner(args.executor or ex.kind, max_workers=args.workers or ex.max_workers,
                            dask_address=args.dask_address or ex.dask_address, environment=ws.environment())


def cmd_init(args) -> int:
    from oblivio.workspace import init_workspace

    ws = init_workspace(Path(args.directory), source=args.source)
    _emit({"workspace": str(ws.root)}, args.json,
          f"Created an Oblivio workspace in {ws.root}.\nNext: cd {args.directory} && oblivio run")
    return 0


def cmd_run(args) -> int:
    began = time.perf_counter()
    ws = _workspace(args)
    from oblivio import tracking
    from flows.pipeline import training_pipeline
    from flows.server import prefect_api

    tracking.ensure_experiment(ws.mlflow)
    with prefect_api():
        flow = training_pipeline.with_options(task_runner=_runner(ws, args))
        result = flow(str(ws.root), ws.params.sisa.shards, from_scratch=args.from_scratch, trigger=args.trigger,
                      baseline=ws.params.report.baseline and not args.no_baseline)
    result["model_name"] = ws.mlflow.model_name
    result["seconds"] = time.perf_counter() - began
    from oblivio.report import render_run_summary

    _emit(result, args.json, render_run_summary(result))
    return 0


def cmd_stage(args) -> int:
    """One dvc.yaml stage, run without Prefect: what `dvc repro` calls."""
    ws = _workspace(args)
    from oblivio import pipeline

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.stage == "ingest":
        result = pipeline.ingest(ws.root)
    elif args.stage == "train":
        shards = [pipeline.train_one_shard(ws.root, k, progress) for k in range(ws.params.sisa.shards)]
        pipeline.publish_models(ws.root, shards)
        result = {"shards": [{k: s[k] for k in ("index", "weights_sha256", "slices_trained")} for s in shards]}
    else:
        result = pipeline.evaluate(ws.root)
    _emit(result, args.json, json.dumps(result, indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oblivio", description="Data governance for ML: SISA training, "
                                     "deletion requests, unlearning, and privacy-gated promotion.")
    parser.add_argument("--workspace", "-C", help="workspace directory (default: the one containing the cwd)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create a workspace: config files, git and DVC repositories, secret")
    p.add_argument("directory")
    p.add_argument("--source", help="data.source to write into params.yaml (default builtin:nlswork)")

    p = command("run", cmd_run, "run the pipeline: ingest, validate, version, train, audit, register, promote")
    p.add_argument("--from-scratch", action="store_true", help="ignore every checkpoint and retrain all slices")
    p.add_argument("--executor", choices=["sequential", "thread", "process", "dask"], help="shard task runner")
    p.add_argument("--workers", type=int, help="parallel shard workers")
    p.add_argument("--dask-address", help="address of an existing Dask scheduler (tcp://host:8786)")
    p.add_argument("--no-baseline", action="store_true", help="skip the non-sharded comparison model")
    p.add_argument("--trigger", default="manual", help=argparse.SUPPRESS)

    p = command("stage", cmd_stage, "run one dvc.yaml stage without Prefect (what `dvc repro` calls)")
    p.add_argument("stage", choices=["ingest", "train", "evaluate"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except OblivioError as err:
        print(f"oblivio {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"oblivio {args.command}: interrupted; run it again to resume from the last checkpoint.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
