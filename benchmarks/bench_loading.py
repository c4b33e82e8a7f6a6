"""Benchmark: data loading against the forward pass, and what extraction's loader workers buy.

    python benchmarks/bench_loading.py              # ~1-2 min on 2 cores -> benchmarks/out/bench_loading.json
    python benchmarks/bench_loading.py --quick      # smoke run (~20 s): fewer images, a small ViT
    python benchmarks/bench_loading.py --workers 4  # worker count of the "auto" row (default: the job's CPUs)

Measured, with `--threads` torch threads (default 2):

* decode      images/s of one process (one torch thread) reading the image folder through `seelike.data.ImageFolderDataset`
              with ViT-B/16's timm eval transform (JPEG decode, resize to 248, centre crop 224,
              normalise): what one loader worker delivers. Two folders of `--images` JPEGs (quality 90,
              synthetic scenes): 224 x 224 px, and 500 x 375 px (the typical ImageNet validation size).
* loader      images/s of `torch.utils.data.DataLoader` over the 500 x 375 folder with 1 worker and with
              `--workers` workers (no forward), persistent workers timed from their second pass on.
* forward     images/s of a bare ViT-B/16 forward (random weights; --quick: ViT-S/16) at 224 px,
              b = `--minibatch` (16), images already in memory: what the loader has to keep up with here.
* extraction  images/s of `seelike.extract.extract_shard` (the extract job's own code path: model build,
              loader, taps, Grams, HDF5 write) of ViT-S/16 (4x cheaper than ViT-B/16 on this CPU, so decoding
              is a larger share) over one minibatch of the 500 x 375 folder with `extraction.num_workers` 0 and
              "auto" (the job's CPUs, `seelike.runtime.job_cpus`).
* demo        the same for the demo's case: the demo ViT on the rendered 32 px synthetic split (items are
              copies out of a memory map), b = 64, 512 images, with num_workers 0, 2 and "auto" (which
              gives 0 for in-memory data).

Each timing is the fastest of `--repeats` (3) runs after an untimed warm-up run (other processes on a
shared machine only ever add time); the worker settings of one extraction alternate within each round.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seelike.allocator import retain_freed_memory  # noqa: E402
from seelike.fileio import write_json_atomic  # noqa: E402
from bench_pipeline import OUT, dataset_cfg, extract_spec, host_meta, load_avg, make_model_dir  # noqa: E402

VIT_B16 = ("vit_base_patch16_224", {"num_classes": 10})
VIT_SMALL = ("vit_small_patch16_224", {"num_classes": 10})      # --quick
DEMO_VIT = ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 6, "num_heads": 3,
                                     "mlp_ratio": 2.0, "num_classes": 10})


def write_jpegs(root: Path, n: int, size: tuple[int, int], n_classes: int = 4) -> Path:
    """n JPEGs (quality 90) of synthetic scenes resized to `size` (w, h), in class folders."""
    from PIL import Image
    from seelike.data import SyntheticSpec, render

    spec = SyntheticSpec.from_config(dataset_cfg(n) | {"image_size": 64})
    images, labels, _ = render(spec, np.arange(n))
    for i, (img, label) in enumerate(zip(images, labels)):
        d = root / f"c{int(label) % n_classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize(size, Image.BICUBIC).save(d / f"{i:05d}.JPEG", quality=90)
    return root


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` runs: other processes on a shared machine only ever add time."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def folder_card(models_dir: Path, name: str, arch: str, kwargs: dict) -> Path:
    """A random-weight model card whose preprocessing is the timm architecture's own eval transform
    (what a pretrained model's card records), so extraction decodes and transforms every image."""
    import timm
    from seelike.models import ModelCard
    from seelike.models.build import clean_pretrained_cfg

    card_path = make_model_dir(models_dir, name, arch, kwargs, seed=0, input_size=(3, 224, 224))
    card = ModelCard.load(card_path)
    card.pretrained_cfg = clean_pretrained_cfg(timm.create_model(arch, pretrained=False).pretrained_cfg)
    card.save(card_path)
    return card_path


def extraction_rates(name, card_path, ds_cfg, plan, out_dir: Path, settings, repeats: int, rendered=None) -> dict:
    """images/s of extract_shard over shard 0 of `plan` for each extraction.num_workers in `settings`:
    one untimed warm-up, then `repeats` rounds in which the settings alternate; the fastest round of each."""
    from seelike.extract import extract_shard

    spec = extract_spec(name, card_path, ds_cfg, plan, out_dir, full_tokens=0, rendered=rendered)
    n = len(plan.shard(0).example_indices)

    def once(w):
        t = time.perf_counter()
        extract_shard(dict(spec, num_workers=w), 0)
        return time.perf_counter() - t

    once(settings[0])
    times = {str(w): [] for w in settings}
    for _ in range(repeats):
        for w in settings:
            times[str(w)].append(once(w))
    shutil.rmtree(out_dir, ignore_errors=True)
    return {w: n / min(t) for w, t in times.items()}


def run(args) -> dict:
    from torch.utils.data import DataLoader
    from seelike.data import (ImageFolderDataset, dataset_fingerprint, rendered_split_name, timm_eval_transform,
                              write_rendered_split)
    from seelike.models import ModelCard, build_model
    from seelike.plan import make_plan
    from seelike.runtime import job_cpus

    tmp = Path(tempfile.mkdtemp(prefix="seelike-bench-loading-"))
    res: dict = {}
    try:
        arch, kwargs = VIT_SMALL if args.quick else VIT_B16
        n, b = args.images, args.minibatch
        folders = {"224x224": write_jpegs(tmp / "jpeg224", n, (224, 224)),
                   "500x375": write_jpegs(tmp / "jpeg500", n, (500, 375))}
        card_path = folder_card(tmp / "models", "vit", arch, kwargs)
        card = ModelCard.load(card_path)
        transform = timm_eval_transform(card.pretrained_cfg)

        print("# decode (one process)", file=sys.stderr, flush=True)
        res["decode_img_s"] = {}
        torch.set_num_threads(1)        # as in a loader worker (DataLoader gives each worker one torch thread)
        for label, root in folders.items():
            ds = ImageFolderDataset(root, transform=transform)
            ds[0]
            res["decode_img_s"][label] = n / best_time(lambda: [ds[i] for i in range(len(ds))], args.repeats)
        torch.set_num_threads(args.threads)

        print("# loader", file=sys.stderr, flush=True)
        ds = ImageFolderDataset(folders["500x375"], transform=transform)
        res["loader_img_s"] = {}
        for w in sorted({1, args.workers}):
            # persistent workers, timed from the second pass on: the steady state, without their start-up
            loader = DataLoader(ds, batch_size=b, num_workers=w, persistent_workers=True)
            [None for _ in loader]
            res["loader_img_s"][str(w)] = n / best_time(lambda: [None for _ in loader], args.repeats)
            del loader

        print(f"# forward ({arch})", file=sys.stderr, flush=True)
        model = build_model(card, card_path.parent)
        x = torch.stack([ds[i][0] for i in range(b)])
        with torch.no_grad():
            model(x)
            res["forward_img_s"] = b / best_time(lambda: model(x), args.repeats)
        del model

        print("# extraction (image folder)", file=sys.stderr, flush=True)
        small_card = card_path if args.quick else folder_card(tmp / "models", "vit_s", *VIT_SMALL)
        folder_cfg = {"kind": "imagefolder", "root": str(folders["500x375"])}
        n_ext = min(n, b)
        plan = make_plan(f"folder:{dataset_fingerprint(folder_cfg)}", np.arange(n), n_ext, b, n_ext // b, 0)
        res["extract_folder_img_s"] = extraction_rates("vit_s", small_card, folder_cfg, plan, tmp / "extract",
                                                       [0, "auto"], args.repeats)

        print("# extraction (demo: rendered synthetic split)", file=sys.stderr, flush=True)
        n_demo, b_demo = (256, 64) if args.quick else (512, 64)
        synth = dataset_cfg(n_demo)
        rendered = write_rendered_split(synth, "analysis", tmp / "rendered" / rendered_split_name(synth, "analysis"))
        demo_card = make_model_dir(tmp / "models", "demo_vit", *DEMO_VIT, seed=0)
        demo_plan = make_plan(f"synth:{dataset_fingerprint(synth)}", np.arange(n_demo), n_demo, b_demo,
                              n_demo // b_demo, 0)
        res["extract_demo_img_s"] = extraction_rates("demo_vit", demo_card, synth, demo_plan, tmp / "extract_demo",
                                                     [0, 2, "auto"], args.repeats, rendered=rendered)
        res["job_cpus"] = job_cpus()
        res.update(arch=arch, extraction_arch=VIT_SMALL[0], images=n, extraction_images=n_ext, minibatch=b)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def print_table(res: dict) -> None:
    b, arch = res["minibatch"], res["arch"]
    rows = [(f"decode + transform, one process, JPEG {k}", v) for k, v in res["decode_img_s"].items()]
    rows += [(f"DataLoader, {w} worker(s), JPEG 500x375, b={b}", v) for w, v in res["loader_img_s"].items()]
    rows += [(f"bare forward {arch} 224 px, b={b}", res["forward_img_s"])]
    rows += [(f"extract_shard {res['extraction_arch']}, JPEG 500x375, num_workers {w}", v)
             for w, v in res["extract_folder_img_s"].items()]
    rows += [(f"extract_shard, demo ViT, rendered 32 px, num_workers {w}", v)
             for w, v in res["extract_demo_img_s"].items()]
    print(f"{'measurement':<60} {'images/s':>9}")
    print("-" * 70)
    for label, v in rows:
        print(f"{label:<60} {v:>9.1f}")
    print(f"(auto: {res['job_cpus']} worker(s) for the image folder, the job's CPUs; none for the rendered split)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=None, help="JPEGs per folder (64; --quick 32)")
    ap.add_argument("--minibatch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=None, help="loader workers of the multi-worker row (the job's CPUs)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT / "bench_loading.json")
    args = ap.parse_args(argv)
    from seelike.runtime import job_cpus

    retained = retain_freed_memory()
    torch.set_num_threads(args.threads)
    args.images = args.images or (32 if args.quick else 64)
    args.workers = args.workers or job_cpus()
    t0, load_start = time.perf_counter(), load_avg()
    res = run(args)
    print_table(res)
    meta = dict(host_meta(args.threads), quick=args.quick, retain_freed_memory=retained, repeats=args.repeats,
                total_wall_s=time.perf_counter() - t0, load_average_start=load_start, load_average_end=load_avg())
    write_json_atomic(args.out, {"meta": meta, "results": res}, indent=1, nan_as_null=True)
    print(f"\nwrote {args.out} ({meta['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
