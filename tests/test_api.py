"""The REST API in-process: contract, failure cases, job lifecycle, tokens, recovery."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import timedelta

import pytest
import torch
from fastapi.testclient import TestClient

from model.networks import create_model
from model.networks.registry import NETWORKS
from model.pipeline import checkpoint_classes
from service import jobs as store
from service.api.app import create_app
from service.db import Job, JobEvent, utcnow
from service.settings import Settings
from service.worker import Worker, _phase_epochs, epoch_progress

TINY = {"dense_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1, "threads": 1}


def _settings(tmp_path, **changes) -> Settings:
    base = {"data_dir": tmp_path / "data", "heartbeat_s": 0.2, "stale_after_s": 1.0}
    return Settings(**{**base, **changes})


@pytest.fixture
def settings(tmp_path) -> Settings:
    return _settings(tmp_path)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _submit(client, **changes):
    body = {"method": "gsl", "model": "lenet5", "dataset": "synthetic",
            "hardware": "xeon-e5-2697v4", "config": TINY, "measure": False, **changes}  # fmt: skip
    return client.post("/v1/jobs", json=body)


def _wait(predicate, timeout_s: float = 60.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError("condition not reached in time")


# ------------------------------------------------------------------------- sweet spots


def test_get_sweet_spots_matches_the_cli_json(client, capsys):
    import json

    from service.cli import main

    response = client.get("/v1/sweet-spots", params={"model": "googlenet",
                                                     "hardware": "xeon-e5-2697v4"})  # fmt: skip
    assert response.status_code == 200
    main(["predict", "--model", "googlenet", "--hardware", "xeon-e5-2697v4", "--json"])
    assert response.json() == json.loads(capsys.readouterr().out)


def test_post_sweet_spots_with_inline_profile_and_layers(client):
    profile = {"name": "box", "dense_flops_per_s": 1e11, "memory_bandwidth_bytes_per_s": 2e10,
               "sparse_overhead": 2.0, "provenance": {"kind": "user", "source": "t"}}  # fmt: skip
    layers = [{"kind": "conv2d", "name": "c", "in_channels": 64, "out_channels": 64,
               "in_height": 28, "in_width": 28, "kernel": 3, "padding": 1},
              {"kind": "linear", "name": "fc", "in_features": 512, "out_features": 10}]  # fmt: skip
    response = client.post("/v1/sweet-spots", json={"hardware": profile, "layers": layers,
                                                    "batch": 4})  # fmt: skip
    assert response.status_code == 200
    data = response.json()
    assert (data["hardware"], data["batch"], len(data["layers"])) == ("box", 4, 2)
    assert data["layers"][0]["sweet_spot"]["min_sparsity"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"hardware": "xeon-e5-2697v4"}, "exactly one of 'model' or 'layers'"),
        ({"hardware": "nope", "model": "lenet5"}, "unknown hardware profile 'nope'"),
        ({"hardware": "atom-c2750", "model": "lenet6"}, "unknown model 'lenet6'"),
        ({"hardware": "atom-c2750", "layers": [{"kind": "linear", "name": "x",
          "in_features": 10**9, "out_features": 10**9}]}, "limited to"),
        ({"hardware": "atom-c2750", "layers": [{"kind": "conv3d", "name": "x"}]}, "tag"),
        ({"hardware": "../../etc/passwd", "model": "lenet5"}, "unknown hardware profile"),
    ],
)
def test_bad_sweet_spot_requests_are_422_with_a_message(client, body, message):
    response = client.post("/v1/sweet-spots", json=body)
    assert response.status_code == 422
    assert message in response.json()["detail"]


@pytest.mark.parametrize("name", ["pyproject.toml", "docs", "missing.json", "tests",
                                  "perfmodel", "../../etc/passwd"])
def test_hardware_names_from_requests_are_never_read_as_paths(client, name):
    """A name that was a file or folder of the server's working directory was read: a 422
    listed pyproject.toml's keys, 'docs' said "Is a directory", 'missing.json' said the file
    did not exist. Only profile names resolve; the answer lists them, whatever the name."""
    valid = ["atom-c2750", "xeon-e5-2697v4", "xeon-phi-7250"]
    answers = [
        client.get("/v1/sweet-spots", params={"model": "lenet5", "hardware": name}),
        client.post("/v1/sweet-spots", json={"model": "lenet5", "hardware": name}),
        client.post("/v1/sweet-spots/onnx", data={"hardware": name},
                    files={"file": ("net.onnx", b"\x08x", "application/octet-stream")}),
        _submit(client, hardware=name),
    ]  # fmt: skip
    for response in answers:
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["detail"].startswith("invalid request") or (
            f"unknown hardware profile {name!r}" in body["detail"] and body["valid"] == valid
        ), body
        for leak in ("field ", "directory", "not exist", "cannot read", "JSON/TOML"):
            assert leak not in body["detail"], (leak, body)
    assert client.get("/v1/jobs").json()["count"] == 0


def test_jobs_naming_layers_the_network_lacks_or_needing_surgery_are_422(client):
    """Checked at submit against the network: they were queued and ignored, or failed after
    the dense epochs."""
    bad = _submit(client, method="ssl", config={**TINY, "layers": ["nope"]})
    assert bad.status_code == 422 and "'nope'" in bad.json()["detail"]
    assert "conv1, conv2, fc1, fc2" in bad.json()["detail"]
    bad = _submit(client, method="l1-filter", model="alexnet_cifar", config=TINY)
    assert bad.status_code == 422 and "surgery supports" in bad.json()["detail"]
    assert client.get("/v1/jobs").json()["count"] == 0


def test_unknown_names_list_the_valid_ones(client):
    response = client.get("/v1/sweet-spots", params={"model": "x", "hardware": "atom-c2750"})
    assert response.status_code == 422 and "lenet5" in response.json()["valid"]
    response = client.get("/v1/hardware/pentium")
    assert response.status_code == 404
    assert response.json()["valid"] == ["atom-c2750", "xeon-e5-2697v4", "xeon-phi-7250"]
    # A job's unknown config key too (its valid keys were only in the detail).
    response = _submit(client, config={**TINY, "lasso_typo": 1})
    assert response.status_code == 422 and "unknown config key(s) lasso_typo" in \
        response.json()["detail"]  # fmt: skip
    assert {"lasso", "prune_epochs", "lr", "threads"} <= set(response.json()["valid"])


def test_onnx_upload(client):
    from tests_support import onnx_bytes

    response = client.post("/v1/sweet-spots/onnx", data={"hardware": "xeon-e5-2697v4"},
                           files={"file": ("net.onnx", onnx_bytes(), "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert [layer["name"] for layer in response.json()["layers"]] == ["my_conv", "fc"]
    bad = client.post("/v1/sweet-spots/onnx", data={"hardware": "xeon-e5-2697v4"},
                      files={"file": ("x.onnx", b"\x08garbage", "application/octet-stream")})
    assert bad.status_code == 422 and "ONNX" in bad.json()["detail"]


def _external_data_export(directory) -> tuple[bytes, list[str]]:
    """A small PyTorch model exported the default way, ``torch.onnx.export(m, x, path)``: the
    weights go to ``model.onnx.data`` next to ``model.onnx``. Without the exporter's
    dependencies, a graph saved with external data by ``onnx`` itself stands in."""
    import onnx

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 8, 3)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(self.conv1(x).mean((2, 3)))

    path = directory / "model.onnx"
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Net().eval(), (torch.zeros(1, 3, 16, 16),), str(path))
        names = ["conv1", "fc"]
    except ImportError:  # onnxscript missing
        onnx.save_model(onnx.load_from_string(_onnx_chain(2)), str(path),
                        save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)  # fmt: skip
        names = ["fc0", "fc1"]
    model = onnx.load(str(path), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    return path.read_bytes(), names


def test_onnx_upload_with_weights_as_external_data(client, tmp_path, monkeypatch):
    """PyTorch's default export keeps the weights in ``model.onnx.data``; only ``model.onnx``
    is uploaded. The checker refused it (the data file "is not regular file"), though the
    shapes are all a prediction needs; it is accepted, wherever the server runs from. A
    reference to external data without a location is still a clear 422."""
    import onnx

    exported = tmp_path / "export"
    exported.mkdir()
    data, names = _external_data_export(exported)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def upload(content: bytes):
        return client.post("/v1/sweet-spots/onnx", data={"hardware": "xeon-e5-2697v4"},
                           files={"file": ("model.onnx", content)})  # fmt: skip

    response = upload(data)
    assert response.status_code == 200, response.text
    assert [layer["name"] for layer in response.json()["layers"]] == names
    model = onnx.load_from_string(data)
    tensor = next(t for t in model.graph.initializer
                  if t.data_location == onnx.TensorProto.EXTERNAL)  # fmt: skip
    del tensor.external_data[:]  # EXTERNAL, but where?
    bad = upload(model.SerializeToString())
    assert bad.status_code == 422 and "ONNX checker rejected" in bad.json()["detail"]


def _onnx_chain(layers: int) -> bytes:
    """x(1,2) → ``layers`` MatMul layers 2×2 in a row."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MatMul", [f"y{i}", "w"], [f"y{i + 1}"], name=f"fc{i}")
             for i in range(layers)]  # fmt: skip
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info(f"y{layers}", TensorProto.FLOAT, [1, 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [2, 2], [0.0] * 4)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_sweet_spot_requests_have_at_most_max_layers(client):
    """10,000 layer specs on a calibrated profile took 24 s (its refined model costs ~2.5 ms
    a layer); an ONNX upload had no limit at all. Both are refused past MAX_LAYERS, with a
    422 that says the maximum; the schema documents it as ``maxItems``."""
    from service.api.schemas import MAX_LAYERS

    layer = {"kind": "linear", "in_features": 64, "out_features": 64}
    layers = [{**layer, "name": f"fc{i}"} for i in range(MAX_LAYERS + 1)]
    refused = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750", "layers": layers})
    assert refused.status_code == 422 and f"at most {MAX_LAYERS} items" in refused.json()["detail"]
    accepted = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750",
                                                    "layers": layers[:MAX_LAYERS]})  # fmt: skip
    assert accepted.status_code == 200 and len(accepted.json()["layers"]) == MAX_LAYERS
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SweetSpotRequest"]
    assert schema["properties"]["layers"]["anyOf"][0]["maxItems"] == MAX_LAYERS

    def upload(layers: int):
        return client.post("/v1/sweet-spots/onnx", data={"hardware": "atom-c2750"},
                           files={"file": ("chain.onnx", _onnx_chain(layers))})  # fmt: skip

    too_many = upload(MAX_LAYERS + 1)
    assert too_many.status_code == 422 and f"at most {MAX_LAYERS}" in too_many.json()["detail"]
    assert upload(3).status_code == 200


def test_upload_size_limit_is_413(tmp_path):
    settings = _settings(tmp_path, max_upload_bytes=2048)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/sweet-spots/onnx", data={"hardware": "atom-c2750"},
                               files={"file": ("big.onnx", b"x" * 5000)})
        assert response.status_code == 413 and "2048 bytes" in response.json()["detail"]


def _asgi_post(app, path: str, headers: dict[str, str], chunks: list[bytes]):
    """POST straight to the ASGI app: (status, body, chunks it read), to see what it read."""
    import asyncio

    pending, read, sent = list(chunks), [], []

    async def receive():
        if pending:
            read.append(pending.pop(0))
            return {"type": "http.request", "body": read[-1], "more_body": bool(pending)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("test", 1),
             "server": ("test", 80),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), len(read)


@pytest.mark.parametrize("path", ["/v1/uploads", "/v1/sweet-spots/onnx"])
def test_an_upload_over_the_limit_is_refused_before_its_body_is_read(tmp_path, path):
    """The 413 came only after Starlette had spooled the whole body to disk (a 1.5 GB upload
    was written first): a declared Content-Length over the limit is refused unread, and a
    body sent without one is refused as soon as it grows past the limit."""
    app = create_app(_settings(tmp_path, max_upload_bytes=2048))
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big\"\r\n\r\n").encode()  # fmt: skip
    chunks = [head] + [b"x" * 65536] * 20
    form = {"content-type": f"multipart/form-data; boundary={boundary}"}
    status, body, read = _asgi_post(app, path, {**form, "content-length": str(1_500_000_000)},
                                    list(chunks))  # fmt: skip
    assert (status, read) == (413, 0) and "limit of 2048 bytes" in body["detail"]
    status, body, read = _asgi_post(app, path, form, list(chunks))  # chunked: no length
    assert status == 413 and "limit of 2048 bytes" in body["detail"]
    assert read < len(chunks)


def test_json_bodies_over_the_limit_are_413(tmp_path):
    """A 30 MB layer name was accepted and echoed back: JSON bodies had no limit at all."""
    settings = _settings(tmp_path, max_body_bytes=4096)
    layer = {"kind": "linear", "name": "x" * 5000, "in_features": 8, "out_features": 8}
    with TestClient(create_app(settings)) as client:
        big = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750", "layers": [layer]})
        assert big.status_code == 413 and "limit of 4096 bytes" in big.json()["detail"]
        assert _submit(client, config={**TINY, "pad": "y" * 5000}).status_code == 413
        small = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750",
                                                     "layers": [{**layer, "name": "x"}]})
        assert small.status_code == 200
    status, body, read = _asgi_post(create_app(settings), "/v1/jobs",
                                    {"content-type": "application/json"},
                                    [b'{"model": "' + b"y" * 3000, b"y" * 3000 + b'"}'])
    assert (status, read) == (413, 2) and "limit of 4096 bytes" in body["detail"]
    assert Settings(data_dir=tmp_path).max_body_bytes == 8 * 2**20  # the default


# ---------------------------------------------------------------------- hardware, catalogue


def test_create_custom_profile_and_use_it(client):
    profile = {"name": "lab-box", "dense_flops_per_s": 2e11,
               "memory_bandwidth_bytes_per_s": 3e10, "sparse_overhead": 2.5,
               "provenance": {"kind": "datasheet", "source": "vendor"}}  # fmt: skip
    created = client.post("/v1/hardware", json=profile)
    assert created.status_code == 201 and created.headers["location"] == "/v1/hardware/lab-box"
    assert client.post("/v1/hardware", json=profile).status_code == 409
    listing = client.get("/v1/hardware").json()
    assert "lab-box" in [p["name"] for p in listing["data"]]
    assert "xeon-e5-2697v4" in listing["builtin"] and "lab-box" not in listing["builtin"]
    response = client.get("/v1/sweet-spots", params={"model": "lenet5", "hardware": "lab-box"})
    assert response.status_code == 200 and response.json()["hardware"] == "lab-box"
    bad = client.post("/v1/hardware", json={**profile, "name": "x", "sparse_overhead": -1})
    assert bad.status_code == 422 and "sparse_overhead" in bad.json()["detail"]


def _profile(name: str) -> dict:
    return {"name": name, "dense_flops_per_s": 2e11, "memory_bandwidth_bytes_per_s": 3e10,
            "sparse_overhead": 2.5, "provenance": {"kind": "datasheet", "source": "vendor"}}


def test_profiles_are_changed_only_by_their_creator(tmp_path, monkeypatch):
    """Any token could recalibrate (replace) another's profile, and no profile could be
    deleted."""
    import model.calibration
    from perfmodel import get_profile, save_profile
    from service import profiles

    monkeypatch.setattr(model.calibration, "calibrate", lambda name, *_: get_profile(
        "atom-c2750").model_copy(update={"name": name}))  # fmt: skip
    settings = _settings(tmp_path, api_tokens="a,b")
    a, b = ({"Authorization": f"Bearer {t}"} for t in "ab")
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/hardware", json=_profile("mine"), headers=a).status_code == 201
        again = client.post("/v1/hardware/calibrate", json={"name": "mine", "replace": True},
                            headers=b)  # fmt: skip
        assert again.status_code == 403 and "not created by you" in again.json()["detail"]
        assert client.delete("/v1/hardware/mine", headers=b).status_code == 403
        job = client.post("/v1/jobs", headers=a, json={
            "model": "lenet5", "dataset": "synthetic", "hardware": "mine", "config": TINY})
        busy = client.delete("/v1/hardware/mine", headers=a)
        assert busy.status_code == 409 and job.json()["id"] in busy.json()["detail"]
        client.post(f"/v1/jobs/{job.json()['id']}/cancel", headers=a)
        assert client.delete("/v1/hardware/mine", headers=a).status_code == 204
        assert client.get("/v1/hardware/mine", headers=a).status_code == 404
        assert not (settings.profiles_dir / "mine.json").exists()
        assert client.delete("/v1/hardware/mine", headers=a).status_code == 404
        assert client.delete("/v1/hardware/atom-c2750", headers=a).status_code == 409
        save_profile(get_profile("atom-c2750").model_copy(update={"name": "site"}),
                     settings.profiles_dir)  # the operator's: no tenant may change it
        assert client.delete("/v1/hardware/site", headers=a).status_code == 403
        (settings.profiles_dir / "site.json").rename(settings.profiles_dir / "site.JSON")
        # A calibration job's profile belongs to the job's owner.
        assert client.post("/v1/hardware/calibrate", json={"name": "cal"},
                           headers=b).status_code == 202  # fmt: skip
        assert Worker(settings).run_once()
        assert client.delete("/v1/hardware/cal", headers=a).status_code == 403
        assert client.delete("/v1/hardware/cal", headers=b).status_code == 204
        # Queued with replace before the profile existed, a calibration must not take over one
        # another caller created meanwhile.
        job = client.post("/v1/hardware/calibrate", json={"name": "lab", "replace": True},
                          headers=b).json()  # fmt: skip
        assert client.post("/v1/hardware", json=_profile("lab"), headers=a).status_code == 201
        assert Worker(settings).run_once()
        done = client.get(f"/v1/jobs/{job['id']}", headers=b).json()
        assert done["status"] == "failed" and "was not created by this job's caller" in done[
            "status_reason"]  # fmt: skip
        assert client.get("/v1/hardware/lab", headers=a).json()["provenance"]["kind"] == (
            "datasheet")  # fmt: skip
        assert client.delete("/v1/hardware/lab", headers=a).status_code == 204
        # A name another caller is creating right now (claimed, file not written yet) is not
        # written over by a calibration finishing meanwhile.
        job = client.post("/v1/hardware/calibrate", json={"name": "busy"}, headers=b).json()
        with client.app.state.sessions() as session:
            assert profiles.claim(session, "busy", "someone else")
        assert Worker(settings).run_once()
        done = client.get(f"/v1/jobs/{job['id']}", headers=b).json()
        assert done["status"] == "failed" and "was created while this calibration" in done[
            "status_reason"]  # fmt: skip
        assert not (settings.profiles_dir / "busy.json").exists()
    with TestClient(create_app(_settings(tmp_path))) as client:  # no tokens: one user
        assert client.delete("/v1/hardware/site").status_code == 204
        assert "site" not in [p["name"] for p in client.get("/v1/hardware").json()["data"]]


def test_two_callers_creating_one_profile_at_once(tmp_path):
    """Checked, written and recorded in three steps: both got 201, or one a 500 (the shared
    temporary file's rename), with one's content stored under the other's ownership."""
    from service import profiles

    settings = _settings(tmp_path, api_tokens="a,b")
    with TestClient(create_app(settings)) as client:
        for index in range(8):
            name, results = f"race{index}", {}
            barrier = threading.Barrier(2)

            def create(token, name=name, results=results, barrier=barrier):
                body = {**_profile(name), "description": f"by {token}"}
                barrier.wait()
                response = client.post("/v1/hardware", json=body,
                                       headers={"Authorization": f"Bearer {token}"})
                results[token] = response.status_code

            threads = [threading.Thread(target=create, args=(t,)) for t in "ab"]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(results.values()) == [201, 409], results
            winner = next(t for t, code in results.items() if code == 201)
            stored = client.get(f"/v1/hardware/{name}", headers={"Authorization": "Bearer a"})
            assert stored.json()["description"] == f"by {winner}"
            with client.app.state.sessions() as session:
                assert profiles.owner_of(session, name) != profiles.owner_of(session, "none")
            other = "b" if winner == "a" else "a"
            assert client.delete(f"/v1/hardware/{name}",
                                 headers={"Authorization": f"Bearer {other}"}).status_code == 403
            assert client.delete(f"/v1/hardware/{name}",
                                 headers={"Authorization": f"Bearer {winner}"}).status_code == 204


def test_a_name_being_written_is_not_taken_over(tmp_path, monkeypatch):
    """The second caller saw the first's row but not yet its file, took the row as stale,
    and both got 201 (the first then could not delete its own profile)."""
    import service.api.routes.hardware as routes
    from perfmodel import save_profile

    def slow_save(profile, directory):
        time.sleep(0.6)  # the first caller's write is under way while the second asks
        return save_profile(profile, directory)

    monkeypatch.setattr(routes, "save_profile", slow_save)
    with TestClient(create_app(_settings(tmp_path, api_tokens="a,b"))) as client:
        first = {}
        thread = threading.Thread(target=lambda: first.update(response=client.post(
            "/v1/hardware", json=_profile("slow"), headers={"Authorization": "Bearer a"})))
        thread.start()
        time.sleep(0.2)
        second = client.post("/v1/hardware", json=_profile("slow"),
                             headers={"Authorization": "Bearer b"})  # fmt: skip
        thread.join()
        assert (first["response"].status_code, second.status_code) == (201, 409)
        assert client.delete("/v1/hardware/slow",
                             headers={"Authorization": "Bearer a"}).status_code == 204


def test_absurd_names_and_sizes_are_422_not_500(client):
    """A 300-character profile name was an OSError (file name too long) in save_profile, a
    layer's dtype_bytes of 10**400 an OverflowError in the roofline: both were 500s."""
    profile = {"name": "x" * 300, "dense_flops_per_s": 2e11,
               "memory_bandwidth_bytes_per_s": 3e10, "sparse_overhead": 2.5,
               "provenance": {"kind": "datasheet", "source": "vendor"}}  # fmt: skip
    response = client.post("/v1/hardware", json=profile)
    assert response.status_code == 422 and "at most 64 characters" in response.json()["detail"]
    assert client.post("/v1/hardware", json={**profile, "name": "x" * 64}).status_code == 201
    layer = {"kind": "linear", "name": "fc", "in_features": 8, "out_features": 8}
    for dtype_bytes in (10**400, 17, 0):
        body = {"hardware": "atom-c2750", "layers": [{**layer, "dtype_bytes": dtype_bytes}]}
        response = client.post("/v1/sweet-spots", json=body)
        assert response.status_code == 422, dtype_bytes
        assert "dtype_bytes" in response.json()["detail"]
    body = {"hardware": "atom-c2750", "layers": [{**layer, "dtype_bytes": 16}]}
    assert client.post("/v1/sweet-spots", json=body).status_code == 200


def test_non_finite_profile_values_are_refused(client):
    """1e400 is infinity in JSON; it passed `gt=0` and was saved as null, after which the
    listing failed for every client."""
    profile = {"name": "inf-box", "dense_flops_per_s": 2e11,
               "memory_bandwidth_bytes_per_s": 3e10, "sparse_overhead": 2.5,
               "provenance": {"kind": "datasheet", "source": "vendor"}}  # fmt: skip
    for field in ("dense_flops_per_s", "memory_bandwidth_bytes_per_s", "sparse_overhead"):
        body = json.dumps(profile).replace(f'"{field}": {profile[field]}', f'"{field}": 1e400')
        response = client.post("/v1/hardware", content=body,
                               headers={"Content-Type": "application/json"})  # fmt: skip
        assert response.status_code == 422, field
        assert field in response.json()["detail"] and "finite" in response.json()["detail"]
    assert "inf-box" not in [p["name"] for p in client.get("/v1/hardware").json()["data"]]


def test_implausible_profiles_are_refused_and_answers_are_always_json(client, monkeypatch):
    """A profile with finite but absurd numbers (F = 1e-300 FLOP/s, β = 1e300) was accepted,
    and its sweet spots answered ``Infinity``/``NaN``, which is not JSON."""
    profile = {"name": "tiny", "dense_flops_per_s": 2e11, "memory_bandwidth_bytes_per_s": 3e10,
               "sparse_overhead": 2.5, "provenance": {"kind": "user", "source": "t"}}  # fmt: skip
    for field, value in [("dense_flops_per_s", 1e-300), ("dense_flops_per_s", 1e19),
                         ("memory_bandwidth_bytes_per_s", 0.5), ("sparse_overhead", 1e-9),
                         ("sparse_overhead", 1e6), ("sparse_bytes_per_nonzero", 1e300)]:
        response = client.post("/v1/hardware", json={**profile, field: value})
        assert response.status_code == 422, (field, value)
        assert field in response.json()["detail"]
        inline = client.post("/v1/sweet-spots", json={"model": "alexnet",
                                                      "hardware": {**profile, field: value}})
        assert inline.status_code == 422, (field, value)
    assert client.get("/v1/hardware/tiny").status_code == 404
    # Whatever else made a prediction non-finite: a 422, never NaN or Infinity in a body.
    from service.api.routes import sweet_spots

    class Infinite:
        def to_dict(self):
            return {"model": "custom", "totals": {"speedup": {"0.9": float("inf")}}}

    monkeypatch.setattr(sweet_spots, "predict_network", lambda *args, **kwargs: Infinite())
    layer = {"kind": "linear", "name": "fc", "in_features": 8, "out_features": 8}
    for body in ({"hardware": profile, "layers": [layer]}, {"hardware": profile,
                                                            "model": "lenet5", "batch": 3}):
        response = client.post("/v1/sweet-spots", json=body)
        assert response.status_code == 422 and "not finite" in response.json()["detail"]


def test_listing_skips_a_profile_file_that_does_not_load(client, settings):
    broken = '{"name": "broken", "dense_flops_per_s": null}'
    (settings.profiles_dir / "broken.json").write_text(broken)
    response = client.get("/v1/hardware")
    assert response.status_code == 200
    names = [p["name"] for p in response.json()["data"]]
    assert "broken" not in names and "atom-c2750" in names
    assert response.json()["count"] == len(names)


def test_catalogue(client):
    data = client.get("/v1/catalogue").json()
    assert "lenet5" in [m["name"] for m in data["models"]]
    assert {"digits", "synthetic"} <= {d["name"] for d in data["datasets"]}
    gsl = next(m for m in data["methods"] if m["name"] == "gsl")
    assert {"lasso", "prune_epochs"} <= {p["name"] for p in gsl["parameters"]}


def test_health_version_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/version").json()["api"] == "v1"
    _submit(client)
    text = client.get("/metrics").text
    assert 'sweetspot_jobs{status="queued"} 1.0' in text
    assert "sweetspot_http_requests_total" in text


def test_metrics_label_requests_with_the_full_route_template_fast_path_included(client):
    """Routes were labelled without their ``/v1`` prefix (``/jobs``), and repeated sweet-spot
    queries, answered from memory before routing, as ``unmatched``."""
    query = {"model": "lenet5", "hardware": "atom-c2750"}
    for _ in range(3):  # the first is routed, the next two take the fast path
        assert client.get("/v1/sweet-spots", params=query).status_code == 200
    job = _submit(client).json()
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert client.get("/v1/nowhere").status_code == 404
    assert client.get("/web/app.css").status_code == 200  # was "unmatched" too
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("sweetspot_http_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels[len("sweetspot_http_requests_total"):]] = float(value)
    assert counts['{method="GET",route="/v1/sweet-spots",status="200"}'] == 3
    assert counts['{method="POST",route="/v1/jobs",status="202"}'] == 1
    assert counts['{method="GET",route="/v1/jobs/{job_id}",status="200"}'] == 1
    assert counts['{method="GET",route="unmatched",status="404"}'] == 1
    assert counts['{method="GET",route="/web/*",status="200"}'] == 1
    assert not any('route="/jobs' in key or 'route="/sweet' in key for key in counts), counts


def test_api_docs_pages_need_no_internet(client):
    """/docs and /redoc loaded Swagger UI and ReDoc from a CDN: blank on an offline host."""
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "cdn." not in html.text and "https://" not in html.text.split("<body")[0], page
        scripts = re.findall(r'src="([^"]+\.js)"', html.text)
        assert scripts, page
        for script in scripts:
            served = client.get(script)
            assert served.status_code == 200 and len(served.content) > 100_000, script
    assert "/openapi.json" in client.get("/docs").text


def test_openapi_has_stable_operation_ids(client):
    operations = {op["operationId"] for path in client.get("/openapi.json").json()["paths"].values()
                  for op in path.values()}  # fmt: skip
    assert {"jobs-create_job", "jobs-cancel_job", "sweet-spots-get_sweet_spots"} <= operations


def _documented_body(schema: dict, path: str, method: str, status: int):
    """A validator of the body the schema documents for ``status`` of one operation."""
    import jsonschema_rs

    response = schema["paths"][path][method]["responses"][str(status)]
    body = response["content"]["application/json"]["schema"]
    return body, jsonschema_rs.validator_for({**body, "components": schema["components"]})


def test_openapi_documents_the_real_error_bodies(client):
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # never sent
    body, validator = _documented_body(schema, "/v1/jobs", "get", 422)
    assert body == {"$ref": "#/components/schemas/ErrorPublic"}
    real = client.get("/v1/jobs", params={"limit": 0})
    assert real.status_code == 422 and real.json()["errors"][0]["loc"] == ["query", "limit"]
    validator.validate(real.json())
    for path, method, status, call in [
        ("/v1/jobs", "post", 422, lambda: client.post("/v1/jobs", json={"model": 5})),
        ("/v1/jobs/{job_id}", "get", 404, lambda: client.get("/v1/jobs/nope")),
        ("/v1/hardware", "post", 413, lambda: client.post(
            "/v1/hardware", content=b"x" * (9 * 2**20), headers={"content-type": "text/json"})),
        ("/v1/uploads", "post", 400, lambda: client.post(
            "/v1/uploads", content=b"x", headers={"content-type": "multipart/form-data"})),
        ("/v1/jobs", "post", 400, lambda: client.post(
            "/v1/jobs", content="[" * 5000 + "]" * 5000,
            headers={"content-type": "application/json"})),
    ]:  # fmt: skip
        real = call()
        assert real.status_code == status, (path, real.text)
        _documented_body(schema, path, method, status)[1].validate(real.json())
    assert all("401" not in op["responses"] for ops in schema["paths"].values()
               for op in ops.values()), "no tokens configured: no 401"  # fmt: skip


def test_openapi_documents_401_when_tokens_are_configured(tmp_path):
    with TestClient(create_app(_settings(tmp_path, api_tokens="t"))) as client:
        schema = client.get("/openapi.json").json()
        real = client.get("/v1/jobs")
    assert real.status_code == 401 and real.headers["www-authenticate"] == "Bearer"
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert ("401" in operation["responses"]) == path.startswith("/v1/"), path
    _, validator = _documented_body(schema, "/v1/jobs", "get", 401)
    validator.validate(real.json())
    assert "WWW-Authenticate" in schema["paths"]["/v1/jobs"]["get"]["responses"]["401"]["headers"]


# -------------------------------------------------------------------------------- jobs


def test_full_job_lifecycle(client, settings):
    response = _submit(client)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and set(job["links"]) >= {"self", "cancel", "events"}
    assert Worker(settings).run_once()
    job = client.get(f"/v1/jobs/{job['id']}").json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert [(t["from_status"], t["to_status"]) for t in job["transitions"]] == [
        (None, "queued"), ("queued", "running"), ("running", "succeeded")]  # fmt: skip
    assert job["result"]["accuracy"]["pruned"] is not None
    assert job["result"]["not_measured"] == "not asked for: --no-measure, or measure false"
    names = {a["name"] for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
    assert {"manifest.json", "pruned.safetensors", "report.md", "sparsity.png"} <= names
    manifest = client.get(f"/v1/jobs/{job['id']}/artifacts/manifest.json").json()
    assert manifest["model"] == "lenet5"
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    assert {"phase", "epoch", "decision"} <= {e["type"] for e in events["data"]}
    stream = client.get(f"/v1/jobs/{job['id']}/events", params={"follow": "true"})
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert stream.text.rstrip().endswith('data: {"status": "succeeded"}')
    series = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    assert len(series["test_accuracy"]) == 3 and "sparsity/conv2" in series
    listed = client.get("/v1/jobs", params={"status": "succeeded"}).json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert not settings.artifacts.job_dir(job["id"]).exists()


def test_cancel_a_running_job_within_seconds(client, settings):
    job = _submit(client, config={**TINY, "prune_epochs": 200, "finetune_epochs": 0,
                                  "dense_epochs": 0}).json()  # fmt: skip
    worker = Worker(settings)
    thread = threading.Thread(target=worker.run_once)
    thread.start()
    _wait(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running")
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409  # not finished
    start = time.monotonic()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    final = _wait(lambda: (j := client.get(f"/v1/jobs/{job['id']}").json())["status"]
                  in ("cancelled", "failed", "succeeded") and j)  # fmt: skip
    assert final["status"] == "cancelled"
    assert time.monotonic() - start < 10
    thread.join(timeout=30)


def test_a_worker_that_lost_its_job_while_stalled_stops_and_records_nothing(tmp_path):
    """A worker stalled (SIGSTOP) past ``stale_after_s`` has its job requeued and claimed by
    another worker; resumed, it went on training in the same folder and then requeued or
    finished the new owner's run. Its next heartbeat now stops it, and it records nothing."""
    settings = _settings(tmp_path, stale_after_s=60.0)  # the stand-in owner never beats
    with TestClient(create_app(settings)) as client:
        job = _submit(client, config={**TINY, "prune_epochs": 200, "finetune_epochs": 0,
                                      "dense_epochs": 0}).json()  # fmt: skip
        stalled = Worker(settings, worker_id="stalled")
        thread = threading.Thread(target=stalled.run_once)
        thread.start()
        try:
            _wait(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running")
            with client.app.state.sessions() as session:  # what the monitor and a peer do
                store.requeue(session, job["id"], "worker stalled stopped heartbeating")
                assert store.claim_next(session, "new-owner").id == job["id"]
            thread.join(timeout=15)
            assert not thread.is_alive(), "the stalled worker went on training"
        finally:
            stalled.stop.set()
            thread.join(timeout=60)
        now = client.get(f"/v1/jobs/{job['id']}").json()
        assert (now["status"], now["worker_id"]) == ("running", "new-owner")
        assert [(t["from_status"], t["to_status"]) for t in now["transitions"]][-2:] == [
            ("running", "queued"), ("queued", "running")]  # fmt: skip


@pytest.mark.parametrize("claimed_again", [True, False])
def test_a_worker_records_no_outcome_for_a_job_it_lost(tmp_path, claimed_again):
    """``finish`` on a job requeued meanwhile raised InvalidTransition out of the worker's
    loop (the process died); on a job another worker had claimed it ended that run."""
    settings = _settings(tmp_path)
    app = create_app(settings)
    with app.state.sessions() as session:
        job, _ = store.create_job(session, "", {"model": "lenet5"}, None)
        store.claim_next(session, "w1")
        assert store.heartbeat(session, job.id, "w1", 0.5) == "running"
        store.requeue(session, job.id, "w1 stopped heartbeating")
        if claimed_again:
            store.claim_next(session, "w2")
            assert store.heartbeat(session, job.id, "w2", None) == "running"
        assert store.heartbeat(session, job.id, "w1", 0.9) is None
        with pytest.raises(store.NotOwnerError, match="no longer running under worker w1"):
            store.finish(session, job.id, "succeeded", "finished", worker_id="w1")
    (settings.artifacts.job_dir(job.id)).mkdir(parents=True)
    (settings.artifacts.job_dir(job.id) / "manifest.json").write_text("{}")
    for status in ("succeeded", "failed", "cancelled", "queued", "lost"):
        Worker(settings, worker_id="w1").record_outcome(job.id, status, "old run", None)
    with app.state.sessions() as session:
        row = session.get(Job, job.id)
        expected = ("running", "w2") if claimed_again else ("queued", None)
        assert (row.status, row.worker_id) == expected
        assert row.progress == 0.5 and store.artifacts(session, job.id) == []


def test_cancel_a_queued_job_and_bad_transitions(client):
    job = _submit(client).json()
    assert job["links"]["cancel"] == {"href": f"/v1/jobs/{job['id']}/cancel"}
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    # A finished job's cancel is a 409: it is no longer offered as a link.
    assert "cancel" not in cancelled["links"] and "events" in cancelled["links"]
    listed = client.get("/v1/jobs").json()["data"][0]
    assert listed["id"] == job["id"] and "cancel" not in listed["links"]
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_every_timestamp_has_one_format(client):
    """Streamed events and metric series wrote ``…+00:00`` while the JSON models (events list,
    jobs, transitions) write ``…Z``: all are ISO 8601 UTC with a ``Z`` now."""
    import re

    job = _submit(client).json()
    with client.app.state.sessions() as session:
        store.add_event(session, job["id"], {"type": "epoch", "phase": "dense", "epoch": 1,
                                             "step": 3, "test_accuracy": 0.5})  # fmt: skip
    client.post(f"/v1/jobs/{job['id']}/cancel")  # so that the stream ends
    listed = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    stream = client.get(f"/v1/jobs/{job['id']}/events", params={"follow": "true"}).text
    streamed = [json.loads(line[len("data: "):]) for line in stream.splitlines()
                if line.startswith("data: {\"id\"")]  # fmt: skip
    assert [e["at"] for e in streamed] == [e["at"] for e in listed] and listed
    series = client.get(f"/v1/jobs/{job['id']}/metrics").json()["series"]
    job = client.get(f"/v1/jobs/{job['id']}").json()
    times = [e["at"] for e in listed] + [p["time"] for p in series["test_accuracy"]]
    times += [job["created_at"]] + [t["at"] for t in job["transitions"]]
    utc = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
    assert all(utc.fullmatch(time) for time in times), times


def test_following_a_job_that_is_deleted_ends_the_stream(client, settings):
    """The stream raised JobNotFound after its response had started: the client got a
    truncated body and the server logged an ASGI exception."""
    job = _submit(client).json()

    def cancel_and_delete():
        time.sleep(0.8)  # the stream has started and polls every 0.5 s
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204

    thread = threading.Thread(target=cancel_and_delete)
    thread.start()
    stream = client.get(f"/v1/jobs/{job['id']}/events", params={"follow": "true"})
    thread.join()
    assert stream.status_code == 200
    assert stream.text.rstrip().endswith('event: end\ndata: {"status": "deleted"}')


def test_progress_follows_the_epoch_events_phase_and_epoch():
    """Progress comes from each event's phase and epoch, not from a count of the events this
    worker saw: a job resumed at prune epoch 3 of 4 is past its dense epochs, not at 0%."""
    phases = _phase_epochs({"method": "gsl", "config": {"dense_epochs": 2, "prune_epochs": 4,
                                                        "finetune_epochs": 4}})  # fmt: skip
    assert phases == {"dense": 2, "prune": 4, "finetune": 4}
    assert epoch_progress({"phase": "dense", "epoch": 1}, phases) == 0.1
    resumed = epoch_progress({"phase": "prune", "epoch": 3}, phases)
    assert resumed == 0.5 and epoch_progress({"phase": "prune", "epoch": 3}, phases) == resumed
    assert epoch_progress({"phase": "finetune", "epoch": 1}, phases) == 0.7  # prune converged
    assert epoch_progress({"phase": "finetune", "epoch": 4}, phases) == 0.99  # until finished
    # A job that starts from a checkpoint has no dense epochs.
    warm = _phase_epochs({"method": "gsl", "checkpoint_path": "x.safetensors",
                          "config": {"dense_epochs": 2, "prune_epochs": 1, "finetune_epochs": 1}})
    assert epoch_progress({"phase": "prune", "epoch": 1}, warm) == 0.5


@pytest.mark.parametrize(
    ("changes", "status", "message"),
    [
        ({"model": "lenet6"}, 422, "unknown model"),
        ({"method": "prayer"}, 422, "unknown pruning method"),
        ({"hardware": "cray-1"}, 422, "unknown hardware profile"),
        ({"dataset": "/etc"}, 422, "unknown dataset"),
        ({"config": {"epochz": 3}}, 422, "unknown config key(s) epochz"),
        # 200,000 keys came back in full (1.7 MB); 900,000 names of one layer made a 7 MB job
        ({"config": {f"k{i}": 1 for i in range(200_000)}}, 422, "k100003 and 199990 more; valid"),
        ({"method": "ssl", "config": {"layers": ["conv1"] * 900_000}}, 422,
         "layers names layer(s) more than once: conv1"),
        ({"config": {"prune_epochs": 10_000}}, 422, "exceeds this service's limit"),
        ({"config": {"lr": -1}}, 422, "lr must be > 0"),
        ({"config": {"seed": -1}}, 422, "seed must be between 0 and 4294967295"),
        ({"config": {"inference_batch": 0}}, 422, "inference_batch must be between 1 and 1024"),
        # These three were accepted (202); the worker then ran out of memory or failed with
        # torch's or itertools' words.
        ({"config": {"inference_batch": 10**30}}, 422, "inference_batch must be between 1 and"),
        ({"config": {"batch_size": 2**63}}, 422, "batch_size must be between 1 and 65536"),
        ({"config": {"lr": 1e308}}, 422, "lr must be > 0 and at most"),
        ({"config": {"multipliers": 3}}, 422, "multipliers: Input should be a valid dictionary"),
        ({"config": {"guided": "maybe"}}, 422, "guided: Input should be a valid boolean"),
        ({"checkpoint": "nothing"}, 422, "is not an upload of yours"),
        ({"checkpoint": ""}, 422, "at least 1 character"),  # trained a baseline instead
        ({"surprise": 1}, 422, "Extra inputs are not permitted"),
    ],
)
def test_bad_job_requests(client, changes, status, message):
    response = _submit(client, **changes)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert client.get("/v1/jobs").json()["count"] == 0  # nothing was queued


def _strict_json(text: str):
    """``text`` parsed as JSON proper: ``NaN`` and ``Infinity`` are not JSON."""

    def refuse(token: str):
        raise AssertionError(f"{token} in a response: not JSON")

    return json.loads(text, parse_constant=refuse)


def test_not_finite_numbers_in_results_and_events_are_null(client):
    """A diverged loss or a speedup that came out NaN: storing the epoch event failed (NOT
    NULL on the metric, so the job failed), and the event stream sent ``NaN``, not JSON."""
    nan, inf = float("nan"), float("inf")
    job_id = _submit(client).json()["id"]
    with client.app.state.sessions() as session:
        store.claim_next(session, "w")
        store.add_event(session, job_id, {"type": "epoch", "phase": "prune", "epoch": 1,
                                          "step": 9, "loss": nan, "train_accuracy": 0.5,
                                          "test_accuracy": inf, "sparsity": {"conv1": nan}})
        session.add(JobEvent(job_id=job_id, type="log", data={"loss": nan, "at": [-inf]}))
        session.commit()  # as stored before: NaN in the JSON column
        store.finish(session, job_id, "succeeded", "finished", {
            "accuracy": {"pruned": nan}, "model_speedup": inf,
            "layers": [{"name": "conv1", "measured_speedup": nan}]})  # fmt: skip
        assert session.get(Job, job_id).result["model_speedup"] is None  # stored as null
    job = _strict_json(client.get(f"/v1/jobs/{job_id}").text)
    assert job["result"] == {"accuracy": {"pruned": None}, "model_speedup": None,
                             "layers": [{"name": "conv1", "measured_speedup": None}]}
    assert _strict_json(client.get("/v1/jobs").text)["data"][0]["result"] == job["result"]
    events = _strict_json(client.get(f"/v1/jobs/{job_id}/events").text)["data"]
    assert events[0]["data"]["loss"] is None and events[0]["data"]["sparsity"] == {"conv1": None}
    assert events[1]["data"] == {"loss": None, "at": [None]}
    stream = client.get(f"/v1/jobs/{job_id}/events", params={"follow": "true"}).text
    streamed = [_strict_json(line.removeprefix("data: "))
                for line in stream.splitlines() if line.startswith("data: ")]  # fmt: skip
    assert [e.get("data") for e in streamed[:2]] == [e["data"] for e in events]
    series = _strict_json(client.get(f"/v1/jobs/{job_id}/metrics").text)["series"]
    assert list(series) == ["train_accuracy"]  # the points that were not finite are left out


@pytest.mark.parametrize("config", ['{"lr": NaN}', '{"lr": Infinity}', '{"lr": 1e999}',
                                    '{"multipliers": {"conv1": -Infinity}}'])
def test_job_config_numbers_must_be_finite(client, config):
    body = f'{{"model": "lenet5", "dataset": "synthetic", "config": {config}}}'
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "is not a finite number" in response.json()["detail"]
    assert client.get("/v1/jobs").json()["count"] == 0


def test_idempotency_key(client):
    first = _submit(client, idempotency_key="k1").json()
    assert _submit(client, idempotency_key="k1").json()["id"] == first["id"]
    conflict = _submit(client, idempotency_key="k1", model="resnet20")
    assert conflict.status_code == 409 and "different request" in conflict.json()["detail"]


def test_a_retry_at_the_queue_limit_gets_its_job_back(tmp_path):
    """With the queue full, resending a request whose idempotency key names an existing job
    was a 429 (the limit was checked before the key); it is the 202 with that job."""
    with TestClient(create_app(_settings(tmp_path, max_queued_jobs=2))) as client:
        first = _submit(client, idempotency_key="k1")
        assert _submit(client).status_code == 202
        assert _submit(client).status_code == 429  # full
        again = _submit(client, idempotency_key="k1")
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert _submit(client, idempotency_key="k2").status_code == 429  # a new job
        assert _submit(client, idempotency_key="k1", model="resnet20").status_code == 409
        assert client.get("/v1/jobs").json()["count"] == 2


def test_a_job_being_cancelled_counts_against_the_queue_limit(tmp_path):
    """It still runs until it stops (a calibration can take minutes); it was not counted."""
    with TestClient(create_app(_settings(tmp_path, max_queued_jobs=1))) as client:
        job = _submit(client).json()
        with client.app.state.sessions() as session:
            row = session.get(Job, job["id"])
            row.status = "cancelling"
            session.commit()
        assert _submit(client).status_code == 429


def test_a_failed_jobs_reason_names_server_folders_by_role(tmp_path):
    from service.worker import failure_reason

    settings = _settings(tmp_path)
    error = ValueError(f"the weights in {settings.uploads_dir}/ab12.safetensors do not fit "
                       f"lenet5; see {settings.jobs_dir}/x and {settings.data_dir}/y")  # fmt: skip
    assert failure_reason(error, settings) == ("ValueError: the weights in <uploads>/ab12."
                                               "safetensors do not fit lenet5; see <jobs>/x and "
                                               "<data>/y")  # fmt: skip
    # Whole path components only, and never a relative folder's name in prose: "data" made
    # "the <data>set", "." made "3<data>5".
    near = ValueError(f"the dataset's 3.5 jobs failed; {settings.data_dir}-old/x is kept, "
                      f"and /backup{settings.data_dir}/x")  # fmt: skip
    assert failure_reason(near, settings) == f"ValueError: {near}"
    end = ValueError(f"weights are in {settings.data_dir}.")
    assert failure_reason(end, settings) == "ValueError: weights are in <data>."
    for relative in (".", "data"):
        odd = _settings(tmp_path, data_dir=relative)
        assert failure_reason(near, odd) == f"ValueError: {near}"


def test_a_replay_is_the_same_request_with_the_service_thread_count(tmp_path):
    """With SWEETSPOT_JOB_THREADS set, a stored explicit `threads` was dropped before comparing,
    so a request without it replayed one that had set 8."""
    plain = {k: v for k, v in TINY.items() if k != "threads"}
    with TestClient(create_app(_settings(tmp_path, job_threads=4))) as client:
        own = _submit(client, idempotency_key="k", config={**plain, "threads": 8})
        assert own.json()["request"]["config"]["threads"] == 8
        assert _submit(client, idempotency_key="k", config=plain).status_code == 409
        added = _submit(client, idempotency_key="k2", config=plain)
        assert added.json()["request"]["config"]["threads"] == 4  # the service's
        again = _submit(client, idempotency_key="k2", config=plain)
        assert again.status_code == 202 and again.json()["id"] == added.json()["id"]


def test_twenty_concurrent_submissions_with_one_key_create_one_job(client):
    results: list = []

    def submit():
        results.append(_submit(client, idempotency_key="same"))

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.status_code for r in results} == {202}
    assert len({r.json()["id"] for r in results}) == 1
    assert client.get("/v1/jobs").json()["count"] == 1


def test_checkpoint_upload_and_job_from_it(client, settings):
    buffer = io.BytesIO()
    torch.save(create_model("lenet5").state_dict(), buffer)
    upload = client.post("/v1/uploads", data={"model": "lenet5"},
                         files={"file": ("start.pt", buffer.getvalue())})  # fmt: skip
    assert upload.status_code == 201, upload.text
    wrong = client.post("/v1/uploads", data={"model": "resnet20"},
                        files={"file": ("start.pt", buffer.getvalue())})  # fmt: skip
    assert wrong.status_code == 422 and "do not fit resnet20" in wrong.json()["detail"]
    assert "\t" not in wrong.json()["detail"]  # torch's message has tabs
    evil = client.post("/v1/uploads", data={"model": "lenet5"},
                       files={"file": ("evil.pt", b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")})
    assert evil.status_code == 422 and "weights-only" in evil.json()["detail"]
    # torch's own message tells the user to retry with weights_only=False: never passed on
    assert "refused it: Trying to load unsupported GLOBAL os.system" in evil.json()["detail"]
    corrupt = client.post("/v1/uploads", data={"model": "lenet5"},
                          files={"file": ("start.safetensors", b"\x10\x00" + b"x" * 40)})
    assert corrupt.status_code == 422  # safetensors' words, not the pickle loader's
    assert "the upload is not a valid safetensors file" in corrupt.json()["detail"]
    assert "weights_only" not in evil.json()["detail"]
    job = _submit(client, checkpoint=upload.json()["id"]).json()
    assert Worker(settings).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert "checkpoint_path" not in done["request"]


def test_a_checkpoint_for_another_number_of_classes_is_refused_at_submission(client):
    """The upload check built ImageNet networks with 1000 classes: a 10-class checkpoint, the
    only kind a job on the built-in data sets can use, was refused, and a 1000-class one
    accepted; its job then failed in the worker. Now any class count uploads, and the job
    refuses one that is not its data set's."""
    buffer = io.BytesIO()
    torch.save(create_model("lenet5", num_classes=7).state_dict(), buffer)
    upload = client.post("/v1/uploads", data={"model": "lenet5"},
                         files={"file": ("seven.pt", buffer.getvalue())})  # fmt: skip
    assert upload.status_code == 201, upload.text
    response = _submit(client, checkpoint=upload.json()["id"], dataset="digits")
    assert response.status_code == 422
    assert "has a 7-class classifier; dataset 'digits' has 10 classes" in response.json()["detail"]
    assert client.get("/v1/jobs").json()["count"] == 0


@pytest.mark.parametrize("model", sorted(NETWORKS))
def test_checkpoint_classes_reads_the_classifier_of_every_network(model):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in create_model(model, num_classes=37).state_dict().items()}
    assert checkpoint_classes(model, shapes) == 37
    assert checkpoint_classes(model, {}) is None


def test_uploads_are_listed_fetched_deleted_and_capped(tmp_path):
    """Uploads could be neither listed nor deleted, and had no limit: any token could fill the
    disk 200 MB at a time."""
    buffer = io.BytesIO()
    torch.save(create_model("lenet5").state_dict(), buffer)
    post = lambda c: c.post("/v1/uploads", data={"model": "lenet5"},  # noqa: E731
                            files={"file": ("start.pt", buffer.getvalue())})  # fmt: skip
    settings = _settings(tmp_path, max_uploads=2)
    with TestClient(create_app(settings)) as client:
        first, second = post(client).json(), post(client).json()
        full = post(client)
        assert full.status_code == 429 and "2 uploads stored, the limit" in full.json()["detail"]
        listed = client.get("/v1/uploads").json()
        assert listed["count"] == 2 and {u["id"] for u in listed["data"]} == {first["id"],
                                                                            second["id"]}
        assert client.get(f"/v1/uploads/{first['id']}").json() == first
        assert client.get("/v1/uploads/nope").status_code == 404
        job = _submit(client, checkpoint=first["id"]).json()
        busy = client.delete(f"/v1/uploads/{first['id']}")
        assert busy.status_code == 409 and job["id"] in busy.json()["detail"]
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        retried = _submit(client, checkpoint=second["id"], idempotency_key="k").json()
        assert client.post(f"/v1/jobs/{retried['id']}/cancel").status_code == 202
        assert client.delete(f"/v1/uploads/{second['id']}").status_code == 204
        again = _submit(client, checkpoint=second["id"], idempotency_key="k")  # was a 422
        assert again.status_code == 202 and again.json()["id"] == retried["id"]
        assert client.delete(f"/v1/uploads/{first['id']}").status_code == 204
        assert not (settings.uploads_dir / f"{first['id']}.safetensors").exists()
        assert client.get(f"/v1/uploads/{first['id']}").status_code == 404
        assert post(client).status_code == 201  # room again
    other = _settings(tmp_path, api_tokens="a,b")
    with TestClient(create_app(other)) as client:
        assert client.get("/v1/uploads", headers={"Authorization": "Bearer b"}).json()["count"] == 0


def test_checkpoints_with_odd_keys_or_non_finite_weights_are_422(client):
    """Non-string keys were a 500 (AttributeError in load_into); NaN weights were accepted, and
    so were complex ones (loading kept the NaN real part); sparse and meta tensors were 500s."""
    nan = create_model("lenet5").state_dict()
    nan["conv1.weight"] = nan["conv1.weight"].clone().fill_(float("nan"))
    odd = [dict(nan, **{"conv1.weight": weight}) for weight in (
        torch.full((20, 1, 5, 5), complex(float("nan"), 0)),
        torch.ones(20, 1, 5, 5).to_sparse(),
        torch.empty(20, 1, 5, 5, device="meta"),
    )]  # fmt: skip
    for state, message in [({1: torch.zeros(1)}, "keys other than strings"),
                           (nan, "NaN or infinite values in tensor 'conv1.weight'"),
                           (odd[0], "holds a complex64 tensor in 'conv1.weight'; weights are "
                                    "dense real-valued CPU tensors"),
                           (odd[1], "holds a sparse_coo tensor in 'conv1.weight'"),
                           (odd[2], "holds a tensor on the meta device in 'conv1.weight'")]:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        response = client.post("/v1/uploads", data={"model": "lenet5"},
                               files={"file": ("start.pt", buffer.getvalue())})  # fmt: skip
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]


def test_artifact_path_traversal_is_refused(client, settings):
    job = _submit(client).json()
    Worker(settings).run_once()
    (settings.data_dir / "secret.txt").write_text("secret")
    for name in ("..%2Fsecret.txt", "%2E%2E%2F%2E%2E%2Fsecret.txt", "%2Fetc%2Fpasswd",
                 ".hidden", "request.json", "..%2F..%2Fsweetspot.db"):  # fmt: skip
        response = client.get(f"/v1/jobs/{job['id']}/artifacts/{name}")
        assert response.status_code == 404, name
        assert "secret" not in response.text


def test_tokens_isolate_owners(tmp_path):
    settings = _settings(tmp_path, api_tokens="alice-token,bob-token")
    with TestClient(create_app(settings)) as client:
        alice = {"Authorization": "Bearer alice-token"}
        bob = {"Authorization": "Bearer bob-token"}
        # Open as README documents: operations, the page and the API docs; /v1 needs a token.
        for path in ("/healthz", "/version", "/metrics", "/", "/openapi.json"):
            assert client.get(path).status_code == 200, path
        assert client.get("/v1/hardware").status_code == 401
        unauthorised = client.get("/v1/jobs")
        assert unauthorised.status_code == 401 and "token" in unauthorised.json()["detail"]
        assert client.get("/v1/jobs", headers={"Authorization": "Bearer x"}).status_code == 401
        body = {"model": "lenet5", "dataset": "synthetic", "config": TINY, "measure": False}
        job = client.post("/v1/jobs", json=body, headers=alice).json()
        assert client.get(f"/v1/jobs/{job['id']}", headers=alice).status_code == 200
        assert client.get(f"/v1/jobs/{job['id']}", headers=bob).status_code == 404
        assert client.get("/v1/jobs", headers=bob).json()["count"] == 0
        assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=bob).status_code == 404
        assert client.get(f"/v1/jobs/{job['id']}/artifacts", headers=bob).status_code == 404


def test_restart_keeps_jobs_in_every_state_and_resolves_running_ones(tmp_path):
    settings = _settings(tmp_path)
    app = create_app(settings)
    ids = {}
    with app.state.sessions() as session:
        for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled"):
            job, _ = store.create_job(session, "", {"method": "gsl", "model": "lenet5",
                                                     "dataset": "synthetic", "status": status},
                                      None)  # fmt: skip
            ids[status] = job.id
            if status != "queued":
                row = session.get(Job, job.id)
                row.status, row.worker_id = status, "ghost"
                row.heartbeat_at = utcnow() - timedelta(seconds=60)
                row.attempts = 1
        session.commit()
    app.state.engine.dispose()
    with TestClient(create_app(settings)) as client:  # a restarted service, same data
        statuses = lambda: {k: client.get(f"/v1/jobs/{v}").json()["status"]  # noqa: E731
                            for k, v in ids.items()}  # fmt: skip
        final = _wait(lambda: (s := statuses())["running"] != "running" and s, timeout_s=10)
        assert final == {"queued": "queued", "running": "queued", "cancelling": "cancelled",
                         "succeeded": "succeeded", "failed": "failed",
                         "cancelled": "cancelled"}  # fmt: skip
        requeued = client.get(f"/v1/jobs/{ids['running']}").json()
        assert "stopped heartbeating" in requeued["status_reason"]


def test_a_job_lost_twice_fails_with_the_reason(tmp_path):
    settings = _settings(tmp_path, lost_job_policy="fail")
    app = create_app(settings)
    with app.state.sessions() as session:
        job, _ = store.create_job(session, "", {"model": "lenet5"}, None)
        store.claim_next(session, "w1")
        row = session.get(Job, job.id)
        row.heartbeat_at = utcnow() - timedelta(seconds=60)
        session.commit()
        assert store.recover_lost(session, settings.stale_after_s, "fail") == [(job.id, "failed")]
        assert "not retried" in session.get(Job, job.id).status_reason


def test_layer_specs_keep_their_own_batch_unless_the_request_sets_one(client):
    """The request's batch defaulted to 1 and replaced every layer's own."""
    layers = [{"kind": "linear", "name": "fc", "in_features": 512, "out_features": 512,
               "batch": 6, "per_example": 3}]  # fmt: skip
    own = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750", "layers": layers})
    assert own.status_code == 200 and own.json()["batch"] == 2
    assert own.json()["layers"][0]["spec"]["batch"] == 6
    set_ = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750", "layers": layers,
                                                "batch": 4})  # fmt: skip
    assert set_.json()["batch"] == 4 and set_.json()["layers"][0]["spec"]["batch"] == 12
    twice = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750",
                                                 "layers": layers * 2})  # fmt: skip
    assert twice.status_code == 422 and "repeated: fc" in twice.json()["detail"]
    huge = [{"kind": "conv2d", "name": "c", "in_channels": 3, "out_channels": 4,
             "in_height": 8, "in_width": 8, "kernel": 3, "padding": 10**400}]  # fmt: skip
    refused = client.post("/v1/sweet-spots", json={"hardware": "atom-c2750", "layers": huge})
    assert refused.status_code == 422 and "limited to 1000000" in refused.text


def test_repeated_sweet_spot_queries_are_served_from_memory_but_stay_correct(tmp_path):
    import json

    settings = _settings(tmp_path, api_tokens="t1")
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": "Bearer t1"}
        query = {"model": "lenet5", "hardware": "atom-c2750", "batch": 2}
        first = client.get("/v1/sweet-spots", params=query, headers=auth)
        second = client.get("/v1/sweet-spots", params=query, headers=auth)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content
        # The fast path still needs a token …
        assert client.get("/v1/sweet-spots", params=query).status_code == 401
        # … and a changed profile file is noticed (a calibration rewrote it, say).
        profile = {"name": "box", "dense_flops_per_s": 1e11,
                   "memory_bandwidth_bytes_per_s": 2e10, "sparse_overhead": 2.0,
                   "provenance": {"kind": "user", "source": "t"}}  # fmt: skip
        assert client.post("/v1/hardware", json=profile, headers=auth).status_code == 201
        query["hardware"] = "box"
        before = client.get("/v1/sweet-spots", params=query, headers=auth).json()
        path = settings.profiles_dir / "box.json"
        path.write_text(json.dumps({**profile, "sparse_overhead": 4.0}))
        os_stat = path.stat()
        import os

        os.utime(path, ns=(os_stat.st_atime_ns, os_stat.st_mtime_ns + 10**9))
        after = client.get("/v1/sweet-spots", params=query, headers=auth).json()
        assert before["layers"][1]["speedup"] != after["layers"][1]["speedup"]


def test_calibration_runs_as_a_job_and_writes_the_profile(client, settings, monkeypatch):
    import model.calibration
    from perfmodel import get_profile

    def fake_calibrate(name, quick, threads, progress):
        """Stands in for ≈1 minute of microbenchmarks (tested in test_calibration.py)."""
        for done in range(3):
            progress({"stage": "layers", "done": done, "total": 3})
        paper = get_profile("atom-c2750")
        return paper.model_copy(update={"name": name, "description": "calibrated here"})

    monkeypatch.setattr(model.calibration, "calibrate", fake_calibrate)
    assert client.post("/v1/hardware/calibrate", json={"name": "atom-c2750"}).status_code == 409
    response = client.post("/v1/hardware/calibrate", json={"name": "lab", "quick": True})
    assert response.status_code == 202
    job = response.json()
    assert job["request"]["kind"] == "calibration"
    assert Worker(settings).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["status_reason"]
    assert done["result"]["profile"]["name"] == "lab"
    assert client.get("/v1/hardware/lab").json()["description"] == "calibrated here"
    names = {a["name"] for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]}
    assert "profile.json" in names
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["type"] for e in events] == ["calibration"] * 3
    predicted = client.get("/v1/sweet-spots", params={"model": "lenet5", "hardware": "lab"})
    assert predicted.status_code == 200 and predicted.json()["hardware"] == "lab"
    # A retry with its idempotency key gets its job back, also once the profile it wrote
    # exists (it was a 409 "already exists"); a new request for that name still is.
    body = {"name": "lab2", "idempotency_key": "cal-1"}
    first = client.post("/v1/hardware/calibrate", json=body).json()
    assert Worker(settings).run_once()
    assert client.get("/v1/hardware/lab2").status_code == 200
    again = client.post("/v1/hardware/calibrate", json=body)
    assert again.status_code == 202 and again.json()["id"] == first["id"]
    assert client.post("/v1/hardware/calibrate", json={"name": "lab2"}).status_code == 409


def test_a_calibration_whose_passes_disagreed_succeeds_with_a_warning(client, settings,
                                                                     monkeypatch):  # fmt: skip
    from test_refined_model import refined_profile

    import model.calibration

    def fake_calibrate(name, quick, threads, progress):
        profile = refined_profile(name)
        fit = profile.refined.fit.model_copy(update={"pass_spread": 0.45})
        refined = profile.refined.model_copy(update={"fit": fit})
        return profile.model_copy(update={"refined": refined})

    monkeypatch.setattr(model.calibration, "calibrate", fake_calibrate)
    job = client.post("/v1/hardware/calibrate", json={"name": "lab"}).json()
    assert Worker(settings).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert "warning: the passes' medians differ by 45%" in done["status_reason"]


def _fake_calibration(monkeypatch, during=lambda: None, description="calibrated here"):
    import model.calibration
    from perfmodel import get_profile

    def fake_calibrate(name, quick, threads, progress):
        during()  # what happens while it measures
        paper = get_profile("atom-c2750")
        return paper.model_copy(update={"name": name, "description": description})

    monkeypatch.setattr(model.calibration, "calibrate", fake_calibrate)


def test_a_calibration_cancelled_while_measuring_writes_nothing(client, settings, monkeypatch):
    """The cancel answered 202 "cancelling", then the job succeeded and wrote the profile."""
    job = client.post("/v1/hardware/calibrate", json={"name": "lab"}).json()
    cancel = lambda: client.post(f"/v1/jobs/{job['id']}/cancel")  # noqa: E731
    _fake_calibration(monkeypatch, during=lambda: cancel().status_code == 202 or 1 / 0)
    assert Worker(settings).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "cancelled" and "not written" in done["status_reason"]
    assert client.get("/v1/hardware/lab").status_code == 404
    assert client.get(f"/v1/jobs/{job['id']}/artifacts").json()["count"] == 0


def test_a_calibration_does_not_silently_replace_a_custom_profile(client, settings,
                                                                 monkeypatch):  # fmt: skip
    """POST /v1/hardware answers 409 for an existing name; a calibration overwrote it."""
    profile = {"name": "lab", "dense_flops_per_s": 2e11, "memory_bandwidth_bytes_per_s": 3e10,
               "sparse_overhead": 2.5, "description": "mine",
               "provenance": {"kind": "datasheet", "source": "vendor"}}  # fmt: skip
    assert client.post("/v1/hardware", json=profile).status_code == 201
    taken = client.post("/v1/hardware/calibrate", json={"name": "lab"})
    assert taken.status_code == 409 and "replace=true" in taken.json()["detail"]
    assert client.get("/v1/jobs").json()["count"] == 0
    # Created while the calibration ran: kept, and the job says why it wrote nothing.
    job = client.post("/v1/hardware/calibrate", json={"name": "lab2"}).json()
    create = lambda: client.post("/v1/hardware", json={**profile, "name": "lab2"})  # noqa: E731
    _fake_calibration(monkeypatch, during=lambda: create().status_code == 201 or 1 / 0)
    Worker(settings).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "failed" and "it was kept" in done["status_reason"]
    assert client.get("/v1/hardware/lab2").json()["description"] == "mine"
    # Asked for: replaced.
    _fake_calibration(monkeypatch)
    job = client.post("/v1/hardware/calibrate", json={"name": "lab", "replace": True}).json()
    Worker(settings).run_once()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    assert client.get("/v1/hardware/lab").json()["description"] == "calibrated here"


def test_calibrations_count_against_the_queue_limit(tmp_path):
    """Calibration jobs were queued past SWEETSPOT_MAX_QUEUED_JOBS; they are jobs like any
    other (a retry under an existing idempotency key still gets its job)."""
    with TestClient(create_app(_settings(tmp_path, max_queued_jobs=2))) as client:
        first = client.post("/v1/hardware/calibrate", json={"idempotency_key": "c1"})
        assert first.status_code == 202
        assert _submit(client).status_code == 202
        full = client.post("/v1/hardware/calibrate", json={"name": "lab"})
        assert full.status_code == 429 and "limit" in full.json()["detail"]
        again = client.post("/v1/hardware/calibrate", json={"idempotency_key": "c1"})
        assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
        assert _submit(client).status_code == 429
        assert client.get("/v1/jobs").json()["count"] == 2


def test_a_failed_calibration_is_a_failed_job_with_the_reason(client, settings, monkeypatch):
    import model.calibration

    def noisy(name, quick, threads, progress):
        raise model.calibration.NoisyRunError(0.4, 0.15, "3.9 3.1 2.0")

    monkeypatch.setattr(model.calibration, "calibrate", noisy)
    job = client.post("/v1/hardware/calibrate", json={}).json()
    Worker(settings).run_once()
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "failed" and "NoisyRunError" in done["status_reason"]
    assert client.get("/v1/hardware/host").status_code == 404


def test_nodes_join_a_job_on_several_hosts_once_each(tmp_path):
    """The rendezvous a job's node 0 opens is taken node by node (never twice, never by the
    job's own worker), and it closes when the job leaves ``running``."""
    settings = _settings(tmp_path)
    app = create_app(settings)
    with app.state.sessions() as session:
        job, _ = store.create_job(session, "", {"model": "lenet5", "config": {"nodes": 3}}, None)
        assert store.claim_next(session, "w0").id == job.id
        assert store.join_next(session, "w1") is None  # no rendezvous yet
        with pytest.raises(store.InvalidTransition, match="cannot open its rendezvous"):
            store.open_rendezvous(session, job.id, "someone-else", "10.0.0.1", 29500, 3, 1)
        rendezvous = store.open_rendezvous(session, job.id, "w0", "10.0.0.1", 29500, 3, 2)
        assert store.join_next(session, "w0") is None  # node 0 does not join itself
        joined = [store.join_next(session, w) for w in ("w1", "w2", "w3")]
        assert [(j[0].id, j[2]) for j in joined[:2]] == [(job.id, 1), (job.id, 2)]
        assert joined[1][1] == rendezvous and joined[2] is None  # all nodes taken
        assert [n.worker_id for n in store.nodes_of(session, job.id)] == ["w1", "w2"]
        store.leave_node(session, job.id, rendezvous["id"], 2)  # w2 could not run it
        assert store.join_next(session, "w3")[2] == 2  # the node is free again
        store.requeue_lost(session, job.id, "a rank of this job was lost", "requeue")
        row = session.get(Job, job.id)
        assert row.status == "queued" and row.rendezvous is None
        assert "requeued to resume" in row.status_reason
        store.claim_next(session, "w1")
        store.requeue_lost(session, job.id, "a rank was lost again", "requeue")
        assert session.get(Job, job.id).status == "failed"  # requeued once at most


def test_a_job_on_two_hosts_without_a_rendezvous_fails_clearly(tmp_path):
    """``nodes`` > 1 outside the service needs --master; inside, a lone worker waits at most
    ``rendezvous_timeout_s`` for the other nodes and then fails the job with that reason."""
    settings = _settings(tmp_path, rendezvous_timeout_s=3.0)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json={"model": "lenet5", "dataset": "synthetic",
                                            "measure": False,
                                            "config": {**TINY, "nodes": 2}}).json()  # fmt: skip
        assert client.post("/v1/jobs", json={"model": "lenet5", "config": {"nodes": 0}}
                           ).status_code == 422  # fmt: skip
        started = time.perf_counter()
        assert Worker(settings).run_once()
        assert time.perf_counter() - started < 60
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "failed"
        assert "not all 2 ranks" in done["status_reason"]
        assert "joined within 3 s" in done["status_reason"]
        # The failed rendezvous left nothing behind: the same worker process runs the next
        # data-parallel job.
        job = client.post("/v1/jobs", json={"model": "lenet5", "dataset": "synthetic",
                                            "measure": False,
                                            "config": {**TINY, "procs": 2}}).json()  # fmt: skip
        worker = Worker(settings.model_copy(update={"rendezvous_timeout_s": 120.0}))
        assert worker.run_once()
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done["status_reason"]


def test_a_job_waiting_for_its_nodes_is_cancelled_promptly(tmp_path):
    """A cancel reaches node 0 while it waits for the other nodes: the job ends cancelled
    within seconds, not failed after the rendezvous timeout."""
    settings = _settings(tmp_path, rendezvous_timeout_s=120.0)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json={"model": "lenet5", "dataset": "synthetic",
                                            "measure": False,
                                            "config": {**TINY, "nodes": 2}}).json()  # fmt: skip
        worker = Worker(settings)
        runner = threading.Thread(target=worker.run_once)
        runner.start()

        def waiting() -> bool:
            events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
            return any("waiting for 1 more" in e["data"].get("message", "") for e in events)

        deadline = time.monotonic() + 60
        while not waiting():
            assert time.monotonic() < deadline, "node 0 never opened its rendezvous"
            time.sleep(0.1)
        assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        started = time.monotonic()
        runner.join(timeout=110)  # well before the 120 s rendezvous timeout (then: failed)
        assert not runner.is_alive() and time.monotonic() - started < 110
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert done["status"] == "cancelled", done["status_reason"]
