"""What a new run records about itself: tags, params, config.json and its dataset inputs."""

from __future__ import annotations

import hashlib
import json

import torch

from .. import __version__
from ..training.environment import all_cores, cpu_model, denormals_flushed, device_name, git_commit
from ..training.recipe_data import Prepared
from ..recipes.spec import flatten
from ..tracking import TAG

from .job import Job


EXECUTION = f"{TAG}execution"  # how the run was trained: "one-by-one", or "stacked" with other seeds
INVOCATION = f"{TAG}invocation"  # the command that trained the run (RunOptions.invocation)
PLAN = f"{TAG}plan"  # the seeds that command set out to train (RunOptions.plan)


def run_record(job: Job, prep: Prepared, n_params: int, together: int = 1) -> tuple[dict, dict, dict]:
    """(tags, params, config.json) of a new run; `together`: how many seeds trained at once
    (stacked seeds are equal step by step over short horizons and statistically equivalent over
    a run, not bit-identical: the tag lets the report tell them apart)."""
    exp, opts, seed = job.exp, job.opts, job.seed
    capped = job.capped  # by the effective configuration: a cap at or above the recipe's length or the data's size is none
    cap = job.overrides.get("max_train_images", "none")
    commit = git_commit()
    tags = {
        f"{TAG}experiment_id": exp.id, f"{TAG}config_hash": job.chash, f"{TAG}seed": seed,
        f"{TAG}source": exp.source.seed if exp.source else "your own recipe",
        f"{TAG}capped": str(capped).lower(), f"{TAG}git_commit": commit, f"{TAG}version": __version__,
        f"{TAG}torch_version": torch.__version__, f"{TAG}device": device_name(job.device),
        # the machine in full: CPU model, cores this process may use, intra-op threads the run started on
        f"{TAG}cpu_model": cpu_model(), f"{TAG}cpu_cores": all_cores(), f"{TAG}threads": job.threads,
        f"{TAG}data_fingerprint": job.data.fingerprint, f"{TAG}data_dir": str(job.data.root),
        f"{TAG}published_accuracy": json.dumps(exp.published.test_accuracy), f"{TAG}assumed": ",".join(exp.assumed),
        f"{TAG}published_interval": json.dumps(exp.published.interval()), f"{TAG}eval_mode": exp.eval.mode,
        EXECUTION: "stacked" if together > 1 else "one-by-one",
        "mlflow.note.content": f"{exp.title}. " + (f"Source: {exp.source.site} ({exp.source.seed})." if exp.source else f"A user's recipe ({exp.user_spec})."),
        # MLflow's own fields, so the UI's Source and git columns are filled
        "mlflow.source.name": "harness", "mlflow.source.type": "LOCAL", "mlflow.source.git.commit": commit.removesuffix("-dirty"),
    }
    tags.update({f"{TAG}{k}": v for k, v in opts.loop_tags})  # trained by --repeats auto (auto/loop.py)
    if opts.invocation:  # which command trained it, and its plan (report/looked.py: seeds chosen by looking)
        tags.update({INVOCATION: opts.invocation, PLAN: opts.plan()})
    if exp.user_spec:  # a recipe of the user's own, beside the documented ones
        tags.update({f"{TAG}user_recipe": "true", f"{TAG}spec_path": exp.user_spec})
    if exp.code is not None:
        tags.update({f"{TAG}model_code": exp.code.label, f"{TAG}model_code_file": exp.code.file, f"{TAG}model_code_sha256": exp.code.sha256})
    params = flatten(exp.training_dict())
    params.update({
        "params": n_params, "seed": seed, "epochs": job.epochs, "recipe_epochs": exp.train.epochs,
        "precision": opts.precision, "threads": job.threads, "conv": job.conv, "together": together,
        "flush_denormal": denormals_flushed(job.threads or all_cores()),  # subnormals as zero on every thread (training/environment.py)
        "data.n_train": prep.n_train, "data.n_val": 0 if prep.val_is_test else len(prep.val_x),
        "data.n_test": len(prep.test_x), "data.val_on": "test" if prep.val_is_test else "validation split",
        "data.n_train_available": job.train_images,
        "override.epochs": job.overrides.get("epochs", "none"), "override.max_train_images": cap,
        "published.test_accuracy": json.dumps(exp.published.test_accuracy),
    })
    resolved = exp.to_dict() | {"resolved": {"seed": seed, "overrides": job.overrides, "epochs": job.epochs,
                                             "config_hash": job.chash, "params": n_params}}
    return tags, params, {"config.json": json.dumps(resolved, indent=2)}


def split_digest(fingerprint: str, split: str, idx: torch.Tensor | None) -> str:
    """Identifies exactly which images a split holds: the data set's fingerprint plus the indices."""
    h = hashlib.sha256(f"{fingerprint}:{split}:".encode())
    if idx is not None:
        h.update(idx.cpu().numpy().astype("int64").tobytes())
    return h.hexdigest()[:16]


def datasets(job: Job, prep: Prepared) -> list[dict]:
    """The run's training, validation and test sets as MLflow dataset inputs. The digest names
    the split's exact images (MLflow keeps one entity per name and digest, so a capped training
    split must not share one with the full split); the profile carries the data fingerprint."""
    data = job.data
    base = "cifar10" if (len(data.train_x), len(data.test_x)) == (50000, 10000) else "cifar10-subset"
    fp, src = data.fingerprint, str(data.root)
    out = [{"name": f"{base}-train", "context": "training", "source": src, "digest": split_digest(fp, "train", prep.train_idx),
            "profile": {"num_images": prep.n_train, "of": len(data.train_x), "data_fingerprint": fp, "split_seed": job.seed,
                        "capped": "max_train_images" in job.overrides}},
           {"name": f"{base}-test", "context": "test", "source": src, "digest": split_digest(fp, "test", None),
            "profile": {"num_images": len(prep.test_x), "data_fingerprint": fp}}]
    if not prep.val_is_test:
        out.insert(1, {"name": f"{base}-val", "context": "validation", "source": src, "digest": split_digest(fp, "val", prep.val_idx),
                       "profile": {"num_images": len(prep.val_x), "of": len(data.train_x), "data_fingerprint": fp, "split_seed": job.seed}})
    return out
