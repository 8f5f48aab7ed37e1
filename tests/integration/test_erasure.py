"""Erasure end to end: exactness, untouched shards, tombstones, purge, certificates, refusals."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from canary import MARKER, MARKER_VALUE, SUBJECT, marked_table
from helpers import CallbackReceiver, cli, cli_json, csv_workspace, marker_hits, set_params

pytestmark = pytest.mark.integration
CATALOGUE: list[tuple[str, dict]] = []  # (path, event) the OpenLineage receiver got during `erased`


@pytest.fixture(scope="module")
def erased(tmp_path_factory):
    """Train, then erase the marked person with `forget --wait` (the source lives outside the workspace)."""
    root = tmp_path_factory.mktemp("erasure")
    source = root / "upstream.csv"
    marked_table().to_csv(source, index=False)
    ws = csv_workspace(root)
    with CallbackReceiver() as catalogue:  # a lineage catalogue's HTTP endpoint, for the run and the erasure
        set_params(ws, {"data": {"source": str(source)},
                        "openlineage": {"transport": "http", "url": catalogue.base_url}})
        before = cli_json(ws, "run")
        assert (ws / ".oblivio" / "signing-key.pem").stat().st_mode & 0o077 == 0  # made by init, owner-only
        for made_by_init in (ws / ".oblivio" / "signing-key.pem", ws / "signing-key.pub"):
            made_by_init.unlink()  # as in a workspace made before certificates were signed
        checkpoints_before = file_digests(ws / "checkpoints")
        result = json.loads(cli(ws, "forget", "--subject", SUBJECT, "--reason", "GDPR art. 17 #881",
                                "--wait", "--json").stdout)
    CATALOGUE[:] = [(path, json.loads(body)) for path, (body, _) in zip(catalogue.paths, catalogue.received)]
    set_params(ws, {"openlineage": {"transport": "none"}})  # the receiver is gone
    return ws, source, before, result, checkpoints_before


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_forget_wait_prints_the_contract(erased):
    _, _, before, result, _ = erased
    assert {"request_ids", "status", "route", "records_removed", "shards_retrained", "slices_retrained",
            "model_version", "promoted", "certificate", "seconds"} <= result.keys()
    assert result["status"] == "promoted" and result["promoted"] is True
    assert result["records_removed"] == 3 and len(result["shards_retrained"]) == 1
    assert result["model_version"] == before["model_version"] + 1
    # where the time went, step by step; together no more than the flow itself
    assert set(result["steps"]) == {"plan", "apply", "train", "publish", "evaluate", "version", "register",
                                    "promote", "finish", "notify", "intervals"}
    assert all(s >= 0 for s in result["steps"].values()) and sum(result["steps"].values()) <= result["flow_seconds"] + 0.01
    assert {"ingest", "train", "baseline", "register"} <= before["steps"].keys()


def test_the_logged_audit_has_every_interval_once_the_erasure_is_settled(erased):
    """The deletion flow draws the non-gating MIA intervals after promotion; the report logged
    to the version's run must then hold them all, beside the forget set's gating interval."""
    from oblivio import tracking
    from oblivio.workspace import WorkspaceDir

    ws, _, _, result, _ = erased
    assert result["intervals"] == {"attached": True}
    cfg = WorkspaceDir(ws).mlflow
    c = tracking.client(cfg)
    run_id = c.get_model_version(cfg.model_name, str(result["model_version"])).run_id
    report = json.loads(Path(c.download_artifacts(run_id, "mia.json")).read_text())
    assert "intervals_pending" not in report
    attacks = [report["ensemble"], *report["shards"], *report["rmia_shards"], report["forget_set"]]
    assert len(attacks) == 2 + 2 * 3
    for attack in attacks:
        assert set(attack["intervals"]) == {"auc", "tpr_at_0_1pct_fpr", "tpr_at_1pct_fpr", "balanced_accuracy"}
        assert attack["intervals"]["auc"]["low"] <= attack["auc"] <= attack["intervals"]["auc"]["high"]


def test_only_the_affected_shard_retrained(erased):
    ws, _, before, result, checkpoints_before = erased
    (k,) = result["shards_retrained"]
    after = file_digests(ws / "checkpoints")
    for name, digest in checkpoints_before.items():
        if not name.startswith(f"shard-{k}/"):
            assert after.get(name) == digest, f"{name} changed although shard {k} alone was affected"
    manifest = json.loads((ws / "models" / "manifest.json").read_text())
    old = {s["index"]: s["weights_sha256"] for s in before["shards"]}
    new = {s["index"]: s["weights_sha256"] for s in manifest["shards"]}
    assert [i for i in new if new[i] != old[i]] == [k]


def test_erasure_equals_training_from_scratch_without_the_person(erased):
    """Exactness: the retrained shard is bit-identical to a full retrain of the remaining data."""
    ws, _, _, _, _ = erased
    erased_weights = [s["weights_sha256"] for s in json.loads((ws / "models" / "manifest.json").read_text())["shards"]]
    scratch = cli_json(ws, "run", "--from-scratch", "--no-baseline")
    assert scratch["slices_trained"] == 3 * 2
    assert [s["weights_sha256"] for s in scratch["shards"]] == erased_weights


def test_tombstone_keeps_the_person_out_of_the_next_ingest(erased):
    ws, source, _, _, _ = erased
    assert MARKER in source.read_text(), "the upstream copy is outside the workspace and stays"
    rows = pd.concat([pq.read_table(p).to_pandas() for p in (ws / "data").rglob("*.parquet")])
    assert not rows["person"].astype(str).str.contains(MARKER).any()
    ingest = json.loads(cli(ws, "stage", "ingest", "--json").stdout)
    assert ingest["n_dropped_tombstoned"] == 3


def test_no_copy_of_the_erased_person_remains_anywhere(erased):
    """Invariant 2: scan every file of the workspace (Parquet as tables, the rest as bytes)."""
    ws, _, _, _, _ = erased
    assert marker_hits(ws, MARKER, MARKER_VALUE) == []


def test_certificate_is_signed_and_verifies_offline(erased, tmp_path):
    """Away from the workspace, with only the exported public key: valid; one byte changed: not."""
    ws, _, _, result, _ = erased
    (request_id,) = result["request_ids"]
    assert (ws / ".oblivio" / "signing-key.pem").stat().st_mode & 0o077 == 0  # created on first use
    cert_file, key_file = tmp_path / "cert.json", tmp_path / "key.pub"
    cert_file.write_bytes(Path(result["certificate"][request_id]).read_bytes())
    key_file.write_bytes((ws / "signing-key.pub").read_bytes())
    verified = cli_json(tmp_path, "verify-certificate", str(cert_file), "--public-key", str(key_file))
    assert verified["ok"] and verified["request_id"] == request_id
    text = cert_file.read_text()
    cert_file.write_text(text.replace('"records_removed": 3', '"records_removed": 2'))
    proc = cli(tmp_path, "verify-certificate", str(cert_file), "--public-key", str(key_file), check=False)
    assert proc.returncode == 3 and "CERTIFICATE NOT VERIFIED" in proc.stdout
    from oblivio.tracking import client
    from oblivio.workspace import WorkspaceDir

    cfg = WorkspaceDir(ws).mlflow
    c = client(cfg)
    run_id = c.get_model_version(cfg.model_name, str(result["model_version"])).run_id
    logged = [a.path for a in c.list_artifacts(run_id, "certificates")]
    assert "certificates/signing-key.pub" in logged and f"certificates/{request_id}.json" in logged


def test_certificate_and_registry_say_what_happened(erased):
    ws, _, before, result, _ = erased
    (request_id,) = result["request_ids"]
    cert = json.loads(Path(result["certificate"][request_id]).read_text())
    assert cert["records_removed"] == 3 and cert["promoted"] is True
    assert cert["data_version_before"] == before["dataset_version"] != cert["data_version_after"]
    assert cert["purge"]["model_versions_deleted"] == [before["model_version"]]
    assert MARKER not in json.dumps(cert) and "GDPR art. 17 #881" == cert["reason"]
    from oblivio.tracking import client
    from oblivio.workspace import WorkspaceDir

    cfg = WorkspaceDir(ws).mlflow
    c = client(cfg)
    versions = [int(v.version) for v in c.search_model_versions(f"name='{cfg.model_name}'")]
    assert before["model_version"] not in versions
    tags = c.get_registered_model(cfg.model_name).tags
    assert request_id in tags[f"oblivio.purged.v{before['model_version']}"]
    requests = json.loads(cli(ws, "requests", "--json").stdout)["requests"]
    assert [(r["id"], r["status"]) for r in requests] == [(request_id, "promoted")]


def test_verify_passes_and_catches_tampering(erased):
    ws, _, _, _, _ = erased
    # the auditor's process would pick other oneMKL/ATen/numpy paths by itself; the pinned mode still replays
    other_machine = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "NPY_DISABLE_CPU_FEATURES": "X86_V4"}
    report = json.loads(cli(ws, "verify", "--replay", "2", "--json", env=other_machine).stdout)
    assert report["ok"] is True and report["replayed"] is True
    assert sum(c["check"].startswith("replay") and c["ok"] for c in report["checks"]) == 2
    certificate = json.loads(next((ws / "certificates").glob("*.json")).read_text())
    assert certificate["numerics"]["mode"] == "portable" and certificate["numerics"]["torch"]
    part = ws / "data" / "shards" / "shard=0" / "part.parquet"
    original = part.read_bytes()
    table = pq.read_table(part).to_pandas()
    try:
        pq.write_table(__import__("pyarrow").Table.from_pandas(table.iloc[1:], preserve_index=False), part)
        tampered = cli(ws, "verify", "--json", check=False)
    finally:
        part.write_bytes(original)
    assert tampered.returncode == 3
    failed = [c["check"] for c in json.loads(tampered.stdout)["checks"] if not c["ok"]]
    assert failed == ["slice commitments"]


def test_same_request_twice_is_recorded_once(erased):
    ws, _, _, result, _ = erased
    again = json.loads(cli(ws, "forget", "--subject", SUBJECT, "--json").stdout)
    assert again["request_ids"] == result["request_ids"] and again["created"] is False


@pytest.mark.parametrize("args, message", [
    (["--subject", "nobody-at-all"], "1 of 1 subject id(s) match no record"),
    ([], "Nothing to forget"),
])
def test_refusals_change_nothing(erased, args, message):
    ws, _, _, _, _ = erased
    lock = (ws / "dvc.lock").read_text()
    proc = cli(ws, "forget", *args, check=False)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert (ws / "dvc.lock").read_text() == lock
    assert "nobody-at-all" not in (ws / ".oblivio" / "ledger.db").read_bytes().decode("latin-1")


def test_malformed_ids_file_names_the_line(erased, tmp_path):
    ws, _, _, _, _ = erased
    ids = tmp_path / "ids.txt"
    ids.write_text("# subjects\np1\np2 p3\n")
    proc = cli(ws, "forget", "--from-file", str(ids), check=False)
    assert proc.returncode == 2 and "line(s) 3" in proc.stderr and "p2" not in proc.stderr


# The last two tests change the shared workspace further, so they come last.

def test_request_emptying_a_shard_is_rejected(erased, tmp_path):
    ws, _, _, _, _ = erased
    part = pq.read_table(ws / "data" / "shards" / "shard=2" / "part.parquet").to_pandas()
    ids = tmp_path / "everyone.txt"
    ids.write_text("\n".join(part["person"].astype(str).unique()))
    before = {r["id"] for r in json.loads(cli(ws, "requests", "--json").stdout)["requests"]}
    cli(ws, "forget", "--from-file", str(ids))
    result = json.loads(cli(ws, "process", "--json").stdout)
    assert result["request_ids"] == [] and "every record of shard(s) [2]" in result["rejected"][0]["reason"]
    new = [r for r in json.loads(cli(ws, "requests", "--json").stdout)["requests"] if r["id"] not in before]
    assert [r["status"] for r in new] == ["rejected"]


def test_record_erasure_of_the_last_record_of_the_last_slice(erased):
    """Every record is covered: the shard's trailing record retrains exactly its (last) slice."""
    ws, _, _, _, _ = erased
    part = pq.read_table(ws / "data" / "shards" / "shard=0" / "part.parquet").to_pandas()
    last = part.iloc[-1]
    assert last["_slice"] == 1
    result = json.loads(cli(ws, "forget", "--record", str(last["rid"]), "--wait", "--json").stdout)
    assert result["shards_retrained"] == [0] and result["slices_retrained"] == 1
    assert result["records_removed"] == 1


def rebuilt_by_the_client(event: dict) -> dict:
    """The event parsed back into openlineage-python's own classes and serialised again.

    The client's classes are generated from the OpenLineage JSON Schema (which the package does
    not ship as a file): their constructors reject a missing or unknown field and their
    validators check the formats (UUID run ids, ISO date-times, event types). Oblivio's own run
    facet is checked against its JSON Schema (docs/openlineage-run-facet.json).
    """
    import jsonschema
    from openlineage.client import event_v2 as ev
    from openlineage.client.facet_v2 import (dataset_version_dataset, job_type_job, parent_run, processing_engine_run,
                                             tags_run)
    from openlineage.client.serde import Serde

    schema = json.loads((Path(__file__).parents[2] / "docs" / "openlineage-run-facet.json").read_text())
    standard = {"version": dataset_version_dataset.DatasetVersionDatasetFacet,
                "jobType": job_type_job.JobTypeJobFacet, "processing_engine": processing_engine_run.ProcessingEngineRunFacet}

    def facets(found: dict) -> dict:
        out = {}
        for name, body in found.items():
            body = dict(body)
            producer, schema_url = body.pop("_producer"), body.pop("_schemaURL")
            if name == "oblivio":
                jsonschema.validate({**body, "_producer": producer, "_schemaURL": schema_url},
                                    {**schema, "$ref": "#/$defs/OblivioRunFacet"},
                                    format_checker=jsonschema.FormatChecker())
                out[name] = {**body, "_producer": producer, "_schemaURL": schema_url}
                continue
            if name == "tags":  # the client's own: its version
                made = tags_run.TagsRunFacet(tags=[tags_run.TagsRunFacetFields(**t) for t in body["tags"]],
                                             producer=producer)
            elif name == "parent":
                made = parent_run.ParentRunFacet(run=parent_run.Run(**body["run"]), job=parent_run.Job(**body["job"]),
                                                 producer=producer)
            else:
                made = standard[name](**body, producer=producer)
            assert made._schemaURL == schema_url, name
            out[name] = made
        return out

    rebuilt = ev.RunEvent(
        eventType=ev.RunState(event["eventType"]), eventTime=event["eventTime"], producer=event["producer"],
        run=ev.Run(runId=event["run"]["runId"], facets=facets(event["run"]["facets"])),
        job=ev.Job(namespace=event["job"]["namespace"], name=event["job"]["name"], facets=facets(event["job"]["facets"])),
        inputs=[ev.InputDataset(namespace=d["namespace"], name=d["name"], facets=facets(d.get("facets", {})))
                for d in event["inputs"]],
        outputs=[ev.OutputDataset(namespace=d["namespace"], name=d["name"], facets=facets(d.get("facets", {})))
                 for d in event["outputs"]])
    assert rebuilt.schemaURL == event["schemaURL"]
    return Serde.to_dict(rebuilt)


def test_openlineage_events_link_the_model_to_its_data_and_the_erasure(erased):
    """The catalogue got one event per job (run: ingest, train, evaluate-publish; then the erasure),
    each valid OpenLineage, with the DVC data versions, the model versions, the Prefect flow run,
    the certificate's digest and the hashed request id; no raw subject id anywhere."""
    ws, _, before, result, _ = erased
    assert {path for path, _ in CATALOGUE} == {"/api/v1/lineage"}
    events = [event for _, event in CATALOGUE]
    assert [e["job"]["name"].rsplit(".", 1)[1] for e in events] == ["ingest", "train", "evaluate-publish", "erasure"]
    for event in events:
        assert rebuilt_by_the_client(event) == event
    text = json.dumps(events)
    assert SUBJECT not in text and MARKER not in text
    ingest, _, publish, erasure = events
    version = {f"{d['name']}": d.get("facets", {}).get("version", {}).get("datasetVersion")
               for d in ingest["outputs"]}
    assert version[str(ws / "data" / "shards")] == before["dataset_version"]
    (model,) = publish["outputs"]
    assert model["name"].endswith("/oblivio-ensemble") and model["facets"]["version"]["datasetVersion"] == str(
        before["model_version"])
    assert erasure["inputs"][0]["facets"]["version"]["datasetVersion"] == before["dataset_version"]
    data_after, model_after = erasure["outputs"]
    assert data_after["facets"]["version"]["datasetVersion"] == result["dataset_version"] != before["dataset_version"]
    assert model_after["facets"]["version"]["datasetVersion"] == str(result["model_version"])
    (request_id,) = result["request_ids"]
    facet = erasure["run"]["facets"]["oblivio"]
    assert request_id not in text and facet["requestIdHashes"] == [
        "sha256:" + hashlib.sha256(request_id.encode()).hexdigest()]
    (certificate,) = result["certificate"].values()
    assert facet["certificateIds"] == ["sha256:" + hashlib.sha256(Path(certificate).read_bytes()).hexdigest()]
    assert facet["recordsRemoved"] == 3
    parents = [e["run"]["facets"]["parent"] for e in events]
    assert len({p["run"]["runId"] for p in parents[:3]}) == 1 != len({p["run"]["runId"] for p in parents})
    assert [p["job"]["name"] for p in parents] == ["oblivio-pipeline"] * 3 + ["oblivio-deletion"]
    assert {e["run"]["facets"]["oblivio"]["flowRunId"] for e in events} == {p["run"]["runId"] for p in parents}
