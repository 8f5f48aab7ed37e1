"""Helpers of the production tests: the CLI with the stack's credentials, a production
workspace, what the buckets and the registry hold."""
from __future__ import annotations

from helpers import cli


def prod_cli(stack, ws, *args, check: bool = True, env: dict | None = None):
    """`oblivio ARGS` with the stack's credentials in the environment; the workspace names the servers."""
    return cli(ws, *args, check=check, env={**stack.client_environment(), **(env or {})}, embedded=True)


def production_workspace(stack, root, *, name: str = "ws", **overrides):
    """`oblivio init --profile production` against the loopback stack (a fresh DVC prefix per workspace)."""
    flags = {**stack.init_options(dvc_prefix=name), **overrides}
    ws = root / name
    args = [a for flag, value in flags.items() if value is not None for a in (flag, value)]
    cli(None, "init", str(ws), "--profile", "production", *args)
    return ws


def objects(stack):
    """Every object of every bucket: {s3://bucket/key: bytes}."""
    s3 = stack.s3()
    found = {}
    for bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                found[f"s3://{bucket}/{obj['Key']}"] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def registry(stack):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_uri, registry_uri=stack.mlflow_uri)
