"""F6: effective receptive fields (Luo et al. 2016) of chosen layers.

For every chosen layer: the gradient of the layer's output at the centre position (summed over
channels) with respect to the input image, absolute, summed over the input channels and averaged
over the first `analyses.receptive_field.n_images` images of the plan. ViT layers are block
outputs (after the residual); CNN layers residual-unit outputs. Gradients need their own passes:
the model's vision pass (seelike.paths.VISION_DIR) runs them after its forward passes, one backward
pass per layer (:class:`seelike.analyses.reducers.ReceptiveFieldReducer`); the shards hold the
sums, and this table divides them by the images.

Table columns: model, layer, layer_index, row, col, value (mean |d output / d pixel|), n_images,
grid_h, grid_w, centre_row, centre_col (the layer position differentiated), image_h, image_w.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .common import read_table, write_table
from ..plotting import finish_figure, pyplot
from ..registry import Analysis, Figure, section

if TYPE_CHECKING:
    import pandas as pd

RECEPTIVE_FIELD = "reductions/receptive_field"   # the vision pass's store path of the gradient sums


def choose_layers(names: list[str], setting) -> list[str]:
    """`auto`: four layers spread over depth (first and last included); `all`; or the listed names."""
    if setting == "all":
        return list(names)
    if setting == "auto":
        idx = sorted(set(np.round(np.linspace(0, len(names) - 1, min(4, len(names)))).astype(int).tolist()))
        return [names[i] for i in idx]
    unknown = [l for l in setting if l not in names]
    if unknown:
        raise ValueError(f"config key analyses.receptive_field.layers: {', '.join(unknown)} not among the "
                         f"model's layers ({', '.join(names)})")
    return list(setting)


def _centre(o, layer: dict, model, num_prefix: int, hw):
    """(output at the centre position (b, c), grid, centre cell) of a raw layer output."""
    from ..models.residual import feature_grid, patch_geometry
    from .geometry import centre_cell

    g = feature_grid(tuple(o.shape), layer.get("layout", "auto"), num_prefix)
    if g is not None:
        r, c = centre_cell(g)
        if layer.get("layout") in ("nhwc", "tokens"):
            return o[:, r, c, :], g, (r, c)
        return o[:, :, r, c], g, (r, c)
    if o.dim() != 3:
        raise ValueError(f"receptive field of layer {layer['name']}: unexpected output shape {tuple(o.shape)}")
    g, _cell = patch_geometry(model, o.shape[1] - num_prefix, hw)
    r, c = centre_cell(g)
    return o[:, num_prefix + r * g[1] + c, :], g, (r, c)


def receptive_fields(model, x, layers: list[dict], num_prefix_tokens: int = 0) -> dict:
    """{layer name: ((H, W) float64 sum over the images of |grad|, grid, centre cell)} for a batch x.

    One forward pass with the layers' raw outputs kept in the graph, then one backward pass per
    layer of the centre position's output summed over channels. Images do not interact in eval
    mode, so each image's input gradient is that of its own output.
    """
    import torch
    from ..models.layers import get_module
    from ..runtime import full_fp32

    raw, handles = {}, []

    def keep(name, tap):
        if tap == "input":
            return lambda mod, args: raw.__setitem__(name, args[0])
        return lambda mod, args, out: raw.__setitem__(name, out[0] if isinstance(out, (tuple, list)) else out)

    for layer in layers:
        module = get_module(model, layer["module"])
        fn = keep(layer["name"], layer.get("tap", "output"))
        handles.append(module.register_forward_pre_hook(fn) if layer.get("tap") == "input"
                       else module.register_forward_hook(fn))
    x = x.detach().clone().requires_grad_(True)
    out = {}
    # full float32, forward and backward: on a GPU cuDNN's convolutions would otherwise run in TF32
    with full_fp32():
        try:
            with torch.enable_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        hw = (x.shape[2], x.shape[3])
        for i, layer in enumerate(layers):
            o = raw[layer["name"]]
            centre, grid, cell = _centre(o, layer, model, num_prefix_tokens, hw)
            (g,) = torch.autograd.grad(centre.sum(), x, retain_graph=i < len(layers) - 1)
            out[layer["name"]] = (g.abs().sum(1).sum(0).double().cpu().numpy(), grid, cell)
    return out


def compute(spec: dict) -> str:
    """spec: manifest (the vision pass, whose shards hold the gradient sums), model, out, provenance_config."""
    import pandas as pd

    from .common import by_unit, read_group, shard_paths
    from ..manifest import load_manifest

    manifest = load_manifest(spec["manifest"])
    sums, meta, count = {}, {}, 0
    for path in shard_paths(manifest):
        group = read_group(path, RECEPTIVE_FIELD, "receptive fields") if count < int(spec["n_images"]) else {}
        if not group:
            break
        count += int(group.pop("count"))
        for name, st in by_unit(group).items():
            sums[name] = sums.get(name, 0.0) + st["sum"]
            meta[name] = (tuple(int(v) for v in st["grid"]), tuple(int(v) for v in st["centre"]), int(st["index"]))
    if count != int(spec["n_images"]):
        raise ValueError(f"model '{spec['model']}': the vision pass holds receptive fields of {count} images, the "
                         f"table asks for {spec['n_images']}; rerun its extraction (extract_vision)")
    names = manifest["layers"]
    h, w = next(iter(sums.values())).shape
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = []
    for name in sorted(sums, key=lambda n: meta[n][2]):
        (gh, gw), (cr, ccol), _ = meta[name]
        frames.append(pd.DataFrame({
            "model": spec["model"], "layer": name, "layer_index": names.index(name), "row": rr.ravel(),
            "col": cc.ravel(), "value": (sums[name] / count).ravel(), "n_images": count, "grid_h": gh,
            "grid_w": gw, "centre_row": cr, "centre_col": ccol, "image_h": h, "image_w": w}))
    return write_table(pd.concat(frames, ignore_index=True), spec["out"], spec, inputs=[spec["manifest"]])


def summary(table) -> "pd.DataFrame":
    """Per layer: r50 / r90, the radius (pixels) around the differentiated position's centre holding 50% /
    90% of the gradient mass, and the share of pixels above 1% of the maximum."""
    import pandas as pd

    rows = []
    for (model, layer), s in table.groupby(["model", "layer"], sort=False):
        r = s.iloc[0]
        cy = (r.centre_row + 0.5) * r.image_h / r.grid_h - 0.5
        cx = (r.centre_col + 0.5) * r.image_w / r.grid_w - 0.5
        d = np.sqrt((s.row.values - cy) ** 2 + (s.col.values - cx) ** 2)
        v = s.value.values
        order = np.argsort(d)
        cum = np.cumsum(v[order]) / max(v.sum(), 1e-300)
        rows.append({"model": model, "layer": layer, "layer_index": int(r.layer_index),
                     "r50": float(d[order][np.searchsorted(cum, 0.5)]),
                     "r90": float(d[order][min(len(d) - 1, np.searchsorted(cum, 0.9))]),
                     "support": float((v > 0.01 * v.max()).mean()) if v.max() > 0 else 0.0})
    return pd.DataFrame(rows)


def figure(spec: dict) -> None:
    """spec: tables (one receptive_field table), outputs, dpi."""
    plt = pyplot()
    t = read_table(spec["tables"][0])
    summ = summary(t).set_index("layer")
    layers = t.drop_duplicates("layer_index").sort_values("layer_index")["layer"].tolist()
    h, w = int(t.image_h.iloc[0]), int(t.image_w.iloc[0])
    fig, axes = plt.subplots(1, len(layers), figsize=(2.4 * len(layers), 2.8), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        s = t[t.layer == layer]
        img = np.zeros((h, w))
        img[s.row.values, s.col.values] = s.value.values
        ax.imshow(img / max(img.max(), 1e-300), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{layer}\nr50 = {summ.loc[layer, 'r50']:.1f} px", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"F6: effective receptive fields of {t.model.iloc[0]} ({int(t.n_images.iloc[0])} images, "
                 f"{h}x{w} px; each panel scaled to its maximum)", fontsize=9)
    finish_figure(fig, spec)


# ----------------------------------------------------------------------------- registration

def _taps(cfg: dict, model: str) -> dict:
    from ..registry import models_for

    if model not in models_for(cfg, "receptive_field"):
        return {}
    s = section(cfg, "receptive_field")
    return {"receptive_field": {"n_images": _n_images(cfg), "batch_size": int(s.get("batch_size", 32)),
                                "layers": s.get("layers", "auto")}}


def _n_images(cfg: dict) -> int:
    return min(int(cfg["analysis"]["n_examples"]), int(section(cfg, "receptive_field").get("n_images", 32)))


SETTINGS = {"n_images": {"type": "integer", "minimum": 1, "default": 32},
              "batch_size": {"type": "integer", "minimum": 1, "default": 32},
              "layers": {"oneOf": [{"enum": ["auto", "all"]}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                         "default": "auto"}}   # analyses.receptive_field, besides enabled and models


ANALYSIS = Analysis(
    name="receptive_field", settings=SETTINGS, families=("vit", "mixer", "cnn"),
    why="receptive fields need a spatial grid (a ViT, Mixer or CNN)",
    source="dataset", compute=compute, step="vision", taps=_taps,
    spec=lambda cfg, model: {"n_images": _n_images(cfg)},
    figures=(Figure("F6", "receptive fields", figure),),
    code=("analyses/reducers.py",))
