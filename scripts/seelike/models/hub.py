"""Pretrained timm weights from the Hugging Face hub, into the model registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..fileio import PathLike, sha256_file
from .build import (CHECKPOINT_FILENAME, WeightsFileError, check_timm_arch, clean_pretrained_cfg, create_timm_model,
                    import_timm, make_card, save_checkpoint, split_timm_name)
from .card import CARD_FILENAME, ModelCard
from .layers import LayerSpec

DEFAULT_HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")


class HubError(RuntimeError):
    """Weights could not be obtained from the hub (or its local cache)."""


def hub_location(timm_name: str) -> Dict[str, Any]:
    """timm's pretrained cfg for a (tagged) name and where its weights live on the hub."""
    check_timm_arch(timm_name)
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        arch, _ = split_timm_name(timm_name)
        tags = [t for t in timm.list_pretrained(f"{arch}.*")
                if getattr(timm.models.get_pretrained_cfg(t), "hf_hub_id", None)]
        hint = f"; names with hub weights: {', '.join(tags[:8])}" if tags else ""
        raise ValueError(f"timm model {timm_name!r} has no weights on the Hugging Face hub{hint}")
    repo_id, _, revision = hub_id.partition("@")
    filenames: Tuple[str, ...] = ((cfg.hf_hub_filename,) if getattr(cfg, "hf_hub_filename", None)
                                  else DEFAULT_HUB_FILENAMES)
    return {"cfg": cfg, "repo_id": repo_id, "revision": revision or None, "filenames": filenames}


def _commit_from_path(path: Path) -> Optional[str]:
    parts = path.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def download_weights(repo_id: str, filenames: Tuple[str, ...], revision: Optional[str] = None,
                     cache_dir: Optional[PathLike] = None, local_files_only: bool = False) -> Tuple[Path, str]:
    """First of ``filenames`` available in the hub repo (or the cache); returns (local path, filename)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    tried: List[str] = []
    for filename in filenames:
        try:
            path = hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                                   cache_dir=str(cache_dir) if cache_dir is not None else None,
                                   local_files_only=local_files_only, library_name="timm")
            return Path(path), filename
        except LocalEntryNotFoundError as e:
            tried.append(f"{filename}: not in the local cache ({type(e).__name__})")
        except EntryNotFoundError as e:
            tried.append(f"{filename}: not in the repository ({type(e).__name__})")
        except Exception as e:  # network, auth, gated repo, unknown revision
            raise HubError(
                f"cannot download {filename} from Hugging Face repo {repo_id!r} (revision {revision or 'main'}, "
                f"cache {cache_dir or 'default'}): {type(e).__name__}: {e}") from e
    where = f"cache {cache_dir}" if cache_dir is not None else "the default cache"
    offline = " with local_files_only/HF_HUB_OFFLINE set, so only the cache was searched" \
        if local_files_only else ""
    raise HubError(
        f"no weights for Hugging Face repo {repo_id!r} (revision {revision or 'main'}) in {where}{offline}; "
        f"tried: {'; '.join(tried)}. Download them once on a machine with internet "
        f"(huggingface-cli download {repo_id}) and point the cache there")


def fetch_from_hub(name: str, timm_name: str, out_dir: PathLike, cache_dir: Optional[PathLike] = None,
                   local_files_only: bool = False, kwargs: Optional[Dict[str, Any]] = None, *,
                   revision: Optional[str] = None, sublayers: bool = False,
                   layer_spec: LayerSpec = "auto") -> ModelCard:
    """Download ``timm_name``'s pretrained weights, load them into the architecture, register them.

    Loading goes through timm's own pretrained path (``pretrained=True`` with the file
    given as the source), so the architecture's checkpoint filter (position-embedding and
    patch resampling for a different img_size/patch_size) and classifier handling (a
    different num_classes drops the head: recorded in provenance) apply exactly as in timm.
    Writes out_dir/weights.safetensors and out_dir/card.json.
    """
    loc = hub_location(timm_name)
    cfg = loc["cfg"]
    rev = revision or loc["revision"]
    path, filename = download_weights(loc["repo_id"], loc["filenames"], revision=rev, cache_dir=cache_dir,
                                      local_files_only=local_files_only)
    file_sha = sha256_file(path)
    kwargs = dict(kwargs or {})
    overlay = {"file": str(path), "custom_load": False, "source": ""}
    try:
        model = create_timm_model(timm_name, kwargs, pretrained=True, pretrained_cfg_overlay=overlay)
    except ValueError:  # our own clear errors (unknown name, bad kwargs, unreadable file)
        raise
    except Exception as e:
        raise WeightsFileError(
            f"cannot load {path} ({loc['repo_id']}/{filename}) into {timm_name} with kwargs {kwargs}: "
            f"{type(e).__name__}: {e} (a truncated download, or kwargs that do not fit the weights)") from e
    model.eval()
    clean_cfg = clean_pretrained_cfg(cfg)
    model.pretrained_cfg = dict(clean_cfg)
    cfg_classes = clean_cfg.get("num_classes")
    head_reinit = "num_classes" in kwargs and cfg_classes is not None and kwargs["num_classes"] != cfg_classes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(model, out_dir / CHECKPOINT_FILENAME)
    source = {
        "kind": "timm_hub",
        "timm_name": timm_name,
        "hf_hub_id": loc["repo_id"],
        "revision": _commit_from_path(path) or rev,
        "filename": filename,
        "file_sha256": file_sha,
    }
    card = make_card(name, timm_name, kwargs, source, model, ckpt, sublayers=sublayers, layer_spec=layer_spec,
                     provenance={"head_reinitialized": bool(head_reinit),
                                 "pretrained_num_classes": cfg_classes})
    card.save(out_dir / CARD_FILENAME)
    return card
