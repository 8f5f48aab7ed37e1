"""The feature encoding of a workspace, resolved once at the first ingest and then pinned.

Pinned like the DP noise (`dp_calibration`): a kind inferred from a source's column types
must not flip after an erasure, or every shard's recipe, and so every checkpoint, would change.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from oblivio.data.encoding import Encoder, resolve
from oblivio.data.sources import TableSource
from oblivio.errors import IntegrityError
from oblivio.workspace import WorkspaceDir


def _encoding_key(ws: WorkspaceDir) -> str:
    p = ws.params
    declared = [dataclasses.asdict(s) for s in p.data.columns.specs()]
    return hashlib.sha256(json.dumps([declared, p.train.model], default=list).encode()).hexdigest()


def pin_encoding(ws: WorkspaceDir, source: TableSource) -> Encoder:
    """The feature encoding, resolved from params.yaml and the source's column types once, then pinned.

    Pinned like the DP noise: a kind inferred from the types must not flip after an
    erasure (a CSV column whose only numbers belonged to the erased person), or every
    shard's recipe would change. Declaring the features differently re-resolves it.
    """
    key = _encoding_key(ws)
    if ws.encoding_path.exists():
        pinned = json.loads(ws.encoding_path.read_text())
        if pinned["key"] == key:
            return Encoder.from_json(pinned["encoder"])
    cols = ws.params.data.columns
    encoder = resolve(cols.specs(), source.dtypes(list(cols.features)), model=ws.params.train.model)
    ws.encoding_path.parent.mkdir(parents=True, exist_ok=True)
    ws.encoding_path.write_text(json.dumps({"key": key, "encoder": encoder.to_json()}, indent=1))
    return encoder


def encoder_for(ws: WorkspaceDir) -> Encoder:
    """The pinned encoding; the ingest step pins it."""
    pinned = json.loads(ws.encoding_path.read_text()) if ws.encoding_path.exists() else None
    if pinned is None or pinned["key"] != _encoding_key(ws):
        raise IntegrityError("The feature encoding has not been resolved for these data.columns.features; "
                             "run `oblivio run` (its ingest step resolves it).")
    return Encoder.from_json(pinned["encoder"])
