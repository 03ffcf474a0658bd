"""A pruning job end to end: data, network, prediction, training, artifacts, measurement.

``run_pruning`` is what ``sweetspot prune`` and the service's workers call. It writes into the
output folder:

``dense.safetensors``    the dense baseline's weights (trained here or the given checkpoint)
``pruned.safetensors``   the pruned, fine-tuned weights (safetensors: never unpickled)
``manifest.json``        per-layer sparsity, format (dense/sparse), sweet spot, predicted and
                         measured speedup; accuracy before/after; config; artifact list
``events.jsonl``         every training event (steps, epochs, controller decisions)
``checkpoint.pt``        resume point (``torch.load(weights_only=True)``)
``report.md`` + PNGs     the human-readable report
``cut.safetensors``      structured methods only: the weights of the cut network

Two ways a pruned network becomes faster, chosen by the method's ``structured`` attribute:

- **unstructured** (gsl, magnitude, autoprune with weight masks): zeros stay in place; layers
  whose achieved sparsity the performance model predicts to be faster run on the direct sparse
  kernel. Predicted speedup: dense time / sparse time of the layer; measured: dense against
  ``model.sparse`` kernels (:func:`model.measure.measure_speedups`).
- **structured** (ssl, l1-filter, autoprune with filter masks): surgery (:mod:`model.surgery`)
  removes all-zero filters, channels and residual branches and leaves a smaller dense network.
  Predicted speedup per layer: the performance model's dense time of the original layer over
  the dense time of the cut layer; measured: the original against the cut network, both dense
  (:func:`model.measure.measure_cut`). The manifest's ``cut`` entry holds the per-layer widths
  from which :func:`model.surgery.rebuild` builds the cut network again.
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save

from model.networks import create_model, network_info
from model.pruning import check_network, listed, make_config, method_info
from model.report import (
    ACCURACY_PNG,
    REPORT_FILES,
    REPORT_NAME,
    SPARSITY_PNG,
    SPEEDUP_PNG,
    write_report,
)
from model.threads import restoring_threads
from model.training import Callback, Cancelled, TrainConfig, Trainer, distributed, layer_sparsity
from model.training.distributed import Cluster
from perfmodel import Conv2dSpec, HardwareProfile, get_profile, predict_network
from perfmodel.extract import extract_layers
from perfmodel.roofline import PerformanceModel, get_model

# The largest batch a job predicts and times its pruned model at: the measurement runs the
# network on a batch of real inputs (AlexNet at 1024 images: 0.6 GB of input, 1.2 GB of conv1
# output); a batch of 10^5 would ask for tens of GB and take the worker down.
MAX_INFERENCE_BATCH = 1024

# Every file a job writes into its folder but request.json (rewritten at each start): a fresh
# start removes them, so a run stopped early never shows the previous run's weights or report.
WEIGHT_FILES = ("dense.safetensors", "pruned.safetensors", "cut.safetensors")
JOB_FILES = (
    "checkpoint.pt", "checkpoint.tmp", "events.jsonl", "manifest.json", *WEIGHT_FILES,
    *(f"{name}.tmp" for name in WEIGHT_FILES), *REPORT_FILES,  # .tmp: see _save
)  # fmt: skip


@dataclass
class PruneRequest:
    """What a pruning job is asked to do (the body of ``POST /v1/jobs`` too)."""

    method: str
    model: str
    dataset: str = "digits"
    hardware: str = "xeon-e5-2697v4"
    config: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None  # starting weights (.safetensors or weights-only .pt)
    measure: bool = True  # time the pruned model against dense on this host


def split_config(method: str, config: dict[str, Any]) -> tuple[TrainConfig, Any]:
    """Split user hyperparameters into the trainer's and the method's; unknown keys fail."""
    info = method_info(method)
    train_keys = {f for f in TrainConfig.__dataclass_fields__}
    method_keys = set(info.config_type.__dataclass_fields__)
    unknown = sorted(set(config) - train_keys - method_keys)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {listed(unknown)}; valid keys: "
            f"{', '.join(sorted(train_keys | method_keys))}"
        )
    train = make_config(TrainConfig, {k: v for k, v in config.items() if k in train_keys})
    method_config = make_config(
        info.config_type, {k: v for k, v in config.items() if k in method_keys}
    )
    batch = getattr(method_config, "inference_batch", 1)  # every method has it; used here
    if not 1 <= batch <= MAX_INFERENCE_BATCH:  # the measurement allocates a batch of inputs
        raise ValueError(f"invalid {info.config_type.__name__}: inference_batch must be between "
                         f"1 and {MAX_INFERENCE_BATCH}, got {batch}")  # fmt: skip
    return train, method_config


def check_request(request: PruneRequest, method_config: Any | None = None) -> None:
    """Refuse what would be ignored or fail only after training started: layer names in the
    method's options that the network lacks, ``l1-filter`` on a network surgery cannot cut
    (:func:`model.pruning.check_network`). The network is built on the meta device (nothing
    allocated), so the CLI and the API's job submission call this too.

    Raises:
        ValueError / LookupError: an unknown name or a config the network cannot take.
    """
    info = network_info(request.model)
    if method_config is None:
        _, method_config = split_config(request.method, request.config)
    with torch.device("meta"):
        net = create_model(request.model)
    check_network(request.method, method_config, net, tuple(info.input_shape))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors`` or a weights-only torch file (never arbitrary pickles)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return parse_weights(path.read_bytes(), str(path), path.suffix == ".safetensors")


def parse_weights(data: bytes, source: str, safetensors: bool = False) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a file's bytes: safetensors, or else a weights-only torch
    file (one of our own checkpoints gives its ``model`` entry). Nothing in the file is
    executed. ``source`` names the file in messages; ``safetensors`` says the file must be one
    (its name says so), so its own error is the one reported.

    Raises:
        ValueError: neither format, not a dict of tensors named by strings, or a tensor holds
            NaN or infinity (no training or prediction can start from it).
    """
    try:
        state = load_safetensors(data)
    except Exception as error:  # safetensors' own error type, for a corrupt header or data
        if safetensors:
            raise ValueError(f"{source} is not a valid safetensors file: {error}") from None
        try:
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as error:
            raise ValueError(
                f"{source} is not a safetensors file or a weights-only PyTorch state dict "
                f"({weights_load_error(error)})"
            ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our own checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a state dict")
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{source} holds a dict with values other than tensors, not a state "
                         "dict")  # fmt: skip
    if not all(isinstance(key, str) for key in state):
        odd = next(key for key in state if not isinstance(key, str))
        raise ValueError(f"{source} holds a dict with keys other than strings ({odd!r}), not "
                         "a state dict")  # fmt: skip
    for key, value in state.items():
        # A sparse or meta tensor made the finiteness check below raise torch's words (a 500
        # at upload); a complex one skipped it, and loading kept its real part, NaN included.
        odd = (
            f"a {str(value.layout).removeprefix('torch.')} tensor" if value.layout != torch.strided
            else f"a tensor on the {value.device.type} device" if value.device.type != "cpu"
            else f"a {str(value.dtype).removeprefix('torch.')} tensor"
            if value.is_complex() or value.is_quantized else None
        )  # fmt: skip
        if odd:
            raise ValueError(f"{source} holds {odd} in {key!r}; weights are dense real-valued "
                             "CPU tensors")  # fmt: skip
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{source} holds NaN or infinite values in tensor {key!r}")
    return state


def weights_load_error(error: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line. torch's own
    message suggests retrying with ``weights_only=False``, which Sweetspot never does (it would
    run whatever the file's pickle asks for): keep only what the file held."""
    text = str(error)
    if text.startswith("Weights only load failed"):
        if "WeightsUnpickler error:" in text:  # the reason, without the advice after it
            reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
            reason = reason.split(". Please use", 1)[0].split(". Please file", 1)[0]
        else:  # paragraphs: torch's advice (dropped), the reason, a pointer to its docs
            reason = "; ".join(
                " ".join(part.split()) for part in text.split("\n\n")
                if part.strip() and "weights_only" not in part
                and not part.strip().startswith("Check the documentation")
            )  # fmt: skip
        reason = reason.strip().rstrip(".")[:200] or "not a state dict of tensors"
        if "GLOBAL torch.nn.modules" in reason:
            reason += " (a whole pickled model? save its state_dict() instead)"
        return f"the weights-only loader refused it: {reason}; nothing but weights is loaded"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


def checkpoint_classes(model: str, shapes: Mapping[str, Sequence[int]]) -> int | None:
    """How many classes weights for ``model`` were trained for: the size of their classifier
    (the tensors whose shape follows the network's ``num_classes``), or None where ``shapes``
    (tensor name → shape, e.g. from a safetensors header) hold none of them."""
    for key, dim in _classifier_dims(model).items():
        if key in shapes and len(shapes[key]) > dim:
            return int(shapes[key][dim])
    return None


@functools.cache
def _classifier_dims(model: str) -> dict[str, int]:
    """Tensor name → the dimension that is ``num_classes`` (networks built on the meta device
    with two class counts, compared)."""
    with torch.device("meta"):
        two = create_model(model, num_classes=2).state_dict()
        three = create_model(model, num_classes=3).state_dict()
    dims = {}
    for key, tensor in two.items():
        if tensor.shape != three[key].shape:
            pairs = zip(tensor.shape, three[key].shape, strict=True)
            dims[key] = next(d for d, (a, b) in enumerate(pairs) if a != b)
    return dims


def load_into(net: torch.nn.Module, state: dict, model: str, what: str = "the weights") -> None:
    """``net.load_state_dict(state)`` (strict), with a ``ValueError`` naming ``model`` when the
    tensors do not fit it (missing, unexpected or differently shaped)."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = " ".join(" ".join(str(error).splitlines()[:3]).split())[:400]  # no tabs
        raise ValueError(f"{what} do not fit {model}: {lines}") from None


def _save(module: torch.nn.Module, path: Path) -> None:
    """The module's weights as safetensors, created as any file is (the user's umask: 0644
    under 022; ``save_file`` renames a private temporary file into place, always 0600), and
    written to ``<name>.tmp`` first and renamed, so a run killed meanwhile never leaves a
    truncated file under the real name."""
    partial = path.with_name(path.name + ".tmp")
    state = module.state_dict()  # on the CPU: a run saves its baseline while on a GPU
    partial.write_bytes(save({k: v.detach().cpu().contiguous() for k, v in state.items()}))
    os.replace(partial, path)


@restoring_threads  # a job's `threads` must not outlive it (a worker runs many)
def run_pruning(
    request: PruneRequest,
    out_dir: Path,
    callbacks: Iterable[Callback] = (),
    cancel: threading.Event | None = None,
    resume: bool = True,
    log: Callable[[str], None] = lambda _message: None,
    cluster: Cluster | None = None,
) -> dict[str, Any]:
    """Run one pruning job and write its artifacts; returns the manifest.

    ``cluster``: this process is rank 0 of a data-parallel job on ``cluster.nodes`` hosts;
    the other nodes run :func:`join_pruning`. Without it, the config's ``procs`` processes
    run on this host.

    Raises:
        ValueError / LookupError: bad request (unknown names list the valid ones).
        model.training.Cancelled: ``cancel`` was set; rerun with ``resume`` to continue.
    """
    info = network_info(request.model)
    hardware = get_profile(request.hardware)
    train_config, method_config = split_config(request.method, request.config)
    cluster = _cluster(train_config, cluster)
    if cluster.node_rank != 0:
        raise ValueError("run_pruning runs node 0 of a job; other nodes call join_pruning")
    check_request(request, method_config)
    distributed.resolve_device(train_config.device, cluster.procs)  # GPUs asked for are here
    _check_out_dir(out_dir, request, resume)
    # the data set and network first: a refused one (an unknown data set, a folder in no
    # supported format) leaves out_dir as it was
    net, data, hooks, predictions, by_name = _build(request, train_config, method_config)
    earlier = _earlier_manifest(out_dir) if resume and not request.measure else None
    _prepare_out_dir(out_dir, request, resume)
    batch = getattr(method_config, "inference_batch", 1)
    dense_path = out_dir / "dense.safetensors"
    ranks, failed = None, True
    with (out_dir / "events.jsonl").open("a") as events_file:

        def record(event: dict) -> None:
            events_file.write(json.dumps(event) + "\n")
            events_file.flush()

        def keep_dense(event: dict) -> None:
            """The baseline is saved when pruning starts, so it survives a cancel and resume."""
            if event.get("type") == "phase" and event.get("phase") == "prune":
                _save(net, dense_path)

        try:
            if cluster.distributed:  # data-parallel: this process is rank 0
                log(f"data-parallel training on {cluster.nodes} host(s) × {cluster.procs} "
                    "process(es)")  # fmt: skip
                ranks, cluster = _start_node(cluster, request, out_dir, resume, train_config,
                                             cancel=cancel)  # fmt: skip
            trainer = Trainer(
                net, data.train, data.test, train_config, hooks=hooks,
                callbacks=[record, *callbacks, keep_dense],
                checkpoint_path=out_dir / "checkpoint.pt", cancel=cancel,
            )  # fmt: skip
            result = _fit(trainer, resume, cluster)
            trained_on = ", then ".join(trainer.trained_on) or None  # None: not recorded
            failed = False
        finally:
            if cluster.distributed:
                _stop_node(ranks, abort=failed)
    _save(net, out_dir / "pruned.safetensors")

    performance_model = get_model(predictions.performance_model)
    sparsity = layer_sparsity(net)
    states = hooks.layer_states() if hasattr(hooks, "layer_states") else {}
    manifest: dict[str, Any] = {
        "method": request.method, "model": request.model, "dataset": request.dataset,
        "hardware": hardware.name, "performance_model": predictions.performance_model,
        "config": {"train": asdict(train_config), "method": asdict(method_config)},
        "accuracy": {"dense": result.dense_accuracy, "pruned": result.final_accuracy},
        "structure": "unstructured", "layers": [],
        "model_speedup": {"predicted": None, "measured": None},
        "measurement": None, "seconds": result.seconds,
        "trained_on": trained_on,
    }  # fmt: skip
    surgery = None
    if getattr(hooks, "structured", False):
        surgery, skipped = _cut(net, info, batch, log)
        if skipped is not None:
            manifest["surgery_skipped"] = skipped
    if surgery is not None:
        cut_result, cut_specs, fibres = surgery
        manifest["structure"] = "structured"
        _structured_layers(manifest, by_name, cut_specs, sparsity, states, performance_model,
                           hardware)  # fmt: skip
        _save(cut_result.model, out_dir / "cut.safetensors")
        manifest["cut"] = _cut_summary(cut_result, fibres, net, info, data.num_classes)
        if request.measure:
            log("measuring the cut network against the original on this host")
            from model.measure import measure_cut

            measured = measure_cut(net, cut_result.model, info.input_shape, batch=batch)
            _attach_measurement(manifest, measured)
    else:
        from model.sparse import unconvertible_layers

        plan = _unstructured_layers(manifest, by_name, sparsity, states, performance_model,
                                    hardware, unconvertible_layers(net))  # fmt: skip
        if request.measure and any(v == "sparse" for v in plan.values()):
            log("measuring the pruned model against dense on this host")
            measured = _measure(net, plan, info.input_shape, batch, log)
            if measured is not None:
                _attach_measurement(manifest, measured)
            else:
                manifest["not_measured"] = "the sparse kernel is not available on this host"
        elif request.measure:
            manifest["not_measured"] = ("no layer ended sparse: the pruned model runs dense, "
                                        "as the dense one")  # fmt: skip
    if not request.measure:
        manifest["not_measured"] = "not asked for: --no-measure, or measure false"
    if trainer.resumed_finished and manifest["measurement"] is None and \
            _same_plan(earlier, manifest):  # fmt: skip
        log("the run had finished and is not measured again: its earlier measurement is kept")
        _attach_measurement(manifest, {**earlier["measurement"], "kept": True})
        manifest.pop("not_measured", None)
    manifest["artifacts"] = {
        "manifest": "manifest.json", "request": "request.json",
        "dense_weights": dense_path.name if dense_path.exists() else None,
        "pruned_weights": "pruned.safetensors", "events": "events.jsonl",
        "checkpoint": "checkpoint.pt", "report": REPORT_NAME,
        **dict(zip(PLOT_KEYS, (ACCURACY_PNG, SPARSITY_PNG, SPEEDUP_PNG), strict=True)),
    }  # fmt: skip
    if surgery is not None:
        manifest["artifacts"]["cut_weights"] = "cut.safetensors"
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    write_report(out_dir, manifest, trainer.events)
    missing = [key for key in PLOT_KEYS if not (out_dir / manifest["artifacts"][key]).exists()]
    if missing:  # a plot with nothing to draw (no epoch, no layer) is not written
        for key in missing:
            del manifest["artifacts"][key]
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


PLOT_KEYS = ("accuracy_plot", "sparsity_plot", "speedup_plot")  # manifest["artifacts"] keys


def build_network(model: str, dataset: str, seed: int, checkpoint: str | None = None) -> tuple:
    """``(net, data, info)``: the dataset and the network built seeded (identical in every
    process that asks), with the starting weights of ``checkpoint`` if given."""
    from model.data import get_dataset

    info = network_info(model)
    data = get_dataset(dataset, input_shape=info.input_shape, seed=seed)
    torch.manual_seed(seed)
    net = create_model(model, num_classes=data.num_classes)
    if checkpoint:
        load_into(net, load_weights(checkpoint), model, what=f"the weights in {checkpoint}")
    return net, data, info


def _build(request: PruneRequest, train_config: TrainConfig, method_config: Any) -> tuple:
    """Data, network (seeded: identical in every rank), predictions and the method's hooks."""
    net, data, info = build_network(request.model, request.dataset, train_config.seed,
                                    request.checkpoint)  # fmt: skip
    hardware = get_profile(request.hardware)
    if request.checkpoint:
        train_config.dense_epochs = 0
    batch = getattr(method_config, "inference_batch", 1)
    specs = extract_layers(net, info.input_shape, batch=batch)
    # "auto", as `predict` and the API: the refined model where the profile is calibrated
    predictions = predict_network(specs, hardware, name=request.model, model="auto")
    by_name = {p.name: p for p in predictions.layers if "#" not in p.name}
    hooks = method_info(request.method).build(by_name, method_config)
    if hasattr(hooks, "input_shape"):
        hooks.input_shape = tuple(info.input_shape)
    return net, data, hooks, predictions, by_name


@restoring_threads
def join_pruning(
    request: PruneRequest,
    out_dir: Path,
    cluster: Cluster,
    cancel: threading.Event | None = None,
    resume: bool = True,
    log: Callable[[str], None] = lambda _message: None,
) -> None:
    """Run node ``cluster.node_rank`` ≥ 1 of a data-parallel job whose node 0 runs
    :func:`run_pruning` with the same request: its ``procs`` ranks train their share of each
    batch; rank 0 makes the decisions and writes every artifact, so nothing is written here
    (``out_dir`` need not be shared: rank 0 sends its resume point). Returns when the job's
    training ends; raises :class:`model.training.Cancelled` when it stopped early (a cancel
    on node 0, or ``cancel`` set here: then ``rank_left`` is true on every rank)."""
    train_config, _ = split_config(request.method, request.config)
    if cluster.node_rank == 0:
        raise ValueError("node 0 of a job runs run_pruning, not join_pruning")
    log(f"joining as node {cluster.node_rank} of {cluster.nodes} "
        f"({cluster.master_addr}:{cluster.master_port})")  # fmt: skip
    ranks, cluster = _start_node(cluster, request, out_dir, resume, train_config, primary=False)
    failed = True
    try:
        _train_rank(0, cluster, request, out_dir, resume, train_config.threads, cancel)
        failed = False
    finally:
        _stop_node(ranks, abort=failed)


def _fit(trainer: Trainer, resume: bool, cluster: Cluster) -> Any:
    """``trainer.fit``; in a data-parallel job a failing collective (a rank died) becomes
    :class:`model.training.distributed.RankLostError`."""
    try:
        return trainer.fit(resume=resume)
    except RuntimeError as error:
        if cluster.distributed and distributed.is_rank_lost(error):
            raise distributed.RankLostError(
                f"a rank of this {cluster.nodes}-host × {cluster.procs}-process job was lost: "
                f"{error}"
            ) from error
        raise


def _cluster(train_config: TrainConfig, cluster: Cluster | None) -> Cluster:
    """The job's layout: the caller's, else ``procs`` processes on this host."""
    if cluster is None:
        if train_config.nodes > 1:
            raise ValueError(
                f"nodes={train_config.nodes} needs a rendezvous: submit the job to the service "
                "(workers on other hosts join it) or run `sweetspot prune --nodes N "
                "--node-rank K --master HOST:PORT` on every host"
            )
        cluster = Cluster(procs=train_config.procs)
    train_config.procs, train_config.nodes = cluster.procs, cluster.nodes  # the manifest's record
    return cluster


def _start_node(
    cluster: Cluster, request: PruneRequest, out_dir: Path, resume: bool,
    train_config: TrainConfig, primary: bool = True, cancel: threading.Event | None = None,
) -> tuple[Any, Cluster]:  # fmt: skip
    """Spawn this node's other ranks; on node 0, join the process group as rank 0 (a cancel
    while it waits for the other nodes raises :class:`model.training.Cancelled`)."""
    if train_config.threads is None:
        train_config.threads = max(1, (os.cpu_count() or 1) // cluster.procs)
    ranks, cluster = distributed.launch(
        cluster, _rank_main, (request, out_dir, resume, train_config.threads)
    )
    if primary:
        try:
            distributed.init(cluster, cancel=cancel, device=train_config.device)
        except distributed.RendezvousCancelledError as error:
            _stop_node(ranks, abort=True)
            raise Cancelled(str(error)) from None
        except ValueError:  # the device asked for is not on this host
            _stop_node(ranks, abort=True)
            raise
        except distributed.RendezvousTimeoutError as error:
            _stop_node(ranks, abort=True)
            raise distributed.RendezvousTimeoutError(
                f"not all {cluster.world} ranks ({cluster.nodes} host(s) × {cluster.procs}) "
                f"joined within {cluster.timeout_s:g} s ({error}); start workers on more hosts, "
                f"check that they reach {cluster.master_addr}:{cluster.master_port}, or lower "
                "nodes"
            ) from error
        except RuntimeError as error:  # the store's port, the backend's connections, a GPU
            _stop_node(ranks, abort=True)
            raise RuntimeError(
                f"the process group of the job's {cluster.world} ranks on "
                f"{cluster.master_addr}:{cluster.master_port} did not form ({error}); check that "
                "the port is free on node 0 and that the hosts reach each other "
                "(GLOO_SOCKET_IFNAME, or NCCL_SOCKET_IFNAME on GPUs, names the interface)"
            ) from error
    return ranks, cluster


def _stop_node(ranks: Any, abort: bool = False) -> None:
    """Leave the process group and wait for this node's spawned ranks — all of them; with
    ``abort`` (the job failed or stopped here) they are terminated first, since they may wait
    in a collective for a rank that will not come. A failure there is logged, never raised over
    the job's own outcome (its exception is the one that matters)."""
    import logging

    distributed.shutdown()
    if ranks is None:
        return
    if abort:
        for process in ranks.processes:
            if process.is_alive():
                process.terminate()
    while True:
        try:
            if ranks.join():  # True once every rank has exited
                return
        except Exception as error:  # reported; the caller's outcome stands
            logging.getLogger("sweetspot.pipeline").warning("a data-parallel rank failed: %s",
                                                            error)  # fmt: skip
            if all(not process.is_alive() for process in ranks.processes):
                return


def _rank_main(index: int, cluster: Cluster, request: PruneRequest, out_dir: Path,
               resume: bool, threads: int) -> None:  # fmt: skip
    """A spawned rank (local index ``index + 1`` on its node)."""
    _train_rank(index + 1, cluster, request, out_dir, resume, threads)


def _train_rank(local_index: int, cluster: Cluster, request: PruneRequest, out_dir: Path,
                resume: bool, threads: int | None,
                cancel: threading.Event | None = None) -> None:  # fmt: skip
    """A data-parallel rank other than 0: the same job, no events, checkpoints or artifacts.
    Spawned ranks end quietly on a cancel (their node's first rank reports it)."""
    train_config, method_config = split_config(request.method, request.config)
    train_config.threads = threads
    net, data, hooks, _, _ = _build(request, train_config, method_config)
    distributed.init(cluster, local_index, device=train_config.device)
    try:
        trainer = Trainer(net, data.train, data.test, train_config, hooks=hooks,
                          checkpoint_path=out_dir / "checkpoint.pt", cancel=cancel)  # fmt: skip
        _fit(trainer, resume, cluster)
    except Cancelled:
        if local_index == 0:
            raise
    finally:
        if local_index != 0:
            distributed.shutdown()


def _job_identity(request: PruneRequest) -> str:
    """What request.json records: the job, not how it runs. Whether it is measured, and how
    many threads, processes or hosts run it and on which device, do not change the job: a
    checkpoint resumes under any of them."""
    identity = {k: v for k, v in asdict(request).items() if k != "measure"}
    identity["config"] = {k: v for k, v in request.config.items()
                          if k not in ("threads", "procs", "nodes", "device")}  # fmt: skip
    return json.dumps(identity, indent=2, sort_keys=True)


def _check_out_dir(out_dir: Path, request: PruneRequest, resume: bool) -> None:
    """Refuse to resume a different job's checkpoint in ``out_dir`` (nothing is written)."""
    checkpoint, request_file = out_dir / "checkpoint.pt", out_dir / "request.json"
    if resume and checkpoint.exists():
        previous = request_file.read_text() if request_file.exists() else None
        if previous != _job_identity(request):
            raise ValueError(
                f"{out_dir} holds the checkpoint of a different job; choose another output "
                "folder, or start afresh without resuming (sweetspot prune --no-resume), which "
                "deletes that job's files there: its checkpoint, events, manifest, weights, "
                "report and plots (" + ", ".join(n for n in JOB_FILES if not n.endswith(".tmp"))
                + ")"
            )


def _prepare_out_dir(out_dir: Path, request: PruneRequest, resume: bool) -> None:
    """Create ``out_dir`` (already checked by :func:`_check_out_dir`) to resume its
    checkpoint, or to start afresh (removing the files of :data:`JOB_FILES` an earlier run
    left, and no others)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (resume and (out_dir / "checkpoint.pt").exists()):
        # a fresh start: no file of an earlier run stays next to this run's (others do)
        for stale in JOB_FILES:
            (out_dir / stale).unlink(missing_ok=True)
    (out_dir / "request.json").write_text(_job_identity(request))


def _measure(net, plan, input_shape, batch, log) -> dict | None:
    try:
        from model.measure import measure_speedups

        return measure_speedups(net, plan, input_shape, batch=batch)
    except ImportError as error:
        log(f"measurement skipped: the sparse kernel is not available ({error})")
        return None


def _spot(prediction) -> dict | None:
    spot = prediction.sweet_spot
    return None if spot is None else {
        "min_sparsity": spot.min_sparsity, "max_sparsity": spot.max_sparsity,
        "max_speedup": spot.max_speedup}  # fmt: skip


def _totals(manifest: dict) -> None:
    """Model speedup predicted: Σ dense time / Σ predicted time (removed layers cost 0)."""
    layers = manifest["layers"]
    dense_total = sum(layer["dense_time_s"] for layer in layers)
    pruned_total = sum(layer["dense_time_s"] / layer["predicted_speedup"]
                       for layer in layers if layer["predicted_speedup"])  # fmt: skip
    manifest["model_speedup"]["predicted"] = dense_total / pruned_total if pruned_total else None


def _unstructured_layers(manifest, by_name, sparsity, states, performance_model, hardware,
                         kept: dict[str, str]) -> dict[str, str]:  # fmt: skip
    """Layers on the sparse-kernel path: sparse where the model predicts a gain and the kernel
    can run the layer (``kept``: the layers it cannot, with why)."""
    plan = {}
    for name, prediction in by_name.items():
        s = sparsity.get(name, 0.0)
        predicted = performance_model.speedup(prediction.layer, hardware, 1.0 - s)
        fmt = "sparse" if prediction.sweet_spot is not None and predicted > 1.0 else "dense"
        module = name.partition("#")[0]  # a later call (conv#2) is the same module
        if fmt == "sparse" and module in kept:  # converting it failed the job after training
            fmt = "dense"
            states = {**states, name: f"kept dense: the sparse kernel cannot run it "
                                      f"({kept[module]})"}  # fmt: skip
        plan[name] = fmt
        manifest["layers"].append({
            "name": name, "kind": prediction.layer.kind, "sparsity": s, "format": fmt,
            "state": states.get(name), "dense_time_s": prediction.dense_time_s,
            "sweet_spot": _spot(prediction),
            "predicted_speedup": predicted if fmt == "sparse" else 1.0,
            "measured_speedup": None,
        })  # fmt: skip
    _totals(manifest)
    return plan


def _structured_layers(manifest, by_name, cut_specs, sparsity, states, performance_model,
                       hardware) -> None:  # fmt: skip
    """Layers of a cut network: predicted = dense time before / dense time after surgery.

    ``format`` is ``cut`` (narrower), ``dense`` (unchanged) or ``removed`` (inside a removed
    residual branch: ``predicted_speedup`` null, its time counts as 0 in the model total).
    """
    for name, prediction in by_name.items():
        after = cut_specs.get(name)
        before_s = performance_model.dense_time_s(prediction.layer, hardware)
        if after is None:
            fmt, predicted, shape, flops_kept = "removed", None, None, 0.0
        elif isinstance(after, FibreSpec):
            after_s = after.time_s(performance_model, hardware)
            fmt, shape = "fibres", after.describe()
            predicted = before_s / after_s if after_s > 0 else None
            flops_kept = after.conv.flops * after.kept / after.total / prediction.layer.flops
        else:
            predicted = before_s / performance_model.dense_time_s(after, hardware)
            fmt = "dense" if after.weight_count == prediction.layer.weight_count else "cut"
            shape, flops_kept = after.describe(), after.flops / prediction.layer.flops
        manifest["layers"].append({
            "name": name, "kind": prediction.layer.kind, "sparsity": sparsity.get(name, 0.0),
            "format": fmt, "state": states.get(name), "dense_time_s": prediction.dense_time_s,
            "sweet_spot": _spot(prediction), "predicted_speedup": predicted,
            "measured_speedup": None, "shape": prediction.layer.describe(),
            "cut_shape": shape, "flops_kept": flops_kept,
        })  # fmt: skip
    _totals(manifest)


def _cut(net, info, batch, log):
    """Surgery on the trained network, then fibre removal on what is left: (the cut network,
    its layer specs by name and the fibre report; None), or (None, why) with a log line when
    surgery does not support the network (or could not cut it exactly)."""
    from model.fibres import remove_fibres
    from model.surgery import SurgeryError, cut

    try:
        result = cut(net, tuple(info.input_shape))
    except SurgeryError as error:
        log(f"surgery skipped, keeping the sparse-kernel path: {error}")
        return None, str(error)
    fibres = remove_fibres(result.model, tuple(info.input_shape))
    for layer in fibres.layers:
        if layer.replaced:
            log(f"{layer.name}: {layer.fibres_total - layer.fibres_kept} of "
                f"{layer.fibres_total} shape fibres removed (a smaller dense GEMM)")  # fmt: skip
    specs = extract_layers(result.model, info.input_shape, batch=batch)
    by_name = {spec.name: spec for spec in specs if "#" not in spec.name}
    for layer in fibres.layers:
        if layer.replaced:
            gemm = layer.fibre_spec.with_batch(batch) if layer.fibre_spec else None
            by_name[layer.name] = FibreSpec(layer.dense_spec.with_batch(batch), gemm,
                                            layer.fibres_kept, layer.fibres_total)  # fmt: skip
    return (result, by_name, fibres), None


@dataclass(frozen=True)
class FibreSpec:
    """A convolution that fibre removal turned into a gathered GEMM (``gemm``: None when no
    fibre is left). Predicted time: the GEMM's dense time plus the gather, one write and one
    read of the gathered input at the profile's memory bandwidth."""

    conv: Conv2dSpec  # the convolution before fibre removal
    gemm: Conv2dSpec | None  # the 1×1 GEMM on the output grid
    kept: int
    total: int

    def time_s(self, performance_model: PerformanceModel, hardware: HardwareProfile) -> float:
        if self.gemm is None:
            return 0.0
        gathered = self.gemm.batch * self.gemm.in_channels * self.gemm.in_height * \
            self.gemm.in_width * self.gemm.dtype_bytes  # fmt: skip
        gather_s = 2 * gathered / hardware.memory_bandwidth_bytes_per_s
        return performance_model.dense_time_s(self.gemm, hardware) + gather_s

    def describe(self) -> str:
        return f"{self.conv.describe()}, {self.kept}/{self.total} fibres"


def load_cut_network(out_dir: str | Path) -> torch.nn.Module:
    """The cut network of a structured job's folder (``manifest.json`` + ``cut.safetensors``):
    rebuilt from the recorded widths and fibre layers, weights loaded, in eval mode."""
    from model.fibres import rebuild_fibres
    from model.surgery import rebuild

    out_dir = Path(out_dir)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    cut = manifest.get("cut")
    if not cut:
        raise ValueError(f"{out_dir} holds no cut network (an unstructured job)")
    net = rebuild(manifest["model"], cut["num_classes"], cut["architecture"])
    net = rebuild_fibres(net, cut.get("fibres") or {})
    net.load_state_dict(load_file(str(out_dir / cut["weights"])))
    return net.eval()


def _cut_summary(result, fibres, net, info, num_classes: int) -> dict[str, Any]:
    from model.cost import count_cost

    before = count_cost(net, info.input_shape)
    after = count_cost(result.model, info.input_shape)
    return {
        "weights": "cut.safetensors", "num_classes": num_classes,
        "architecture": result.architecture.to_dict(), "removed_blocks": result.removed_blocks,
        "widths": result.kept, "fibres": fibres.architecture,
        "fibre_layers": {layer.name: {"kept": layer.fibres_kept, "total": layer.fibres_total}
                         for layer in fibres.layers if layer.replaced},
        "cost": {"macs_before": before.macs, "macs_after": after.macs,
                 "params_before": before.params, "params_after": after.params},
    }  # fmt: skip


def _earlier_manifest(out_dir: Path) -> dict | None:
    """The manifest an earlier, finished run of this job left in ``out_dir``, if it holds a
    measurement (else None): a rerun that trains nothing new and is not measured keeps that
    measurement rather than writing "not measured" over it (:func:`_same_plan`)."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("measurement"), dict):
        return None
    return manifest


def _same_plan(earlier: dict | None, manifest: dict) -> bool:
    """Whether ``earlier``'s measurement timed what ``manifest`` describes: the same hardware
    profile and performance model, the same structure, every layer in the same format (a
    profile file edited between the runs re-plans the layers)."""
    def plan(of: dict) -> list:
        keys = ("hardware", "performance_model", "structure")
        layers = [(layer.get("name"), layer.get("format")) for layer in of.get("layers") or []]
        return [of.get(key) for key in keys] + layers

    return earlier is not None and plan(earlier) == plan(manifest)


def _attach_measurement(manifest: dict, measured: dict) -> None:
    manifest["measurement"] = measured
    for layer in manifest["layers"]:
        timing = measured["layers"].get(layer["name"])
        layer["measured_speedup"] = timing["speedup"] if timing else None
    manifest["model_speedup"]["measured"] = measured["model"]["speedup"]
