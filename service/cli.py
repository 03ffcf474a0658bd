"""The ``sweetspot`` command line.

Commands:
    predict     per-layer sweet spots of a built-in model or an ONNX file on a hardware profile
    hardware    list and show hardware profiles
    models      list the built-in networks
    bench       benchmarks (``bench kernel``: the direct sparse convolution against dense;
                ``bench train``: seconds per training step on each device)

Exit codes: 0 success, 2 bad usage or unknown name (the message lists the valid names),
1 any other failure (an invalid file, say), always with a one-line message on stderr; 141,
silently, when the reader of stdout left early (``sweetspot models | head -1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from model.arguments import integer  # torch-free: argparse types only
from perfmodel import (
    HardwareProfile,
    NetworkPrediction,
    ProfileError,
    UnknownProfileError,
    get_profile,
    predict_network,
)
from perfmodel.hardware import load_profiles, user_profile_dir
from perfmodel.onnx_import import OnnxImportError, layers_from_onnx
from perfmodel.predict import resolve_model

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head -1`'s yes


class CliError(Exception):
    """A user-facing failure: printed as ``sweetspot: <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def _version() -> str:
    try:
        return version("sweetspot")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def _load_profile(name: str) -> HardwareProfile:
    try:
        return get_profile(name)
    except UnknownProfileError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except ProfileError as error:
        raise CliError(str(error)) from None


# ---------------------------------------------------------------------------------- predict


def _predict(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise CliError(f"--batch must be >= 1, got {args.batch}", EXIT_USAGE)
    hardware = _load_profile(args.hardware)
    if hardware.provenance.kind == "calibration" and _calibrated_quick(hardware):
        print(f"sweetspot: warning: {hardware.name} was calibrated with `calibrate --quick` "
              "(less accurate); recalibrate without --quick before trusting these "
              "predictions", file=sys.stderr)  # fmt: skip
    if args.onnx:
        try:
            layers = layers_from_onnx(args.onnx, batch=args.batch)
        except OnnxImportError as error:
            raise CliError(str(error)) from None
        name = args.onnx
    else:
        from model.analysis import network_layers
        from model.networks import UnknownNetworkError

        try:
            layers = network_layers(args.model, args.batch)
        except UnknownNetworkError as error:
            raise CliError(str(error), EXIT_USAGE) from None
        name = args.model
    try:
        model = resolve_model(args.performance_model, hardware)
    except LookupError as error:  # an unknown --performance-model
        raise CliError(str(error), EXIT_USAGE) from None
    except ProfileError as error:  # 'refined' on a profile that was never calibrated
        raise CliError(str(error)) from None
    prediction = predict_network(layers, hardware, name=name, batch=args.batch, model=model)
    if args.json:
        print(json.dumps(prediction.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_prediction(prediction))
    return 0


def _calibrated_quick(profile: HardwareProfile) -> bool:
    from model.calibration import calibrated_quick  # sklearn: imported for calibrations only

    return calibrated_quick(profile)


def _range(prediction) -> str:
    spot = prediction.sweet_spot
    if spot is None:
        return "none"
    return f"{100 * spot.min_sparsity:.1f}–{100 * spot.max_sparsity:.1f}%"


def format_prediction(result: NetworkPrediction) -> str:
    """The human-readable table of ``sweetspot predict``."""
    hw = result.hardware
    lines = [  # the digits of `hardware list`: calibrated numbers have many more
        f"{result.model} on {hw.name} ({hw.dense_flops_per_s / 1e9:.4g} GFLOP/s, "
        f"{hw.memory_bandwidth_bytes_per_s / 1e9:.4g} GB/s, α={hw.sparse_overhead:.3g}, "
        f"β={hw.sparse_bytes_per_nonzero:.3g}), batch {result.batch}, "
        f"{result.performance_model} model",
        "",
    ]
    keys = [f"{s:g}" for s in result.sparsities]
    header = ["layer", "shape", "MFLOP", "dense µs", "bound", "sweet spot", "×@sat"]
    header += [f"×@{k}" for k in keys] + ["plan"]
    rows = []
    for p in result.layers:
        best = f"{p.sweet_spot.max_speedup:.1f}" if p.sweet_spot else "-"
        row = [p.name, p.layer.describe(), f"{p.layer.flops / 1e6:.1f}",
               f"{p.dense_time_s * 1e6:.2f}", p.bound, _range(p), best]  # fmt: skip
        row += [f"{p.speedup[s]:.2f}" for s in result.sparsities] + [p.recommendation]
        rows.append(row)
    total_flops = sum(p.layer.flops for p in result.layers)
    total = ["total", f"{len(result.layers)} layers", f"{total_flops / 1e6:.1f}",
             f"{result.dense_time_s * 1e6:.2f}", "", "", ""]  # fmt: skip
    total += [f"{result.network_speedup(s):.2f}" for s in result.sparsities]
    total += [f"{sum(p.recommendation == 'sparse' for p in result.layers)} sparse"]
    rows.append(total)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = {2, 3, 6, *range(7, 7 + len(keys))}

    def fmt(row: Sequence[str]) -> str:
        cells = [
            str(c).rjust(w) if i in numeric else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    lines.append(fmt(header))
    lines += [fmt(r) for r in rows[:-1]]
    lines.append("-" * len(fmt(header)))
    lines.append(fmt(rows[-1]))
    lines += ["", "total: network speedup with the 'sparse' layers pruned to that sparsity", ""]
    lines.append("why:")
    lines += [f"  {p.name}: {p.reason}" for p in result.layers]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- hardware


def _hardware_list(args: argparse.Namespace) -> int:
    profiles, problems = load_profiles()
    for name, error in problems.items():
        print(f"sweetspot: skipping {name}: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps([p.model_dump(mode="json") for p in profiles], indent=2))
        return 0
    width = max([18, *(len(p.name) for p in profiles)])
    print(f"{'name':<{width}} {'GFLOP/s':>9} {'GB/s':>7} {'α':>5} {'β':>4}  source")
    for p in profiles:  # 4 significant digits: calibrated numbers have many more
        print(
            f"{p.name:<{width}} {p.dense_flops_per_s / 1e9:>9.4g} "
            f"{p.memory_bandwidth_bytes_per_s / 1e9:>7.4g} {p.sparse_overhead:>5.3g} "
            f"{p.sparse_bytes_per_nonzero:>4.3g}  {p.provenance.kind}: {p.description}"
        )
    print(f"\nuser profiles: {user_profile_dir()} (set SWEETSPOT_PROFILE_DIR to change)")
    return 0


def _hardware_show(args: argparse.Namespace) -> int:
    profile = _load_profile(args.name)
    if args.json:
        print(profile.model_dump_json(indent=2))
        return 0
    fields = type(profile).model_fields
    for key, value in profile.model_dump(exclude={"provenance", "refined"}).items():
        if value is None:
            continue
        about = fields[key].description or ""
        print(f"{key:<30} {value!s:<22} {about}")
    print("provenance:")
    for key, value in profile.provenance.model_dump(exclude_none=True).items():
        print(f"  {key:<8} {value}")
    if profile.refined is not None:  # nested blocks, one value a line (--json: all of it)
        print("refined (calibrated parameters of the refined model):")
        _print_nested(profile.refined.model_dump(exclude_none=True), 1)
    return 0


def _print_nested(values: dict, depth: int) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            print(f"{'  ' * depth}{key}:")
            _print_nested(value, depth + 1)
        else:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            print(f"{'  ' * depth}{key:<{max(8, 34 - 2 * depth)}} {text}")


def _models(args: argparse.Namespace) -> int:
    from model.networks import NETWORKS

    if args.json:
        data = [
            {"name": i.name, "input_shape": list(i.input_shape), "num_classes": i.num_classes,
             "paper": i.paper}
            for i in NETWORKS.values()
        ]  # fmt: skip
        print(json.dumps(data, indent=2))
        return 0
    width = max(len(name) for name in NETWORKS)
    for info in NETWORKS.values():
        shape = "×".join(map(str, info.input_shape))
        print(f"{info.name:<{width}} {shape:<11} {info.num_classes:>5} classes  {info.paper}")
    return 0


def _bench_predict(args: argparse.Namespace) -> int:
    """Time the prediction of every layer of a network: median of ``--repeats`` runs."""
    import statistics
    import time

    from model.analysis import clear_cache, network_layers
    from model.networks import UnknownNetworkError

    for option in ("repeats", "batch"):
        if getattr(args, option) < 1:
            raise CliError(f"--{option} must be >= 1, got {getattr(args, option)}", EXIT_USAGE)
    hardware = _load_profile(args.hardware)
    try:
        network_layers(args.model)  # warm-up: builds the meta network and caches its specs
    except UnknownNetworkError as error:
        raise CliError(str(error), EXIT_USAGE) from None
    predict_s, end_to_end_s = [], []
    for _ in range(args.repeats):
        layers = network_layers(args.model, args.batch)
        start = time.perf_counter()
        predict_network(layers, hardware, name=args.model)
        predict_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        clear_cache()  # measure building the network and extracting its layers too
        predict_network(network_layers(args.model, args.batch), hardware, name=args.model)
        end_to_end_s.append(time.perf_counter() - start)
    result = {
        "model": args.model,
        "hardware": hardware.name,
        "layers": len(layers),
        "repeats": args.repeats,
        "predict_median_s": statistics.median(predict_s),
        "extract_and_predict_median_s": statistics.median(end_to_end_s),
    }
    print(json.dumps(result, indent=2))
    return 0


# ------------------------------------------------------------------------------------ prune


def _parse_value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _prune_config(args: argparse.Namespace) -> dict:
    config: dict = {}
    for flag, key in (("epochs", "prune_epochs"), ("dense_epochs", "dense_epochs"),
                      ("finetune_epochs", "finetune_epochs"), ("lr", "lr"),
                      ("batch_size", "batch_size"), ("seed", "seed"),
                      ("threads", "threads"), ("device", "device")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            config[key] = value
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set takes KEY=VALUE, got {item!r}", EXIT_USAGE)
        config[key] = _parse_value(value)
    return config


def _prune_cluster(args: argparse.Namespace, procs: int):
    """``--nodes/--node-rank/--master``: this host's place in a job on several hosts."""
    if args.nodes is None and args.node_rank is None and args.master is None:
        return None
    from model.training.distributed import Cluster, parse_master

    if args.master is None:
        raise CliError("--nodes/--node-rank need --master HOST:PORT (node 0's address and a "
                       "free port there)", EXIT_USAGE)  # fmt: skip
    try:
        host, port = parse_master(args.master)
        return Cluster(nodes=args.nodes or 1, node_rank=args.node_rank or 0, procs=procs,
                       master_addr=host, master_port=port)  # fmt: skip
    except ValueError as error:
        raise CliError(str(error), EXIT_USAGE) from None


def _prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from model.networks import UnknownNetworkError
    from model.pipeline import PruneRequest, check_request, split_config
    from model.pruning import UnknownMethodError
    from model.training.distributed import resolve_device

    request = PruneRequest(
        method=args.method, model=args.model, dataset=args.dataset, hardware=args.hardware,
        config=_prune_config(args), checkpoint=args.checkpoint, measure=not args.no_measure,
    )  # fmt: skip
    _load_profile(args.hardware)  # fail fast, exit 2 on an unknown name
    try:
        train_config, method_config = split_config(request.method, request.config)
        check_request(request, method_config)  # names the network lacks, no surgery for l1
        resolve_device(train_config.device, train_config.procs)  # the GPUs asked for are here
    except (UnknownMethodError, UnknownNetworkError, ValueError) as error:
        raise CliError(str(error), EXIT_USAGE) from None
    cluster = _prune_cluster(args, train_config.procs)
    created = _new_folders(Path(args.out))  # removed again if the job is refused
    try:  # the folder first, as `sensitivity`: a path that cannot be a folder is one line
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CliError(f"cannot create --out {args.out}: {error.strerror or error}") from None
    try:
        return _run_prune(args, request, train_config, cluster)
    except BaseException:  # refused before training wrote anything: leave no new folder
        for folder in created:  # deepest first; a folder with anything in it stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _new_folders(path) -> list:
    """The folders ``path.mkdir(parents=True)`` would create, deepest first."""
    created = []
    while not path.exists() and path != path.parent:
        created.append(path)
        path = path.parent
    return created


def _run_prune(args: argparse.Namespace, request, train_config, cluster) -> int:
    from pathlib import Path

    from tqdm import tqdm

    from model.data import DatasetError
    from model.networks import UnknownNetworkError
    from model.pipeline import join_pruning, run_pruning
    from model.pruning import UnknownMethodError
    from model.training import PHASES, Cancelled, epochs_done

    phase_epochs = train_config.phase_epochs(warm_start=bool(request.checkpoint))
    bar = None  # drawn when training starts: a refusal before it is not printed after a bar

    def started() -> tqdm:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=sum(phase_epochs.values()), unit="epoch", disable=args.quiet,
                       dynamic_ncols=True, file=sys.stderr)  # fmt: skip
        return bar

    def note(message: str) -> None:
        """Progress text goes to stderr (stdout is for the result) and is silenced by --quiet."""
        if args.quiet:
            return
        if bar is None:
            print(message, file=sys.stderr)
        else:
            bar.write(message, file=sys.stderr)

    def progress(event: dict) -> None:
        kind = event.get("type")
        if kind == "phase" and event["phase"] in PHASES:
            started().set_description(event["phase"])
        elif kind == "epoch":
            drawn = started()
            drawn.update(epochs_done(event, phase_epochs) - drawn.n)  # resumed: from where it was
            pruned = " ".join(f"{k} {v:.0%}" for k, v in event["sparsity"].items() if v > 0)
            drawn.set_postfix_str(f"acc {event['test_accuracy']:.3f}  sparsity: {pruned or '-'}")
        elif kind == "decision":
            note(f"[epoch {event['epoch']}] {event['layer']}: {event['action']} — "
                 f"{event['reason']}")  # fmt: skip
        elif kind == "log":
            note(event["message"])

    try:
        if cluster is not None and cluster.node_rank > 0:
            join_pruning(request, Path(args.out), cluster, resume=not args.no_resume, log=note)
            print(f"node {cluster.node_rank} of {cluster.nodes} finished; node 0 wrote the "
                  "artifacts")  # fmt: skip
            return 0
        manifest = run_pruning(
            request, Path(args.out), callbacks=[progress], resume=not args.no_resume,
            log=note, cluster=cluster,
        )  # fmt: skip
    except (UnknownNetworkError, UnknownMethodError) as error:
        raise CliError(str(error), EXIT_USAGE) from None
    except (ValueError, DatasetError, FileNotFoundError, FloatingPointError) as error:
        raise CliError(str(error)) from None
    except OSError as error:  # a folder or file it cannot write (permissions, a full disk)
        raise CliError(f"{error.strerror or error}: {error.filename}" if error.filename
                       else str(error)) from None  # fmt: skip
    except Cancelled as error:  # only a job on several nodes stops without being asked here
        raise CliError(f"training stopped: {error}; run the same commands again to resume "
                       "from the last finished epoch") from None  # fmt: skip
    except RuntimeError as error:
        if cluster is None or not cluster.distributed:
            raise
        where = ("node 0" if cluster.node_rank else "the other nodes") + \
            f" ({cluster.master_addr}:{cluster.master_port})"  # fmt: skip
        raise CliError(f"the job on {cluster.nodes} nodes failed: {error}; check that every "
                       f"node runs the same command and reaches {where}") from None  # fmt: skip
    except KeyboardInterrupt:
        raise CliError(
            "interrupted; run the same command again to resume from the last finished epoch",
            130,
        ) from None
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(format_manifest(manifest, args.out))
    return 0


def format_manifest(manifest: dict, out: str) -> str:
    """Short human summary of a finished pruning job."""
    accuracy = manifest["accuracy"]
    dense = accuracy["dense"]
    lines = [
        f"{manifest['method']} on {manifest['model']} / {manifest['dataset']}, "
        f"predicted for {manifest['hardware']}",
        f"accuracy: dense {dense:.4f} → pruned {accuracy['pruned']:.4f}"
        if dense is not None else f"accuracy: {accuracy['pruned']:.4f}",
        "",
        f"{'layer':<24} {'sparsity':>8} {'format':>7} {'predicted':>9} {'measured':>9}  state",
    ]
    for layer in manifest["layers"]:
        measured = layer.get("measured_speedup")
        predicted = layer.get("predicted_speedup")
        state = layer.get("state") or ""
        if layer.get("cut_shape") and layer.get("cut_shape") != layer.get("shape"):
            state = f"{state} cut to {layer['cut_shape']}".strip()
        lines.append(
            f"{layer['name']:<24} {layer['sparsity']:>8.1%} {layer['format']:>7} "
            f"{(f'{predicted:.2f}x' if predicted else '-'):>9} "
            f"{(f'{measured:.2f}x' if measured else '-'):>9}  {state}"
        )
    speed = manifest["model_speedup"]
    kept = (manifest.get("measurement") or {}).get("kept")
    measured = (f"{speed['measured']:.2f}x " + ("(kept from the earlier run)" if kept
                                                 else "on this host")
                if speed["measured"] else _not_measured(manifest))  # fmt: skip
    lines += ["", f"model speedup: predicted {speed['predicted']:.2f}x "
                  f"({manifest['hardware']}); measured: {measured}"]  # fmt: skip
    from model.report import noise_note

    note = noise_note(manifest.get("measurement"))
    if note:
        lines.append(note)
    lines.append(f"artifacts in {out}: {', '.join(_artifact_files(manifest))}")
    return "\n".join(lines)


def _not_measured(manifest: dict) -> str:
    reason = manifest.get("not_measured")
    return f"not measured ({reason})" if reason else "not measured"


def _artifact_files(manifest: dict) -> list[str]:
    """The main files a run wrote, as its manifest lists them (a structured method's cut
    network too; no report when it could not be drawn)."""
    artifacts = manifest.get("artifacts") or {}
    keys = ("pruned_weights", "cut_weights", "report")
    return ["manifest.json", *(artifacts[k] for k in keys if artifacts.get(k))]


# ------------------------------------------------------------------------------ service


def _settings(args: argparse.Namespace):
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {}
    for flag in ("data_dir", "database_url", "api_tokens", "max_concurrent_jobs", "job_procs"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        first = error.errors()[0]
        raise CliError(f"invalid setting {first['loc'][0]}: {first['msg']}", EXIT_USAGE) from None
    _check_storage(settings)
    return settings


def _check_storage(settings) -> None:
    """The data folders and the database, opened (and migrated) once before anything starts:
    a bad URL, an unreachable server, a data directory that cannot be made or a schema newer
    than this code was a 40-to-80-frame traceback."""
    from alembic.util.exc import CommandError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from service.db import SchemaTooNewError, make_engine, migrate

    try:
        settings.prepare()
    except OSError as error:
        raise CliError(f"cannot use the data directory {settings.data_dir}: "
                       f"{error.strerror or error}") from None  # fmt: skip
    try:
        shown = make_url(settings.url).render_as_string(hide_password=True)
    except ArgumentError:
        raise CliError(f"invalid database URL {settings.url!r} (--database-url or "
                       "SWEETSPOT_DATABASE_URL; e.g. postgresql+psycopg://user:password@host/db)",
                       EXIT_USAGE) from None  # fmt: skip
    try:
        engine = make_engine(settings.url)
    except ArgumentError as error:  # an unknown dialect or driver
        raise CliError(f"invalid database URL {shown}: {error}", EXIT_USAGE) from None
    except ImportError as error:  # a known dialect whose driver is not installed
        raise CliError(f"cannot open the database {shown}: {error}") from None
    try:
        try:
            migrate(engine)  # what serve and worker do first anyway; here a failure is a line
        finally:
            engine.dispose()
    except SQLAlchemyError as error:  # unreachable, refused
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise CliError(f"cannot open the database {shown}: {reason}") from None
    except SchemaTooNewError as error:
        raise CliError(str(error)) from None
    except CommandError as error:  # e.g. two heads recorded in alembic_version
        raise CliError(f"cannot migrate the database {shown}: {error}") from None


def _serve(args: argparse.Namespace) -> int:
    from service.serve import serve

    settings = _settings(args)
    workers = settings.max_concurrent_jobs if args.workers is None else args.workers
    return serve(settings, args.host, args.port, workers)


def _worker(args: argparse.Namespace) -> int:
    import logging
    import signal

    from service.worker import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    worker = Worker(_settings(args), worker_id=args.worker_id)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    if args.once:
        worker.run_once()
        return 0
    try:
        worker.run_forever()
    except KeyboardInterrupt:
        worker.stop.set()
    return 0


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    from pathlib import Path

    parser.add_argument("--data-dir", type=Path,
                        help="database, artifacts, uploads (env SWEETSPOT_DATA_DIR)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (env SWEETSPOT_DATABASE_URL)")


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweetspot",
        description="Predict which CNN layers a sparse kernel speeds up on your hardware.",
    )
    parser.add_argument("--version", action="version", version=f"sweetspot {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser(
        "predict", help="per-layer sweet spots of a model on a hardware profile"
    )
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="built-in network name (see `sweetspot models`)")
    source.add_argument("--onnx", metavar="FILE", help="an ONNX model file")
    predict.add_argument(
        "--hardware", required=True, metavar="NAME|FILE",
        help="profile name (see `sweetspot hardware list`) or a JSON/TOML profile file",
    )  # fmt: skip
    predict.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    predict.add_argument(
        "--performance-model", default="auto",
        help="paper, refined, or auto (default: refined for calibrated profiles, else paper)",
    )  # fmt: skip
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.set_defaults(func=_predict)

    hardware = commands.add_parser("hardware", help="list and show hardware profiles")
    hw_commands = hardware.add_subparsers(dest="hardware_command", required=True, metavar="CMD")
    hw_list = hw_commands.add_parser("list", help="all profiles")
    hw_list.add_argument("--json", action="store_true")
    hw_list.set_defaults(func=_hardware_list)
    hw_show = hw_commands.add_parser("show", help="one profile with its provenance")
    hw_show.add_argument("name", metavar="NAME|FILE")
    hw_show.add_argument("--json", action="store_true")
    hw_show.set_defaults(func=_hardware_show)

    prune = commands.add_parser(
        "prune", help="train and prune a network, write weights, manifest and report"
    )
    prune.add_argument("--method", default="gsl",
                       help="gsl (default), ssl, l1-filter, autoprune or magnitude")
    prune.add_argument("--model", required=True, help="built-in network name")
    prune.add_argument("--dataset", default="digits", metavar="NAME|PATH",
                       help="digits (default), synthetic, or a folder (MNIST, CIFAR-10, images)")
    prune.add_argument("--hardware", default="xeon-e5-2697v4", metavar="NAME|FILE",
                       help="profile the sweet spots are predicted for (default "
                            "xeon-e5-2697v4)")
    prune.add_argument("--out", required=True, metavar="DIR", help="output folder")
    # the defaults are TrainConfig's (model/training/trainer.py)
    prune.add_argument("--epochs", type=int, help="pruning epochs, prune_epochs (default 30)")
    prune.add_argument("--dense-epochs", type=int,
                       help="baseline training epochs (default 10; 0 with --checkpoint)")
    prune.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (default 10)")
    prune.add_argument("--lr", type=float, help="learning rate (default 0.02)")
    prune.add_argument("--batch-size", type=int, help="training batch size (default 64)")
    prune.add_argument("--seed", type=int, help="random seed (default 0)")
    prune.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    prune.add_argument("--device", help="where to train: auto (a CUDA GPU when there is one, "
                       "default), cpu, cuda (one GPU per process), cuda:N")  # fmt: skip
    prune.add_argument("--checkpoint", metavar="FILE",
                       help="start from these dense weights (.safetensors or weights-only .pt)")
    prune.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="any hyperparameter of the trainer or the method, e.g. lasso=0.002")
    prune.add_argument("--nodes", type=int,
                       help="hosts that train this job together (data-parallel, torchrun-style;"
                            " run the same command on each with its --node-rank)")
    prune.add_argument("--node-rank", type=int, help="this host's index, 0 … nodes−1 (node 0 "
                       "writes the artifacts)")  # fmt: skip
    prune.add_argument("--master", metavar="HOST:PORT",
                       help="node 0's address and a free port on it (the rendezvous)")
    prune.add_argument("--no-measure", action="store_true", help="skip timing on this host")
    prune.add_argument("--no-resume", action="store_true",
                       help="start afresh even if DIR holds a checkpoint of this job")
    prune.add_argument("--quiet", action="store_true", help="no progress bar")
    prune.add_argument("--json", action="store_true", help="print the manifest as JSON")
    prune.set_defaults(func=_prune)

    serve = commands.add_parser("serve", help="run the REST API with local workers")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=integer(0, 65535), default=8000,
                       help="TCP port (default 8000; 0: any free one)")  # fmt: skip
    serve.add_argument("--workers", type=integer(0),
                       help="local worker processes (default SWEETSPOT_MAX_CONCURRENT_JOBS, 1; "
                       "0: none, the API only)")  # fmt: skip
    serve.add_argument("--api-tokens", help="comma-separated tokens (env SWEETSPOT_API_TOKENS)")
    _add_settings_flags(serve)
    serve.set_defaults(func=_serve)

    worker = commands.add_parser("worker", help="run jobs from the job store (a worker process)")
    worker.add_argument("--worker-id", help="name recorded in job transitions")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.add_argument("--procs", dest="job_procs", type=int,
                        help="data-parallel processes per job (env SWEETSPOT_JOB_PROCS)")
    _add_settings_flags(worker)
    worker.set_defaults(func=_worker)

    from model import sensitivity as sensitivity_command

    sensitivity = commands.add_parser(
        "sensitivity", help="per-layer L1 filter-pruning sensitivity: table and PNG"
    )
    sensitivity_command.add_arguments(sensitivity)
    sensitivity.set_defaults(func=sensitivity_command.run)

    from model import calibration, validation

    calibrate = commands.add_parser(
        "calibrate", help="measure this host and fit the refined performance model"
    )
    calibration.add_arguments(calibrate)
    calibrate.set_defaults(func=calibration.run)
    validate = commands.add_parser(
        "validate", help="measured vs predicted speedup on layers calibration never saw"
    )
    validation.add_arguments(validate)
    validate.set_defaults(func=validation.run)

    models = commands.add_parser("models", help="list the built-in networks")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=_models)

    bench = commands.add_parser("bench", help="benchmarks that print ratios measured in one run")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="CMD")
    bench_predict = bench_commands.add_parser(
        "predict", help="time the per-layer prediction of a whole network (JSON)"
    )
    bench_predict.add_argument("--model", default="resnet50",
                               help="built-in network name (default resnet50)")
    bench_predict.add_argument("--hardware", default="xeon-e5-2697v4", metavar="NAME|FILE",
                               help="hardware profile (default xeon-e5-2697v4)")
    bench_predict.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    bench_predict.add_argument("--repeats", type=int, default=20,
                               help="timed runs; the median is printed (default 20)")
    bench_predict.set_defaults(func=_bench_predict)
    from service import loadtest

    bench_api = bench_commands.add_parser(
        "api", help="load test GET /v1/sweet-spots: throughput, p50/p99 latency (JSON)"
    )
    loadtest.add_arguments(bench_api)
    bench_api.set_defaults(func=loadtest.run)
    from model.training import bench as train_bench

    train = bench_commands.add_parser(
        "train", help="seconds per training step on each device (CPU vs GPU, JSON)"
    )
    train_bench.add_arguments(train)
    train.set_defaults(func=train_bench.run)
    try:
        from model.sparse import bench as kernel_bench
    except ImportError:
        kernel_bench = None
    if kernel_bench is not None:
        kernel = bench_commands.add_parser(
            "kernel", help="direct sparse convolution vs dense and torch.sparse"
        )
        kernel_bench.add_arguments(kernel)
        kernel.set_defaults(func=kernel_bench.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sweetspot`` console script."""
    try:
        return _run(argv)
    except BrokenPipeError:  # the reader left (`sweetspot models | head -1`): stop quietly
        _silence_stdout()
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # output that fit in the pipe's buffer meets a closed pipe here
        return code
    except CliError as error:
        print(f"sweetspot: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print("sweetspot: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at the null device: Python flushes it at exit, and what is left in its
    buffer would meet the closed pipe again (an 'Exception ignored' message on stderr)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass


if __name__ == "__main__":
    sys.exit(main())
