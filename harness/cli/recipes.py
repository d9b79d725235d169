"""`harness list` (the catalogue: parameters, published accuracy, threads) and `harness new` (a recipe
of your own, started from a documented one)."""

from __future__ import annotations

import json

import click

from .common import friendly


@click.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--experiments-dir", type=click.Path(file_okay=False), default=None, help="Folder of *.toml specs (default: ./experiments).")
@click.option("--experiments", "user_dir", type=click.Path(file_okay=False), default=None, help="A folder of your own recipes, listed beside the catalogue.")
@friendly
def list_cmd(fmt, experiments_dir, user_dir):
    """List the experiments of the catalogue: parameters, published accuracy, CPU threads and convolutions, source."""
    import torch

    from ..recipes.catalogue import load_catalogue, with_folder
    from ..training.environment import choose_conv, choose_threads, macs_per_image
    from ..models import count_params
    from ..recipes.network import build_model
    from ..training.together import why_sequential

    cat = load_catalogue(experiments_dir)
    if user_dir is not None:
        cat = with_folder(cat, user_dir)
    rows = []
    for exp in cat.values():
        model = build_model(exp)
        rows.append({"id": exp.id, "title": exp.title, "source": exp.source.seed if exp.source else f"yours: {exp.user_spec}", "params": count_params(model),
                     "published_accuracy": exp.published.test_accuracy,
                     "mmacs_per_step": round(macs_per_image(model) * exp.train.batch_size / 1e6, 1),
                     "cpu_threads": choose_threads(model, exp.train.batch_size, torch.device("cpu")),
                     "cpu_conv": choose_conv(model, exp.train.batch_size, torch.device("cpu")),
                     "repeats": why_sequential(exp, model, torch.device("cpu")) or "stackable"})
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no experiments found")
        return
    head = ("id", "params", "published", "M MACs/step", "CPU threads, conv", "seeds stack (--together)", "source", "title")
    table = [(r["id"], f"{r['params']:,}", ", ".join(f"{a:g}%" for a in r["published_accuracy"]) or "-", f"{r['mmacs_per_step']:,.0f}",
              f"{r['cpu_threads']}, {r['cpu_conv']}", "yes" if r["repeats"] == "stackable" else f"no: {r['repeats']}", r["source"], r["title"])
             for r in rows]
    w = [max(len(str(x[i])) for x in [head, *table]) for i in range(7)]
    for r in [head, *table]:
        click.echo(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}  {r[4]:>{w[4]}}  {r[5]:<{w[5]}}  {r[6]:<{w[6]}}  {r[7]}")
    click.echo("\nSeeds that stack train together as one vmapped model: equal to one-by-one runs step by step over short horizons,\n"
               "statistically equivalent over a run, not bit-identical (summation order differs); each run's tag harness.execution\n"
               "says which way it trained, and the report shows it.")


# --------------------------------------------------------------------------- run / run-all


@click.command("new")
@click.argument("name")
@click.option("--like", "like", default="tutorial-base", show_default=True, help="The documented recipe to start from (see `harness list`).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=".", show_default=True, help="Where to write the two files.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
@friendly
def new_cmd(name, like, folder, force):
    """Start a recipe of your own: NAME.toml (a documented recipe's protocol) and its network as
    plain PyTorch in a .py file beside it; `harness run NAME.toml` trains it at once."""
    from ..recipes.catalogue import load_catalogue, select
    from ..recipes.scaffold import write_new

    [exp] = select(load_catalogue(), [like])
    spec, code = write_new(name, exp, folder, force)
    click.echo(f"wrote {spec} and {code}; edit the network, then `harness run {spec}` and `harness report`")


# --------------------------------------------------------------------------- report
