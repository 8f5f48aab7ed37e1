"""`oblivio`: the command-line face. It parses arguments, calls the Python API
(`oblivio.api`), and renders the result; the use cases live behind the API.

Heavy libraries are imported inside the commands, so `oblivio --help` answers at once.
Every user mistake ends in one message on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from oblivio.errors import OblivioError


def _emit(result, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), indent=1, sort_keys=True, default=str))
    else:
        print(human)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _open(args):
    from oblivio.api import Workspace

    return Workspace.open(args.workspace, progress=_progress)


def _executor(args) -> dict:
    return {"executor": args.executor, "workers": args.workers, "dask_address": args.dask_address}


def cmd_init(args) -> int:
    from oblivio.api import Workspace
    from oblivio.profiles import Production

    production = Production(args.mlflow_uri or "", args.mlflow_database or "", args.dvc_remote or "",
                            args.s3_endpoint or "", args.prefect_api or "", args.dask_address or "")
    result = Workspace.init(Path(args.directory), source=args.source, profile=args.profile, production=production,
                            from_table=args.from_table, subject_id=args.subject_id, label=args.label,
                            record_id=args.record_id, progress=_progress)
    _emit(result, args.json, f"Created an Oblivio workspace in {result.workspace}.\n"
                             f"Next: cd {args.directory} && oblivio run")
    return 0


def cmd_run(args) -> int:
    from oblivio.report import render_run_summary

    result = _open(args).run(from_scratch=args.from_scratch, baseline=False if args.no_baseline else None,
                             reslice=args.reslice, trigger=args.trigger, **_executor(args))
    _emit(result, args.json, render_run_summary(result.to_dict()))
    return 0


def _process_summary(result: dict) -> str:
    if not result["request_ids"]:
        rejected = "".join(f"\n  rejected {r['request_id']}: {r['reason']}" for r in result["rejected"])
        return f"no actionable requests{rejected}"
    return "\n".join([
        f"{len(result['request_ids'])} request(s) {result['status']}: {result['records_removed']} record(s) removed",
        f"retrained shard(s) {result['shards_retrained'] or 'none'} ({result['slices_retrained']} slice stage(s))",
        f"model v{result['model_version']}: {result['decision']}"
        + (f"; accuracy {result['metrics']['accuracy']:.4f}" if "metrics" in result else ""),
        f"purged {result['purge']['checkpoints_removed']} checkpoint(s), model version(s) "
        f"{result['purge']['model_versions_deleted'] or 'none'}; certificates in certificates/",
        f"done in {result['seconds']:.1f} s",
    ])


def cmd_forget(args) -> int:
    from oblivio import intake
    from oblivio.errors import RequestError

    subjects = list(args.subject or []) + (intake.read_ids_file(Path(args.from_file)) if args.from_file else [])
    records = list(args.record or []) + (intake.read_ids_file(Path(args.records_from_file))
                                         if args.records_from_file else [])
    if not subjects and not records:
        raise RequestError("Nothing to forget: give --subject, --record, --from-file or --records-from-file.")
    ws = _open(args)
    if not args.wait:
        result = ws.forget(subjects=subjects, records=records, kind=args.kind, reason=args.reason or "",
                           callback_url=args.callback_url)
        note = "recorded" if result.created else f"already recorded ({result.status})"
        follow = ("the running `oblivio serve` was notified" if result.announced
                  else "`oblivio process` (or a running `oblivio serve`) will apply it")
        _emit(result, args.json, f"{result.request_id} {note} (due {result.due[:10]}); {follow}")
        return 0
    result = ws.forget(subjects=subjects, records=records, kind=args.kind, reason=args.reason or "", wait=True,
                       callback_url=args.callback_url, **_executor(args))
    _emit(result, args.json, _process_summary(result.to_dict()))
    return 0


def cmd_serve(args) -> int:
    import signal

    ws = _open(args)

    def ready(api_url: str, names: list[str], intake_url: str) -> None:
        print(f"serving {', '.join(names)} on {api_url}; deletion intake on {intake_url}/v1/requests "
              "(Ctrl-C stops; deployments stay active)", file=sys.stderr, flush=True)

    def stop(signum, frame):  # `kill`/systemd stop: shut down like Ctrl-C (server stopped, state removed)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    ws.serve(host=args.host, port=args.port, intake_port=args.intake_port, allow_remote=args.allow_remote,
             ready=ready)
    return 0


def cmd_deploy(args) -> int:
    """The scheduled pipeline on a process work pool, run by `prefect worker` (not by `serve`)."""
    result = _open(args).deploy(work_pool=args.work_pool)
    _emit(result, args.json, f"{result.deployment} deployed on work pool {result.work_pool} ({result.cron}); "
          f"start `prefect worker start --pool {result.work_pool}` to run it")
    return 0


def cmd_process(args) -> int:
    result = _open(args).process(**_executor(args))
    _emit(result, args.json, _process_summary(result.to_dict()))
    return 0


def cmd_requests(args) -> int:
    ws = _open(args)
    if args.example_ids:
        from oblivio import examples

        result = examples.example_ids(ws.layout)
        _emit(result, args.json, "subject ids: " + " ".join(result.subjects) + "\nrecord ids: "
              + " ".join(result.records) + "\n(taken from the current data; use them in a tour or a drill)")
        return 0
    result = ws.requests(status=args.status, overdue=args.overdue)
    lines = [f"{r['id']}  {r['kind']:<10} {r['status']:<9} {r['created_at'][:19]}  due {r['due'][:10]}"
             f"{' OVERDUE' if r['overdue'] else ''}  "
             f"{len(r['subject_hashes'])} subject(s) {len(r['record_hashes'])} record(s)  {r['error'] or ''}"
             for r in result.requests]
    _emit(result, args.json, "\n".join(lines) or ("no overdue requests" if args.overdue else "no requests"))
    return 0


def cmd_verify(args) -> int:
    result = _open(args).verify(alias=args.alias, replay=args.replay)
    mark = {True: "ok  ", False: "FAIL", None: "n/a "}
    human = "\n".join(f"{mark[c['ok']]} {c['check']}: {c['detail']}" for c in result.checks)
    if not result.ok:
        verdict, code = "VERIFICATION FAILED", 3
    elif args.replay and not result.replayed:
        verdict, code = "verified, except the replay: this machine cannot reproduce the recorded numerics", 4
    else:
        verdict, code = "verified", 0
    _emit(result, args.json, f"{human}\n{verdict}")
    return code


def cmd_review(args) -> int:
    from oblivio.report import render_review

    result = _open(args).review(args.version, alias=args.alias)
    _emit(result, args.json, render_review(result.to_dict()))
    return 0


def cmd_approve(args) -> int:
    result = _open(args).approve(args.version, by=args.by)
    _emit(result, args.json, f"v{result.model_version} is now champion (approved by {result.approved_by})")
    return 0


def cmd_scenario(args) -> int:
    """Inject manipulated records into a scratch copy, train, flag a share, correct, measure."""
    result = _open(args).scenario(args.kind, fraction=args.fraction, flagged=args.flagged, seed=args.seed,
                                  keep=args.keep, **_executor(args))
    _emit(result, args.json, _scenario_table(result.to_dict()))
    return 0


def cmd_audit_dp(args) -> int:
    """Canaries in a scratch copy, train with and without DP, bound epsilon from one run each."""
    result = _open(args).audit_dp(canaries=args.canaries, seed=args.seed, keep=args.keep, **_executor(args))
    runs = result.to_dict()["runs"]
    private = runs.get("private")
    details = result.to_dict()
    human = (f"audit-dp: {result.canaries} canaries, {details['confidence']:.0%} confidence, delta {details['delta']:g}\n"
             + (f"with DP ({result.unit} level): epsilon lower bound {private['epsilon_lower']:.4f} <= "
                f"epsilon {private['epsilon']:.4f}: consistent\n" if private else
                "DP is off in this workspace: only the non-private audit ran\n")
             + f"without DP: epsilon lower bound {result.non_private_epsilon_lower:.4f}\n"
             + f"done in {result.seconds:.1f} s")
    _emit(result, args.json, human)
    return 0


def _scenario_table(result: dict) -> str:
    metric = "attack_success_rate" if "attack_success_rate" in result["before"] else "confused_class_accuracy"
    rows = [f"| | clean accuracy | {metric.replace('_', ' ')} |", "| --- | --- | --- |"]
    for name in ("before", "exact_only", "corrective"):
        r = result[name]
        rows.append(f"| {name.replace('_', '-')} | {r['clean_accuracy']:.4f} | {r[metric]:.4f} |")
    return (f"{result['scenario']['kind']}: {result['manipulated']} manipulated, {result['flagged']} flagged\n"
            + "\n".join(rows)
            + f"\ntraining {result['train_seconds']:.1f} s, corrective route {result['corrective_seconds']:.1f} s")


def cmd_numerics(args) -> int:
    """This machine's numerics, whether it can honour the pinned mode, and the variables for workers."""
    from oblivio.api import numerics_report

    result = numerics_report(args.mode)
    if args.env:
        print("\n".join(f"export {k}={v!r}" for k, v in result.environment.items()))
    else:
        _emit(result, args.json, f"{result.description}: " + ("can train and replay here" if result.can_honour
                                                              else "cannot honour it here: "
                                                              + "; ".join(result.problems)))
    return 0 if result.can_honour else 4


def cmd_verify_certificate(args) -> int:
    """Check a deletion certificate offline: no workspace, no secret, only the public key."""
    from oblivio.api import verify_certificate

    result = verify_certificate(args.file, public_key=args.public_key)
    human = "\n".join(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}" for c in result.checks)
    _emit(result, args.json, human + f"\n{'certificate verified' if result.ok else 'CERTIFICATE NOT VERIFIED'}")
    return 0 if result.ok else 3


def cmd_doctor(args) -> int:
    """Each configured backend, one line: reachable, credentials, the rights the purge needs."""
    result = _open(args).doctor()
    _emit(result, args.json,
          "\n".join(f"{'ok  ' if c['ok'] else 'FAIL'} {c['backend']}: {c['detail']}" for c in result.checks))
    return 0 if result.ok else 5


def cmd_stage(args) -> int:
    """One dvc.yaml stage, run without Prefect: what `dvc repro` calls."""
    result = _open(args).stage(args.stage)
    _emit(result, args.json, json.dumps(result.to_dict(), indent=1, default=str))
    return 0


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    from oblivio.config import CHOICES

    p.add_argument("--executor", choices=CHOICES["executor.kind"], help="shard task runner")
    p.add_argument("--workers", type=_whole(1), help="parallel shard workers")
    p.add_argument("--dask-address", help="address of an existing Dask scheduler (tcp://host:8786)")


def _whole(minimum: int):
    """An argparse type: a whole number >= minimum, or one message saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a share in (0, 1], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # the choices are the core's own lists, which its checks use too (no second copy to drift)
    from oblivio.config import CHOICES, SCENARIO_KINDS, STAGES
    from oblivio.ledger import REQUEST_KINDS, STATUSES
    from oblivio.profiles import PROFILES

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
    p.add_argument("--from-table", metavar="FILE", help="a .parquet/.csv table: write params.yaml from its schema")
    p.add_argument("--subject-id", metavar="COL", help="with --from-table: the column naming the person")
    p.add_argument("--label", metavar="COL", help="with --from-table: the column to predict")
    p.add_argument("--record-id", metavar="COL", help="with --from-table: a column unique per row (default: derived)")

    p.add_argument("--profile", choices=PROFILES, default="embedded",
                   help="embedded (every store inside the workspace) or production (the servers below)")
    for flag, what in (("--mlflow-uri", "MLflow tracking server (http://host:5000)"),
                       ("--mlflow-database", "its database, for the purge's mlflow gc (postgresql+psycopg2://user@host/db)"),
                       ("--dvc-remote", "DVC remote (s3://bucket/prefix)"), ("--s3-endpoint", "S3 endpoint URL, "
                       "if not AWS"), ("--prefect-api", "Prefect server API (http://host:4200/api)"),
                       ("--dask-address", "Dask scheduler (tcp://host:8786)")):
        p.add_argument(flag, help=f"production profile: {what}")

    p = command("run", cmd_run, "run the pipeline: ingest, validate, version, train, audit, register, promote")
    p.add_argument("--from-scratch", action="store_true", help="ignore every checkpoint and retrain all slices")
    p.add_argument("--reslice", action="store_true",
                   help="place every record anew (sisa.placement), undoing what growth runs did to the slices' "
                        "balance; the shards whose layout changes retrain from slice 1")
    _add_executor_options(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the non-sharded comparison model")
    p.add_argument("--trigger", default="manual", help=argparse.SUPPRESS)

    p = command("forget", cmd_forget, "record a deletion request (durably, before returning); --wait applies it now")
    p.add_argument("--subject", action="append", help="a subject (person) id; repeatable")
    p.add_argument("--record", action="append", help="a single record id; repeatable")
    p.add_argument("--from-file", help="a file of subject ids, one per line")
    p.add_argument("--records-from-file", help="a file of record ids, one per line")
    p.add_argument("--kind", choices=REQUEST_KINDS, default="erasure",
                   help="erasure (privacy: forget exactly) or corrective (manipulated data: also dampen every "
                        "shard model with the flagged records, SSD)")
    p.add_argument("--reason", help="free text kept with the request (no personal data, please)")
    p.add_argument("--wait", action="store_true", help="process pending requests now and wait for the result")
    p.add_argument("--callback-url", metavar="URL", help="POSTed a signed summary when the request settles "
                   "(its host must be in params.yaml requests.callback_hosts)")
    _add_executor_options(p)

    p = command("process", cmd_process, "apply every pending request in one batch (each shard retrained once)")
    _add_executor_options(p)

    p = command("serve", cmd_serve, "serve the scheduled pipeline and the deletion processor on a Prefect server")
    p.add_argument("--host", default="127.0.0.1", help="bind address of the Prefect server and the HTTP intake (default loopback)")
    p.add_argument("--port", type=_whole(1), default=4200, help="port of the Prefect server (default 4200)")
    p.add_argument("--intake-port", type=_whole(0), default=0,
                   help="port of the HTTP deletion intake (default: a free one; see .oblivio/serve.json)")
    p.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --host")

    p = command("deploy", cmd_deploy, "deploy the scheduled pipeline on a process work pool (run by `prefect worker`)")
    p.add_argument("--work-pool", required=True, help="name of an existing process work pool")

    p = command("requests", cmd_requests, "list the deletion ledger")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--overdue", action="store_true", help="only requests past their due date and not yet settled")
    p.add_argument("--example-ids", action="store_true",
                   help="print a few subject and record ids that exist in the current data (for a tour)")

    p = command("verify", cmd_verify, "check the promoted model against the ledger and the data")
    p.add_argument("--alias", default="champion", help="model alias to verify (default champion)")
    p.add_argument("--replay", type=_whole(0), default=0, metavar="K",
                   help="also retrain K random slices from their parent checkpoints and compare bits")

    p = command("review", cmd_review, "a model version's audit beside the champion's (default: the candidate)")
    p.add_argument("version", nargs="?", type=_whole(1), help="model version number")
    p.add_argument("--alias", help="review the version with this alias (candidate, champion)")

    p = command("approve", cmd_approve, "make a version champion by hand (when gates.require_approval is on)")
    p.add_argument("version", type=_whole(1))
    p.add_argument("--by", required=True, help="who approves (recorded on the version)")

    p = command("scenario", cmd_scenario, "measure the corrective route on injected manipulated data "
                "(in a scratch copy of this workspace's data)")
    p.add_argument("kind", choices=SCENARIO_KINDS)
    p.add_argument("--fraction", type=_share, default=0.05, help="share of records manipulated (default 0.05)")
    p.add_argument("--flagged", type=_share, default=0.2, help="share of the manipulated records found (default 0.2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", metavar="DIR", help="keep the scratch workspace in DIR instead of deleting it")
    _add_executor_options(p)

    p = command("numerics", cmd_numerics, "this machine's pinned numerics (what every training process must "
                "honour); --env prints the variables to start Dask workers with")
    p.add_argument("--mode", choices=CHOICES["train.numerics"], help="default: OBLIVIO_NUMERICS, else portable")
    p.add_argument("--env", action="store_true", help="print `export` lines for workers started by hand")

    p = command("audit-dp", cmd_audit_dp, "bound epsilon empirically from one training run with canaries "
                "(Steinke et al. 2023), with and without DP, in scratch copies of this workspace's data")
    p.add_argument("--canaries", type=int, default=1000, help="canaries, each included with probability 1/2 "
                   "(default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", metavar="DIR", help="keep the scratch workspaces in DIR instead of deleting them")
    _add_executor_options(p)

    p = command("verify-certificate", cmd_verify_certificate,
                "check a deletion certificate's signature and consistency offline (no workspace needed)")
    p.add_argument("file", help="a certificate (certificates/<request>.json)")
    p.add_argument("--public-key", required=True, metavar="KEY",
                   help="the workspace's exported public key (signing-key.pub in its root)")

    command("doctor", cmd_doctor, "check every configured backend: reachable, credentials, rights the purge needs")

    p = command("stage", cmd_stage, "run one dvc.yaml stage without Prefect (what `dvc repro` calls)")
    p.add_argument("stage", choices=STAGES)
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
    except Exception as err:  # not the user's mistake: one message, the traceback only on request
        if os.environ.get("OBLIVIO_DEBUG"):
            raise
        print(f"oblivio {args.command}: internal error ({type(err).__name__}: {str(err)[:300]}). This is a bug, "
              "not your input; rerun with OBLIVIO_DEBUG=1 for the traceback and report it.", file=sys.stderr)
        return 70  # EX_SOFTWARE


def entry() -> None:
    """The `oblivio` console script.

    Ends with `os._exit` once everything is flushed: a normal interpreter exit after
    torch, Prefect and MLflow were imported spends one to two seconds finalising modules
    and threads, on every command.
    """
    try:
        code = main()
    except SystemExit as stop:  # a library that exits instead of raising
        code = stop.code if isinstance(stop.code, int) else 0
    if "prefect.events.worker" in sys.modules:  # bounded: the server may already be gone
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        EventsWorker.drain_all(timeout=5)
        APILogWorker.drain_all(timeout=5)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
