"""The OpenAPI documents the repository carries (tests/data/openapi) hold every schema the tests and
the fake API server look up, and tests/data/refresh_openapi.py reproduces them from a server."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.data import OPENAPI_DIR
from tests.data.refresh_openapi import KEPT, closure, dump, file_name, kind_keys, main, prune, refresh
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.apiserver.resources import RESOURCE_TYPES
from tests.fakes.kubeconfig import api_client_for, write_kubeconfig

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
FIX = "add the kind to KEPT in tests/data/refresh_openapi.py and refresh (tests/data/README.md)"


def _document(group_version: str) -> dict[str, Any]:
    return json.loads((OPENAPI_DIR / file_name(group_version)).read_text())


def test_the_carried_files_are_exactly_the_kept_group_versions():
    assert sorted(p.name for p in OPENAPI_DIR.glob("*.json")) == sorted(file_name(gv) for gv in KEPT)


@pytest.mark.parametrize("group_version", sorted(KEPT))
def test_pruning_a_carried_document_again_changes_nothing(group_version):
    text = (OPENAPI_DIR / file_name(group_version)).read_text()
    assert dump(prune(json.loads(text), group_version, KEPT[group_version])) == text


def _reversed(node: Any) -> Any:
    if isinstance(node, dict):
        return {key: _reversed(node[key]) for key in reversed(list(node))}
    if isinstance(node, list):
        return [_reversed(item) for item in node]
    return node


def test_the_same_document_in_another_key_order_is_written_the_same():
    text = (OPENAPI_DIR / file_name("coordination.k8s.io/v1")).read_text()
    assert dump(prune(_reversed(json.loads(text)), "coordination.k8s.io/v1", ["Lease"])) == text


@pytest.mark.parametrize("group_version", sorted(KEPT))
def test_every_reference_in_a_carried_document_is_defined_in_it(group_version):
    schemas = _document(group_version)["components"]["schemas"]
    closure(schemas, schemas)  # raises KeyError naming the first undefined reference


def test_every_resource_the_fake_api_server_stores_has_its_schema():
    for rt in RESOURCE_TYPES:
        assert rt.kind in KEPT.get(rt.group_version, ()), f"the fake API server stores {rt.kind} ({rt.group_version}): {FIX}"
        schemas = _document(rt.group_version)["components"]["schemas"]
        assert rt.schema_key in schemas, f"{file_name(rt.group_version)} lacks {rt.schema_key}: {FIX}"


def test_a_kinds_closure_holds_object_meta_and_what_it_refers_to():
    schemas = _document("resource.k8s.io/v1")["components"]["schemas"]
    keep = closure(schemas, ["io.k8s.api.resource.v1.ResourceClaim"])
    assert {OBJECT_META, "io.k8s.apimachinery.pkg.apis.meta.v1.ManagedFieldsEntry",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Time", "io.k8s.api.resource.v1.ResourceClaimStatus",
            "io.k8s.apimachinery.pkg.api.resource.Quantity"} <= keep
    assert "io.k8s.api.resource.v1.ResourceSlice" not in keep


def test_pruning_to_one_kind_drops_the_others_and_keeps_the_rest_of_the_document():
    document = {**_document("resource.k8s.io/v1"), "paths": {"/apis/resource.k8s.io/v1/deviceclasses": {}}}
    pruned = prune(document, "resource.k8s.io/v1", ["DeviceClass"])
    schemas = pruned["components"]["schemas"]
    assert "io.k8s.api.resource.v1.DeviceClass" in schemas and OBJECT_META in schemas
    for dropped in ("ResourceSlice", "ResourceClaim", "ResourceClaimTemplate", "Device"):
        assert f"io.k8s.api.resource.v1.{dropped}" not in schemas
    assert closure(schemas, schemas) == set(schemas)
    assert (pruned["openapi"], pruned["info"], pruned["paths"]) == (document["openapi"], document["info"], {})
    assert document["paths"], "the input is left as it was"
    assert pruned["components"]["securitySchemes"] == document["components"]["securitySchemes"]


def test_a_kind_the_document_lacks_is_named():
    schemas = _document("resource.k8s.io/v1")["components"]["schemas"]
    with pytest.raises(ValueError, match="resource.k8s.io/v1 document has no schema for ResourceSlise"):
        kind_keys(schemas, "resource.k8s.io/v1", ["ResourceSlice", "ResourceSlise"])
    with pytest.raises(ValueError, match="has no schema for DeviceClass"):  # the kind of another version
        kind_keys(schemas, "resource.k8s.io/v1beta2", ["DeviceClass"])


def test_a_reference_the_document_does_not_define_is_named():
    with pytest.raises(KeyError, match="'b' is referenced but not defined"):
        closure({"a": {"properties": {"x": {"$ref": "#/components/schemas/b"}}}}, ["a"])


def test_refreshing_from_a_server_that_serves_the_carried_documents_writes_them_unchanged(tmp_path):
    (tmp_path / "apis_storage.k8s.io_v1.json").write_text("{}")  # a group-version no longer kept
    (tmp_path / "notes.json").write_text("{}")  # not a document: left alone
    with FakeApiServer() as server:
        api = api_client_for(server)
        try:
            written = refresh(api, tmp_path)
        finally:
            api.close()
    assert sorted(p.name for p in written) == sorted(file_name(gv) for gv in KEPT)
    for path in written:
        assert path.read_bytes() == (OPENAPI_DIR / path.name).read_bytes(), path.name
    assert not (tmp_path / "apis_storage.k8s.io_v1.json").exists()
    assert (tmp_path / "notes.json").exists()


def test_a_refresh_that_fails_on_one_document_writes_nothing(tmp_path):
    kept = {"coordination.k8s.io/v1": ("Lease",), "v1": ("Pod", "Pood")}  # the bad one comes last
    with FakeApiServer() as server:
        api = api_client_for(server)
        try:
            with pytest.raises(ValueError, match="v1 document has no schema for Pood"):
                refresh(api, tmp_path / "out", kept)
        finally:
            api.close()
    assert not (tmp_path / "out").exists()


def test_the_command_reads_the_kubeconfig_and_says_what_it_wrote(tmp_path, capsys):
    with FakeApiServer() as server:
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig")
        assert main(["--kubeconfig", str(kubeconfig), "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(file_name(gv) for gv in KEPT)
    assert f"wrote {tmp_path / 'out' / 'api_v1.json'}" in capsys.readouterr().out


def test_the_command_without_a_kubeconfig_says_how_to_give_one(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "no kubeconfig at None: pass --kubeconfig or set KUBECONFIG\n"
    assert not list(tmp_path.iterdir())


def test_the_command_names_the_document_a_server_refuses(tmp_path, capsys):
    with FakeApiServer(openapi_dir=tmp_path / "empty") as server:
        (tmp_path / "empty").mkdir()
        kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig")
        assert main(["--kubeconfig", str(kubeconfig), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("refresh failed: GET /openapi/v3/") and "404" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()

