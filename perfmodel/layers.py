"""Layer specifications: the shapes the performance model reasons about.

A spec carries exactly what the roofline of Park et al. (ICLR 2017, §2.2) needs per layer and
per batch: the dense FLOP count ``C`` (2 × MACs, counted as if no weight were zero), the bytes
of input plus output activations ``S_A`` and the bytes of the dense weight tensor ``S_W``.
Specs are plain validated data (pydantic, frozen): they come from a torch module
(``perfmodel.extract``), an ONNX file (``perfmodel.onnx_import``), JSON sent to the API, or are
written by hand. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Pair = tuple[int, int]
PositiveInt = Annotated[int, Field(gt=0)]


def _pair(value: object) -> object:
    """Accept ``3`` or ``[3, 3]`` for a (height, width) pair."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, list):
        return tuple(value)
    return value


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Layer name, unique within a network (e.g. 'conv5').")
    batch: PositiveInt = Field(1, description="Images per call; C and S_A scale with it.")
    per_example: PositiveInt = Field(
        1, description="Images (conv) or rows (linear) each example of the network makes: a "
        "linear layer on (50, 64) examples has 50; batch = examples × per_example.",
    )  # fmt: skip
    dtype_bytes: int = Field(
        4, ge=1, le=16, description="Bytes per element (fp32 = 4; up to 16, complex128)."
    )

    def with_batch(self, batch: int) -> _Spec:
        """The same layer run on a batch of ``batch`` examples (a new object; specs are
        immutable): ``batch · per_example`` images or rows."""
        return self.model_copy(update={"batch": batch * self.per_example})

    @property
    def examples(self) -> int:
        """The network batch this call belongs to (``batch // per_example``)."""
        return max(self.batch // self.per_example, 1)

    @property
    def flops(self) -> int:
        """Dense FLOPs of one call: 2 × multiply-accumulates (bias and activation ignored)."""
        return 2 * self.macs

    @property
    def macs(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class Conv2dSpec(_Spec):
    """A 2-D convolution, NCHW, ``weight`` of shape (K, C/groups, R, S)."""

    kind: Literal["conv2d"] = "conv2d"
    in_channels: PositiveInt
    out_channels: PositiveInt
    in_height: PositiveInt
    in_width: PositiveInt
    kernel: Pair = Field(description="(R, S) kernel height and width.")
    stride: Pair = (1, 1)
    padding: Pair = Field(
        (0, 0),
        description="(top, left) zero padding; also (bottom, right) unless padding_end is set.",
    )
    padding_end: Pair | None = Field(
        None,
        description="(bottom, right) zero padding where it differs from padding (ONNX "
        "SAME_UPPER/SAME_LOWER or asymmetric pads, PyTorch 'same' with an even kernel); "
        "null: the same as padding.",
    )
    dilation: Pair = (1, 1)
    groups: PositiveInt = 1

    @field_validator("kernel", "stride", "padding", "padding_end", "dilation", mode="before")
    @classmethod
    def _as_pair(cls, value: object) -> object:
        return _pair(value)

    @field_validator("kernel", "stride", "dilation")
    @classmethod
    def _positive_pair(cls, value: Pair) -> Pair:
        if min(value) < 1:
            raise ValueError(f"must be >= 1, got {value}")
        return value

    @field_validator("padding", "padding_end")
    @classmethod
    def _non_negative_pair(cls, value: Pair | None) -> Pair | None:
        if value is not None and min(value) < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("padding_end")
    @classmethod
    def _symmetric_end_is_none(cls, value: Pair | None, info: ValidationInfo) -> Pair | None:
        # One spelling per layer: an end padding equal to padding is stored as None, so specs
        # of the same layer compare equal however they were written.
        return None if value == info.data.get("padding") else value

    @model_validator(mode="after")
    def _consistent(self) -> Conv2dSpec:
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}"
            )
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(
                f"kernel {self.kernel} (dilation {self.dilation}) does not fit the padded "
                f"input {self.in_height}x{self.in_width} + padding {self.padding}"
                + ("" if self.padding_end is None else f" (top, left), {self.padding_end} (end)")
            )
        return self

    @property
    def end_padding(self) -> Pair:
        """(bottom, right) zero padding: ``padding_end``, or ``padding`` when symmetric."""
        return self.padding if self.padding_end is None else self.padding_end

    @property
    def padded_height(self) -> int:
        """Input rows with the top and bottom zero padding."""
        return self.in_height + self.padding[0] + self.end_padding[0]

    @property
    def padded_width(self) -> int:
        """Input columns with the left and right zero padding."""
        return self.in_width + self.padding[1] + self.end_padding[1]

    @property
    def out_height(self) -> int:
        r = self.dilation[0] * (self.kernel[0] - 1) + 1
        return (self.padded_height - r) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        s = self.dilation[1] * (self.kernel[1] - 1) + 1
        return (self.padded_width - s) // self.stride[1] + 1

    @property
    def weight_count(self) -> int:
        """Elements of the dense weight tensor K × C/g × R × S."""
        return (
            self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        )

    @property
    def macs(self) -> int:
        # Every output element (N, K, P, Q) takes C/g × R × S multiply-accumulates.
        per_output = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        return self.batch * self.out_channels * self.out_height * self.out_width * per_output

    @property
    def activation_bytes(self) -> int:
        """S_A: input (N, C, H, W) plus output (N, K, P, Q), unpadded."""
        inputs = self.in_channels * self.in_height * self.in_width
        outputs = self.out_channels * self.out_height * self.out_width
        return self.batch * (inputs + outputs) * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        """S_W: the dense weight tensor (bias ignored)."""
        return self.weight_count * self.dtype_bytes

    def describe(self) -> str:
        """Short shape string, e.g. ``384→256 3x3 g2 @13x13``, ``96→256 5x5 /2x1 d2 @27x27``
        (stride and dilation shown when not 1, one number when square)."""

        def pair(value: Pair) -> str:
            return f"{value[0]}" if value[0] == value[1] else f"{value[0]}x{value[1]}"

        text = f"{self.in_channels}→{self.out_channels} {self.kernel[0]}x{self.kernel[1]}"
        if self.stride != (1, 1):
            text += f" /{pair(self.stride)}"
        if self.dilation != (1, 1):
            text += f" d{pair(self.dilation)}"
        if self.groups > 1:
            text += f" g{self.groups}"
        return text + f" @{self.in_height}x{self.in_width}"


class LinearSpec(_Spec):
    """A fully connected layer, ``weight`` of shape (out_features, in_features)."""

    kind: Literal["linear"] = "linear"
    in_features: PositiveInt
    out_features: PositiveInt

    @property
    def weight_count(self) -> int:
        return self.out_features * self.in_features

    @property
    def macs(self) -> int:
        return self.batch * self.out_features * self.in_features

    @property
    def activation_bytes(self) -> int:
        return self.batch * (self.in_features + self.out_features) * self.dtype_bytes

    @property
    def weight_bytes(self) -> int:
        return self.weight_count * self.dtype_bytes

    def describe(self) -> str:
        return f"{self.in_features}→{self.out_features} fc"


LayerSpec = Annotated[Conv2dSpec | LinearSpec, Field(discriminator="kind")]
"""Any layer the model understands; JSON picks the type by its ``kind`` field."""
