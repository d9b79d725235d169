"""Parametrised over the catalogue (timm test_models style)."""

import pytest
import torch
from click.testing import CliRunner

from harness.cli import main
from harness.errors import HarnessError
from harness.models import count_params, create_model, list_models, register_model
from harness.models.fastai import BnLayer
from harness.recipes.catalogue import load_catalogue

CATALOGUE = load_catalogue()

# ../shared/catalogue.md; 123,330, 37,490 and 537,610 are also printed in the write-ups
PUBLISHED_PARAMS = {
    "medium-tutorial-net": 62_006, "medium-three-conv": 581_866, "medium-vgg-bn": 5_852_170,
    "cs598-vgg-bn-aug": 5_852_170, "fastai-simplenet": 123_330, "fastai-convnet": 37_490,
    "fastai-convnet2": 37_490, "fastai-convbnnet": 155_970, "fastai-convbnnet2": 462_570,
    "tutorial-base": 62_006, "tutorial-c16": 66_766, "tutorial-c32": 74_382, "tutorial-c128": 120_078,
    "skl-cnn": 537_610,
}
LOG_SOFTMAX = {"fastai-simplenet", "fastai-convnet", "fastai-convnet2", "fastai-convbnnet", "fastai-convbnnet2", "skl-cnn"}


def test_catalogue_has_the_14_documented_experiments():
    assert set(CATALOGUE) == set(PUBLISHED_PARAMS)


@pytest.mark.parametrize("eid", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_published(eid):
    exp = CATALOGUE[eid]
    assert count_params(create_model(exp.model.name, **exp.model.args)) == PUBLISHED_PARAMS[eid]


@pytest.mark.parametrize("eid", sorted(PUBLISHED_PARAMS))
def test_forward_backward(eid):
    exp = CATALOGUE[eid]
    torch.manual_seed(0)
    m = create_model(exp.model.name, **exp.model.args)
    m.train()
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    if eid in LOG_SOFTMAX:  # log-probabilities: they exponentiate to a distribution
        torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    out.sum().backward() if eid not in LOG_SOFTMAX else torch.nn.functional.nll_loss(out, torch.tensor([1, 2])).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.parametrize("eid", sorted(PUBLISHED_PARAMS))
def test_loss_matches_output_kind(eid):
    # log-softmax networks are trained with NLL, the others with cross-entropy, as written
    assert CATALOGUE[eid].train.loss == ("nll" if eid in LOG_SOFTMAX else "cross_entropy")


def test_bnlayer_uses_batch_stats_in_training_and_keeps_the_last_for_eval():
    torch.manual_seed(0)
    layer = BnLayer(3, 4)
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16) * 3 + 1
    layer.train()
    y1 = layer(x1)
    # training output: per-channel zero mean, unit (unbiased) std with m=1, a=0
    chan = y1.transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(chan.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(chan.std(1), torch.ones(4), atol=1e-4, rtol=0)
    layer(x2)  # the last training batch
    act2 = torch.relu(layer.conv(x2)).transpose(0, 1).reshape(4, -1)
    layer.eval()
    ye = layer(x1)
    act1 = torch.relu(layer.conv(x1))
    expected = (act1 - act2.mean(1)[:, None, None]) / act2.std(1)[:, None, None]
    torch.testing.assert_close(ye, expected)
    # unlike nn.BatchNorm2d there is no running average: eval twice gives the same, and
    # the statistics travel in the state dict (checkpoints, the logged model)
    torch.testing.assert_close(layer(x1), ye)
    assert {"means", "stds"} <= set(layer.state_dict())


def test_registry_rejects_duplicates_and_lists_known_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model("tutorial_net")(lambda: None)
    with pytest.raises(HarnessError) as e:
        create_model("resnet9000")
    assert "tutorial_net" in str(e.value) and "vgg_bn_net" in str(e.value)
    assert len(list_models()) == 9


def test_list_json_has_every_experiment_with_computed_params():
    r = CliRunner().invoke(main, ["list", "--format", "json"])
    assert r.exit_code == 0, r.output
    import json

    rows = json.loads(r.output)
    assert {row["id"]: row["params"] for row in rows} == PUBLISHED_PARAMS
    assert all(set(row) == {"id", "title", "source", "params", "published_accuracy", "mmacs_per_step", "cpu_threads", "cpu_conv", "repeats"} for row in rows)
    stacks = {row["id"]: row["repeats"] for row in rows}
    assert stacks["tutorial-base"] == "stackable" and stacks["medium-vgg-bn"].startswith("compute-bound")
    threads = {row["id"]: row["cpu_threads"] for row in rows}
    assert threads["tutorial-base"] == 1 and threads["skl-cnn"] == 1 and threads["medium-vgg-bn"] >= 1
    assert {row["id"] for row in rows if row["cpu_conv"] == "aten"} == {"tutorial-base"}
    c128 = next(row for row in rows if row["id"] == "tutorial-c128")
    assert c128["published_accuracy"] == [60.77, 62.73, 58.73]


def test_list_table():
    r = CliRunner().invoke(main, ["list"])
    assert r.exit_code == 0 and "5,852,170" in r.output and "skl-cnn" in r.output and "no: compute-bound" in r.output
    # stacked seeds described as they are, not as "the same runs"
    assert "statistically equivalent over a run, not bit-identical" in r.output
