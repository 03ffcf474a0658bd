"""Uploaded files: size-limited reads and validation that never executes anything.

Checkpoints are read as safetensors, or with ``torch.load(weights_only=True)``, then loaded
strictly into the named built-in architecture (so a file that does not fit is refused at
upload time, not hours later in a worker) and stored as safetensors.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException, UploadFile


async def read_limited(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes; 413 as soon as it exceeds ``limit``."""
    chunks, size = [], 0
    while chunk := await file.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    if size == 0:
        raise HTTPException(422, "the uploaded file is empty")
    return b"".join(chunks)


def validate_checkpoint(data: bytes, model: str, destination: Path, filename: str = "") -> None:
    """Load ``data`` weights-only into ``model`` (strict) and save it as safetensors.

    Raises:
        ValueError: not a weights file, or its tensors do not fit the architecture.
    """
    from safetensors.torch import save_file

    from model.networks import create_model
    from model.pipeline import checkpoint_classes, load_into, parse_weights

    # A file named .safetensors is read as one only, so a corrupt one gets safetensors' own
    # error (it got the pickle loader's "Unsupported operand 0").
    state = parse_weights(data, "the upload", safetensors=filename.endswith(".safetensors"))
    # Any number of classes: the job checks it against its data set's. (Built with the
    # network's default, 1000 for ImageNet networks, a 10-class checkpoint, the only kind a
    # job on the built-in data sets can use, was refused and a 1000-class one accepted.)
    classes = checkpoint_classes(model, {key: value.shape for key, value in state.items()})
    network = create_model(model, num_classes=classes or None)
    load_into(network, state, model)
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(destination))


def upload_classes(path: str | Path, model: str) -> int | None:
    """The classes a stored checkpoint's classifier has (read from its safetensors header, no
    tensor loaded), or None where the file cannot tell (the job's own load then says why)."""
    from safetensors import safe_open

    from model.pipeline import checkpoint_classes

    try:
        with safe_open(str(path), "pt") as weights:
            shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}  # noqa: SIM118
    except (OSError, ValueError, RuntimeError):  # gone, or not ours: the worker reports it
        return None
    return checkpoint_classes(model, shapes)
